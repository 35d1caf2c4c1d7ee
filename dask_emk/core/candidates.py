"""Candidate pairs of the sparse E-step: which (row, component) pairs can
reach their row's total at float64 resolution, with a proof.

A component more than ~37 + ln K nats below its row's best adds less than
half an ulp to the row's total. The proof comes from the log-densities of
all pairs themselves, screened piece by piece in cache
(:func:`_screened_bounds`, :func:`_exact_bounds`), or, for full covariance
with d > 3, from bounds out of one distance GEMM in a diagonal metric
(:class:`BoundMetric`, :func:`_metric_bounds`): the exact arithmetic is then
needed only for the candidates. :func:`candidate_pairs` picks the way. Why
each bound holds: docs/NUMERICS.md. The compiled loops are in
:mod:`dask_emk.core.candidate_loops`.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from dask_emk.core import candidate_loops, pair_loops
from dask_emk.core.blocks import Scratch
from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.mixture import (
    EStepOptions,
    MixtureParams,
    mixture_sub_blocks,
    n_quadratic,
    weighted_log_prob,
)


def exact_candidates(covariance_type: str, d: int, estep: EStepOptions) -> bool:
    """Whether candidates come from the exact log-densities of all pairs: where
    the dense E-step's GEMM of features Φ ((q + d) columns) costs at most
    ``estep.exact_features`` times a distance GEMM (d columns): at the
    default 3, every type but full covariance with d > 3. Elsewhere the
    bounds of :class:`BoundMetric`.

    Measured both ways for diag: benchmarks/RESULTS.md, session 7.
    """
    return n_quadratic(d, covariance_type) + d <= estep.exact_features * d


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
    ``max_directions`` (:class:`EStepOptions`) eigenvectors v_i of its
    eigenvalues below a quarter of the median are also kept, with a_i = λ_(r+1) − λ_i ≥ 0: if
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
        most = params.estep.max_directions
        picked = [_soft_directions(A[k], eig[k], vectors[k], most) for k in range(M.shape[0])]
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


def _soft_directions(A: np.ndarray, eig: np.ndarray, vectors: np.ndarray, most: int):
    """(V (d, r), a (r,), low2) of one component for :class:`BoundMetric`:
    its eigenvectors of eigenvalues below a quarter of the median (at most
    ``most``), a_i = λ_(r+1) − λ_i, and the proven λ_min of C."""
    d = A.shape[0]
    r = min(int(np.sum(eig < eig[d // 2] / 4)), most, d - 1)
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


_METRICS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_METRICS_LOCK = threading.Lock()


def bound_metric(params: MixtureParams) -> BoundMetric:
    """The :class:`BoundMetric` of ``params``, made once per parameter set
    (per pass) in this process and kept while the parameters live."""
    with _METRICS_LOCK:
        metric = _METRICS.get(params)
    if metric is None:
        metric = BoundMetric.of(params)
        with _METRICS_LOCK:
            metric = _METRICS.setdefault(params, metric)
    return metric


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
    P + ln K + 1 nats below a lower bound on its row's best, P the options'
    ``prune_nats`` (:class:`EStepOptions`, 37): its responsibility is then
    below e^-P / K of the row's largest, and all skipped ones together below
    e^-P ≈ 0.4 ε of the row's total.
    The last nat covers the rounding of the bounds' own few operations (with
    a relative allowance for huge values, :func:`candidate_loops.select_pairs`).
    Bounds: :func:`_screened_bounds` where :func:`screened`, else
    :func:`_exact_bounds`, or :func:`_metric_bounds` if not ``exact`` and
    not :func:`exact_candidates`.
    """
    K, d = params.means.shape
    scratch = Scratch() if scratch is None else scratch
    margin = params.estep.prune_nats + math.log(K) + 1.0
    # NaN/inf rows turn into NaN bounds by design: they send the sub-block to
    # the dense path, which counts and drops them.
    with np.errstate(invalid="ignore", over="ignore"):
        nm = np.sqrt(np.einsum("ij,ij->i", params.shifted_means, params.shifted_means))
        if screened(params.covariance_type, d, params.estep):
            origin = np.zeros(d) if origin is None else origin
            return _screened_bounds(X, origin, params, nm, margin, scratch)
        if exact or exact_candidates(params.covariance_type, d, params.estep):
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


def screened(covariance_type: str, d: int, estep: EStepOptions) -> bool:
    """Whether :func:`_screened_bounds` finds the candidates: every
    :func:`exact_candidates` type but the whitened one (tied, whose
    log-densities are distances of whitened rows)."""
    whitened = COVARIANCE_TYPES[covariance_type].whitened
    return exact_candidates(covariance_type, d, estep) and not whitened


def _screened_bounds(
    X, origin, params: MixtureParams, nm, margin: float, scratch
) -> Candidates | None:
    """Candidates from the log-densities ℓ̂ = Φ(y) · A + b of all pairs, y = X
    − origin, computed and selected in sub-blocks of SCREEN_ROWS rows
    (:func:`candidate_loops.screen_pairs`): in float32 where the sub-block's error
    bound (:func:`_float32_scale`) is at most ``screen_slack`` nats
    (:class:`EStepOptions`), else in
    float64 with the bound of :func:`_exact_bounds`. Each pair is kept as
    :func:`candidate_loops.select_exact` keeps it, so a skipped pair's exact
    log-density is below its row's best minus ``margin`` in both cases.

    Unlike :func:`_exact_bounds` no shifted copy of X and no (K, n)
    log-densities are formed (timings: benchmarks/RESULTS.md, session 7).
    Where every sub-block went float64 the candidates keep their ℓ̂, the
    dense E-step's arithmetic; otherwise
    :func:`dask_emk.core.sparse.pair_log_densities` computes
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
    bounds = (scale32, _float64_scale(params, nm), 4 * eps, float(params.estep.screen_slack))
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
    metric = bound_metric(params)
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
    likely.pair_log_dens = matrix_log_densities(X, origin, likely, params)
    floor = np.maximum(lower, _best_floor(likely, guess, params, ny, nm))
    rows_buffer = scratch.get("select_buffer", (K, n)).view(np.intp)
    offsets, rows = candidate_loops.select_pairs(upper, floor, margin, rows_buffer)
    if np.array_equal(offsets, likely.offsets) and np.array_equal(rows, likely.rows):
        return likely
    return _merged_with_likely(X, origin, Candidates(offsets, rows), guess, likely, params)


def _merged_with_likely(
    X, origin, found: Candidates, guess, likely: Candidates, params
) -> Candidates:
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
    others = Candidates(offsets, rows[~kept])
    log_dens[~kept] = matrix_log_densities(X, origin, others, params)
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
    scale = bound_metric(params).trace[guess] * (ny + nm[guess]) ** 2 + np.abs(exact)
    scale += np.abs(params.log_peak[guess])
    return exact - 8.0 * (d + 2) * np.finfo(np.float64).eps * scale


def matrix_log_densities(X, origin, pairs: Candidates, params: MixtureParams) -> np.ndarray:
    """Exact log π_k N(y | μ_k, Σ_k) of the ``pairs`` of rows X − ``origin``
    with matrix blocks (full, tied), shape (n_pairs,): one fused compiled loop
    over each component's pairs in chunks
    (:func:`pair_loops.pair_log_densities_matrix`)."""
    out = np.empty(pairs.rows.shape[0])
    U = params.precisions_cholesky.reshape(-1, *params.precisions_cholesky.shape[-2:])
    pair_loops.pair_log_densities_matrix(
        X, origin, pairs.offsets, pairs.rows, params.shifted_means, U, params.log_peak, out
    )
    return out
