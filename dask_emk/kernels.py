"""Per-block numpy kernels: E-step statistics and hard assignments.

Everything here works on one block of whole rows held in memory and imports
numpy only; the Dask orchestration lives in :mod:`dask_emk.engine`.

Notation (DESIGN.md §2): a block ``X`` of shape (n, d), K components with
means ``mu`` (K, d), log mixing weights (K,), and the Cholesky factor of the
precision whose shape depends on the covariance type:

=============  ==================
``full``       (K, d, d)
``tied``       (d, d)
``diag``       (K, d)
``spherical``  (K,)
``shared``     (K,) with one value
=============  ==================

Rows are shifted by one reference point ``center`` (d,) before any product, so
a large common offset (say 1e4) cancels exactly instead of costing digits.
All arithmetic is float64 whatever the block dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical", "shared")


@dataclass(frozen=True)
class MixtureParams:
    """Current mixture parameters as the kernels need them (all float64).

    Attributes
    ----------
    means : ndarray of shape (K, d)
    log_weights : ndarray of shape (K,)
    precisions_cholesky : ndarray, shape by covariance type (module docstring)
    covariance_type : str
    center : ndarray of shape (d,)
        Reference point subtracted from every row before any product.
    """

    means: np.ndarray
    log_weights: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str
    center: np.ndarray

    @property
    def shifted_means(self) -> np.ndarray:
        return self.means - self.center


def shift_block(X: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Return ``X - center`` as a new float64 array of shape (n, d)."""
    Y = np.asarray(X, dtype=np.float64).copy()
    Y -= center
    return Y


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, d: int) -> np.ndarray:
    """Log-determinant of each precision Cholesky factor, shape (K,) or ().

    Equals minus half the log-determinant of the covariance.
    """
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diagonal(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return d * np.log(prec_chol)


def squared_distances(Y: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, K) between rows of Y and rows of M.

    One GEMM (‖y‖² − 2 y·m + ‖m‖²), clipped at zero against rounding.
    """
    dist = np.einsum("ij,ij->i", Y, Y)[:, None] - 2.0 * (Y @ M.T)
    dist += np.einsum("ij,ij->i", M, M)[None, :]
    np.maximum(dist, 0.0, out=dist)
    return dist


def mahalanobis(Y: np.ndarray, params: MixtureParams) -> tuple[np.ndarray, np.ndarray | None]:
    """Squared Mahalanobis distances (n, K) of shifted rows Y to each component.

    Returns
    -------
    maha : ndarray of shape (n, K)
    Y2 : ndarray of shape (n, d) or None
        ``Y**2`` when it was formed (diag), so the M-step statistics reuse it.
    """
    M = params.shifted_means
    U = params.precisions_cholesky
    ct = params.covariance_type
    if ct in ("spherical", "shared"):
        return squared_distances(Y, M) * (U**2)[None, :], None
    if ct == "diag":
        P = U**2
        Y2 = Y * Y
        # One GEMM over [Y², Y] against [P; −2 M P]: Σ_j P_kj (y_j − m_kj)².
        coef = np.concatenate([P.T, -2.0 * (M * P).T], axis=0)
        maha = np.concatenate([Y2, Y], axis=1) @ coef
        maha += (M * M * P).sum(axis=1)[None, :]
        np.maximum(maha, 0.0, out=maha)
        return maha, Y2
    if ct == "tied":
        YU = Y @ U
        return squared_distances(YU, M @ U), None
    # full: one GEMM against all K factors stacked side by side, (d, K*d).
    K, d = M.shape
    stacked = np.ascontiguousarray(U.transpose(1, 0, 2).reshape(d, K * d))
    Z = (Y @ stacked).reshape(Y.shape[0], K, d)
    Z -= np.einsum("kd,kde->ke", M, U)[None, :, :]
    return np.einsum("nkd,nkd->nk", Z, Z), None


def log_resp(
    Y: np.ndarray, params: MixtureParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Log-likelihood per row and log responsibilities, in log space throughout.

    Returns
    -------
    log_prob_norm : ndarray of shape (n,)
        log p(x_i); non-finite where the row is not finite.
    log_resp : ndarray of shape (n, K)
    Y2 : ndarray of shape (n, d) or None
        See :func:`mahalanobis`.
    """
    d = Y.shape[1]
    maha, Y2 = mahalanobis(Y, params)
    log_det = log_det_cholesky(params.precisions_cholesky, params.covariance_type, d)
    weighted = -0.5 * (d * math.log(2.0 * math.pi) + maha) + log_det + params.log_weights
    top = weighted.max(axis=1)
    with np.errstate(invalid="ignore"):
        weighted -= top[:, None]
        log_norm = np.log(np.exp(weighted).sum(axis=1))
        weighted -= log_norm[:, None]
    return top + log_norm, weighted, Y2


def moment_stats(
    Y: np.ndarray,
    resp: np.ndarray,
    weight: np.ndarray | None,
    M: np.ndarray,
    covariance_type: str,
    Y2: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Responsibility-weighted moments of one block about each component mean.

    Parameters
    ----------
    Y : ndarray of shape (n, d)
        Rows shifted by the reference center.
    resp : ndarray of shape (n, K)
        Responsibilities (rows sum to one).
    weight : ndarray of shape (n,) or None
        Sample weights; None means all ones.
    M : ndarray of shape (K, d)
        Component reference points c_k shifted by the center.
    covariance_type : str
    Y2 : ndarray of shape (n, d), optional
        ``Y**2`` if already computed.

    Returns
    -------
    dict with ``N`` (K,), ``S`` (K, d) = Σ w r (y − m_k), and ``Q``:
    (K, d, d) full, (d, d) tied (summed over components), (K, d) diag,
    (K,) spherical/shared.
    """
    wr = resp if weight is None else resp * weight[:, None]
    N = wr.sum(axis=0)
    if covariance_type == "full":
        S = wr.T @ Y - N[:, None] * M
        Q = np.empty((M.shape[0], Y.shape[1], Y.shape[1]))
        for k in range(M.shape[0]):
            D = Y - M[k]
            Q[k] = (D * wr[:, k : k + 1]).T @ D
        return {"N": N, "S": S, "Q": Q}
    if covariance_type == "tied":
        SY = wr.T @ Y
        wY = Y if weight is None else Y * weight[:, None]
        # Σ_k Σ_i w r (y−m_k)(y−m_k)ᵀ, using Σ_k r_ik = 1 for a single GEMM.
        cross = M.T @ SY
        Q = wY.T @ Y - cross - cross.T + (M.T * N) @ M
        return {"N": N, "S": SY - N[:, None] * M, "Q": Q}
    if Y2 is None:
        Y2 = Y * Y
    both = wr.T @ np.concatenate([Y, Y2], axis=1)
    d = Y.shape[1]
    SY, SY2 = both[:, :d], both[:, d:]
    Qdiag = SY2 - 2.0 * M * SY + N[:, None] * M * M
    np.maximum(Qdiag, 0.0, out=Qdiag)
    Q = Qdiag if covariance_type == "diag" else Qdiag.sum(axis=1)
    return {"N": N, "S": SY - N[:, None] * M, "Q": Q}


def estep_stats(X: np.ndarray, weight: np.ndarray | None, params: MixtureParams) -> dict:
    """E-step statistics of one block (DESIGN.md §2).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    params : MixtureParams

    Returns
    -------
    dict with ``n`` (Σ w), ``loglik`` (Σ w log p(x)), ``nonfinite`` (number
    of rows whose log-likelihood is not finite, i.e. rows holding NaN/inf;
    they are left out of every other statistic), and ``N``, ``S``, ``Q`` as
    in :func:`moment_stats` about the current means.
    """
    Y = shift_block(X, params.center)
    # NaN/inf rows turn into NaN here by design: counted and dropped just below.
    with np.errstate(invalid="ignore", over="ignore"):
        log_prob_norm, lresp, Y2 = log_resp(Y, params)
    finite = np.isfinite(log_prob_norm)
    nonfinite = Y.shape[0] - int(finite.sum())
    if nonfinite:
        Y, lresp, log_prob_norm = Y[finite], lresp[finite], log_prob_norm[finite]
        Y2 = None if Y2 is None else Y2[finite]
        weight = None if weight is None else weight[finite]
    resp = np.exp(lresp)
    stats = moment_stats(Y, resp, weight, params.shifted_means, params.covariance_type, Y2)
    w_total = float(Y.shape[0]) if weight is None else float(weight.sum())
    loglik = log_prob_norm.sum() if weight is None else log_prob_norm @ weight
    stats.update(n=np.float64(w_total), loglik=np.float64(loglik), nonfinite=np.float64(nonfinite))
    return stats


def nearest(Y: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest row of M for each row of Y.

    Returns
    -------
    labels : ndarray of shape (n,), int64
    min_dist : ndarray of shape (n,)
    """
    dist = squared_distances(Y, M)
    labels = dist.argmin(axis=1)
    return labels, dist[np.arange(Y.shape[0]), labels]


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    """Hard responsibilities (n, k) from integer labels (n,)."""
    resp = np.zeros((labels.shape[0], k))
    resp[np.arange(labels.shape[0]), labels] = 1.0
    return resp


def resp_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    resp: np.ndarray,
    center: np.ndarray,
    covariance_type: str,
) -> dict:
    """Statistics of one block for given responsibilities (initialisation).

    Moments are taken about ``center`` for every component, so the M-step
    reads means as center + S/N.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    resp : ndarray of shape (n, K)
    center : ndarray of shape (d,)
    covariance_type : str
    """
    Y = shift_block(X, center)
    K = resp.shape[1]
    stats = moment_stats(Y, resp, weight, np.zeros((K, Y.shape[1])), covariance_type)
    w_total = float(Y.shape[0]) if weight is None else float(weight.sum())
    nonfinite = Y.shape[0] - int(np.isfinite(Y).all(axis=1).sum())
    stats.update(n=np.float64(w_total), loglik=np.float64(0.0), nonfinite=np.float64(nonfinite))
    return stats
