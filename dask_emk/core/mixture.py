"""Per-block numpy kernels: E-step statistics and hard assignments.

Everything here works on one block of whole rows held in memory and imports
numpy (and the compiled row loops of :mod:`dask_emk.core.loops`) only; the Dask
orchestration lives in :mod:`dask_emk.engine.reduction`.

Notation: a block ``X`` of shape (n, d), K components with
means ``mu`` (K, d), log mixing weights (K,), and the Cholesky factor of the
precision in the covariance type's moment shape
(:meth:`dask_emk.core.covariance.CovarianceType.moment_shape`: ``shared`` holds
one value per component). What differs between covariance types comes from
their entry in :data:`dask_emk.core.covariance.COVARIANCE_TYPES`.

Rows are shifted by one reference point ``origin`` (d,) before any product, so
a large common offset (say 1e4) cancels exactly instead of costing digits.
All arithmetic is float64 whatever the block dtype, except the k-means
assignment's distance GEMM, which runs in the data's dtype as scikit-learn's
does (its sums are float64).

Two E-step paths give the same statistics (to rounding): the dense one
evaluates all K log-densities of every row with two GEMMs on quadratic
features Φ; the sparse one (:func:`sparse_plan`) first proves which
components can reach a row's total at float64 resolution, then takes the
exp and accumulates the moments over only those (row, component) pairs.
The proof comes from bounds out of one distance GEMM (full covariance with
d > 3: the exact arithmetic is then needed only for the candidates, done by
compiled loops over each component's pairs, read from the rows' own float32
or float64 values without a shifted copy) or from the log-densities of all
pairs themselves, screened piece by piece in cache (:func:`candidate_pairs`).
Each sub-block takes the sparse path unless a probe of its first rows says
the dense one is cheaper (overlapping components); ``FORCE_DENSE`` forces
the dense path (tests, benchmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from dask_emk.core import loops
from dask_emk.core.blocks import (
    Scratch,
    buffer,
    shift_block,
    squared_distances,
    sub_blocks,
    thread_scratch,
)
from dask_emk.core.covariance import COVARIANCE_TYPES


@dataclass(frozen=True)
class MixtureParams:
    """Current mixture parameters as the kernels need them (all float64).

    Attributes
    ----------
    means : ndarray of shape (K, d)
    log_weights : ndarray of shape (K,)
    precisions_cholesky : ndarray, moment shape of the covariance type (module docstring)
    covariance_type : str
    origin : ndarray of shape (d,)
        Reference point subtracted from every row before any product.
    """

    means: np.ndarray
    log_weights: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str
    origin: np.ndarray

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

    @cached_property
    def probe_record(self) -> list[int]:
        """[dense, sparse]: verdicts of the sparse E-step's probes with these
        parameters so far, across blocks (mutable; see :func:`sparse_plan`)."""
        return [0, 0]

    @cached_property
    def sparse_modes(self) -> dict[str, int]:
        """Sparse verdicts so far per way of finding candidates (mutable; see
        :func:`sparse_plan`)."""
        return {}

    @cached_property
    def bound_metric(self) -> BoundMetric:
        """The metric of the sparse E-step's candidate bounds (:class:`BoundMetric`)."""
        return BoundMetric.of(self)


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
    if A.shape[0] >= WIDE_FEATURES:
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


#: Feature count (q + d) from which the E-step GEMM is written row-major.
WIDE_FEATURES = 64


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
    """E-step statistics of one block.

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
    ct = moment_type or params.covariance_type
    total, scratch = None, thread_scratch("kernel")
    for rows, plan in walk_sub_blocks(X, params, ct):
        w = None if weight is None else weight[rows]
        if plan is None:
            part = _estep_sub_block(X[rows], w, params, ct, softness, scratch)
        else:
            part = _sparse_estep_stats(plan, w, ct, softness)
        total = add_stats(total, part)
    stats = central_moments(total, params.shifted_means, ct)
    extra = ("n", "loglik", "nonfinite") + (("soft",) if softness else ())
    stats.update((name, total[name]) for name in extra)
    return stats


def _estep_sub_block(X, weight, params, moment_type, softness, scratch: Scratch) -> dict:
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


def resp_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    resp: np.ndarray,
    origin: np.ndarray,
    covariance_type: str,
) -> dict:
    """Statistics of one block for given responsibilities (initialisation).

    Moments are taken about ``origin`` for every component, so the M-step
    reads means as origin + S/N.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    resp : ndarray of shape (n, K)
    origin : ndarray of shape (d,)
    covariance_type : str
    """
    n, d = X.shape
    K = resp.shape[1]
    total, scratch = None, thread_scratch("kernel")
    for rows in mixture_sub_blocks(n, d, covariance_type, K):
        Y = shift_block(X[rows], origin, scratch)
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
    scratch = thread_scratch("kernel")
    for rows, plan in walk_sub_blocks(X, params, params.covariance_type):
        if plan is not None:
            _sparse_rows_out(plan, kind, out[rows])
            continue
        Y = shift_block(X[rows], params.origin, scratch)
        with np.errstate(invalid="ignore", over="ignore"):
            if kind == "label":
                out[rows] = weighted_log_prob(Y, params, scratch)[0].argmax(axis=0)
            else:
                log_prob_norm, resp, _ = responsibilities(Y, params, scratch)
                out[rows] = log_prob_norm if kind == "log_prob" else resp.T
    return out


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


# ------------------------------------------------------- sparse E-step
# Most responsibilities are exactly zero in float64: a component more than
# ~37 + ln K nats below its row's best adds less than half an ulp to the
# row's total. The sparse path proves which pairs those are from one
# Euclidean distance GEMM and evaluates the rest exactly, pair by pair.

#: Private switch: True forces the dense E-step everywhere (tests, benchmarks).
FORCE_DENSE = False

#: A skipped component is below e^-PRUNE_NATS / K of its row's best, so all
#: skipped ones together stay below e^-37 ≈ 0.4 ε of the row's total.
PRUNE_NATS = 37.0

#: Sparse sub-blocks: the rows of a sub-block may have on average at most
#: one candidate plus this fraction of the other K − 1 components, by how
#: the candidates are found (measured break-even with the dense path, one
#: BLAS thread, benchmarks/bench_sparse_kernel.py). "bounds": from
#: :func:`_metric_bounds`, a pass over all pairs plus the exact arithmetic
#: of the candidates. "exact": from the dense log-densities
#: (:func:`_exact_bounds`); what remains to save is the exp over all pairs
#: and the moments' GEMM, which the pair loops beat only for few pairs, or
#: for many with full covariance and d > 3 (its moments GEMM is half the
#: dense work); tied's dense moments are one GEMM for all components.
#: "small full": full covariance with EXACT_FEATURES < d <= SMALL_MATRIX (bounds
#: only, :func:`_probed_plan`): the dense E-step is cheap there, ~11 ns a row and
#: component (d = 8, K = 16: 11 ms a 65,536-row block), and with 3-4 candidates
#: a row the sparse one took 20 ms (the pair loops ~26 ns a pair).
#: The fixture of tests/test_sparse_estep.py sets all to 1 (never dense).
DENSE_FRACTION = {
    "bounds": 0.25, "exact": 0.15, "exact full": 0.4, "exact tied": 0.05, "small full": 0.05,
}  # fmt: skip

#: Rows of a sub-block whose candidates are counted before the rest.
PROBE_ROWS = 256

#: After this many dense verdicts and no sparse one, a parameter set probes
#: only every PROBE_EVERY-th sub-block: with cheap dense E-steps (K = 4,
#: d = 2) the probe's fixed cost, ~0.05 ms, is 3-6% of a 65k-row block.
PROBE_TRUST, PROBE_EVERY = 4, 16

#: Candidates come from the dense log-densities of all pairs where the
#: features Φ number at most this many times d (:func:`exact_candidates`).
EXACT_FEATURES = 3

#: Largest d of the "small full" tuning of DENSE_FRACTION.
SMALL_MATRIX = 8

#: Size of a sparse sub-block: no features Φ, so many more rows than dense.
SPARSE_SUB_BLOCK_BYTES = 2**23


@dataclass
class SparsePlan:
    """Candidate pairs of one sub-block and their responsibilities.

    Attributes
    ----------
    X : ndarray of shape (n, d), the sub-block's rows as given
    origin : ndarray of shape (d,), the shift of X's rows (zero if X is shifted)
    pairs : Candidates
        Component k's pairs are ``offsets[k]:offsets[k + 1]``; ``rows`` (n_pairs,)
        holds the row of each pair.
    scratch : Scratch
        Work buffers of the sparse sub-blocks: a plan is used up before the
        next sub-block's is made.
    shifted : ndarray of shape (n, d) or None
        X − origin where already at hand (else formed on demand by :attr:`Y`).
    log_prob_norm, label, total : ndarray of shape (n,)
        log p(y), most probable component, 1 / largest responsibility
    resp : ndarray of shape (n_pairs,)
    hard : bool
        Every row has one candidate, so every responsibility is exactly 1.
    """

    X: np.ndarray
    origin: np.ndarray
    pairs: Candidates
    scratch: Scratch
    shifted: np.ndarray | None = None
    log_prob_norm: np.ndarray | None = None
    resp: np.ndarray | None = None
    label: np.ndarray | None = None
    total: np.ndarray | None = None
    hard: bool = False

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def Y(self) -> np.ndarray:
        """The shifted rows (n, d), formed on first use."""
        if self.shifted is None:
            self.shifted = shift_block(self.X, self.origin, self.scratch)
        return self.shifted

    @property
    def offsets(self) -> np.ndarray:
        return self.pairs.offsets

    @property
    def rows(self) -> np.ndarray:
        return self.pairs.rows

    def of(self, k: int) -> slice:
        """Component k's pairs."""
        return slice(self.offsets[k], self.offsets[k + 1])

    @cached_property
    def row_major(self) -> tuple[np.ndarray, np.ndarray]:
        """(order, component) of :func:`loops.row_major`."""
        return loops.row_major(self.offsets, self.rows, self.n)


def exact_candidates(covariance_type: str, d: int) -> bool:
    """Whether candidates come from the exact log-densities of all pairs: where
    the dense E-step's GEMM of features Φ ((q + d) columns) costs at most
    EXACT_FEATURES times a distance GEMM (d columns): every type but full
    covariance with d > 3. Elsewhere the bounds of :class:`BoundMetric`.

    Diag (d = 32, K = 16, one BLAS thread) was measured both ways: with the
    bounds (diagonal factors in :class:`BoundMetric`) 17.4 ms a 65,536-row
    block at convergence but ~30 ms early in a fit (two candidates a row),
    against 18.5 and ~21 ms from its exact log-densities (dense: 22 ms):
    the bounds' own pass costs about what the dense GEMM of 2d features does.
    Screened in cache-sized pieces (:func:`_screened_bounds`) the exact
    log-densities now take 13.4-14.7 ms (bench_sparse_kernel, blobs).
    """
    return n_quadratic(d, covariance_type) + d <= EXACT_FEATURES * d


@dataclass(frozen=True)
class BoundMetric:
    """Diagonal metric w of the full-covariance candidate bounds: with
    B_k = diag(w)⁻¹ U_k, A_k = B_k B_kᵀ and low_k ≤ eig(A_k) ≤ high_k,
    low_k ‖x‖² ≤ (y − μ_k)ᵀ P_k (y − μ_k) = xᵀ A_k x ≤ high_k ‖x‖² for
    x = (y − μ_k) ∘ w (x P_k xᵀ = ‖x U_k‖² = ‖(x ∘ w) B_k‖²).

    w_j⁻² is the mean over components of the variance of feature j, so that
    features on very different scales do not make the bound useless, as the
    Euclidean metric would; any positive w gives valid bounds.

    A component spread along a few directions (one that covers several
    clusters, in early iterations) has a tiny λ_min(A_k), which makes its
    lower bound useless on every row. For such a component the r ≤
    MAX_DIRECTIONS eigenvectors v_i of its eigenvalues below a quarter of the
    median are also kept, with a_i = λ_(r+1) − λ_i ≥ 0: if
    C_k = A_k + Σ a_i v_i v_iᵀ ⪰ low2_k I then
    xᵀ A_k x ≥ low2_k ‖x‖² − Σ a_i (v_iᵀ x)² (:func:`loops.pair_bounds`),
    for any vectors v_i, so only the eigenvalues of C_k need to be proven.

    Attributes
    ----------
    w : ndarray of shape (d,)
    low, high : ndarray of shape (K,)
        From ``eigh`` of fl(B̂ B̂ᵀ), B̂ = fl(U_k / w) (rows scaled, so
        ‖B̂ − B‖₂ ≤ u √d ‖B‖₂), widened by 2 (d² + 16 (d + 1) + 2 √d + 1) ε λ̂_max:
        the product's rounding (γ_d ‖B̂‖_F² ≤ γ_d d λ_max), ``eigh``'s
        backward error and the scaling's, twice for λ̂_max's own error; the
        lower bound is clipped at zero.
    eta : float
        ‖fl(y ∘ w) − y ∘ w‖ ≤ u ‖y ∘ w‖ ≤ eta ‖y‖, eta = (d + 2) ε ‖w‖.
    means : ndarray of shape (K, d), fl(μ ∘ w) of the shifted means
    trace : ndarray of shape (K,), tr P_k = ‖U_k‖_F²
    columns : ndarray of shape (d, K + R)
        The means' columns ``means.T`` then the R directions v_i of all
        components: one GEMM of the rows in the metric gives both.
    starts : ndarray of shape (K + 1,), intp
        Component k's directions are directions starts[k]:starts[k + 1].
    along, coef : ndarray of shape (R,)
        fl(v_i · ν̂_k) of its component's mean, and a_i.
    low2 : ndarray of shape (K,)
        λ_min(C_k) from ``eigvalsh`` of fl(C_k), widened as ``low`` and
        further by 2 (r + 1)(d + r) ε λ̂_max(C_k) for the rounding of the
        rank-r term (‖fl(V diag(a) Vᵀ) − V diag(a) Vᵀ‖_F ≤ γ_(r+1) Σ a_i ‖v_i‖²,
        a_i ≤ λ_max(C_k)); zero for components without directions.
    vnorm : float
        An upper bound on every ‖v_i‖ (1 up to rounding).
    """

    w: np.ndarray
    low: np.ndarray
    high: np.ndarray
    eta: float
    means: np.ndarray
    trace: np.ndarray
    columns: np.ndarray
    starts: np.ndarray
    along: np.ndarray
    coef: np.ndarray
    low2: np.ndarray
    vnorm: float

    @staticmethod
    def of(params: MixtureParams) -> BoundMetric:
        U, M = params.precisions_cholesky, params.shifted_means
        d = M.shape[1]
        eps = np.finfo(np.float64).eps
        variances = (np.linalg.inv(U) ** 2).sum(axis=1)  # Σ = U⁻ᵀ U⁻¹: column norms of U⁻¹
        with np.errstate(divide="ignore", invalid="ignore"):
            w = 1.0 / np.sqrt(variances.mean(axis=0))
        w = np.where(np.isfinite(w) & (w > 0), w, 1.0)
        B = U / w[:, None]
        A = B @ np.swapaxes(B, -1, -2)
        eig, vectors = np.linalg.eigh(A)
        slack = 2 * (d * d + 16 * (d + 1) + 2 * math.sqrt(d) + 1) * eps * eig[:, -1]
        low, high = np.maximum(eig[:, 0] - slack, 0.0), eig[:, -1] + slack
        eta = (d + 2) * eps * float(np.linalg.norm(w))
        means = M * w
        picked = [_soft_directions(A[k], eig[k], vectors[k]) for k in range(M.shape[0])]
        V = np.concatenate([v for v, _, _ in picked], axis=1)
        owner = np.repeat(np.arange(M.shape[0]), [v.shape[1] for v, _, _ in picked])
        starts = np.concatenate([[0], np.cumsum([v.shape[1] for v, _, _ in picked])])
        along = np.einsum("jc,cj->c", V, means[owner])
        vnorm = float(np.sqrt((V * V).sum(axis=0)).max(initial=1.0)) * (1 + 2 * d * eps)
        return BoundMetric(
            w, low, high, eta, means, np.einsum("kij,kij->k", U, U),
            np.ascontiguousarray(np.concatenate([means.T, V], axis=1)), starts.astype(np.intp),
            along, np.concatenate([a for _, a, _ in picked]),
            np.array([low2 for _, _, low2 in picked]), vnorm,
        )  # fmt: skip


#: Most directions of small eigenvalue a component's bound corrects for (:class:`BoundMetric`).
MAX_DIRECTIONS = 3


def _soft_directions(A: np.ndarray, eig: np.ndarray, vectors: np.ndarray):
    """(V (d, r), a (r,), low2) of one component for :class:`BoundMetric`:
    its eigenvectors of eigenvalues below a quarter of the median (at most
    MAX_DIRECTIONS), a_i = λ_(r+1) − λ_i, and the proven λ_min of C."""
    d = A.shape[0]
    r = min(int(np.sum(eig < eig[d // 2] / 4)), MAX_DIRECTIONS, d - 1)
    if r == 0:
        return np.zeros((d, 0)), np.zeros(0), 0.0
    V, a = vectors[:, :r], eig[r] - eig[:r]
    C = A + (V * a) @ V.T
    e = np.linalg.eigvalsh(C)
    eps = np.finfo(np.float64).eps
    slack = 2 * (d * d + 16 * (d + 1) + 2 * math.sqrt(d) + 1 + (r + 1) * (d + r)) * eps * e[-1]
    return V, a, max(e[0] - slack, 0.0)


@dataclass
class Candidates:
    """Candidate pairs of a block of rows, component-major
    (:func:`loops.select_pairs`); with the exact log-densities (K, n) of all
    pairs when they were computed to find them (:func:`exact_candidates`),
    or with the exact log-densities (n_pairs,) of the pairs themselves where
    these were computed (:func:`_metric_bounds`)."""

    offsets: np.ndarray
    rows: np.ndarray
    log_dens: np.ndarray | None = None
    pair_log_dens: np.ndarray | None = None


def candidate_pairs(
    X: np.ndarray,
    params: MixtureParams,
    scratch: Scratch | None = None,
    exact: bool = True,
    origin: np.ndarray | None = None,
) -> Candidates | None:
    """The (row, component) pairs whose log-density can reach the row's total
    at float64 resolution, or None if a row is not finite (or overflows).
    Rows are X − ``origin`` (None: X holds shifted rows).

    A pair is skipped when an upper bound on its log-density is more than
    PRUNE_NATS + ln K + 1 nats below a lower bound on its row's best: its
    responsibility is then below e^-PRUNE_NATS / K of the row's largest, and
    all skipped ones together below e^-PRUNE_NATS ≈ 0.4 ε of the row's total.
    The last nat covers the rounding of the bounds' own few operations (with
    a relative allowance for huge values, :func:`loops.select_pairs`).
    Bounds: :func:`_screened_bounds` where :func:`_screened`, else
    :func:`_exact_bounds`, or :func:`_metric_bounds` if not ``exact`` and
    not :func:`exact_candidates`.
    """
    K, d = params.means.shape
    scratch = Scratch() if scratch is None else scratch
    margin = PRUNE_NATS + math.log(K) + 1.0
    # NaN/inf rows turn into NaN bounds by design: they send the sub-block to
    # the dense path, which counts and drops them.
    with np.errstate(invalid="ignore", over="ignore"):
        nm = np.sqrt(np.einsum("ij,ij->i", params.shifted_means, params.shifted_means))
        if _screened(params.covariance_type, d):
            origin = np.zeros(d) if origin is None else origin
            return _screened_bounds(X, origin, params, nm, margin, scratch)
        if exact or exact_candidates(params.covariance_type, d):
            Y = X if origin is None else np.subtract(X, origin, dtype=np.float64)
            ny = np.sqrt(np.einsum("ij,ij->i", Y, Y))
            return _exact_bounds(Y, params, ny, nm, margin, scratch)
        origin = np.zeros(d) if origin is None else origin
        return _metric_bounds(X, origin, params, nm, margin, scratch)


def _exact_bounds(Y, params: MixtureParams, ny, nm, margin: float, scratch) -> Candidates | None:
    """Candidates from the dense E-step's own log-densities ℓ̂ (K, n) of all pairs.

    The features Φ and coefficients C are exact up to rounding, and every
    term of Φ(y) · C_k + const_k is bounded in size by tr(P_k) (‖y‖ + ‖μ_k‖)²
    (|y|ᵀ |P| |y| ≤ ‖P‖_F ‖y‖² ≤ tr P ‖y‖² for the quadratic part, the same
    for the linear one and the constant; tied's whitened distances likewise),
    so Higham's γ bounds put ℓ̂ within
    e_ik = (q + 2d + 8) ε tr(P_k) (‖y_i‖ + ‖μ_k‖)² + 4 ε (|ℓ̂_ik| + |peak_k|)
    of the exact value, with room to spare (:func:`loops.select_exact`).
    """
    K, d = params.means.shape
    n = Y.shape[0]
    log_dens = scratch.get("log_dens", (K, n))
    # In the dense path's cache-sized pieces: the features Φ of a whole
    # sparse sub-block would be (q + d) / (d + K) times its size.
    for rows in mixture_sub_blocks(n, d, params.covariance_type, K):
        weighted_log_prob(Y[rows], params, scratch, out=log_dens[:, rows])
    top = log_dens.max(axis=0)
    if not np.isfinite(top).all():
        return None
    rows_buffer = scratch.get("rows_buffer", (K, n)).view(np.intp)
    eps = np.finfo(np.float64).eps
    found = loops.select_exact(log_dens, top, ny, _float64_scale(params, nm), 4 * eps, margin,
                               rows_buffer)  # fmt: skip
    return Candidates(*found, log_dens)


def _float64_scale(params: MixtureParams, nm: np.ndarray) -> np.ndarray:
    """``scale`` of :func:`loops.select_exact` for log-densities computed in
    float64 (:func:`_exact_bounds`): the largest (q + 2d + 8) ε tr P_k, the
    largest ‖μ_k‖ and the largest finite |peak_k|."""
    d = params.means.shape[1]
    U = params.precisions_cholesky
    if COVARIANCE_TYPES[params.covariance_type].block == "matrix":
        trace = np.einsum("...ij,...ij->...", U, U)
    else:
        trace = (U**2).sum(axis=-1) if U.ndim == 2 else d * U**2
    eps = np.finfo(np.float64).eps
    peak = params.log_peak[np.isfinite(params.log_peak)]
    return np.array([
        (n_quadratic(d, params.covariance_type) + 2 * d + 8) * eps * np.max(trace),
        np.max(nm),
        np.max(np.abs(peak), initial=0.0),
    ])  # fmt: skip


#: Private switch: False screens every pair in float64 (tests, benchmarks).
SCREEN_FLOAT32 = True

#: Smallest K (q + d) (components times features Φ) for which
#: :func:`_screened_bounds` may go float32: the float32 GEMM takes ~45% of
#: the float64 one's time, but the candidates' exact log-densities must then
#: be computed again (float64 ones are kept). Measured per 65,536-row block
#: (one BLAS thread, 2-core AMD EPYC), float64 against float32: diag d = 32
#: K = 16 (1024) 13.0 vs 13.1 ms, K = 48 (3072) 21.6 vs 20.3; spherical
#: d = 32 K = 16 (528) 12.8 vs 14.2; full d = 2 K = 100 (500) 40.1 vs 44.5.
SCREEN_FLOAT32_WORK = 2048

#: Rows of a sub-block of :func:`_screened_bounds` (its features and
#: log-densities stay in cache between the GEMM and the selection).
SCREEN_ROWS = 2048

#: Largest error, in nats, a float32 sub-block's log-densities may carry
#: (:func:`_float32_scale`); above it the sub-block is screened in float64.
#: Each nat widens the candidates' window by two.
SCREEN_SLACK = 0.5


def _screened(covariance_type: str, d: int) -> bool:
    """Whether :func:`_screened_bounds` finds the candidates: every
    :func:`exact_candidates` type but the whitened one (tied, whose
    log-densities are distances of whitened rows)."""
    whitened = COVARIANCE_TYPES[covariance_type].whitened
    return exact_candidates(covariance_type, d) and not whitened


def _screened_bounds(
    X, origin, params: MixtureParams, nm, margin: float, scratch
) -> Candidates | None:
    """Candidates from the log-densities ℓ̂ = Φ(y) · A + b of all pairs, y = X
    − origin, computed and selected in sub-blocks of SCREEN_ROWS rows
    (:func:`loops.screen_pairs`): in float32 where the sub-block's error
    bound (:func:`_float32_scale`) is at most SCREEN_SLACK nats, else in
    float64 with the bound of :func:`_exact_bounds`. Each pair is kept as
    :func:`loops.select_exact` keeps it, so a skipped pair's exact
    log-density is below its row's best minus ``margin`` in both cases.

    Unlike :func:`_exact_bounds` no shifted copy of X and no (K, n)
    log-densities are formed (10.6 against 19.1 ms a 65,536-row diag block,
    d = 32, K = 16). Where every sub-block went float64 the candidates keep
    their ℓ̂, the dense E-step's arithmetic; otherwise
    :func:`pair_log_densities` computes them (a float32 ℓ̂ is not exact).
    """
    K, d = params.means.shape
    n = X.shape[0]
    A, bias = params.log_prob_coefficients
    m = min(SCREEN_ROWS, max(n, 1))
    wide = SCREEN_FLOAT32 and A.size >= SCREEN_FLOAT32_WORK
    A32, scale32 = _float32_scale(params) if wide else (np.zeros((0, K), np.float32), np.zeros(3))
    eps = np.finfo(np.float64).eps
    bounds = (scale32, _float64_scale(params, nm), 4 * eps, SCREEN_SLACK)
    buffers = (
        _float32_buffer(scratch, "phi32", m * A.shape[0]), scratch.get("phi64", (m * A.shape[0],)),
        _float32_buffer(scratch, "G32", m * K), scratch.get("G64", (m * K,)),
        scratch.get("ny", (n,)), scratch.get("rows_buffer", (K * n,)).view(np.intp),
        scratch.get("comps_buffer", (K * n,)).view(np.intp),
        scratch.get("pair_values", (K * n,)),
    )  # fmt: skip
    code = loops.BLOCK_CODES[COVARIANCE_TYPES[params.covariance_type].block]
    offsets, rows, log_dens, finite = loops.screen_pairs(
        X, origin, code, (A32, np.ascontiguousarray(A)), bias, params.log_peak, bounds, margin,
        buffers,
    )  # fmt: skip
    if not finite:
        return None
    return Candidates(offsets, rows, pair_log_dens=log_dens if log_dens.size == rows.size else None)


def _float32_buffer(scratch: Scratch, name: str, size: int) -> np.ndarray:
    """A float32 array of ``size`` elements on a float64 scratch buffer."""
    return scratch.get(name, (-(-size // 2),)).view(np.float32)[:size]


def _float32_scale(params: MixtureParams) -> tuple[np.ndarray, np.ndarray]:
    """(Â, scale): the coefficients A (q + d, K) of
    :attr:`MixtureParams.log_prob_coefficients` rounded to float32, and the
    ``scale`` of :func:`loops.select_exact` that bounds the error of
    log-densities computed from them in float32 by :func:`loops.screen_pairs`
    (Â empty where the coefficients' range does not allow float32).

    The reference is the exact value ℓ = Φ(y) · A_k + b_k of the float64
    A and b, y = x − origin exact (the dense E-step's float64 ℓ̂ and the
    pair loops' are within float64 rounding of it, which the margin's last
    nat covers). With u = 2⁻²⁴ and n_f = q + d features:

    - ỹ = fl32(fl64(x − origin)) = y (1 + δ), |δ| ≤ u + u₆₄ + u u₆₄ ≤ 1.01 u,
      so every feature φ̃ (ỹ, a product of two ỹ rounded once, or ‖ỹ‖²
      summed in float64 and rounded once) is within 3.1 u |φ| of φ(y);
      Â_fk = fl32(A_fk) within u |A_fk|; each product within 4.2 u |φ A|.
    - The float32 dot product of the GEMM (any order, FMA or not) adds
      γ_(n_f) Σ |φ̃ Â| ≤ γ_(n_f) (1 + 4.2 u) T (Higham, eq. 3.5), with
      T_ik = Σ_f |φ_f(y_i) A_fk|. In all, |ĝ − Φ · A_k| ≤ (n_f + 5) u T for
      n_f u ≤ 2⁻¹⁰; twice that is allowed: c = 2 (n_f + 5) u.
    - T_ik ≤ α ‖y‖² + β ‖y‖ ≤ α (‖y‖ + β / 2α)², with β the largest
      ‖A_k‖ of the linear terms (Cauchy-Schwarz) and α the largest
      quadratic coefficient (diagonal and scalar blocks: Σ_j y_j² = ‖y‖²)
      or the largest ‖A_k‖ of the quadratic ones (matrix: Σ_(a≤b) y_a² y_b²
      ≤ ‖y‖⁴).
    - Adding b_k in float64 (and clipping at the peak, which ℓ does not
      exceed) rounds by u₆₄ |ℓ̂|: the ``rel`` term of :func:`loops.select_exact`.
    - Under- and overflow: with every non-zero |A_fk| in [2⁻⁶⁰, 2⁶⁰] and a
      sub-block only taken in float32 when c T ≤ SCREEN_SLACK (so T < 2¹⁷,
      every φ̃ < 2⁷⁸ and product < 2¹⁸: no overflow), each underflow costs
      at most 2⁻¹⁵⁰ in a feature or product, n_f 2⁻⁸⁷ in all: the absolute
      term n_f 2⁻⁸⁰ covers it.

    So scale = [c α, β / 2α, n_f 2⁻⁸⁰ / rel] with rel = 4 ε, the ``rel`` of
    :func:`_screened_bounds`.
    """
    A, _ = params.log_prob_coefficients
    d = params.means.shape[1]
    q = A.shape[0] - d
    block = COVARIANCE_TYPES[params.covariance_type].block
    quad, linear = np.abs(A[:q]), A[q:]
    alpha = np.max(np.sqrt((quad**2).sum(axis=0)) if block == "matrix" else quad.max(axis=0))
    beta = np.max(np.sqrt((linear**2).sum(axis=0)))
    nonzero = np.abs(A[A != 0])
    usable = np.isfinite(A).all() and alpha > 0 and (
        nonzero.min(initial=1.0) >= 2.0**-60 and nonzero.max(initial=1.0) <= 2.0**60)
    if not usable:
        return np.zeros((0, A.shape[1]), np.float32), np.zeros(3)
    n_f = A.shape[0]
    c = 2 * (n_f + 5) * 2.0**-24
    rel = 4 * np.finfo(np.float64).eps
    scale = np.array([c * alpha, beta / (2 * alpha), n_f * 2.0**-80 / rel])
    return np.ascontiguousarray(A, dtype=np.float32), scale


def _metric_bounds(
    X, origin, params: MixtureParams, nm, margin: float, scratch
) -> Candidates | None:
    """Candidates of full covariance from bounds in the :class:`BoundMetric`.

    With D = ‖(y − μ_k) ∘ w‖², bounded from one GEMM of rows and means in
    the metric (:func:`loops.pair_bounds`), each log-density
    ℓ_k = peak_k − ½ (y − μ_k)ᵀ P_k (y − μ_k) lies in
    [peak_k − ½ high_k D, peak_k − ½ low_k D]. The row's best is at least
    its largest lower bound and at least the exact log-density of one
    likely component minus its rounding (:func:`_best_floor`). The
    expansion D̂ = ‖z‖² + ‖ν‖² − 2 z·ν is off by at most
    (d + 3) u (‖z‖ + ‖ν‖)² ≤ (d + 3) ε (‖z‖² + ‖ν‖²) (u = ε/2, any
    summation order); twice that is allowed.

    Where the candidates are exactly the likely components (one per row,
    separated clusters), the returned pairs carry those exact log-densities,
    so nothing is computed twice.
    """
    K, d = params.means.shape
    n = X.shape[0]
    metric = params.bound_metric
    Z = scratch.get("Z", (n, d))
    zz, ny = loops.metric_rows(X, origin, metric.w, Z)
    nn = np.einsum("ij,ij->i", metric.means, metric.means)
    G = np.matmul(Z, metric.columns, out=scratch.get("G", (n, metric.columns.shape[1])))
    rel_err = 2.0 * (d + 3) * np.finfo(np.float64).eps
    upper = scratch.get("upper", (n, K))
    directions = (metric.starts, metric.along, metric.coef, metric.low2, metric.vnorm)
    lower, guess, finite = loops.pair_bounds(G, zz, nn, ny, nm, metric.eta, params.log_peak,
                                             metric.low, metric.high, rel_err, directions,
                                             upper)  # fmt: skip
    if not finite:
        return None
    likely = Candidates(*loops.group_rows(guess, K))
    plan = SparsePlan(X, origin, likely, scratch)
    likely.pair_log_dens = pair_log_densities(plan, params)
    floor = np.maximum(lower, _best_floor(likely, guess, params, ny, nm))
    rows_buffer = scratch.get("select_buffer", (K, n)).view(np.intp)
    offsets, rows = loops.select_pairs(upper, floor, margin, rows_buffer)
    if np.array_equal(offsets, likely.offsets) and np.array_equal(rows, likely.rows):
        return likely
    return _merged_with_likely(X, origin, Candidates(offsets, rows), guess, likely, params, scratch)


def _merged_with_likely(X, origin, found: Candidates, guess, likely: Candidates, params,
                        scratch) -> Candidates:  # fmt: skip
    """``found`` with each component's likely pairs first, their exact
    log-densities copied from ``likely``: only the other pairs, as a layout
    of their own, are computed."""
    n = X.shape[0]
    position = np.empty(n, dtype=np.intp)
    position[likely.rows] = np.arange(n)
    rows, source, first = loops.merge_likely(found.offsets, found.rows, guess, position)
    log_dens = np.empty(rows.size)
    kept = source >= 0
    log_dens[kept] = likely.pair_log_dens[source[kept]]
    offsets = np.concatenate([[0], np.cumsum(np.diff(found.offsets) - first)])
    others = SparsePlan(X, origin, Candidates(offsets, rows[~kept]), scratch)
    log_dens[~kept] = pair_log_densities(others, params)
    return Candidates(found.offsets, rows, pair_log_dens=log_dens)


def _best_floor(likely: Candidates, guess, params: MixtureParams, ny, nm) -> np.ndarray:
    """Exact log-density of each row's guessed component (``likely``, one pair
    a row) minus its rounding bound, shape (n,): a lower bound on the row's best.

    The loop of (y − μ) U (:func:`loops.pair_log_densities_matrix`, sums in
    any order) computes the Mahalanobis distance to within
    3.1 d u tr(P_k) ‖y − μ_k‖² ≤ 3.1 d u tr(P_k) (‖y‖ + ‖μ_k‖)² (Higham's
    γ_d bounds for the products and sums, ‖U‖₂² ≤ ‖U‖_F² = tr P), and adding
    the peak rounds by u (|peak| + |ℓ|): 8 (d + 2) ε of those terms is a
    generous majorant.
    """
    d = params.means.shape[1]
    exact = np.empty(guess.shape[0])
    exact[likely.rows] = likely.pair_log_dens
    scale = params.bound_metric.trace[guess] * (ny + nm[guess]) ** 2 + np.abs(exact)
    scale += np.abs(params.log_peak[guess])
    return exact - 8.0 * (d + 2) * np.finfo(np.float64).eps * scale


def sparse_plan(X: np.ndarray, params: MixtureParams, scratch: Scratch) -> SparsePlan | None:
    """The sparse E-step of rows X (n, d), or None where the dense path pays
    (forced, one component, too many candidates, or non-finite rows).

    The first PROBE_ROWS rows are tried alone first, with each way of
    finding candidates in turn (bounds, then the exact log-densities; see
    DENSE_FRACTION), so a sub-block that goes dense costs a few hundred
    rows' bounds, not a shift and bounds of all. A parameter set whose
    probes only ever went dense probes less often (PROBE_TRUST); one whose
    sub-blocks all went sparse, one way, skips the probe (the sub-block's
    own candidate count still sends it dense where that pays).
    """
    n, K = X.shape[0], params.means.shape[0]
    if FORCE_DENSE or K == 1 or n == 0:
        return None
    record = params.probe_record
    if record[1] == 0 and record[0] >= PROBE_TRUST and record[0] % PROBE_EVERY:
        record[0] += 1
        return None
    plan = _probed_plan(X, params, scratch)
    record[0 if plan is None else 1] += 1
    return plan


def _probed_plan(X: np.ndarray, params: MixtureParams, scratch: Scratch) -> SparsePlan | None:
    """:func:`sparse_plan` after its shortcuts: the probe, then the sub-block."""
    (n, d), K = X.shape, params.means.shape[0]
    ct = params.covariance_type
    if exact_candidates(ct, d):
        modes = ["exact tied" if COVARIANCE_TYPES[ct].whitened else "exact"]
    elif d <= SMALL_MATRIX:
        # Up to d = 8 the exact log-densities of all pairs are most of the
        # dense E-step: finding candidates with them, then the pair loops,
        # was 11-13% slower than dense (d = 8, K = 16, one candidate a row).
        modes = ["bounds"]
    else:
        modes = ["bounds", "exact full"]
    sparse_modes = params.sparse_modes
    if params.probe_record[0] == 0 and len(sparse_modes) == 1 and (
        max(sparse_modes.values()) >= PROBE_TRUST
    ):
        modes = list(sparse_modes)
    else:
        modes = _probe(X[:PROBE_ROWS], params, scratch, modes)
        if not modes:
            return None
    mode = modes[0]
    most = _most_candidates(mode, K, d)
    exact = mode != "bounds"
    # The bounds and the screens read X itself; tied's exact log-densities
    # (and "exact full"'s) need the shifted rows.
    Y = shift_block(X, params.origin, scratch) if exact and not _screened(ct, d) else None
    found = candidate_pairs(X, params, scratch, exact, params.origin) if Y is None else (
        candidate_pairs(Y, params, scratch, exact))  # fmt: skip
    # Near the break-even going dense now would waste the candidates' work:
    # only a probe far off (sorted rows) sends the sub-block dense.
    if found is None or found.offsets[-1] > 2.0 * most * n:
        return None
    plan = SparsePlan(X, params.origin, found, scratch, shifted=Y)
    pair_responsibilities(plan, pair_log_densities(plan, params))
    sparse_modes[mode] = sparse_modes.get(mode, 0) + 1
    return plan


def _most_candidates(mode: str, K: int, d: int) -> float:
    """The most candidates a row may have on average for ``mode`` to go sparse
    (DENSE_FRACTION; "bounds" and "exact full" are the modes of full
    covariance with d > EXACT_FEATURES, where up to SMALL_MATRIX "bounds"
    is tuned as "small full", the only mode there)."""
    small_full = mode == "bounds" and d <= SMALL_MATRIX
    return 1.0 + DENSE_FRACTION["small full" if small_full else mode] * (K - 1)


def _probe(probe: np.ndarray, params: MixtureParams, scratch, modes: list):
    """The first of ``modes`` whose candidates of the ``probe`` rows are few
    enough (DENSE_FRACTION), as a one-element list; empty if none."""
    K, d = params.means.shape
    for mode in modes:
        most = _most_candidates(mode, K, d)
        found = candidate_pairs(probe, params, scratch, mode != "bounds", params.origin)
        if found is None:
            return []
        if found.offsets[-1] <= most * probe.shape[0]:
            return [mode]
    return []


def pair_responsibilities(plan: SparsePlan, log_dens: np.ndarray) -> None:
    """Per-row logsumexp over the candidate pairs, as the dense E-step does
    it over all K (numpy's vectorised exp; sums in the same component order).
    Sets ``log_prob_norm``, ``resp``, ``label``, ``total`` and ``hard`` of ``plan``."""
    n, rows = plan.n, plan.rows
    top, plan.label = loops.pair_top(plan.offsets, rows, log_dens, n)
    if rows.size == n and top.min(initial=np.inf) > -np.inf:
        # One candidate a row (each has at least one): exp(ℓ − ℓ) / 1 is
        # exactly 1, so the logsumexp below would return ℓ and ones.
        plan.hard, plan.log_prob_norm = True, top
        plan.resp, plan.total = np.ones(n), np.ones(n)
        return
    resp = np.subtract(log_dens, top[rows], out=log_dens)
    np.exp(resp, out=resp)
    plan.total = np.bincount(rows, weights=resp, minlength=n)
    plan.resp = np.divide(resp, plan.total[rows], out=resp)
    plan.log_prob_norm = top + np.log(plan.total)


def pair_log_densities(plan: SparsePlan, params: MixtureParams) -> np.ndarray:
    """Exact log π_k N(y | μ_k, Σ_k) of every candidate pair, shape (n_pairs,).

    One fused compiled loop over the pairs (matrix blocks: in chunks of each
    component's pairs, :func:`loops.pair_log_densities_matrix`; diagonal and
    scalar: in row order, :attr:`SparsePlan.row_major`, which the moments
    reuse). Read from the exact
    log-densities of all pairs where the candidates were found with them.
    """
    ctype = COVARIANCE_TYPES[params.covariance_type]
    if plan.pairs.pair_log_dens is not None:
        return plan.pairs.pair_log_dens
    out = np.empty(plan.rows.shape[0])
    if plan.pairs.log_dens is not None:
        loops.gather_pairs(plan.pairs.log_dens, plan.offsets, plan.rows, out)
        return out
    args = (plan.X, plan.origin, plan.offsets, plan.rows, params.shifted_means)
    if ctype.block == "matrix":
        U = params.precisions_cholesky.reshape(-1, *params.precisions_cholesky.shape[-2:])
        loops.pair_log_densities_matrix(*args, U, params.log_peak, out)
        return out
    prec = params.precisions_cholesky**2
    loops.pair_log_densities(plan.X, plan.origin, *plan.row_major, plan.rows, params.shifted_means,
                             prec.reshape(prec.shape[0], -1), params.log_peak, out)  # fmt: skip
    return out


def walk_sub_blocks(X: np.ndarray, params: MixtureParams, covariance_type: str):
    """Yield (rows, plan): a sparse sub-block with its :class:`SparsePlan`, or
    a dense sub-block (sized by :func:`mixture_sub_blocks` for
    ``covariance_type``'s features) with None."""
    n, d = X.shape
    K = params.means.shape[0]
    scratch = thread_scratch("sparse")
    # Equal parts (not a full step and a sliver): each part costs a probe
    # and K per-component calls whatever its size.
    parts = len(sub_blocks(n, d + K, SPARSE_SUB_BLOCK_BYTES))
    for outer in sub_blocks(n, 1, 8 * -(-n // parts)):
        Xo = X[outer]
        plan = sparse_plan(Xo, params, scratch)
        if plan is not None:
            yield outer, plan
            continue
        for inner in mixture_sub_blocks(Xo.shape[0], d, covariance_type, K):
            stop = min(inner.stop, Xo.shape[0])
            yield slice(outer.start + inner.start, outer.start + stop), None


def sparse_raw_moments(plan: SparsePlan, weight: np.ndarray | None, covariance_type: str):
    """:func:`raw_moments` summed over the candidate pairs only."""
    K, d = plan.offsets.shape[0] - 1, plan.X.shape[1]
    ctype = COVARIANCE_TYPES[covariance_type]
    wr = plan.resp if weight is None else plan.resp * weight[plan.rows]
    N, SY = np.zeros(K), np.zeros((K, d))
    if ctype.block != "matrix":
        second = np.zeros((K, n_quadratic(d, covariance_type)))
        loops.pair_moments(plan.X, plan.origin, *plan.row_major, plan.rows, wr, N, SY, second)
        return {"N": N, "raw": np.concatenate([second, SY], axis=1)}
    second = np.zeros((K, 0 if ctype.whitened else n_quadratic(d, covariance_type)))
    loops.pair_moments_matrix(plan.X, plan.origin, plan.offsets, plan.rows, wr, N, SY, second)
    return _with_pooled_moments({"N": N, "raw": np.concatenate([second, SY], axis=1)},
                                plan, weight, ctype.whitened)  # fmt: skip


def _with_pooled_moments(raw: dict, plan: SparsePlan, weight, whitened: bool) -> dict:
    """Whitened types (tied): ``SY`` and the pooled ``YY`` = Σ w y yᵀ instead of ``raw``."""
    if not whitened:
        return raw
    wY = plan.Y if weight is None else plan.Y * weight[:, None]
    return {"N": raw["N"], "SY": raw["raw"], "YY": wY.T @ plan.Y}


def _sparse_estep_stats(plan: SparsePlan, weight, moment_type: str, softness: bool) -> dict:
    stats = sparse_raw_moments(plan, weight, moment_type)
    n = plan.n
    w_total = float(n) if weight is None else float(weight.sum())
    lpn = plan.log_prob_norm
    loglik = lpn.sum() if weight is None else lpn @ weight
    stats.update(n=np.float64(w_total), loglik=np.float64(loglik), nonfinite=np.float64(0.0))
    if softness:
        soft = 1.0 - 1.0 / plan.total
        stats["soft"] = np.float64(soft.sum() if weight is None else soft @ weight)
    return stats


def _sparse_rows_out(plan: SparsePlan, kind: str, out: np.ndarray) -> None:
    """Write :func:`mixture_rows`'s ``kind`` of one sparse sub-block into ``out``."""
    if kind == "log_prob":
        out[...] = plan.log_prob_norm
    elif kind == "label":
        out[...] = plan.label
    else:
        out[...] = 0.0
        for k in range(plan.offsets.shape[0] - 1):
            out[plan.rows[plan.of(k)], k] = plan.resp[plan.of(k)]
