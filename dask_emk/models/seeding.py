"""Seeding for k-means and mixtures: k-means||, k-means++ and random rows.

The seedings :func:`random_rows`, :func:`kmeans_parallel` and
:func:`kmeans_plusplus` share their first arguments and their result:

- ``X``: ndarray or dask array of shape (n_samples, d);
- ``n`` or ``n_clusters``: int, how many rows or centres to return;
- ``random_state``: int, RandomState or None;
- ``sample_weight``: ndarray or dask array of shape (n_samples,), optional
  (rows are drawn ∝ weight);
- ``omit_nan``: bool (``nan_policy='omit'``, and 'marginalize', which seeds
  from complete rows only): rows holding NaN are never drawn nor weigh in
  any potential (the passes' requests take complete rows, so they can share
  a pass with fits that use the gaps, :class:`dask_emk.engine.batch.Pass`);
- the result: ndarray of shape (n, d), float64.

Work on the full data is done in passes (one Dask compute each, see
:mod:`dask_emk.engine.passes`; in-memory numpy input runs the same passes on
local threads); everything on candidates is in memory. Every random draw
about a row inside a pass is keyed by a seed drawn from ``random_state``
and the row's global index (:func:`dask_emk.core.blocks.row_uniforms`), and
its distances are float64 from the rows as stored: one ``random_state``
draws the same rows whatever the chunking, the scheduler, the input type
(numpy, dask, zarr, xarray) or float32 storage of the same values. No
weights draws as weights of 1 (the same code, bit for bit), and a row of
weight 0 is never drawn.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import sklearn.cluster
from sklearn.utils import check_random_state

from dask_emk._logging import STEPS_LOGGER
from dask_emk.core.nan_policy import NanPolicy
from dask_emk.engine.batch import Batch, Steps, run_one
from dask_emk.engine.passes import assign_request, seed_request
from dask_emk.engine.reduction import single_blas_thread

#: Default number of k-means|| rounds; Bahmani et al. (2012) find ~5 enough.
DEFAULT_ROUNDS = 5
#: Weighted Lloyd iterations on the k-means|| candidates (in memory).
CANDIDATE_LLOYD_ITER = 30

#: What each seeding drew and how long it took (INFO; the CLI shows it, ``-q`` hides it).
steps_log = logging.getLogger(STEPS_LOGGER)


def done(value: Any) -> Steps:
    """Step generator of a value known already (it asks nothing of the data)."""
    return value
    yield  # a generator function that never yields


def random_rows(
    X: Any, n: int, random_state: Any, sample_weight: Any = None, omit_nan: bool = False
) -> np.ndarray:
    """n distinct rows chosen at random, with probability ∝ ``sample_weight``.

    Weighted sampling without replacement (Efraimidis–Spirakis keys
    log(u) / w, u keyed by row), one pass over the data for numpy and dask
    input alike; no weights draws as weights of 1. Arguments and result as
    said in the module docstring.
    """
    steps = random_rows_steps(X, n, check_random_state(random_state), sample_weight, omit_nan)
    return run_one(X, sample_weight, steps, nan_policy=_alone(omit_nan))


def _alone(omit_nan: bool) -> NanPolicy:
    """The policy of a seeding run alone: with ``omit_nan`` its pass leaves out NaN rows."""
    return NanPolicy.OMIT if omit_nan else NanPolicy.RAISE


def random_rows_steps(
    X: Any, n: int, rng: np.random.RandomState, sample_weight: Any = None, omit_nan: bool = False
) -> Steps:
    """:func:`random_rows` as a step generator (:mod:`dask_emk.engine.batch`).

    Draws from ``rng`` now, before the generator runs, as every ``*_steps``
    function of this module: fits in one batch draw one after the other.
    The rows are drawn ∝ the weights of the pass that answers (the batch's);
    ``sample_weight`` is not read here (kept for the signature the
    ``*_steps`` functions share).
    """
    return _drawn_rows(X.shape[1], n, _seed(rng), omit_nan)


def _drawn_rows(d: int, n: int, seed: int, omit_nan: bool, say: bool = True) -> Steps:
    """``say``: log the draw (not when it is a step of another seeding)."""
    start = time.perf_counter()
    empty = np.zeros((0, d))
    stats = yield seed_request(empty, empty, np.zeros(d), n, seed, complete_rows=omit_nan)
    rows = _sampled(stats, 0)
    if omit_nan:
        _check_enough_rows(rows.shape[0], n)
    if say:
        _log_seeding("random rows", _count(rows.shape[0], "row") + " drawn", 1, start)
    return rows


def _log_seeding(
    name: str, what: str, passes: int, start: float, level: int = logging.INFO
) -> None:
    """One line per seeding: what it gave, its passes over the data, its time
    (wall clock since its first request: fits batched together share passes)."""
    took = time.perf_counter() - start
    steps_log.log(level, "seeding %s: %s, %d %s over the data, %.2f s", name, what, passes,
                  "pass" if passes == 1 else "passes", took)  # fmt: skip


def _log_round(
    round_: int, n_rounds: int, drawn: int, total: int, start: float, level: int = logging.INFO
) -> None:
    """One line per k-means|| round: the rows it drew as candidates, and its time."""
    took = time.perf_counter() - start
    steps_log.log(level, "seeding k-means|| round %d/%d: %s drawn (%d in all), %.2f s", round_,
                  n_rounds, _count(drawn, "candidate"), total, took)  # fmt: skip


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _span(values: Sequence[float]) -> str:
    """``7``, or ``5–10`` for values that differ."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


class SeedingLog:
    """The lines of the k-means|| seedings of one batch (:class:`dask_emk.engine.batch.Batch`).

    A seeding alone says what each round drew and what it gave. Seedings
    batched together (``n_init`` runs, the candidates of GaussianMixtureIC)
    share their passes, so they say it once for all: one line per round, when
    every seeding has drawn its candidates of the round (or stopped before
    it), and one when all are done; each seeding's own lines go to DEBUG.
    A seeding joins when it is made, before the batch runs.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.last: dict[int, int] = {}  # seeding -> the last round it reported
        self.left: set[int] = set()  # seedings past their rounds
        self.rounds: dict[int, list] = {}  # round -> [(drawn, total, began, n_rounds)]
        self.ends: list[tuple] = []  # (candidates, centres, passes, start)

    @property
    def alone(self) -> bool:
        return len(self.last) == 1

    @property
    def own_level(self) -> int:
        """The level of a seeding's own lines: INFO alone, DEBUG in company."""
        return logging.INFO if self.alone else logging.DEBUG

    def join(self) -> int:
        """A new seeding's number."""
        member = len(self.last)
        self.last[member] = 0
        return member

    def round(self, member: int, round_: int, n_rounds: int, drawn: int, total: int,
              began: float) -> None:  # fmt: skip
        _log_round(round_, n_rounds, drawn, total, began, self.own_level)
        self.last[member] = round_
        self.rounds.setdefault(round_, []).append((drawn, total, began, n_rounds))
        self._say_rounds()

    def rounds_over(self, member: int) -> None:
        self.left.add(member)
        self._say_rounds()

    def _say_rounds(self) -> None:
        """The batch's line of each round every seeding has drawn in or stopped before."""
        if self.alone:
            return
        for round_ in sorted(self.rounds):
            if any(last < round_ and m not in self.left for m, last in self.last.items()):
                return  # a seeding has yet to draw in it
            drawn, total, began, n_rounds = zip(*self.rounds.pop(round_), strict=True)
            steps_log.info(
                "seeding k-means|| round %d/%d (%d seedings in one pass): %s candidates drawn "
                "each (%s in all), %.2f s", round_, max(n_rounds), len(drawn), _span(drawn),
                _span(total), time.perf_counter() - min(began),
            )  # fmt: skip

    def done(self, member: int, candidates: int, centres: int, passes: int,
             start: float) -> None:  # fmt: skip
        what = f"{candidates} candidates weighted by their nearest rows, reduced to "
        _log_seeding("k-means||", what + _count(centres, "centre"), passes, start, self.own_level)
        self.ends.append((candidates, centres, passes, start))
        if len(self.ends) < len(self.last):
            return
        if not self.alone:
            sizes, ks, counts, starts = zip(*self.ends, strict=True)
            steps_log.info(
                "seeding k-means|| (%d seedings): %s candidates weighted by their nearest rows, "
                "reduced to %s centres, %s passes over the data, %.2f s", len(self.ends),
                _span(sizes), _span(ks), _span(counts), time.perf_counter() - min(starts),
            )  # fmt: skip
        self._reset()  # all done: a later seeding of the batch starts afresh


def seeding_log(batch: Batch | None = None) -> SeedingLog:
    """The :class:`SeedingLog` of the seedings of ``batch`` (one of its own without one)."""
    return SeedingLog() if batch is None else batch.shared.setdefault(__name__, SeedingLog())


def _check_enough_rows(n_rows: int, n: int) -> None:
    if n_rows < n:
        raise ValueError(
            f"Only {n_rows} row(s) of X hold no NaN (nan_policy='omit' leaves the others "
            f"out; 'marginalize' seeds from complete rows), fewer than the {n} needed; lower "
            "the number of clusters or components."
        )


def _seed(rng: np.random.RandomState) -> int:
    return int(rng.randint(2**31 - 1))


def _sampled(stats: dict, stream: int) -> np.ndarray:
    """Rows sampled in a stream (drop -inf padding: rows of zero mass)."""
    return stats["x"][stream][np.isfinite(stats["key"][stream])]


def kmeans_parallel(
    X: Any,
    n_clusters: int,
    random_state: Any,
    sample_weight: Any = None,
    oversampling_factor: float = 2,
    n_rounds: int | None = None,
    omit_nan: bool = False,
) -> np.ndarray:
    """k-means|| seeding (Bahmani et al. 2012), with sample weights.

    Start from one row drawn ∝ w. Each round samples every row independently
    with probability min(1, ℓ w D(x) / φ), ℓ = ``oversampling_factor`` ×
    ``n_clusters``, D the squared distance to the current candidates and φ
    = Σ w D; φ of the round is summed in the same pass that samples (rows
    carry keys ℓ w D / u and those above φ are taken). Then every candidate
    is weighted by the sample weight of the rows nearest to it, and the
    weighted candidates are reduced to ``n_clusters`` in memory by weighted
    k-means++ and weighted Lloyd iterations.

    Passes over the data: ``n_rounds + 2`` (the first for the first row).

    Parameters
    ----------
    X, n_clusters, random_state, sample_weight
        As said in the module docstring.
    oversampling_factor : float, default=2
    n_rounds : int, optional
        Number of rounds, default 5.
    """
    steps = kmeans_parallel_steps(
        X, n_clusters, check_random_state(random_state), sample_weight, oversampling_factor,
        n_rounds, omit_nan,
    )  # fmt: skip
    return run_one(X, sample_weight, steps, nan_policy=_alone(omit_nan))


def kmeans_parallel_steps(
    X: Any,
    n_clusters: int,
    rng: np.random.RandomState,
    sample_weight: Any = None,
    oversampling_factor: float = 2,
    n_rounds: int | None = None,
    omit_nan: bool = False,
    batch: Batch | None = None,
) -> Steps:
    """:func:`kmeans_parallel` as a step generator; draws from ``rng`` now.

    The draws: the first row and one seed per round, as the passes would;
    the in-memory reduction of the candidates draws from a copy of ``rng``
    taken then, and ``rng`` moves past as many draws as that reduction
    makes (:func:`_skip_reduction`), so the random stream is the one of
    drawing as the work goes, and nothing is drawn after the passes.
    The seedings of one ``batch`` log their rounds together (:class:`SeedingLog`).
    """
    n_rounds = DEFAULT_ROUNDS if n_rounds is None else n_rounds
    first = _drawn_rows(X.shape[1], 1, _seed(rng), omit_nan, say=False)
    seeds = [_seed(rng) for _ in range(n_rounds)]
    reduce_rng = copy.deepcopy(rng)
    _skip_reduction(rng, n_clusters)
    ell = oversampling_factor * n_clusters
    log = seeding_log(batch)
    return _kmeans_parallel(X, n_clusters, first, seeds, reduce_rng, ell, sample_weight, omit_nan,
                            log, log.join())  # fmt: skip


def _skip_reduction(rng: np.random.RandomState, n_clusters: int) -> None:
    """Move ``rng`` past the draws of :func:`sklearn.cluster.kmeans_plusplus`:
    one uniform for the first centre, then 2 + ⌊ln K⌋ per further centre."""
    rng.random_sample(1 + (n_clusters - 1) * (2 + int(np.log(n_clusters))))


def _kmeans_parallel(
    X: Any, n_clusters: int, first: Steps, seeds: list[int], reduce_rng: np.random.RandomState,
    ell: float, sample_weight: Any, omit_nan: bool, log: SeedingLog, member: int,
) -> Steps:
    start = time.perf_counter()
    candidates = yield from first
    origin = candidates[0]
    # Room for the sample: its size has mean <= ℓ and sd <= sqrt(ℓ).
    n_keep = int(math.ceil(ell + 6 * math.sqrt(ell) + 10))
    none = np.zeros((0, X.shape[1]))
    passes = 1
    for round_, seed in enumerate(seeds, 1):
        began = time.perf_counter()
        stats = yield seed_request(
            candidates, none, origin, n_keep, seed, ell, complete_rows=omit_nan
        )
        passes += 1
        phi = stats["potential"][0]
        if not phi > 0:  # every row sits on a candidate
            break
        chosen = stats["x"][0][stats["key"][0] > phi]
        candidates = np.concatenate([candidates, chosen])
        log.round(member, round_, len(seeds), chosen.shape[0], candidates.shape[0], began)
    log.rounds_over(member)
    counts = (yield assign_request(candidates, origin, complete_rows=omit_nan))["N"]
    centers = yield from reduce_candidates(
        candidates, counts, n_clusters, reduce_rng, X, sample_weight, omit_nan
    )
    log.done(member, candidates.shape[0], centers.shape[0], passes + 1, start)
    return centers


def reduce_candidates(
    candidates: np.ndarray, weights: np.ndarray, n_clusters: int, rng: np.random.RandomState,
    X: Any, sample_weight: Any, omit_nan: bool = False,
) -> Steps:
    """Weighted k-means++ then weighted Lloyd on the candidates, in memory (a step generator).

    Candidates that attract no weight are dropped; if fewer than
    ``n_clusters`` remain (data with few distinct rows) random rows fill in.
    """
    keep = weights > 0
    candidates, weights = candidates[keep], weights[keep]
    if candidates.shape[0] <= n_clusters:
        extra = n_clusters - candidates.shape[0]
        if extra:
            fill = yield from random_rows_steps(X, extra, rng, sample_weight, omit_nan)
            candidates = np.concatenate([candidates, fill])
        return candidates
    start, _ = sklearn.cluster.kmeans_plusplus(
        candidates, n_clusters, sample_weight=weights, random_state=rng
    )
    km = sklearn.cluster.KMeans(
        n_clusters, init=start, n_init=1, max_iter=CANDIDATE_LLOYD_ITER, algorithm="lloyd"
    )
    # scikit-learn sets and restores a process-wide BLAS limit itself; inside
    # ours, concurrent fits cannot leave the process at one BLAS thread.
    with single_blas_thread():
        km.fit(candidates, sample_weight=weights)
    return km.cluster_centers_.astype(np.float64)


def kmeans_plusplus(
    X: Any, n_clusters: int, random_state: Any, sample_weight: Any = None, omit_nan: bool = False
) -> np.ndarray:
    """Greedy k-means++ seeding with 2 + ⌊ln K⌋ local trials, as scikit-learn.

    Out of core for numpy and dask input alike (the same row-keyed draws):
    the first centre is a row drawn ∝ w; then every pass scores the current
    trials (potential Σ w min(D, d²(x, trial))) and, for each trial, draws
    the next trials ∝ w D as if it were chosen (without replacement,
    Efraimidis–Spirakis keys), so picking a centre and drawing the next
    trials share one pass.

    Passes over the data: ``n_clusters + 1`` (the first for the first row).
    Arguments and result as said in the module docstring.
    """
    steps = kmeans_plusplus_steps(
        X, n_clusters, check_random_state(random_state), sample_weight, omit_nan
    )
    return run_one(X, sample_weight, steps, nan_policy=_alone(omit_nan))


def kmeans_plusplus_steps(
    X: Any, n_clusters: int, rng: np.random.RandomState, sample_weight: Any = None,
    omit_nan: bool = False,
) -> Steps:
    """:func:`kmeans_plusplus` as a step generator; draws from ``rng`` now (one seed per pass)."""
    first = _drawn_rows(X.shape[1], 1, _seed(rng), omit_nan, say=False)
    seeds = [_seed(rng) for _ in range(n_clusters)]
    return _kmeans_plusplus(X.shape[1], n_clusters, first, seeds, omit_nan)


def _kmeans_plusplus(
    d: int, n_clusters: int, first: Steps, seeds: list, omit_nan: bool
) -> Steps:
    n_trials = 2 + int(np.log(n_clusters))
    start = time.perf_counter()
    centers = yield from first
    origin = centers[0]
    none = np.zeros((0, d))
    stats = yield seed_request(centers, none, origin, n_trials, seeds[0], complete_rows=omit_nan)
    trials = _sampled(stats, 0)
    passes = 2
    for seed in seeds[1:]:
        if trials.shape[0] == 0:  # fewer distinct rows than clusters
            fill = np.repeat(centers[:1], n_clusters - centers.shape[0], axis=0)
            _log_plusplus(centers.shape[0], n_clusters, n_trials, passes, start)
            return np.concatenate([centers, fill])
        last = centers.shape[0] == n_clusters - 1
        n_keep = 0 if last else n_trials
        stats = yield seed_request(centers, trials, origin, n_keep, seed, complete_rows=omit_nan)
        passes += 1
        best = int(np.argmin(stats["potential"]))
        centers = np.concatenate([centers, trials[best : best + 1]])
        trials = _sampled(stats, best)
    _log_plusplus(centers.shape[0], n_clusters, n_trials, passes, start)
    return centers


def _log_plusplus(found: int, n_clusters: int, n_trials: int, passes: int, start: float) -> None:
    what = f"{_count(found, 'centre')}, each the best of {n_trials} rows drawn ∝ distance²"
    if found < n_clusters:
        what += f" (the data has fewer distinct rows: the first repeated up to {n_clusters})"
    _log_seeding("k-means++", what, passes, start)
