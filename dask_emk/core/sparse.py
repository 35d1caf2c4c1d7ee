"""The sparse E-step: where separated components make most responsibilities
exactly zero in float64, evaluate only the (row, component) pairs that can
matter (:mod:`dask_emk.core.candidates` proves which), in compiled loops over
each component's pairs (:mod:`dask_emk.core.pair_loops`), read from the rows'
own float32 or float64 values without a shifted copy.

A probe of each sub-block's first rows sends overlapping components to the
dense path (:func:`sparse_plan`), unless the pass's
:class:`~dask_emk.core.mixture.EStepOptions` say otherwise; what the probes
found is kept per pass (:func:`sparse_state`).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from dask_emk.core import pair_loops
from dask_emk.core.blocks import Scratch, shift_block
from dask_emk.core.candidates import (
    Candidates,
    candidate_pairs,
    exact_candidates,
    matrix_log_densities,
    screened,
)
from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.mixture import MixtureParams, n_quadratic

#: Sparse sub-blocks: the rows of a sub-block may have on average at most
#: one candidate plus this fraction of the other K − 1 components, by how
#: the candidates are found (measured break-even with the dense path, one
#: BLAS thread, benchmarks/bench_sparse_kernel.py). "bounds": from
#: :func:`~dask_emk.core.candidates._metric_bounds`, a pass over all pairs plus
#: the exact arithmetic of the candidates. "exact": from the dense
#: log-densities (:func:`~dask_emk.core.candidates._exact_bounds`); what
#: remains to save is the exp over all pairs and the moments' GEMM, which the
#: pair loops beat only for few pairs, or for many with full covariance and
#: d > 3 (its moments GEMM is half the dense work); tied's dense moments are
#: one GEMM for all components.
#: "small full": full covariance with exact_features < d <= SMALL_MATRIX (bounds
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

    dense: int = 0
    sparse: int = 0
    modes: dict[str, int] = field(default_factory=dict)


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
            state = _STATES[params] = SparseState()
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
    if exact_candidates(ct, d, params.estep):
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
    shifted = exact and not screened(ct, d, params.estep)
    Y = shift_block(X, params.origin, scratch) if shifted else None
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
    covariance with d > ``exact_features``, where up to SMALL_MATRIX "bounds"
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
    if ctype.block == "matrix":
        return matrix_log_densities(plan.X, plan.origin, plan.pairs, params)
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
