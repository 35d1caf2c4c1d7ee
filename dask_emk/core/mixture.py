"""The mixture's parameters as the kernels take them, and the dense E-step.

Everything here works on one block of whole rows held in memory and imports
numpy only; the Dask orchestration lives in :mod:`dask_emk.engine.reduction`.
The E-step of a block (:mod:`dask_emk.core.estep`) cuts it into sub-blocks
and computes each with the dense E-step here or with the sparse one
(:mod:`dask_emk.core.sparse`), as :class:`EStepOptions` says.

Notation: a block ``X`` of shape (n, d), K components with
means ``mu`` (K, d), log mixing weights (K,), and the Cholesky factor of the
precision in the covariance type's moment shape
(:meth:`dask_emk.core.covariance.CovarianceType.moment_shape`: ``shared`` holds
one value per component). What differs between covariance types comes from
their entry in :data:`dask_emk.core.covariance.COVARIANCE_TYPES`.

Rows are shifted by one reference point ``origin`` (d,) before any product, so
a large common offset (say 1e4) cancels exactly instead of costing digits.
All arithmetic is float64 whatever the block dtype.

The dense E-step evaluates all K log-densities of every row with two GEMMs
on quadratic features Φ (:func:`quadratic_features`): one for the
log-densities (:func:`weighted_log_prob`), one for the moments
(:func:`raw_moments`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from dask_emk.core import loops
from dask_emk.core.blocks import (
    SUB_BLOCK_BYTES,
    Scratch,
    buffer,
    shift_block,
    squared_distances,
    sub_blocks,
)
from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.estep_options import (  # noqa: F401 (re-exported)
    DEFAULT_ESTEP,
    ESTEP_PATHS,
    SCREEN_FLOAT32_CHOICES,
    EStepOptions,
)


@dataclass(frozen=True, eq=False)
class MixtureParams:
    """Current mixture parameters as the kernels need them (all float64), and
    how their E-step is computed.

    Compared by identity (``eq=False``): the sparse E-step keeps its record
    of a pass per parameter set (:func:`dask_emk.core.sparse.sparse_state`).

    Attributes
    ----------
    means : ndarray of shape (K, d)
    log_weights : ndarray of shape (K,)
    precisions_cholesky : ndarray, moment shape of the covariance type (module docstring)
    covariance_type : str
    origin : ndarray of shape (d,)
        Reference point subtracted from every row before any product.
    estep : EStepOptions
    """

    means: np.ndarray
    log_weights: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str
    origin: np.ndarray
    estep: EStepOptions = DEFAULT_ESTEP

    @cached_property
    def shifted_means(self) -> np.ndarray:
        return self.means - self.origin

    @cached_property
    def log_peak(self) -> np.ndarray:
        """log π_k − (d/2) log 2π + log det U_k, shape (K,): each log-density's maximum."""
        d = self.means.shape[1]
        ctype = COVARIANCE_TYPES[self.covariance_type]
        log_det = ctype.log_det_cholesky(self.precisions_cholesky, d)
        peak = -0.5 * d * math.log(2.0 * math.pi) + log_det + self.log_weights
        return np.broadcast_to(peak, self.log_weights.shape).copy()

    @cached_property
    def log_prob_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with log π_k N(y | μ_k, Σ_k) = Φ(y) · A[:, k] + b_k.

        Folds −½ and the normalising constants into :func:`quadratic_coefficients`
        so the E-step is one GEMM and one add; computed once per parameter set.
        """
        C, const = quadratic_coefficients(self)
        return -0.5 * C, self.log_peak - 0.5 * const


def n_quadratic(d: int, covariance_type: str) -> int:
    """Number of quadratic columns q in :func:`quadratic_features` (whitened: d, for Y U)."""
    ctype = COVARIANCE_TYPES[covariance_type]
    return d if ctype.whitened else ctype.block_size(d)


def quadratic_features(
    Y: np.ndarray, covariance_type: str, scratch: Scratch | None = None
) -> np.ndarray:
    """Φ(y) = [quadratic terms of y, y], shape (n, q + d).

    The quadratic terms are ‖y‖² (scalar blocks: spherical, shared; q = 1),
    y² (diagonal: diag; q = d) or the upper triangle of y yᵀ in
    ``np.triu_indices`` order (matrix: full; q = d(d+1)/2). Every
    Mahalanobis distance is then one GEMM Φ C and every second moment one
    GEMM Rᵀ Φ, which halves the work of the full case against K separate
    d×d products and keeps the data in cache.
    """
    n, d = Y.shape
    q = n_quadratic(d, covariance_type)
    # Built feature-major (q + d, n) and returned as its transpose: each
    # feature is then one contiguous row, and BLAS takes either orientation.
    phi_t = buffer(scratch, "phi", (q + d, n))
    y_t = phi_t[q:]
    y_t[...] = Y.T
    block = COVARIANCE_TYPES[covariance_type].block
    if block == "diagonal":
        np.multiply(y_t, y_t, out=phi_t[:q])
    elif block == "matrix":
        loops.upper_products(y_t, phi_t)
    else:
        np.einsum("ji,ji->i", y_t, y_t, out=phi_t[0])
    return phi_t.T


def quadratic_coefficients(params: MixtureParams) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients with maha_k(y) = Φ(y) · C[:, k] + const[k].

    Returns
    -------
    C : ndarray of shape (q + d, K)
    const : ndarray of shape (K,)
    """
    M, U = params.shifted_means, params.precisions_cholesky
    block = COVARIANCE_TYPES[params.covariance_type].block
    if block == "matrix":
        d = M.shape[1]
        precision = np.einsum("kij,klj->kil", U, U)
        rows, cols = np.triu_indices(d)
        quad = precision[:, rows, cols] * np.where(rows == cols, 1.0, 2.0)
        prec_m = np.einsum("kij,kj->ki", precision, M)
        const = np.einsum("ki,ki->k", M, prec_m)
    else:
        prec = U**2 if block == "diagonal" else (U**2)[:, None]
        prec_m = M * prec
        quad = prec
        const = (M * prec_m).sum(axis=1)
    return np.concatenate([quad, -2.0 * prec_m], axis=1).T, const


def weighted_log_prob(
    Y: np.ndarray,
    params: MixtureParams,
    scratch: Scratch | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """log π_k + log N(y | μ_k, Σ_k) of shifted rows Y, shape (K, n) (into
    ``out`` if given).

    Returns
    -------
    weighted : ndarray of shape (K, n)
        Component-major, so reductions over components run along contiguous rows.
    phi : ndarray of shape (n, q + d) or None
        The features of :func:`quadratic_features` (None for whitened types:
        tied), reused by the M-step statistics.
    """
    peak = params.log_peak[:, None]
    if COVARIANCE_TYPES[params.covariance_type].whitened:
        U = params.precisions_cholesky
        weighted = squared_distances(Y @ U, params.shifted_means @ U).T
        weighted = np.multiply(weighted, -0.5, out=weighted if out is None else out)
        weighted += peak
        return weighted, None
    phi = quadratic_features(Y, params.covariance_type, scratch)
    A, b = params.log_prob_coefficients
    weighted = buffer(scratch, "weighted", (A.shape[1], Y.shape[0])) if out is None else out
    if A.shape[0] >= params.estep.wide_features:
        # (n, K) is BLAS's fast output orientation for many features (~25% on
        # the full GEMM); one transposed copy then gives the component-major
        # layout. With few features the copy costs more than it saves.
        by_row = np.matmul(phi, A, out=buffer(scratch, "by_row", (Y.shape[0], A.shape[1])))
        weighted[...] = by_row.T
    else:
        np.matmul(A.T, phi.T, out=weighted)
    weighted += b[:, None]
    # Rounding in the expansion can put a row a hair inside distance zero.
    np.minimum(weighted, peak, out=weighted)
    return weighted, phi


def responsibilities(
    Y: np.ndarray, params: MixtureParams, scratch: Scratch | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """log p(y) and responsibilities, in log space throughout (logsumexp).

    Returns
    -------
    log_prob_norm : ndarray of shape (n,)
        log p(x_i); not finite where the row is not finite.
    resp : ndarray of shape (K, n)
        Responsibilities, component-major.
    phi : ndarray of shape (n, q + d) or None
        See :func:`weighted_log_prob`.
    """
    weighted, phi = weighted_log_prob(Y, params, scratch)
    top = weighted.max(axis=0)
    with np.errstate(invalid="ignore"):
        weighted -= top
        np.exp(weighted, out=weighted)
        total = weighted.sum(axis=0)
        weighted /= total
    return top + np.log(total), weighted, phi


def moment_stats(
    Y: np.ndarray,
    resp: np.ndarray,
    weight: np.ndarray | None,
    M: np.ndarray,
    covariance_type: str,
    phi: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Responsibility-weighted moments of one block about each component's c_k.

    Parameters
    ----------
    Y : ndarray of shape (n, d)
        Rows shifted by the reference origin.
    resp : ndarray of shape (K, n)
        Responsibilities (columns sum to one).
    weight : ndarray of shape (n,) or None
        Sample weights; None means all ones.
    M : ndarray of shape (K, d)
        Component reference points c_k shifted by the origin.
    covariance_type : str
    phi : ndarray of shape (n, q + d), optional
        :func:`quadratic_features` of Y if already computed.

    Returns
    -------
    dict with ``N`` (K,), ``S`` (K, d) = Σ w r (y − m_k), and ``Q`` in the
    moment shape of the covariance type: (K, d, d) full, (d, d) tied (summed
    over components), (K, d) diag, (K,) spherical and shared.
    """
    return central_moments(raw_moments(Y, resp, weight, covariance_type, phi), M, covariance_type)


def raw_moments(
    Y: np.ndarray,
    resp: np.ndarray,
    weight: np.ndarray | None,
    covariance_type: str,
    phi: np.ndarray | None = None,
    scratch: Scratch | None = None,
) -> dict[str, np.ndarray]:
    """Responsibility-weighted moments about the reference origin (additive).

    Sub-blocks add these up; :func:`central_moments` turns the total into
    moments about each c_k once per block, not once per sub-block.

    Returns
    -------
    dict with ``N`` (K,) and, for whitened types (tied), ``SY`` (K, d) = Σ w r y
    and ``YY`` (d, d) = Σ w y yᵀ (Σ_k r = 1 makes one GEMM do for all
    components); otherwise ``raw`` (K, q + d) = Σ w r Φ(y).
    """
    wr = resp
    if weight is not None:
        wr = np.multiply(resp, weight[None, :], out=buffer(scratch, "wr", resp.shape))
    N = wr.sum(axis=1)
    if COVARIANCE_TYPES[covariance_type].whitened:
        wY = Y if weight is None else Y * weight[:, None]
        return {"N": N, "SY": wr @ Y, "YY": wY.T @ Y}
    if phi is None:
        phi = quadratic_features(Y, covariance_type, scratch)
    return {"N": N, "raw": wr @ phi}


def central_moments(raw: dict, M: np.ndarray, covariance_type: str) -> dict:
    """``N``, ``S`` and ``Q`` about each c_k (rows of M) from :func:`raw_moments`."""
    K, d = M.shape
    N = raw["N"]
    ctype = COVARIANCE_TYPES[covariance_type]
    if ctype.whitened:
        SY = raw["SY"]
        cross = M.T @ SY
        Q = raw["YY"] - cross - cross.T + (M.T * N) @ M
        return {"N": N, "S": SY - N[:, None] * M, "Q": Q}
    q = raw["raw"].shape[1] - d
    SY, A = raw["raw"][:, q:], raw["raw"][:, :q]
    S = SY - N[:, None] * M
    if ctype.block == "matrix":
        rows, cols = np.triu_indices(d)
        second = np.empty((K, d, d))
        second[:, rows, cols] = A
        second[:, cols, rows] = A
        cross = np.einsum("ki,kj->kij", M, SY)
        outer = np.einsum("ki,kj->kij", M, M)
        Q = second - cross - cross.transpose(0, 2, 1) + N[:, None, None] * outer
        return {"N": N, "S": S, "Q": Q}
    if ctype.block == "diagonal":
        Q = A - 2.0 * M * SY + N[:, None] * M * M
    else:
        Q = A[:, 0] - 2.0 * (M * SY).sum(axis=1) + N * (M * M).sum(axis=1)
    np.maximum(Q, 0.0, out=Q)
    return {"N": N, "S": S, "Q": Q}


def mixture_sub_blocks(
    n: int, d: int, covariance_type: str, n_components: int, nbytes: int = SUB_BLOCK_BYTES
):
    """:func:`sub_blocks` of about ``nbytes`` for one row's features Φ and K log-densities."""
    return sub_blocks(n, n_quadratic(d, covariance_type) + d + n_components, nbytes)


def add_stats(total: dict | None, part: dict) -> dict:
    """Elementwise sum of two statistics dicts (None is the empty sum)."""
    if total is None:
        return part
    return {name: total[name] + part[name] for name in total}


def dense_stats(X, weight, params, moment_type: str, softness: bool, scratch: Scratch) -> dict:
    """Statistics of one dense sub-block (:func:`dask_emk.core.estep.estep_stats`)."""
    Y = shift_block(X, params.origin, scratch)
    # NaN/inf rows turn into NaN here by design: counted and dropped just below.
    with np.errstate(invalid="ignore", over="ignore"):
        log_prob_norm, resp, phi = responsibilities(Y, params, scratch)
    finite = np.isfinite(log_prob_norm)
    nonfinite = Y.shape[0] - int(finite.sum())
    if nonfinite:
        Y, resp, log_prob_norm = Y[finite], resp[:, finite], log_prob_norm[finite]
        phi = None if phi is None else phi[finite]
        weight = None if weight is None else weight[finite]
    if moment_type != params.covariance_type:
        phi = None  # features of another covariance type: formed by raw_moments
    stats = raw_moments(Y, resp, weight, moment_type, phi, scratch)
    w_total = float(Y.shape[0]) if weight is None else float(weight.sum())
    loglik = log_prob_norm.sum() if weight is None else log_prob_norm @ weight
    stats.update(n=np.float64(w_total), loglik=np.float64(loglik), nonfinite=np.float64(nonfinite))
    if softness:
        hard = resp.max(axis=0, initial=0.0)
        stats["soft"] = np.float64((1.0 - hard).sum() if weight is None else (1.0 - hard) @ weight)
    return stats


def dense_rows(X: np.ndarray, params: MixtureParams, kind: str, scratch: Scratch) -> np.ndarray:
    """:func:`dask_emk.core.estep.mixture_rows`'s ``kind`` of one dense sub-block."""
    Y = shift_block(X, params.origin, scratch)
    with np.errstate(invalid="ignore", over="ignore"):
        if kind == "label":
            return weighted_log_prob(Y, params, scratch)[0].argmax(axis=0)
        log_prob_norm, resp, _ = responsibilities(Y, params, scratch)
        return log_prob_norm if kind == "log_prob" else resp.T
