"""Sufficient statistics: their layout as one flat vector, and the M-step.

A block's statistics travel through the Dask tree reduction as one float64
row vector, so combining two blocks is plain addition (``Array.sum``).
:class:`StatsLayout` names the pieces of that vector; :func:`m_step` turns the
summed statistics into new parameters (all tiny K×d-sized numpy work).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

DEGENERATE_MESSAGE = (
    "Fitting the mixture model failed because some components have ill-defined "
    "empirical covariance (for instance caused by singleton or collapsed samples). "
    "Try to decrease the number of components, increase reg_covar (it is {reg}), "
    "or scale the input data."
)


class CollapsedComponentWarning(UserWarning):
    """A component's covariance is held up by ``reg_covar`` alone (collapsed or empty)."""


@dataclass(frozen=True)
class StatsLayout:
    """Names and shapes of the statistics packed into one flat vector.

    Parameters
    ----------
    shapes : dict of name -> shape
    """

    shapes: dict

    @classmethod
    def mixture(cls, n_components: int, n_features: int, covariance_type: str) -> StatsLayout:
        K, d = n_components, n_features
        q_shape = {
            "full": (K, d, d),
            "tied": (d, d),
            "diag": (K, d),
            "spherical": (K,),
            "shared": (K,),
        }[covariance_type]
        return cls({"n": (), "loglik": (), "nonfinite": (), "N": (K,), "S": (K, d), "Q": q_shape})

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def pack(self, stats: dict) -> np.ndarray:
        """Flatten a dict of statistics into a (1, size) float64 row."""
        parts = [np.asarray(stats[name], dtype=np.float64).ravel() for name in self.shapes]
        return np.concatenate(parts)[None, :]

    def unpack(self, vector: np.ndarray) -> dict:
        """Inverse of :meth:`pack` for a (size,) or (1, size) vector."""
        flat = np.asarray(vector, dtype=np.float64).ravel()
        out, start = {}, 0
        for name, shape in self.shapes.items():
            stop = start + math.prod(shape)
            out[name] = flat[start:stop].reshape(shape)
            start = stop
        return out


@dataclass
class GaussianState:
    """Mixture parameters in float64, in scikit-learn's shapes."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray


def m_step(
    stats: dict,
    centers: np.ndarray,
    covariance_type: str,
    reg_covar: float,
    *,
    eps: float,
    variance: float | None = None,
) -> GaussianState:
    """New parameters from summed statistics taken about ``centers``.

    Parameters
    ----------
    stats : dict
        Summed statistics (``N`` (K,), ``S`` (K, d), ``Q``), see
        :func:`dask_emk.kernels.moment_stats`.
    centers : ndarray of shape (K, d)
        The reference c_k each component's moments were taken about.
    covariance_type : str
    reg_covar : float
        Added to the diagonal of every covariance (not to a fixed variance).
    eps : float
        Floor added to the masses as scikit-learn does (10 × machine epsilon
        of the data dtype) so empty components give finite means.
    variance : float, optional
        Fixed shared variance (``covariance_type='shared'`` only).

    Returns
    -------
    GaussianState
    """
    N, S, Q = stats["N"], stats["S"], stats["Q"]
    nk = N + eps
    delta = S / nk[:, None]
    means = centers + delta
    weights = nk / nk.sum()
    d = S.shape[1]
    if covariance_type == "full":
        cov = Q - np.einsum("ki,kj->kij", S, delta)
        cov -= np.einsum("ki,kj->kij", delta, S)
        cov += N[:, None, None] * np.einsum("ki,kj->kij", delta, delta)
        cov /= nk[:, None, None]
        _warn_if_floored(np.linalg.eigvalsh(cov).min(axis=1), weights, reg_covar)
        cov += reg_covar * np.eye(d)
    elif covariance_type == "tied":
        cov = Q - S.T @ delta - delta.T @ S + (delta.T * N) @ delta
        cov /= nk.sum()
        _warn_if_floored(np.linalg.eigvalsh(cov).min(keepdims=True), None, reg_covar)
        cov += reg_covar * np.eye(d)
    else:
        diag = Q - 2.0 * delta * S + N[:, None] * delta**2 if Q.ndim == 2 else None
        if covariance_type == "diag":
            cov = diag / nk[:, None]
            _warn_if_floored(cov.min(axis=1), weights, reg_covar)
            cov += reg_covar
        else:
            scatter = Q - 2.0 * (delta * S).sum(axis=1) + N * (delta**2).sum(axis=1)
            if covariance_type == "spherical":
                cov = scatter / (nk * d)
                _warn_if_floored(cov, weights, reg_covar)
                cov += reg_covar
            elif variance is not None:
                cov = np.asarray(float(variance))
            else:
                cov = np.asarray(scatter.sum() / (nk.sum() * d))
                _warn_if_floored(cov.reshape(1), None, reg_covar)
                cov += reg_covar
    learned = covariance_type != "shared" or variance is None
    if covariance_type in ("diag", "spherical", "shared") and learned:
        _check_above_roundoff(cov, weights, means, reg_covar)
    return GaussianState(weights, means, cov, precision_cholesky(cov, covariance_type, reg_covar))


def _warn_if_floored(smallest, weights, reg_covar: float) -> None:
    """Warn when reg_covar is all that keeps a covariance positive definite.

    Parameters
    ----------
    smallest : ndarray of shape (K,) or (1,)
        Smallest variance (eigenvalue, diagonal entry or σ²) of each
        covariance before ``reg_covar`` is added.
    weights : ndarray of shape (K,) or None
        Mixture weights; None for one pooled covariance (the message then says so).
    reg_covar : float
        With 0 nothing is floored (a collapse raises in
        :func:`precision_cholesky` / :func:`_check_above_roundoff` instead).

    Notes
    -----
    A component that collapsed onto one point (duplicate rows) or lost its
    samples has a variance of zero up to round-off; ``reg_covar`` then keeps
    the fit finite, but the component is no longer a Gaussian of the data,
    which the user should hear about rather than find out from the numbers.
    The test is "below reg_covar": then the regulariser is at least half of
    the covariance in some direction.
    """
    if reg_covar <= 0:
        return
    floored = np.flatnonzero(smallest < reg_covar)
    if floored.size == 0:
        return
    if weights is None:
        what = "the pooled covariance has"
    else:
        # No per-iteration numbers in the text: Python's default filter then
        # shows the warning once per fit instead of once per EM iteration.
        what = f"component(s) {floored.tolist()} have"
    warnings.warn(
        f"{what} a variance below reg_covar={reg_covar:g} in some direction: they "
        "collapsed onto a single point or a flat set (duplicate rows, a feature that "
        "is constant within the component) or lost their samples, and reg_covar alone "
        "keeps the covariance positive definite. Try fewer components, another "
        "initialisation, or scale the data; raising reg_covar makes the floor explicit.",
        CollapsedComponentWarning,
        stacklevel=3,
    )


def _check_above_roundoff(cov, weights, means, reg_covar: float) -> None:
    """Raise for variances that the E-step's round-off cannot tell from zero.

    The kernels form squared distances about the mixture mean c, so a collapsed
    component (duplicate points, reg_covar=0) comes back not as 0 but as noise
    of about eps·‖μ_k − c‖²; scikit-learn's ``<= 0`` test would let it through.
    """
    center = weights @ means
    spread = weights @ ((means - center) ** 2).mean(axis=1)
    if np.any(cov <= 256 * np.finfo(np.float64).eps * spread):
        raise ValueError(DEGENERATE_MESSAGE.format(reg=reg_covar))


def precision_cholesky(cov: np.ndarray, covariance_type: str, reg_covar: float = 0.0) -> np.ndarray:
    """Cholesky factor of the precision for each covariance, as scikit-learn.

    For ``shared`` the scalar is broadcast to no shape change (0-d in, 0-d out).

    Raises
    ------
    ValueError
        If a covariance is not positive definite; the message suggests
        raising ``reg_covar``.
    """
    message = DEGENERATE_MESSAGE.format(reg=reg_covar)
    if covariance_type in ("full", "tied"):
        mats = cov if covariance_type == "full" else cov[None]
        out = np.empty_like(mats)
        for k, mat in enumerate(mats):
            try:
                chol = np.linalg.cholesky(mat)
            except np.linalg.LinAlgError:
                raise ValueError(message) from None
            out[k] = solve_triangular(chol, np.eye(mat.shape[0]), lower=True).T
        return out if covariance_type == "full" else out[0]
    if not np.all(np.isfinite(cov)) or np.any(cov <= 0.0):
        raise ValueError(message)
    return 1.0 / np.sqrt(cov)


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Precision matrices (or vectors) from their Cholesky factors."""
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", prec_chol, prec_chol)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def covariances_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances from precisions (inverse matrices or reciprocals)."""
    if covariance_type in ("full", "tied"):
        return np.linalg.inv(precisions)
    return 1.0 / precisions


def cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Upper Cholesky factor U with precision = U Uᵀ, as scikit-learn's.

    Raises
    ------
    ValueError
        If a precision matrix is not symmetric positive definite.
    """
    if covariance_type not in ("full", "tied"):
        if np.any(precisions <= 0.0) or not np.all(np.isfinite(precisions)):
            raise ValueError(
                f"precisions_init for covariance_type={covariance_type!r} must be "
                "strictly positive and finite; pass 1 / variance for each component."
            )
        return np.sqrt(precisions)
    mats = precisions if covariance_type == "full" else precisions[None]
    out = np.empty_like(mats)
    for k, mat in enumerate(mats):
        if not np.allclose(mat, mat.T):
            raise ValueError(
                f"precisions_init[{k}] is not symmetric; pass symmetric positive-definite "
                "precision matrices (the inverse of covariance matrices)."
            )
        try:
            lower = np.linalg.cholesky(mat[::-1, ::-1])
        except np.linalg.LinAlgError:
            raise ValueError(
                f"precisions_init[{k}] is not positive definite; pass symmetric "
                "positive-definite precision matrices (the inverse of covariance "
                "matrices), e.g. np.linalg.inv(covariances)."
            ) from None
        out[k] = lower[::-1, ::-1]
    return out if covariance_type == "full" else out[0]
