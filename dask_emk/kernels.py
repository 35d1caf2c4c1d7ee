"""Per-block numpy kernels: E-step statistics and hard assignments.

Everything here works on one block of whole rows held in memory and imports
numpy (and the compiled row loops of :mod:`dask_emk.loops`) only; the Dask
orchestration lives in :mod:`dask_emk.engine`.

Notation (DESIGN.md §2): a block ``X`` of shape (n, d), K components with
means ``mu`` (K, d), log mixing weights (K,), and the Cholesky factor of the
precision in the covariance type's moment shape
(:meth:`dask_emk.covariance.CovarianceType.moment_shape`: ``shared`` holds
one value per component). What differs between covariance types comes from
their entry in :data:`dask_emk.covariance.COVARIANCE_TYPES`.

Rows are shifted by one reference point ``center`` (d,) before any product, so
a large common offset (say 1e4) cancels exactly instead of costing digits.
All arithmetic is float64 whatever the block dtype, except the k-means
assignment's distance GEMM, which runs in the data's dtype as scikit-learn's
does (its sums are float64).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import loops
from .covariance import COVARIANCE_TYPES


@dataclass(frozen=True)
class MixtureParams:
    """Current mixture parameters as the kernels need them (all float64).

    Attributes
    ----------
    means : ndarray of shape (K, d)
    log_weights : ndarray of shape (K,)
    precisions_cholesky : ndarray, moment shape of the covariance type (module docstring)
    covariance_type : str
    center : ndarray of shape (d,)
        Reference point subtracted from every row before any product.
    """

    means: np.ndarray
    log_weights: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str
    center: np.ndarray

    @cached_property
    def shifted_means(self) -> np.ndarray:
        return self.means - self.center

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


class Scratch:
    """Reusable float64 work buffers for the sub-blocks of one kernel call.

    Fresh multi-MB temporaries per sub-block are served by ``mmap`` and
    page-faulted in every time (glibc's default; Dask's nanny even lowers the
    trim threshold): that tripled the E-step's time in a single-thread
    measurement (benchmarks/RESULTS.md). Buffers taken from here
    are overwritten by the next sub-block, so nothing built on them may be
    returned.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous float64 array of ``shape`` (contents undefined)."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size)
        return buffer[:size].reshape(shape)


def _buffer(scratch: Scratch | None, name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape) if scratch is None else scratch.get(name, shape)


def shift_block(X: np.ndarray, center: np.ndarray, scratch: Scratch | None = None) -> np.ndarray:
    """Return ``X - center`` as a float64 array of shape (n, d)."""
    return np.subtract(X, center, out=_buffer(scratch, "Y", X.shape), dtype=np.float64)


def squared_distances(Y: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, K) between rows of Y and rows of M.

    One GEMM (‖y‖² − 2 y·m + ‖m‖²), clipped at zero against rounding.
    """
    dist = np.einsum("ij,ij->i", Y, Y)[:, None] - 2.0 * (Y @ M.T)
    dist += np.einsum("ij,ij->i", M, M)[None, :]
    np.maximum(dist, 0.0, out=dist)
    return dist


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
    phi_t = _buffer(scratch, "phi", (q + d, n))
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
    Y: np.ndarray, params: MixtureParams, scratch: Scratch | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """log π_k + log N(y | μ_k, Σ_k) of shifted rows Y, shape (K, n).

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
        weighted *= -0.5
        weighted += peak
        return weighted, None
    phi = quadratic_features(Y, params.covariance_type, scratch)
    A, b = params.log_prob_coefficients
    weighted = _buffer(scratch, "weighted", (A.shape[1], Y.shape[0]))
    if A.shape[0] >= WIDE_FEATURES:
        # (n, K) is BLAS's fast output orientation for many features (~25% on
        # the full GEMM); one transposed copy then gives the component-major
        # layout. With few features the copy costs more than it saves.
        by_row = np.matmul(phi, A, out=_buffer(scratch, "by_row", (Y.shape[0], A.shape[1])))
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
        Rows shifted by the reference center.
    resp : ndarray of shape (K, n)
        Responsibilities (columns sum to one).
    weight : ndarray of shape (n,) or None
        Sample weights; None means all ones.
    M : ndarray of shape (K, d)
        Component reference points c_k shifted by the center.
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
    """Responsibility-weighted moments about the reference center (additive).

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
        wr = np.multiply(resp, weight[None, :], out=_buffer(scratch, "wr", resp.shape))
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


#: Feature count (q + d) from which the E-step GEMM is written row-major.
WIDE_FEATURES = 64

#: Rows per sub-block inside a kernel call: small enough that Φ stays in cache.
SUB_BLOCK_BYTES = 2**21


def sub_blocks(n: int, width: int):
    """Row slices of about SUB_BLOCK_BYTES of float64 each (at least one slice)."""
    step = max(64, SUB_BLOCK_BYTES // (8 * width))
    return [slice(s, s + step) for s in range(0, max(n, 1), step)]


def mixture_sub_blocks(n: int, d: int, covariance_type: str, n_components: int):
    """:func:`sub_blocks` sized for one row's features Φ and K log-densities."""
    return sub_blocks(n, n_quadratic(d, covariance_type) + d + n_components)


def add_stats(total: dict | None, part: dict) -> dict:
    """Elementwise sum of two statistics dicts (None is the empty sum)."""
    if total is None:
        return part
    return {name: total[name] + part[name] for name in total}


def estep_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    params: MixtureParams,
    moment_type: str | None = None,
    softness: bool = False,
) -> dict:
    """E-step statistics of one block (DESIGN.md §2).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    params : MixtureParams
    moment_type : str, optional
        Covariance type of the second moments ``Q`` (default: that of
        ``params``; the annealing asks for 'full' moments of 'shared'
        responsibilities).
    softness : bool
        Also return ``soft`` = Σ w (1 − max_k r_k), zero once assignments
        are hard.

    Returns
    -------
    dict with ``n`` (Σ w), ``loglik`` (Σ w log p(x)), ``nonfinite`` (number
    of rows whose log-likelihood is not finite, i.e. rows holding NaN/inf;
    they are left out of every other statistic), and ``N``, ``S``, ``Q`` as
    in :func:`moment_stats` about the current means.
    """
    d, ct = X.shape[1], moment_type or params.covariance_type
    total, scratch = None, Scratch()
    for rows in mixture_sub_blocks(X.shape[0], d, ct, params.means.shape[0]):
        w = None if weight is None else weight[rows]
        total = add_stats(total, _estep_sub_block(X[rows], w, params, ct, softness, scratch))
    stats = central_moments(total, params.shifted_means, ct)
    extra = ("n", "loglik", "nonfinite") + (("soft",) if softness else ())
    stats.update((name, total[name]) for name in extra)
    return stats


def _estep_sub_block(X, weight, params, moment_type, softness, scratch: Scratch) -> dict:
    Y = shift_block(X, params.center, scratch)
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
    n, d = X.shape
    K = resp.shape[1]
    total, scratch = None, Scratch()
    for rows in mixture_sub_blocks(n, d, covariance_type, K):
        Y = shift_block(X[rows], center, scratch)
        w = None if weight is None else weight[rows]
        total = add_stats(total, raw_moments(Y, resp[rows].T, w, covariance_type, None, scratch))
    stats = central_moments(total, np.zeros((K, d)), covariance_type)
    w_total = float(n) if weight is None else float(weight.sum())
    nonfinite = n - int(np.isfinite(X).all(axis=1).sum())
    stats.update(n=np.float64(w_total), loglik=np.float64(0.0), nonfinite=np.float64(nonfinite))
    return stats


def mixture_rows(X: np.ndarray, params: MixtureParams, kind: str) -> np.ndarray:
    """Per-row outputs of one block, computed in cache-sized sub-blocks.

    Memory stays a small multiple of the block: the features Φ of a whole
    block would be (q + d)/d times its size (70x for full covariance, d=32).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    params : MixtureParams
    kind : {'log_prob', 'resp', 'label'}

    Returns
    -------
    log p(x) (n,), responsibilities (n, K) or the most probable component
    (n,) int64; NaN (label 0) on rows that are not finite.
    """
    n, d = X.shape
    K = params.means.shape[0]
    shape = (n, K) if kind == "resp" else (n,)
    out = np.empty(shape, dtype=np.int64 if kind == "label" else np.float64)
    scratch = Scratch()
    for rows in mixture_sub_blocks(n, d, params.covariance_type, K):
        Y = shift_block(X[rows], params.center, scratch)
        with np.errstate(invalid="ignore", over="ignore"):
            if kind == "label":
                out[rows] = weighted_log_prob(Y, params, scratch)[0].argmax(axis=0)
            else:
                log_prob_norm, resp, _ = responsibilities(Y, params, scratch)
                out[rows] = log_prob_norm if kind == "log_prob" else resp.T
    return out


# --------------------------------------------------------------------------
# Hard assignment (k-means) and seeding kernels.


def assign_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    centers: np.ndarray,
    center: np.ndarray,
    n_far: int,
    moments: bool = False,
) -> dict:
    """Lloyd statistics of one block: nearest centre and what the update needs.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    centers : ndarray of shape (K, d)
        Current centres (float64).
    center : ndarray of shape (d,)
        Fixed reference point; rows and centres are shifted by it.
    n_far : int
        m, how many rows farthest from their centre to keep (for relocating
        empty clusters).
    moments : bool
        Also return the unweighted ``ysum`` and ``ysq`` (d,) of the shifted
        rows (the data variance behind scikit-learn's tolerance).

    Returns
    -------
    dict with ``nonfinite`` (rows holding NaN/inf, left out of the rest),
    ``count`` (number of finite rows), ``inertia`` (Σ w ‖x − c‖²), ``N`` (K,)
    weight per cluster, ``S`` (K, d) Σ w (x − center) per cluster, the
    farthest rows ``far_dist``, ``far_label``, ``far_weight`` (m,) and
    ``far_x`` (m, d) (unshifted, float64), sorted by :func:`farthest_order`,
    padded with ``far_dist = -inf``; with ``moments`` also ``ysum``, ``ysq``.
    """
    X, _, _, out = lloyd_assign(X, weight, centers, center, moments, n_far=n_far, rows=False)
    # Rows are kept unshifted so a relocated centre is exactly a data point.
    far_row = out.pop("far_row")
    kept = far_row[far_row >= 0]
    out["far_weight"] = np.zeros(n_far)
    out["far_weight"][: kept.size] = 1.0 if weight is None else np.asarray(weight)[kept]
    out["far_x"] = np.zeros((n_far, X.shape[1]))
    out["far_x"][: kept.size] = X[kept]
    out.update(count=X.shape[0] - out["nonfinite"])
    return out


def lloyd_assign(
    X: np.ndarray,
    weight: np.ndarray | None,
    centers: np.ndarray,
    center: np.ndarray,
    moments: bool = False,
    n_far: int = 0,
    rows: bool = True,
):
    """Nearest centre of every row and the per-cluster sums (compiled loop).

    Rows are shifted in the data's dtype by ``center`` rounded to that dtype
    (so float32 rows stay float32 and their distance GEMM single precision,
    as scikit-learn's); everything is summed in float64.

    Parameters
    ----------
    moments : bool
        Also sum the finite rows' unweighted ``ysum`` and ``ysq``.
    n_far : int
        m, how many finite rows farthest from their centre to keep.
    rows : bool
        Return the per-row labels and distances (False skips writing them).

    Returns
    -------
    X : ndarray of shape (n, d), the block as float32 or float64, C-ordered
    labels : ndarray of shape (n,), intp, or None without ``rows``
    min_dist : ndarray of shape (n,), ‖x − c‖² (NaN on non-finite rows), or None
    stats : dict with ``N`` (K,), ``S`` (K, d) about ``center``, ``inertia``
        and ``nonfinite``; with ``moments`` also the finite rows' unweighted
        ``ysum`` and ``ysq`` (d,) about ``center``; the ``n_far`` farthest
        rows' ``far_dist``, ``far_label`` and ``far_row`` (m,)
        (their index in the block), ordered by :func:`farthest_order`
        (farthest first, later rows first among ties), padded with
        ``far_dist = -inf`` and ``far_label = far_row = -1``
    """
    n, K, d = X.shape[0], centers.shape[0], X.shape[1]
    X = np.ascontiguousarray(X if X.dtype == np.float32 else X.astype(np.float64, copy=False))
    center_x = center.astype(X.dtype)
    shift = center_x.astype(np.float64)
    w = np.empty(0) if weight is None else np.ascontiguousarray(weight, dtype=np.float64)
    per_row = n if rows else 0
    labels, min_dist = np.empty(per_row, dtype=np.intp), np.empty(per_row)
    N, S = np.zeros(K), np.zeros((K, d))
    ysum, ysq = np.zeros(d if moments else 0), np.zeros(d if moments else 0)
    far = (
        np.full(n_far, -np.inf),
        np.full(n_far, -1, dtype=np.intp),
        np.full(n_far, -1, dtype=np.intp),
    )
    sub_rows = max(64, SUB_BLOCK_BYTES // (8 * max(d, K)))
    inertia, nonfinite = loops.lloyd_rows(
        X, center_x, centers - shift, w, (labels, min_dist), N, S, (ysum, ysq), far, sub_rows
    )
    delta = shift - center  # re-centre the sums from the dtype-rounded reference
    S += N[:, None] * delta
    stats = {"N": N, "S": S, "inertia": inertia, "nonfinite": nonfinite}
    if moments:
        count = n - nonfinite
        stats.update(ysum=ysum + count * delta, ysq=ysq + 2 * delta * ysum + count * delta**2)
    stats.update(far_dist=far[0][::-1], far_label=far[1][::-1], far_row=far[2][::-1])
    return (X, labels, min_dist, stats) if rows else (X, None, None, stats)


def farthest_order(dist: np.ndarray) -> np.ndarray:
    """Indices sorting ``dist`` descending, later positions first among ties.

    scikit-learn relocates empty clusters to the farthest points in
    decreasing distance; ``np.argpartition`` breaks its ties toward later
    samples, so do we (rows are kept in data order through the reduction).
    """
    position = np.arange(dist.shape[0])
    return np.lexsort((-position, -dist))


def merge_top(keys: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Merge top-m lists from several blocks into one.

    Parameters
    ----------
    keys : ndarray of shape (r, m)
        Each row sorted descending (block order along r, earliest first).
    *values : ndarrays of shape (r, m, ...)
        Carried along with the keys.

    Returns
    -------
    keys (m,) and each value (m, ...): the m largest keys, descending, ties
    resolved toward later blocks (as within a block).
    """
    r, m = keys.shape
    # Later blocks first, then a stable sort: among equal keys the later
    # block (and within it the later row) wins, as in farthest_order.
    flat = keys[::-1].reshape(-1)
    order = np.argsort(-flat, kind="stable")[:m]
    return (flat[order],) + tuple(v[::-1].reshape((r * m,) + v.shape[2:])[order] for v in values)


def block_uniforms(X: np.ndarray, seed: int, n_streams: int) -> np.ndarray:
    """Uniform draws in (0, 1], shape (n_streams, n), reproducible per block.

    Blocks do not know their index, so the generator is seeded from ``seed``,
    the block length and its first and last rows.
    """
    n = X.shape[0]
    ends = np.ascontiguousarray(X[[0, -1]] if n else X[:0])
    rng = np.random.default_rng([seed, n, zlib.crc32(ends.tobytes())])
    return 1.0 - rng.random((n_streams, n))


def seed_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    centers: np.ndarray,
    trials: np.ndarray,
    center: np.ndarray,
    n_keep: int,
    seed: int,
    scale: float | None = None,
) -> dict:
    """One seeding pass over a block: potentials and sampled rows.

    For each stream s (one per row of ``trials``, or one if there are none)
    the distance of a row is D_s = min(d²(x, centers), d²(x, trials[s]))
    (D = 1 when there are no centres). Rows are sampled by keys:

    * ``scale is None``: weighted sampling without replacement
      (Efraimidis–Spirakis), key = log(u) / (w D); the n_keep largest keys
      are a sample with probability ∝ w D.
    * ``scale = ℓ``: k-means|| Bernoulli sampling, key = ℓ w D / u; a row is
      taken iff key > φ (known after the pass), so the largest keys suffice.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    centers : ndarray of shape (c, d)
    trials : ndarray of shape (t, d)
    center : ndarray of shape (d,)
    n_keep : int
    seed : int
    scale : float, optional

    Returns
    -------
    dict with ``nonfinite``, ``potential`` (s,) Σ w D_s, ``key`` (s, n_keep)
    descending (-inf padded) and ``x`` (s, n_keep, d) the sampled rows.
    """
    Y = shift_block(X, center)
    yy = np.einsum("ij,ij->i", Y, Y)
    finite = np.isfinite(yy)
    nonfinite = Y.shape[0] - int(finite.sum())
    u = block_uniforms(X, seed, max(trials.shape[0], 1))
    if nonfinite:
        X, Y, yy, u = X[finite], Y[finite], yy[finite], u[:, finite]
        weight = None if weight is None else weight[finite]
    w = np.ones(Y.shape[0]) if weight is None else weight
    D = np.ones(Y.shape[0])
    if centers.shape[0]:
        M = centers - center
        D = np.maximum((Y @ (-2.0 * M.T) + np.einsum("ij,ij->i", M, M)).min(axis=1) + yy, 0.0)
    if trials.shape[0]:
        T = trials - center
        Dt = Y @ (-2.0 * T.T) + np.einsum("ij,ij->i", T, T) + yy[:, None]
        streams = np.minimum(D[:, None], np.maximum(Dt, 0.0)).T
    else:
        streams = D[None, :]
    mass = streams * w
    with np.errstate(divide="ignore", invalid="ignore"):
        keys = np.log(u) / mass if scale is None else scale * mass / u
    keys[mass <= 0] = -np.inf
    n_s, n, d = streams.shape[0], Y.shape[0], Y.shape[1]
    out_key = np.full((n_s, n_keep), -np.inf)
    out_x = np.zeros((n_s, n_keep, d))
    for s in range(n_s):
        if n > n_keep:
            keep = np.argpartition(keys[s], n - n_keep)[n - n_keep :] if n_keep else keys[s, :0]
        else:
            keep = np.arange(n)
        keep = keep.astype(np.intp)
        keep = keep[farthest_order(keys[s, keep])]
        out_key[s, : keep.shape[0]] = keys[s, keep]
        out_x[s, : keep.shape[0]] = X[keep]
    return {"nonfinite": nonfinite, "potential": mass.sum(axis=1), "key": out_key, "x": out_x}


# --------------------------------------------------------------------------
# Annealing: shared-σ² E-step with full per-component second moments.


def anneal_stats(X: np.ndarray, weight: np.ndarray | None, params: MixtureParams) -> dict:
    """Shared-σ² E-step statistics with full-covariance moments of one block.

    The responsibilities are those of ``params`` (covariance_type 'shared');
    the moments are the 'full' ones of :func:`moment_stats`, so each
    component's responsibility-weighted covariance (its critical variance is
    the largest eigenvalue) is one M-step away.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    params : MixtureParams with covariance_type 'shared'

    Returns
    -------
    dict with ``n``, ``loglik``, ``nonfinite`` as :func:`estep_stats`, ``N``
    (K,), ``S`` (K, d), ``Q`` (K, d, d) about the current means, and
    ``soft`` = Σ w (1 − max_k r_k), zero once assignments are hard.
    """
    return estep_stats(X, weight, params, moment_type="full", softness=True)


# --------------------------------------------------------------------------
# Hartigan polish: single-row moves that lower the k-means cost although the
# row is nearest to its own centre (Hartigan & Wong 1979; Telgarsky &
# Vattani 2010).


def hartigan_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    centers: np.ndarray,
    mass: np.ndarray,
    center: np.ndarray,
    edges: np.ndarray,
) -> dict:
    """Lloyd statistics of one block and the Hartigan moves of its rows.

    A row x of weight w in cluster i (its nearest centre) moved alone to
    cluster j changes the k-means cost by

        Δ_j = N_j / (N_j + w) ‖x − m_j‖² − N_i / (N_i − w) ‖x − m_i‖²

    (exact when the centres are the means of clusters of masses N). Lloyd
    never makes these moves: N_i/(N_i − w) > 1 > N_j/(N_j + w), so Δ_j < 0 is
    possible while ‖x − m_i‖ ≤ ‖x − m_j‖. A row is a *candidate* when
    min_j Δ_j < 0, with j ≠ i over clusters of positive mass; a row alone in
    its cluster (N_i − w ≤ 0) is not moved (that would empty the cluster).
    Candidate moves are summed into gain bins, so that the caller can apply
    only the moves with the largest gains (the moves of one pass interact;
    their sum is no longer exact): bin b holds the rows whose gain −Δ is
    below ``edges[b-1]`` and at least ``edges[b]`` (``edges`` descending;
    bin 0 everything at or above ``edges[0]``, the last bin everything below
    the last edge). Distances are computed in sub-blocks: no (n, K) array of
    more than :data:`SUB_BLOCK_BYTES` is held.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    centers : ndarray of shape (K, d), float64
    mass : ndarray of shape (K,)
        N, the weight of each cluster over the whole data at ``centers``
        (from the previous pass).
    center : ndarray of shape (d,), the fixed reference point
    edges : ndarray of shape (B − 1,), descending positive gain thresholds

    Returns
    -------
    dict with the Lloyd statistics of :func:`lloyd_assign` at ``centers``
    (``N``, ``S`` about ``center``, ``inertia``, ``nonfinite``), ``count``
    (finite rows), and per gain bin: ``dN`` (B, K) and ``dS`` (B, K, d), the
    weight and Σ w (x − center) the candidates bring to (+) and take from
    (−) each cluster, ``gain`` (B,) the sum of their Δ (≤ 0) and ``moved``
    (B,) their number.
    """
    X, labels, min_dist, out = lloyd_assign(X, weight, centers, center)
    w = np.ones(X.shape[0]) if weight is None else np.asarray(weight, dtype=np.float64)
    if out["nonfinite"]:  # rows holding NaN/inf: counted, then left out of the rest
        finite = np.isfinite(min_dist)
        X, w, labels = X[finite], w[finite], labels[finite]
    K, d = centers.shape
    B = edges.shape[0] + 1
    dN, dS = np.zeros(B * K), np.zeros((B * K, d))
    gain, moved = np.zeros(B), np.zeros(B)
    M = centers - center
    open_target = mass > 0  # an empty cluster is KMeans' relocation's business
    for sl in sub_blocks(X.shape[0], d + 2 * K):
        Y, lab, wt = shift_block(X[sl], center), labels[sl], w[sl]
        rows = np.arange(Y.shape[0])
        D = squared_distances(Y, M)
        own = mass[lab]
        with np.errstate(divide="ignore", invalid="ignore"):
            leave = np.where(own - wt > 0, own / (own - wt), np.nan) * D[rows, lab]
            join = mass / (mass + wt[:, None]) * D
        join[:, ~open_target] = np.inf
        join[rows, lab] = np.inf
        to = join.argmin(axis=1)
        delta = join[rows, to] - leave
        cand = np.flatnonzero(delta < 0)  # NaN (alone in its cluster) is never < 0
        if cand.size == 0:
            continue
        delta, to, lab, wt, Y = delta[cand], to[cand], lab[cand], wt[cand], Y[cand]
        b = (edges[None, :] > -delta[:, None]).sum(axis=1)
        gain += np.bincount(b, weights=delta, minlength=B)
        moved += np.bincount(b, minlength=B)
        into, out_of = b * K + to, b * K + lab
        dN += np.bincount(into, weights=wt, minlength=B * K)
        dN -= np.bincount(out_of, weights=wt, minlength=B * K)
        yw = Y * wt[:, None]
        np.add.at(dS, into, yw)
        np.subtract.at(dS, out_of, yw)
    out.update(count=X.shape[0], dN=dN.reshape(B, K), dS=dS.reshape(B, K, d), gain=gain,
               moved=moved)  # fmt: skip
    return out
