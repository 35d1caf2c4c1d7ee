"""The sparse E-step: where separated components make most responsibilities
exactly zero in float64, prove which (row, component) pairs can matter and
evaluate only those.

A component more than ~37 + ln K nats below its row's best adds less than
half an ulp to the row's total. The proof comes from bounds out of one
distance GEMM in a diagonal metric (:class:`BoundMetric`; full covariance
with d > 3: the exact arithmetic is then needed only for the candidates)
or from the log-densities of all pairs themselves, screened piece by piece
in cache (:func:`candidate_pairs`); the candidates' exact log-densities,
responsibilities and moments come from compiled loops over each component's
pairs (:mod:`dask_emk.core.pair_loops`), read from the rows' own float32 or
float64 values without a shifted copy. A probe of each sub-block's first rows
sends overlapping components to the dense path (:func:`sparse_plan`), unless
the pass's :class:`~dask_emk.core.mixture.EStepOptions` say otherwise.
Why each bound holds: docs/NUMERICS.md.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from dask_emk.core import candidate_loops, pair_loops
from dask_emk.core.blocks import Scratch, shift_block
from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.mixture import (
    MixtureParams,
    mixture_sub_blocks,
    n_quadratic,
    weighted_log_prob,
)

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
#: ``EStepOptions(path='sparse')`` sets all to 1 (never dense).
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
class SparseState:
    """What the sparse E-step learns about one parameter set as a pass goes
    through its blocks in one process (:func:`sparse_state`).

    Attributes
    ----------
    dense, sparse : int
        Verdicts of :func:`sparse_plan` so far: sub-blocks sent dense, and sparse.
    modes : dict of str to int
        Sparse verdicts so far per way of finding candidates.
    """

    params: weakref.ref
    dense: int = 0
    sparse: int = 0
    modes: dict[str, int] = field(default_factory=dict)

    @cached_property
    def metric(self) -> BoundMetric:
        """The metric of the candidate bounds (:class:`BoundMetric`), made once."""
        return BoundMetric.of(self.params())


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def sparse_state(params: MixtureParams) -> SparseState:
    """The :class:`SparseState` of ``params`` in this process: per pass, since a
    pass builds its parameters once and ships them once to each worker.

    Kept beside the parameters, not on them (they are a frozen value), and
    only while they live. Threads of one process share it, as they share the
    parameters; its counts steer only how fast the sparse E-step is.
    """
    with _STATES_LOCK:
        state = _STATES.get(params)
        if state is None:
            state = _STATES[params] = SparseState(weakref.ref(params))
        return state


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
        """(order, component) of :func:`pair_loops.row_major`."""
        return pair_loops.row_major(self.offsets, self.rows, self.n)


def exact_candidates(covariance_type: str, d: int) -> bool:
    """Whether candidates come from the exact log-densities of all pairs: where
    the dense E-step's GEMM of features Φ ((q + d) columns) costs at most
    EXACT_FEATURES times a distance GEMM (d columns): every type but full
    covariance with d > 3. Elsewhere the bounds of :class:`BoundMetric`.

    Measured both ways for diag: benchmarks/RESULTS.md, session 7.
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
    xᵀ A_k x ≥ low2_k ‖x‖² − Σ a_i (v_iᵀ x)² (:func:`candidate_loops.pair_bounds`),
    for any vectors v_i, so only the eigenvalues of C_k need to be proven.

    Attributes
    ----------
    w : ndarray of shape (d,)
    low, high : ndarray of shape (K,)
        Proven bounds on the eigenvalues of A_k: ``eigh``'s, widened by
        the rounding of forming A_k and of ``eigh`` (docs/NUMERICS.md,
        "The bound metric"); the lower bound clipped at zero.
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
        A proven lower bound on λ_min(C_k), widened as ``low`` and for the
        rank-r term (docs/NUMERICS.md); zero for components without directions.
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
    (:func:`candidate_loops.select_pairs`); with the exact log-densities (K, n) of all
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
    a relative allowance for huge values, :func:`candidate_loops.select_pairs`).
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

    ℓ̂ lies within
    e_ik = (q + 2d + 8) ε tr(P_k) (‖y_i‖ + ‖μ_k‖)² + 4 ε (|ℓ̂_ik| + |peak_k|)
    of the exact value (:func:`candidate_loops.select_exact`; proof:
    docs/NUMERICS.md, "Exact log-densities").
    """
    K, d = params.means.shape
    n = Y.shape[0]
    log_dens = scratch.get("log_dens", (K, n))
    # In the dense path's cache-sized pieces: the features Φ of a whole
    # sparse sub-block would be (q + d) / (d + K) times its size.
    for rows in mixture_sub_blocks(n, d, params.covariance_type, K, params.estep.sub_block_bytes):
        weighted_log_prob(Y[rows], params, scratch, out=log_dens[:, rows])
    top = log_dens.max(axis=0)
    if not np.isfinite(top).all():
        return None
    rows_buffer = scratch.get("rows_buffer", (K, n)).view(np.intp)
    eps = np.finfo(np.float64).eps
    scale = _float64_scale(params, nm)
    found = candidate_loops.select_exact(log_dens, top, ny, scale, 4 * eps, margin, rows_buffer)
    return Candidates(*found, log_dens)


def _float64_scale(params: MixtureParams, nm: np.ndarray) -> np.ndarray:
    """``scale`` of :func:`candidate_loops.select_exact` for log-densities computed in
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


#: Smallest K (q + d) (components times features Φ) for which
#: :func:`_screened_bounds` may go float32 (``EStepOptions.screen_float32``
#: 'auto'): the float32 GEMM takes ~45% of the float64 one's time, but the
#: candidates' exact log-densities must then be computed again (float64 ones
#: are kept). Measured per 65,536-row block
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
    (:func:`candidate_loops.screen_pairs`): in float32 where the sub-block's error
    bound (:func:`_float32_scale`) is at most SCREEN_SLACK nats, else in
    float64 with the bound of :func:`_exact_bounds`. Each pair is kept as
    :func:`candidate_loops.select_exact` keeps it, so a skipped pair's exact
    log-density is below its row's best minus ``margin`` in both cases.

    Unlike :func:`_exact_bounds` no shifted copy of X and no (K, n)
    log-densities are formed (timings: benchmarks/RESULTS.md, session 7).
    Where every sub-block went float64 the candidates keep their ℓ̂, the
    dense E-step's arithmetic; otherwise :func:`pair_log_densities` computes
    them (a float32 ℓ̂ is not exact).
    """
    K, d = params.means.shape
    n = X.shape[0]
    A, bias = params.log_prob_coefficients
    m = min(SCREEN_ROWS, max(n, 1))
    choice = params.estep.screen_float32
    wide = choice == "always" or (choice == "auto" and A.size >= SCREEN_FLOAT32_WORK)
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
    code = candidate_loops.BLOCK_CODES[COVARIANCE_TYPES[params.covariance_type].block]
    offsets, rows, log_dens, finite = candidate_loops.screen_pairs(
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
    ``scale`` of :func:`candidate_loops.select_exact` that bounds the error of
    log-densities computed from them in float32 by :func:`candidate_loops.screen_pairs`
    (Â empty where the coefficients' range does not allow float32).

    The bound: |ℓ̃ − ℓ| ≤ c α (‖y‖ + β / 2α)² + n_f 2⁻⁸⁰ + 4 ε |ℓ̂|, with
    c = 2 (n_f + 5) 2⁻²⁴, n_f = q + d, α and β the largest norms of the
    quadratic and linear coefficients; so scale = [c α, β / 2α,
    n_f 2⁻⁸⁰ / rel], rel = 4 ε. Proof: docs/NUMERICS.md, "The float32 screen".
    """
    A, _ = params.log_prob_coefficients
    d = params.means.shape[1]
    q = A.shape[0] - d
    block = COVARIANCE_TYPES[params.covariance_type].block
    quad, linear = np.abs(A[:q]), A[q:]
    alpha = np.max(np.sqrt((quad**2).sum(axis=0)) if block == "matrix" else quad.max(axis=0))
    beta = np.max(np.sqrt((linear**2).sum(axis=0)))
    nonzero = np.abs(A[A != 0])
    usable = (
        np.isfinite(A).all()
        and alpha > 0
        and (nonzero.min(initial=1.0) >= 2.0**-60 and nonzero.max(initial=1.0) <= 2.0**60)
    )
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
    the metric (:func:`candidate_loops.pair_bounds`), each log-density
    ℓ_k = peak_k − ½ (y − μ_k)ᵀ P_k (y − μ_k) lies in
    [peak_k − ½ high_k D, peak_k − ½ low_k D]. The row's best is at least
    its largest lower bound and at least the exact log-density of one
    likely component minus its rounding (:func:`_best_floor`). Twice the
    expansion's rounding error is allowed (docs/NUMERICS.md, "The bound metric").

    Where the candidates are exactly the likely components (one per row,
    separated clusters), the returned pairs carry those exact log-densities,
    so nothing is computed twice.
    """
    K, d = params.means.shape
    n = X.shape[0]
    metric = sparse_state(params).metric
    Z = scratch.get("Z", (n, d))
    zz, ny = candidate_loops.metric_rows(X, origin, metric.w, Z)
    nn = np.einsum("ij,ij->i", metric.means, metric.means)
    G = np.matmul(Z, metric.columns, out=scratch.get("G", (n, metric.columns.shape[1])))
    rel_err = 2.0 * (d + 3) * np.finfo(np.float64).eps
    upper = scratch.get("upper", (n, K))
    directions = (metric.starts, metric.along, metric.coef, metric.low2, metric.vnorm)
    lower, guess, finite = candidate_loops.pair_bounds(
        G, zz, nn, ny, nm, metric.eta, params.log_peak, metric.low, metric.high, rel_err,
        directions, upper,
    )  # fmt: skip
    if not finite:
        return None
    likely = Candidates(*candidate_loops.group_rows(guess, K))
    plan = SparsePlan(X, origin, likely, scratch)
    likely.pair_log_dens = pair_log_densities(plan, params)
    floor = np.maximum(lower, _best_floor(likely, guess, params, ny, nm))
    rows_buffer = scratch.get("select_buffer", (K, n)).view(np.intp)
    offsets, rows = candidate_loops.select_pairs(upper, floor, margin, rows_buffer)
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
    rows, source, first = candidate_loops.merge_likely(found.offsets, found.rows, guess, position)
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

    The bound subtracted is 8 (d + 2) ε (tr(P_k) (‖y‖ + ‖μ_k‖)² + |ℓ| + |peak_k|)
    (docs/NUMERICS.md, "The bound metric").
    """
    d = params.means.shape[1]
    exact = np.empty(guess.shape[0])
    exact[likely.rows] = likely.pair_log_dens
    scale = sparse_state(params).metric.trace[guess] * (ny + nm[guess]) ** 2 + np.abs(exact)
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
    if params.estep.path == "dense" or K == 1 or n == 0:
        return None
    state = sparse_state(params)
    if state.sparse == 0 and state.dense >= PROBE_TRUST and state.dense % PROBE_EVERY:
        state.dense += 1
        return None
    plan = _probed_plan(X, params, scratch)
    if plan is None:
        state.dense += 1
    else:
        state.sparse += 1
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
    state = sparse_state(params)
    sparse_modes = state.modes
    if state.dense == 0 and len(sparse_modes) == 1 and (max(sparse_modes.values()) >= PROBE_TRUST):
        modes = list(sparse_modes)
    else:
        modes = _probe(X[:PROBE_ROWS], params, scratch, modes)
        if not modes:
            return None
    mode = modes[0]
    most = _most_candidates(mode, K, d, params.estep.path)
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


def _most_candidates(mode: str, K: int, d: int, path: str) -> float:
    """The most candidates a row may have on average for ``mode`` to go sparse
    (DENSE_FRACTION; "bounds" and "exact full" are the modes of full
    covariance with d > EXACT_FEATURES, where up to SMALL_MATRIX "bounds"
    is tuned as "small full", the only mode there); K with ``path='sparse'``."""
    if path == "sparse":
        return float(K)
    small_full = mode == "bounds" and d <= SMALL_MATRIX
    return 1.0 + DENSE_FRACTION["small full" if small_full else mode] * (K - 1)


def _probe(probe: np.ndarray, params: MixtureParams, scratch, modes: list):
    """The first of ``modes`` whose candidates of the ``probe`` rows are few
    enough (DENSE_FRACTION), as a one-element list; empty if none."""
    K, d = params.means.shape
    for mode in modes:
        most = _most_candidates(mode, K, d, params.estep.path)
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
    top, plan.label = pair_loops.pair_top(plan.offsets, rows, log_dens, n)
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
    component's pairs, :func:`pair_loops.pair_log_densities_matrix`; diagonal and
    scalar: in row order, :attr:`SparsePlan.row_major`, which the moments
    reuse). Read from the exact
    log-densities of all pairs where the candidates were found with them.
    """
    ctype = COVARIANCE_TYPES[params.covariance_type]
    if plan.pairs.pair_log_dens is not None:
        return plan.pairs.pair_log_dens
    out = np.empty(plan.rows.shape[0])
    if plan.pairs.log_dens is not None:
        pair_loops.gather_pairs(plan.pairs.log_dens, plan.offsets, plan.rows, out)
        return out
    args = (plan.X, plan.origin, plan.offsets, plan.rows, params.shifted_means)
    if ctype.block == "matrix":
        U = params.precisions_cholesky.reshape(-1, *params.precisions_cholesky.shape[-2:])
        pair_loops.pair_log_densities_matrix(*args, U, params.log_peak, out)
        return out
    prec = params.precisions_cholesky**2
    pair_loops.pair_log_densities(
        plan.X, plan.origin, *plan.row_major, plan.rows, params.shifted_means,
        prec.reshape(prec.shape[0], -1), params.log_peak, out,
    )  # fmt: skip
    return out


def sparse_raw_moments(plan: SparsePlan, weight: np.ndarray | None, covariance_type: str):
    """:func:`raw_moments` summed over the candidate pairs only."""
    K, d = plan.offsets.shape[0] - 1, plan.X.shape[1]
    ctype = COVARIANCE_TYPES[covariance_type]
    wr = plan.resp if weight is None else plan.resp * weight[plan.rows]
    N, SY = np.zeros(K), np.zeros((K, d))
    if ctype.block != "matrix":
        second = np.zeros((K, n_quadratic(d, covariance_type)))
        pair_loops.pair_moments(plan.X, plan.origin, *plan.row_major, plan.rows, wr, N, SY, second)
        return {"N": N, "raw": np.concatenate([second, SY], axis=1)}
    second = np.zeros((K, 0 if ctype.whitened else n_quadratic(d, covariance_type)))
    pair_loops.pair_moments_matrix(plan.X, plan.origin, plan.offsets, plan.rows, wr, N, SY, second)
    return _with_pooled_moments({"N": N, "raw": np.concatenate([second, SY], axis=1)},
                                plan, weight, ctype.whitened)  # fmt: skip


def _with_pooled_moments(raw: dict, plan: SparsePlan, weight, whitened: bool) -> dict:
    """Whitened types (tied): ``SY`` and the pooled ``YY`` = Σ w y yᵀ instead of ``raw``."""
    if not whitened:
        return raw
    wY = plan.Y if weight is None else plan.Y * weight[:, None]
    return {"N": raw["N"], "SY": raw["raw"], "YY": wY.T @ plan.Y}


def sparse_stats(plan: SparsePlan, weight, moment_type: str, softness: bool) -> dict:
    """Statistics of one sparse sub-block (:func:`dask_emk.core.estep.estep_stats`)."""
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


def sparse_rows(plan: SparsePlan, kind: str, out: np.ndarray) -> None:
    """Write :func:`dask_emk.core.estep.mixture_rows`'s ``kind`` of one sparse
    sub-block into ``out``."""
    if kind == "log_prob":
        out[...] = plan.log_prob_norm
    elif kind == "label":
        out[...] = plan.label
    else:
        out[...] = 0.0
        for k in range(plan.offsets.shape[0] - 1):
            out[plan.rows[plan.of(k)], k] = plan.resp[plan.of(k)]
