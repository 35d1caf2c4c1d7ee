"""SQUAREM extrapolation of EM (Varadhan & Roland 2008, scheme S3) for mixtures.

EM is a fixed-point map F. From a point p and two EM steps F(p), F(F(p)),
SQUAREM jumps to p + 2α r + α² v with r = F(p) − p, v = F(F(p)) − 2F(p) + p
and α = ‖r‖ / ‖v‖ (the steplength of scheme S3), bounded to [1, step_max];
α = 1 lands on F(F(p)), plain EM.

The jump is taken in coordinates where every point is a valid mixture
(:func:`to_vector`, :func:`from_vector`): weights as log-weights (any vector
maps back onto the simplex by softmax), means as they are, and each
covariance as the Cholesky factor of the covariance with its diagonal in
logs (full and tied), or the log variances (diag, spherical, shared): any
vector maps back to positive definite covariances.
"""

from __future__ import annotations

import numpy as np

from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.mstep import GaussianState, precision_cholesky

#: Growth of the largest steplength after a jump at the bound is kept, and
#: its shrinking after a jump is refused (the default ``mstep`` of SQUAREM).
STEP_FACTOR = 4.0


def to_vector(state: GaussianState, covariance_type: str) -> np.ndarray:
    """The mixture as one unconstrained float64 vector (see the module docstring)."""
    ctype = COVARIANCE_TYPES[covariance_type]
    cov = np.asarray(state.covariances, dtype=np.float64)
    if ctype.block == "matrix":
        chol = np.linalg.cholesky(cov)
        diag = np.diagonal(chol, axis1=-2, axis2=-1)
        cov_part = chol + _on_diagonal(np.log(diag) - diag)
    else:
        cov_part = np.log(cov)
    with np.errstate(divide="ignore"):
        log_weights = np.log(state.weights)
    return np.concatenate([log_weights, state.means.ravel(), np.ravel(cov_part)])


def from_vector(
    vector: np.ndarray, like: GaussianState, covariance_type: str, reg_covar: float
) -> GaussianState:
    """Inverse of :func:`to_vector`; ``like`` gives the shapes.

    Raises
    ------
    ValueError
        A covariance is not positive definite in float64 (extreme jumps).
    """
    ctype = COVARIANCE_TYPES[covariance_type]
    K, d = like.means.shape
    log_weights, means, cov_part = np.split(vector, [K, K + K * d])
    weights = np.exp(log_weights - log_weights.max())
    weights /= weights.sum()
    cov_part = cov_part.reshape(np.shape(like.covariances))
    if ctype.block == "matrix":
        diag = np.diagonal(cov_part, axis1=-2, axis2=-1)
        chol = np.tril(cov_part + _on_diagonal(np.exp(diag) - diag))
        cov = chol @ np.swapaxes(chol, -1, -2)
    else:
        cov = np.exp(cov_part)
    means = means.reshape(K, d)
    return GaussianState(weights, means, cov, precision_cholesky(cov, covariance_type, reg_covar))


def _on_diagonal(values: np.ndarray) -> np.ndarray:
    """Matrices (..., d, d) with ``values`` (..., d) on the diagonal, zeros elsewhere."""
    return values[..., :, None] * np.eye(values.shape[-1])


def extrapolate(p: np.ndarray, fp: np.ndarray, ffp: np.ndarray, step_max: float):
    """The S3 jump from p given F(p) and F(F(p)) (vectors of :func:`to_vector`).

    Returns
    -------
    point : ndarray, the jump (``ffp`` itself when α = 1)
    alpha : float, the steplength used, in [1, step_max]
    """
    r = fp - p
    v = ffp - 2.0 * fp + p
    norm_v = np.linalg.norm(v)
    if not np.isfinite(norm_v) or norm_v == 0.0:
        return ffp, 1.0
    alpha = float(np.clip(np.linalg.norm(r) / norm_v, 1.0, step_max))
    if alpha == 1.0:
        return ffp, 1.0
    return p + 2.0 * alpha * r + alpha**2 * v, alpha
