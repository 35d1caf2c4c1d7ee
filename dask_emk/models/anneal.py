"""AnnealedGaussianMixture: shared-σ² EM annealed down to k-means.

How a fit runs (passes over the FULL data in brackets):

1. one pass draws a uniform in-memory sample of ``sample_size`` rows and sums
   n, Σx, Σxxᵀ for the data covariance and its λ_max, the first critical
   variance [1; both in one Dask compute for lazy input];
2. deterministic annealing on the sample, in memory, computing only with the
   distinct means (rules in :mod:`dask_emk.core.anneal_rules`) [0];
3. Lloyd on the sample with the surplus means, Ward merges down to K, the
   K means annealed on until the assignments are hard, Lloyd on the sample
   again [0];
4. Lloyd on the full data with :class:`dask_emk.KMeans` from those centres,
   to its exact fixed point (tol 0) [its iterations];
5. the Hartigan polish (:func:`hartigan_polish`): Lloyd + batch Hartigan
   passes until no row has a move that lowers the cost, a move is kept only
   when the next pass shows a strictly lower inertia, then Lloyd again to the
   exact fixed point [1 pass when nothing moves; else a pass per round,
   at most ``hartigan_max_passes``, plus usually 2 for the final Lloyd].
   With ``hartigan_max_passes=0`` there is no polish and step 4 stops at
   ``tol`` [its iterations, plus one final assignment pass unless it
   converged exactly].

When the data has no more than ``sample_size`` rows the sample is the data,
and every annealing iteration is a full pass (counted as such).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from sklearn.base import ClusterMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dask_emk._logging import STEPS_LOGGER
from dask_emk.core import anneal_rules as rules
from dask_emk.core import assign, mixture
from dask_emk.core.blocks import rows_without_nan, without_nan_rows
from dask_emk.core.kernels import block_kernels
from dask_emk.core.layout import StatsLayout
from dask_emk.core.mixture import DEFAULT_ESTEP, EStepOptions
from dask_emk.core.mstep import m_step
from dask_emk.engine import reduction
from dask_emk.engine.cache import kept_rows
from dask_emk.engine.inputs import InputData
from dask_emk.engine.mixture_passes import anneal_block, moments_block, resp_rows
from dask_emk.models._docs import fill_doc
from dask_emk.models.base import ChunkedEstimator
from dask_emk.models.export import anneal_dataset, named_output, path_dataset
from dask_emk.models.hartigan import hartigan_polish, lloyd_from, lloyd_passes
from dask_emk.models.params import ANNEALED_GAUSSIAN_MIXTURE, POSITIVE_FINITE
from dask_emk.models.validation import NoTrainingDataInPickle, validate_features


# ----------------------------------------------------------------- passes
def anneal_layout(m: int, d: int) -> StatsLayout:
    shapes = dict(StatsLayout.mixture(m, d, "full").shapes)
    shapes["soft"] = ()
    return StatsLayout(shapes)


@dataclass
class Sample:
    """The in-memory sample the annealing runs on, and the data moments."""

    X: np.ndarray
    weight: np.ndarray | None
    is_full: bool
    mean: np.ndarray
    cov: np.ndarray
    total_weight: float


#: One line per annealing step and full-data pass (the CLI shows them, ``-q`` hides them).
steps_log = logging.getLogger(STEPS_LOGGER)


def _say(line: str, verbose) -> None:
    """A progress line: logged; printed too with ``verbose`` (scikit-learn's meaning)."""
    steps_log.info(line)
    if verbose:
        print(line)


def draw_sample(data: InputData, weight, size: int, rng, split_every) -> Sample:
    """Uniform sample of ``size`` rows (weights carried) and the data moments.

    One pass over the data: for lazy input the sampled rows and the moment
    statistics are computed together (one compute, each chunk read once).
    Row indices are drawn the same way for numpy and dask input, so both
    give the same sample. With ``nan_policy='omit'`` (and 'marginalize') the
    drawn rows holding NaN are dropped from the sample (a uniform sample of
    the complete rows), and the moments are those of the complete rows.
    """
    X, n, d = data.array, data.n_samples, data.n_features
    idx = None if size >= n else np.sort(rng.choice(n, size, replace=False))
    origin = reference_row(data, 0 if idx is None else int(idx[0]))
    layout = StatsLayout.mixture(1, d, "full")
    rows = X if idx is None else X[idx]
    w_rows = weight if weight is None or idx is None else weight[idx]
    stats, (rows, w_rows) = reduction.run_pass(
        X, weight, layout, moments_block, origin, layout, split_every=split_every,
        also=(rows, w_rows), nan_policy=data.nan_policy, complete_rows=complete_rows_only(data),
    )  # fmt: skip
    mean_shift = stats["S"][0] / stats["n"]
    cov = stats["Q"][0] / stats["n"] - np.outer(mean_shift, mean_shift)
    rows = np.asarray(rows, dtype=np.float64)
    w_rows = None if w_rows is None else np.asarray(w_rows, dtype=np.float64)
    if complete_rows_only(data):
        rows, w_rows = without_nan_rows(rows, w_rows)
    return Sample(rows, w_rows, idx is None, origin + mean_shift, cov, float(stats["n"]))


def complete_rows_only(data: InputData) -> bool:
    """The annealing's sample holds complete rows only: rows with NaN are
    omitted (``nan_policy='omit'``) or have gaps ('marginalize'). A gap has
    no value to split along or to place a mean on; the Lloyd runs on the
    full data then use every row's observed coordinates."""
    return data.nan_policy.allows_nan


def reference_row(data: InputData, start: int) -> np.ndarray:
    """A data row as reference point (moments of far-offset data lose no digits).

    Row ``start``; with ``nan_policy='omit'`` a row without NaN, from the
    row chunk holding ``start`` or the next ones (one read each).
    """
    X = data.array
    sizes = X.chunks[0] if data.is_lazy else (X.shape[0],)
    bounds = np.cumsum((0,) + tuple(sizes))
    if not complete_rows_only(data):
        bounds = np.array([start, start + 1])
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    for i in np.roll(np.arange(len(bounds) - 1), -first):
        rows = X[bounds[i] : bounds[i + 1]]
        if data.is_lazy:
            rows = reduction.compute_one(rows, optimize_graph=True)
        rows = np.asarray(rows, dtype=np.float64)
        keep = rows_without_nan(rows) if complete_rows_only(data) else None
        rows = rows if keep is None else rows[keep]
        if rows.shape[0]:
            return rows[0]
    raise ValueError(
        "Every row of X holds NaN, and nan_policy='omit' leaves them all out; pass data."
    )


# ------------------------------------------------------------------- path
@dataclass
class AnnealPath:
    """Recorder of the annealing path; components keep stable slot numbers.

    A split keeps the parent's slot for one child and opens a new slot for
    the other; a merge closes the absorbed slot.
    :func:`dask_emk.models.export.path_dataset` lays the path out on (step,
    component=slot, feature), NaN where a slot is closed.
    """

    slots: list = field(default_factory=list)
    n_slots: int = 1
    steps: list = field(default_factory=list)
    events: list = field(default_factory=list)

    def record(self, sigma2, means, weights, lower_bound, softness, n_iter) -> None:
        self.steps.append(
            dict(
                sigma2=sigma2,
                slots=list(self.slots),
                means=means.copy(),
                weights=weights.copy(),
                lower_bound=lower_bound,
                softness=softness,
                n_iter=n_iter,
            )
        )

    def split(self, idx: np.ndarray, sigma2: float) -> None:
        """Means ``idx`` split; their children were appended in order."""
        for k in idx:
            self.events.append((len(self.steps) - 1, 1, self.slots[k], self.n_slots, sigma2))
            self.slots.append(self.n_slots)
            self.n_slots += 1

    def merge(self, a: int, b: int, sigma2: float) -> None:
        """Mean b (position) merged into mean a; b's slot closes."""
        self.events.append((len(self.steps) - 1, -1, self.slots[a], self.slots[b], sigma2))
        del self.slots[b]


# ------------------------------------------------------------ the anneal
@dataclass
class AnnealResult:
    means: np.ndarray
    weights: np.ndarray
    sigma2: float
    n_iter: int
    path: AnnealPath
    stop: str


class Annealer:
    """The annealing loop on an in-memory sample (the estimator's engine).

    Parameters
    ----------
    sample : Sample
    budget : int
        Maximum number of distinct means (``max_split_factor × K``).
    cooling, sigma2_stop, max_iter_per_step, tol, split_every, verbose
        As the estimator's parameters.
    estep : EStepOptions
    """

    def __init__(self, sample, budget, cooling, sigma2_stop, max_iter_per_step, tol,
                 split_every=None, verbose=0, estep=DEFAULT_ESTEP):  # fmt: skip
        self.sample, self.budget, self.cooling = sample, budget, cooling
        self.sigma2_stop, self.max_iter, self.tol = sigma2_stop, max_iter_per_step, tol
        self.split_every, self.verbose, self.estep = split_every, verbose, estep
        self.eps = 10 * np.finfo(np.float64).eps
        self.origin = sample.mean

    def stats(self, means: np.ndarray, weights: np.ndarray, sigma2: float) -> dict:
        """One E-step pass over the sample at fixed σ² (full moments)."""
        m, d = means.shape
        params = mixture.MixtureParams(
            means,
            np.log(np.maximum(weights, 1e-300)),
            np.full(m, 1.0 / np.sqrt(sigma2)),
            "shared",
            self.origin,
            self.estep,
        )
        layout = anneal_layout(m, d)
        return reduction.run_pass(
            self.sample.X, self.sample.weight, layout, anneal_block, params, layout,
            split_every=self.split_every,
        )  # fmt: skip

    def settle(self, means, weights, sigma2) -> tuple[np.ndarray, np.ndarray, dict, int]:
        """EM with σ² fixed until the means have settled (:func:`rules.has_settled`).

        Returns the means and weights, the statistics at them (so the
        critical variances belong to the returned means) and the iterations.
        """
        stats = self.stats(means, weights, sigma2)
        shifts = []
        for it in range(1, self.max_iter + 1):
            # The mixture M-step with σ² fixed ('shared' covariance, variance=σ²).
            state = m_step(stats, means, "shared", 0.0, eps=self.eps, variance=sigma2)
            new, weights = state.means, state.weights
            shifts.append(float(np.sqrt(((new - means) ** 2).sum(axis=1).max())))
            means = new
            stats = self.stats(means, weights, sigma2)
            if rules.has_settled(shifts, sigma2, self.tol):
                return means, weights, stats, it
        return means, weights, stats, self.max_iter

    def run(self, sigma2: float) -> AnnealResult:
        """Anneal from one mean at the data mean, starting at ``sigma2``."""
        means, weights = self.origin[None, :].copy(), np.ones(1)
        path = AnnealPath(slots=[0])
        n_iter, stop = 0, None
        while stop is None:
            start = time.perf_counter()
            means, weights, stats, it = self.settle(means, weights, sigma2)
            n_iter += it
            softness = float(stats["soft"] / stats["n"])
            path.record(sigma2, means, weights, float(stats["loglik"] / stats["n"]), softness, it)
            settled = means.shape[0]
            means, weights, stats = self._coalesce(means, weights, stats, sigma2, path)
            merged = settled - means.shape[0]
            lam, axes = rules.critical_variances(stats["N"], stats["S"], stats["Q"], self.eps)
            idx = rules.components_to_split(lam, stats["N"], sigma2, self.budget)
            if idx.size:
                means, weights = rules.split_means(means, weights, idx, lam, axes)
                path.split(idx, sigma2)
            sigma2_next = rules.next_variance(sigma2, np.delete(lam, idx), idx.size > 0,
                                              self.cooling)  # fmt: skip
            stop = rules.stop_reason(
                means.shape[0], self.budget, idx.size > 0, sigma2_next, self.sigma2_stop
            )
            changes = [f"{n} {word}" for n, word in ((idx.size, "split"), (merged, "merged")) if n]
            _say(
                f"anneal step {len(path.steps):3d}: σ² {sigma2:<8.4g} {means.shape[0]:3d} means"
                f"{' (' + ', '.join(changes) + ')' if changes else ''}, "
                f"EM settled in {it} iterations on the {self.sample.X.shape[0]:,}-row sample, "
                f"{time.perf_counter() - start:.2f} s",
                self.verbose,
            )
            if stop is None:
                sigma2 = sigma2_next
        return AnnealResult(means, weights, sigma2, n_iter, path, stop)

    def harden(self, means, weights, sigma2, path) -> tuple[np.ndarray, int, int]:
        """Anneal fixed means (no splits) from ``sigma2`` until the assignments
        are hard (:func:`rules.is_hard`); returns means, iterations, steps."""
        n_iter, steps = 0, 0
        while True:
            start = time.perf_counter()
            means, weights, stats, it = self.settle(means, weights, sigma2)
            n_iter, steps = n_iter + it, steps + 1
            softness = float(stats["soft"] / stats["n"])
            path.record(sigma2, means, weights, float(stats["loglik"] / stats["n"]), softness, it)
            _say(
                f"harden step {len(path.steps):3d}: σ² {sigma2:<8.4g} {means.shape[0]:3d} means, "
                f"assignments {softness:.2%} soft (hard below {rules.HARD_SOFTNESS:.2%}), "
                f"{it} iterations, {time.perf_counter() - start:.2f} s",
                self.verbose,
            )
            if rules.is_hard(softness, sigma2, self.sigma2_stop):
                return means, n_iter, steps
            sigma2 *= self.cooling

    def _coalesce(self, means, weights, stats, sigma2, path):
        pairs = rules.coalesce_pairs(means, sigma2)
        if not pairs:
            return means, weights, stats
        for a, b in sorted(pairs, key=lambda p: -p[1]):  # from the back: positions stay valid
            means, weights = rules.merge_pair(means, weights, a, b)
            path.merge(a, b, sigma2)
        # Statistics at the coalesced means, for their critical variances.
        return means, weights, self.stats(means, weights, sigma2)


# -------------------------------------------------------------- estimator
class _LloydLines:
    """The KMeans callback of the full-data Lloyd run: one line per iteration (pass)."""

    def __init__(self, n_samples: int, verbose):
        self.n_samples, self.verbose, self.clock = n_samples, verbose, time.perf_counter()

    def __call__(self, _model, info) -> None:
        now = time.perf_counter()
        seconds, self.clock = now - self.clock, now
        _say(f"lloyd iter {info['iteration']:3d}: inertia {info['inertia']:.8g} over "
             f"{self.n_samples:,} rows, {seconds:.2f} s",
             self.verbose)  # fmt: skip


@fill_doc
class AnnealedGaussianMixture(
    NoTrainingDataInPickle, TransformerMixin, ClusterMixin, ChunkedEstimator
):
    """Deterministic annealing of a shared-σ² Gaussian mixture down to k-means.

    A mixture of spherical Gaussians sharing one variance σ² is fitted by EM
    at a decreasing sequence of σ² (σ² fixed at each step, means and weights
    updated). Above the first critical variance λ_max(Cov X) all means sit at
    the data mean; as σ² falls below a mean's critical variance (λ_max of its
    responsibility-weighted covariance) the mean splits. Means are split up to
    ``max_split_factor × n_components``, hardened by Lloyd, merged down to
    ``n_components`` by Ward's rule and finished with Lloyd iterations on the
    full data (:class:`dask_emk.KMeans`) to the exact fixed point, polished by
    batch Hartigan passes (:func:`hartigan_polish`). The rules are in
    :mod:`dask_emk.core.anneal_rules`; the annealing runs on an in-memory uniform
    sample, so the passes over the full data are few (``n_full_passes_``).

    Parameters
    ----------
    n_components : int
        Number of clusters K.
    cooling : float, default=0.8
        The factor σ² is multiplied by per step (0 < cooling < 1), after
        jumping to the next critical variance when nothing split.
    sigma2_start : float, optional
        First σ²; default 1.05 × λ_max of the weighted data covariance.
    sigma2_stop : float, optional
        Annealing stops before σ² falls below this; default
        1e-6 × λ_max (annealing usually stops earlier, when the split
        budget is used or assignments are hard).
    max_split_factor : float, default=2
        At most ``ceil(max_split_factor × K)`` distinct means during the
        anneal; 1 disables the merge phase.
    max_iter_per_step : int, default=100
        EM iterations per σ² step at most.
    tol : float, default=1e-4
        A step has settled when the distance the means still have to travel,
        extrapolated from the last two EM shifts, is below √(tol σ²); also
        the (scikit-learn relative) tolerance of the Lloyd runs on the
        sample, and of the one on the full data when
        ``hartigan_max_passes=0`` (with the polish it runs to tol 0).
    sample_size : int, default=20000
        Rows of the in-memory sample the annealing runs on (all rows when the
        data has fewer).
    random_state : int, RandomState or None
        Draws the sample.
    n_lloyd_max_iter : int, default=300
        Lloyd iterations at most, for each of the Lloyd runs.
    hartigan_max_passes : int, default=20
        Hartigan passes over the full data at most in the polish after the
        final Lloyd (:data:`dask_emk.core.anneal_rules.HARTIGAN_MAX_PASSES` says
        why 20); 0 turns the polish off.
    split_every : int, optional
        Fan-in of the Dask tree reduction (32 when None).
    verbose : int, default=0
        Print one line per annealing step and full-data pass. The same lines
        are always logged (INFO, logger ``dask_emk.steps``).
    nan_policy : {'raise', 'omit', 'marginalize'}, default='raise'
        NaN in X: ``'raise'`` an error; ``'omit'`` leaves every row (grid
        point) holding a NaN out of the sample and of every pass, and gives it
        label -1 and NaN distances and probabilities. ``'marginalize'``: a
        NaN entry is a missing feature; the annealing runs on the complete
        rows of its sample (no mean is placed on or split along a gap), the
        Lloyd runs on the full data use every row's observed coordinates
        (:class:`dask_emk.KMeans`), there is no Hartigan polish, and
        predictions use the observed features (a row with none gets label
        -1). ±inf is always an error.
    {feature_dim}
    {sample_dims}
    {missing_chunks}
    estep : {'auto', 'dense', 'sparse'} or EStepOptions, default='auto'
        The E-step of the annealing's EM on its sample and of
        :meth:`predict_proba`; see :class:`dask_emk.GaussianMixture`.
    {cache}

    Attributes
    ----------
    means_, cluster_centers_ : ndarray of shape (n_components, n_features)
        Final centres, in the data's float dtype.
    weights_ : ndarray of shape (n_components,)
        Fraction of the (weighted) data nearest to each centre.
    sigma2_ : float
        σ² of the last annealing step (default for :meth:`predict_proba`):
        after a merge, where the K means' assignments became hard.
    labels_ : ndarray (numpy input) or lazy dask array / xarray.DataArray
        Lazy labels are left out when the model is pickled or copied (as
        :class:`dask_emk.KMeans`'s, also in ``kmeans_``).
    inertia_ : float
        Σ w ‖x − c‖² over the full data at the final centres.
    n_iter_ : int
        Iterations in all: annealing EM on the sample (before and after the
        merge), Lloyd on the sample, Lloyd and Hartigan passes on the full
        data.
    n_full_passes_ : int
        Reductions over the full data during ``fit`` (``labels_`` excluded:
        lazy for lazy input).
    path_ : xarray.Dataset
        Dims ``step``, ``component`` (a slot per mean ever made), ``feature``,
        ``event``: ``sigma2(step)`` strictly decreasing, ``means(step,
        component, feature)`` and ``weights(step, component)`` (NaN for slots
        not open at a step), ``lower_bound(step)`` (mean log-likelihood on
        the sample), ``n_distinct(step)``, ``softness(step)`` (mean 1 − max
        responsibility), ``n_iter(step)``, split/merge events
        ``event_step, event_kind (1 split, -1 merge), event_component,
        event_partner, event_sigma2``, and ``data_mean(feature)`` (the
        ``path`` names of :data:`dask_emk.models.export.SCHEMA`).
    stop_reason_ : str
        Why annealing ended: 'budget' or 'sigma2_stop'.
    kmeans_ : dask_emk.KMeans
        The final Lloyd run on the full data (after the polish's last move,
        if it moved rows).
    polish_history_ : list of dict
        One entry per Hartigan pass (see :func:`hartigan_polish`):
        ``inertia``, ``candidates``, ``moved``, ``predicted``, ``change`` and,
        for a pass that moved rows, ``accepted``.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(8, 1, (100, 2))])
    >>> from dask_emk import AnnealedGaussianMixture
    >>> an = AnnealedGaussianMixture(2, random_state=0).fit(X)
    >>> an.means_.round(1)
    array([[ 7.9,  7.9],
           [-0.1,  0.1]])
    >>> an.predict([[0, 0], [9, 8]]).tolist()
    [1, 0]
    """

    _parameter_specs = ANNEALED_GAUSSIAN_MIXTURE
    _weight_sums = (
        "inertia_", "kmeans_.inertia_", "kmeans_.inertia_history_", "kmeans_.cluster_weights_"
    )  # fmt: skip

    def __init__(
        self,
        n_components=8,
        *,
        cooling=0.8,
        sigma2_start=None,
        sigma2_stop=None,
        max_split_factor=2,
        max_iter_per_step=100,
        tol=1e-4,
        sample_size=20_000,
        random_state=None,
        n_lloyd_max_iter=300,
        hartigan_max_passes=rules.HARTIGAN_MAX_PASSES,
        split_every=None,
        verbose=0,
        nan_policy="raise",
        feature_dim=None,
        sample_dims=None,
        missing_chunks="raise",
        estep="auto",
        cache="auto",
    ):
        self.n_components = n_components
        self.cooling = cooling
        self.sigma2_start = sigma2_start
        self.sigma2_stop = sigma2_stop
        self.max_split_factor = max_split_factor
        self.max_iter_per_step = max_iter_per_step
        self.tol = tol
        self.sample_size = sample_size
        self.random_state = random_state
        self.n_lloyd_max_iter = n_lloyd_max_iter
        self.hartigan_max_passes = hartigan_max_passes
        self.split_every = split_every
        self.verbose = verbose
        self.nan_policy = nan_policy
        self.feature_dim = feature_dim
        self.sample_dims = sample_dims
        self.missing_chunks = missing_chunks
        self.estep = estep
        self.cache = cache

    # ------------------------------------------------------------ checks
    def _check_parameters(self, data: InputData) -> None:
        if self.sigma2_start is not None and self.sigma2_stop is not None:
            if self.sigma2_stop >= self.sigma2_start:
                raise ValueError(
                    f"sigma2_stop={self.sigma2_stop!r} must be below sigma2_start="
                    f"{self.sigma2_start!r}: σ² decreases during annealing."
                )
        self._check_n_samples(data, "n_components")
        if self.sample_size < self.n_components:
            raise ValueError(
                f"sample_size={self.sample_size} is below n_components={self.n_components}: "
                "the annealing runs on a sample of sample_size rows and needs at least one "
                f"row per component; raise sample_size to >= {self.n_components} (default "
                "20000)."
            )

    # ----------------------------------------------------------- fitting
    def _fit(self, X, data: InputData, weight) -> None:
        """Anneal on a sample, merge to K, finish with Lloyd on the full data."""
        rng = check_random_state(self.random_state)
        start = time.perf_counter()
        sample = draw_sample(data, weight, self.sample_size, rng, self.split_every)
        _say(f"anneal sample: {sample.X.shape[0]:,} of {data.n_samples:,} rows drawn in one pass, "
             f"{time.perf_counter() - start:.2f} s", self.verbose)  # fmt: skip
        if sample.X.shape[0] < self.n_components:
            raise ValueError(
                f"The sample holds {sample.X.shape[0]} row(s) without NaN (nan_policy="
                f"{data.nan_policy.value!r} anneals on complete rows), fewer than n_components="
                f"{self.n_components}; "
                "raise sample_size or lower n_components."
            )
        lam_data = float(np.linalg.eigvalsh(sample.cov)[-1]) if data.n_features else 0.0
        sigma2 = rules.start_variance(lam_data, self.sigma2_start)
        stop = self.sigma2_stop if self.sigma2_stop is not None else 1e-6 * sigma2
        K = self.n_components
        budget = max(K, int(np.ceil(self.max_split_factor * K)))
        estep = EStepOptions.of(self.estep)
        annealer = Annealer(sample, budget, self.cooling, stop, self.max_iter_per_step, self.tol,
                            self.split_every, self.verbose, estep)  # fmt: skip
        result = annealer.run(sigma2)
        centers, n_sample_iter = self._reduce_to_k(sample, result, annealer)
        # The Hartigan moves are those of complete rows: no polish with gaps.
        polish = self.hartigan_max_passes > 0 and not data.nan_policy.marginalizes
        # The polish starts from Lloyd's exact fixed point (tol 0): a Hartigan
        # pass at unconverged centres would mostly find Lloyd's own moves.
        km = lloyd_from(data, weight, centers, self.n_lloyd_max_iter, 0.0 if polish else self.tol,
                        self.split_every, _LloydLines(data.n_samples, self.verbose),
                        cache=self.cache)  # fmt: skip
        passes = 1 + lloyd_passes(km)
        n_lloyd_iter, rounds = km.n_iter_, []
        if polish:  # the Hartigan passes read the rows kept for them (``cache``)
            with kept_rows(data.array, self.cache, data.nan_policy.omits_rows) as rows:
                km, polish_passes, polish_iter, rounds = hartigan_polish(
                    data, rows, weight, km, self.hartigan_max_passes,
                    self.n_lloyd_max_iter, self.split_every, data.nan_policy,
                )  # fmt: skip
            passes += polish_passes
            n_lloyd_iter += polish_iter
            moved = sum(r["moved"] for r in rounds if r and r.get("accepted"))
            rows = "row" if moved == 1 else "rows"
            _say(f"hartigan polish: {len(rounds)} passes, {moved:,} {rows} moved, inertia "
                 f"{km.inertia_:.8g}", self.verbose)  # fmt: skip
        if sample.is_full:  # every pass over the sample was a pass over the data
            passes += n_sample_iter + result.n_iter + len(result.path.steps)
        self.polish_history_ = rounds
        self._set_fitted(km, result, sample, data, n_sample_iter + n_lloyd_iter, passes)

    def _reduce_to_k(self, sample: Sample, result: AnnealResult, annealer: Annealer):
        """Lloyd on the sample with the annealed means, Ward merges (or splits)
        to K, the merged means annealed until hard, Lloyd again.

        Returns the K centres and the iterations on the sample (Lloyd and the
        anneal after the merge; its steps are appended to ``result.path``).
        """
        K = self.n_components
        km = lloyd_from(sample.X, sample.weight, result.means, self.n_lloyd_max_iter, self.tol,
                        None)  # fmt: skip
        centers, mass, n_iter = km.cluster_centers_, km.cluster_weights_, km.n_iter_
        if centers.shape[0] > K:
            _say(f"merge: {centers.shape[0]} means merged to {K} (Ward), then annealed until "
                 "the assignments are hard", self.verbose)  # fmt: skip
            centers, mass, merges = rules.ward_merge(centers, mass, K)
            self._record_merges(result.path, merges, result.sigma2)
            # Anneal on from the next σ² of the schedule (rules.is_hard).
            centers, it, _ = annealer.harden(centers, mass / mass.sum(),
                                             self.cooling * result.sigma2, result.path)  # fmt: skip
            n_iter += it
        while centers.shape[0] < K:  # annealing ended early: split the widest
            centers = self._split_widest(sample, centers, K - centers.shape[0])
        km = lloyd_from(sample.X, sample.weight, centers, self.n_lloyd_max_iter, self.tol, None)
        return km.cluster_centers_, n_iter + km.n_iter_

    @staticmethod
    def _record_merges(path: AnnealPath, merges, sigma2: float) -> None:
        positions = list(range(len(path.slots)))
        for a, b in merges:
            path.merge(positions.index(a), positions.index(b), sigma2)
            positions.remove(b)

    @staticmethod
    def _hard_moments(sample: Sample, centers: np.ndarray):
        """Mass, λ_max and principal axis of each hard cluster of the sample."""
        Y, M = sample.X - sample.mean, centers - sample.mean
        resp = assign.one_hot(assign.nearest(Y, M)[0], centers.shape[0])
        st = mixture.moment_stats(Y, resp.T, sample.weight, M, "full")
        lam, axes = rules.critical_variances(st["N"], st["S"], st["Q"], 1e-12)
        return st["N"], lam, axes

    def _split_widest(self, sample: Sample, centers: np.ndarray, room: int) -> np.ndarray:
        """Split up to ``room`` means with the largest mass × λ_max (hard clusters)."""
        mass, lam, axes = self._hard_moments(sample, centers)
        idx = rules.components_to_split(lam, mass, 0.0, centers.shape[0] + room)
        if idx.size == 0:  # no spread anywhere: duplicate rows
            idx = np.arange(min(room, centers.shape[0]))
        return rules.split_means(centers, np.ones(centers.shape[0]), idx, lam, axes)[0]

    def _set_fitted(self, km, result, sample, data, n_iter, passes) -> None:
        dtype = data.array.dtype
        self.kmeans_ = km
        self.means_ = km.cluster_centers_.astype(dtype)
        self.cluster_centers_ = self.means_
        self.weights_ = np.asarray(km.cluster_weights_ / km.cluster_weights_.sum(), dtype=dtype)
        self.sigma2_ = float(result.path.steps[-1]["sigma2"])
        self.labels_ = km.labels_
        self.inertia_ = float(km.inertia_)
        self.n_iter_ = int(result.n_iter + n_iter)
        self.n_full_passes_ = int(passes)
        self.stop_reason_ = result.stop
        features = (
            np.asarray(self.feature_names_in_, dtype=str)
            if hasattr(self, "feature_names_in_")
            else np.arange(data.n_features)
        )
        self.path_ = path_dataset(result.path, features, sample.mean)

    # -------------------------------------------------------- prediction
    @fill_doc
    def predict(self, X: Any) -> Any:
        """Index of the nearest centre of each sample.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples,)
            The nearest centre's index (-1 for omitted rows).
            {per_sample}
        """
        data = validate_features(self, X, reset=False)  # NotFittedError before kmeans_
        return self.kmeans_._labels(data)

    @fill_doc
    def transform(self, X: Any) -> Any:
        """Euclidean distances of the samples to the centres.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples, n_components)
            {per_sample_component}
        """
        data = validate_features(self, X, reset=False)
        return self.kmeans_._distances(data)

    @fill_doc
    def score(self, X: Any, y: object = None, sample_weight: Any = None) -> float:
        """Opposite of the inertia of X at the centres (one pass).

        Parameters
        ----------
        {X}
        {y}
        {sample_weight}

        Returns
        -------
        float
            −Σ w ‖x − μ‖² over the samples.
            {computed}
        """
        data = validate_features(self, X, reset=False)
        return self.kmeans_._score(data, sample_weight)

    @fill_doc
    def fit_predict(self, X: Any, y: object = None, sample_weight: Any = None) -> Any:
        """Fit, then return ``labels_``.

        Parameters
        ----------
        {X}
        {y}
        {sample_weight}

        Returns
        -------
        ndarray or dask array of shape (n_samples,)
            The nearest centre's index of each training sample (-1 for omitted rows).
            {per_sample}
        """
        return self.fit(X, sample_weight=sample_weight).labels_

    @fill_doc
    def predict_proba(self, X: Any, sigma2: float | None = None) -> Any:
        """Return the responsibilities of the shared-σ² mixture at ``sigma2``.

        r_ik ∝ π_k exp(−‖x_i − μ_k‖² / (2σ²)) with the fitted ``means_`` and
        ``weights_``.

        Parameters
        ----------
        {X}
        sigma2 : float, optional
            Default ``sigma2_``; small values give near one-hot rows.

        Returns
        -------
        ndarray or dask array of shape (n_samples, n_components)
            {per_sample_component}
        """
        data = validate_features(self, X, reset=False)
        sigma2 = self.sigma2_ if sigma2 is None else sigma2
        POSITIVE_FINITE.check("sigma2", sigma2)
        means = np.asarray(self.means_, dtype=np.float64)
        weights = np.asarray(self.weights_, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_w = np.log(weights)
        params = mixture.MixtureParams(
            means, log_w, np.full(means.shape[0], 1.0 / np.sqrt(sigma2)), "shared",
            weights @ means, EStepOptions.of(self.estep),
        )  # fmt: skip
        out = reduction.map_rows(
            data.array, resp_rows, params, block_kernels(data.nan_policy), n_out=means.shape[0],
            dtype=data.array.dtype, nan_policy=data.nan_policy,
        )  # fmt: skip
        return named_output(data.wrap_rows(out, extra_dim="component"), "responsibility",
                            means.shape[0])  # fmt: skip

    def to_xarray(self) -> xr.Dataset:
        """Final means, weights, sizes and fit settings (the path is ``path_``).

        Returns
        -------
        xarray.Dataset
            In the schema of docs/SCHEMA.md: ``weights(component)``,
            ``means(component, feature)``, ``sizes(component)`` and the settings as
            attributes.
        """
        check_is_fitted(self, "means_")
        return anneal_dataset(self)
