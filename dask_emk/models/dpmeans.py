"""DPMeans: the σ² → 0 limit of a Dirichlet-process mixture, out of core.

**Where it comes from.** The project's founding idea: a Gaussian mixture
whose components share one spherical variance σ², fitted by EM, becomes
k-means as σ² → 0 (the responsibilities harden into nearest-centre
assignments). Kulis & Jordan (ICML 2012, "Revisiting k-means: new algorithms
via Bayesian nonparametrics") take the same limit for a Dirichlet-process
mixture, whose number of components is unknown. With covariance σ²I,
means drawn from N(0, ρI) and concentration α, Gibbs sampling puts row x in
cluster c (n_c rows, mean μ_c) or in a new one with probabilities

    P(c)   ∝ n_c (2πσ²)^(−d/2) exp(−‖x − μ_c‖² / (2σ²))
    P(new) ∝ α (2π(ρ + σ²))^(−d/2) exp(−‖x‖² / (2(ρ + σ²))).

Scale the concentration with σ² as α = (1 + ρ/σ²)^(d/2) exp(−λ / (2σ²)):
then P(new) ∝ (2πσ²)^(−d/2) exp(−λ/(2σ²) − ‖x‖²/(2(ρ + σ²))), and as
σ² → 0 all the probability goes to the smallest of λ and the ‖x − μ_c‖²:
the row joins its nearest centre unless that is farther than √λ, and then
opens a cluster of its own. The joint log-likelihood times −2σ² tends, up
to a constant, to

    J = Σ_i w_i ‖x_i − μ_{z_i}‖² + λ K,

k-means' inertia plus λ per cluster (each cluster costs a factor α). With K
held fixed the λK term is a constant and this is the founding limit itself;
DP-means puts a price on K, so it answers "how many clusters?" with a scale,
in squared data units: regimes at least about √λ apart.

**Weights.** A row of weight w ≥ 1 counts as w copies of one point, as in
scikit-learn: like the first copy it opens a cluster when farther than √λ.
A row with w < 1 must pay the price of a cluster on its own, w ‖x − μ‖² > λ
(opening there could otherwise raise J). Both say min(w, 1) ‖x − μ‖² > λ
(:func:`dask_emk.core.assign.opening_key`); without weights, ‖x − μ‖² > λ.

**Out of core, batch form.** Each iteration is one pass over the data (one
Dask compute, :func:`dask_emk.engine.passes.costliest_pass`): every row is
assigned to its nearest centre, the k-means sums are added up, and the
:data:`CANDIDATES` rows with the largest opening key are kept (the list
k-means keeps for empty clusters). On the client (:func:`dp_update`), those
rows are taken in decreasing key and each opens a centre at itself if its
key is still above λ against every centre opened in the pass and every
cluster's new mean (Kulis & Jordan's sequential rule, on the kept rows), and
if no other row of its cluster opened in the pass; clusters left without
weight close; every centre moves to the weighted mean of its rows. The
farthest rows are a blob's far tail: opened all at once, a tail row and a
centre drifting in from between blobs ended as two centres in one blob (6
unit 3-D blobs ≥ 15 apart at √λ = 8 gave 7 or 8 clusters in 19 of 20 draws;
0 of 20 with the two rules). Rows skipped wait for the next pass: J still
falls, one pass later, as when more than :data:`CANDIDATES` rows are above λ.
The rules choose among local minima, they do not escape them: a centre
between two blobs whose rows all lie within √λ of it is a fixed point, and
waiting lets a centre settle there (``benchmarks/bench_dpmeans.py``, 10
blobs at λ = 200: 9 clusters and twice the inertia, where opening at the
farthest rows at once gave 11, one blob split).

**J never increases.** With J(z, μ) as above and K the number of clusters:
(a) the pass assigns each row to its nearest centre, so no term grows;
(b) opening a centre at a kept row x_j and moving that row alone there
changes J by λ − w_j D_j ≤ λ − min(w_j, 1) D_j < 0 (D_j = ‖x_j − μ_{z_j}‖²;
rows near a just-opened centre are skipped, not moved, so each opening is
such a move, and skipping one changes nothing); (c) closing a cluster
without weight lowers J by λ; (d) the
weighted mean of a cluster's rows minimises its Σ w ‖x − μ‖². The next
pass starts from there, so the objective of every pass (``objective_history_``)
is at most the one before. A pass that finds a key above λ either opens its
first kept row or moves a centre (a row is skipped only for a new mean within
√λ of it, which the pass's centre was not), so a run cannot stall on one.

**Fixed point** (where a run stops): the pass finds every row within √λ of
its nearest centre (min(w, 1) ‖x − μ‖² ≤ λ), no cluster empty, and the
weighted means of the clusters equal their centres: the assignments did not
change, which gives bit-identical sums, so the squared shift is exactly 0
(``tol=0``, the default; ``tol`` > 0 stops once it is at most ``tol`` × the
mean feature variance, centres up to that far from their means). The centres
returned are those of that last pass, so ``labels_`` are their nearest
centres and ``objective_`` is J at them exactly. On overlapping data the
fixed point can take many passes. Not for a cycle, a rising J or empty
clusters (J falls at every pass, measured): rows keep crossing √λ one or
two at a time as the centres move, each opening moves the centres around it
again, and with tens to hundreds of clusters Lloyd's own tail is long. On
200k × 9 standardised overlapping blobs: λ = 8 → 554 clusters in 859
passes, λ = 32 → 31 in 412 (KMeans(31, tol=0) alone: 363); on another draw
λ = 16 and 32 took 644 and 224 passes (farthest-first opening: 407 and 212).
Raise ``max_iter`` for small λ.

**penalty = None** (and no ``n_clusters``): λ is the data's spread
Σ w ‖x − x̄‖² / Σ w, the mean squared distance to the weighted mean (found in
the first pass): a row farther from every centre than the data's RMS radius
opens a cluster; on standardised data λ = n_features.

**n_clusters = K** searches λ (:func:`next_penalty`). From
λ₁ = max min(w, 1) ‖x − x̄‖² up nothing opens from the mean x̄ (K = 1); below
it, log λ is interpolated against log K (K ∝ λ^(−d/2) from λ₁ alone, then the
slope of the runs made), kept inside the bracket once one run gave more than
K. Each run starts from the centres of the bracket end with the larger λ
(fewer clusters): DP-means opens and closes but never merges, so a start
with more clusters would keep them. The search runs stop at scikit-learn's
tolerance (:data:`SEARCH_TOL`); the run that hits K is taken on to its fixed
point (a run from where it stopped), where K is checked again. K(λ) is not
monotone in general (the fixed point reached depends on the start), and it
may jump over K. The search
stops when it hits K, when the bracket is narrower than
:data:`BISECTION_RTOL` (relative), or when every row sits on its centre (no
λ gives more clusters than distinct rows). When K(λ) jumped over K, DP-means
at the lower end's λ from the upper end's centres, opening up to K clusters
only, gives a start; its end, with every key at most a, is a fixed point
for any λ ≥ a, and a run at such a λ (:meth:`DPMeans._capped`) returns it.
Failing that, the fit with the K closest to the target, at its fixed point,
is returned (the larger λ among ties) with a ConvergenceWarning that names
the jump. ``penalty_search_`` lists every run.

**The annealing ladder.** :class:`dask_emk.AnnealedGaussianMixture` lowers σ²
of the same shared-σ² mixture; a mean splits when σ² falls below its
cluster's critical variance σ²_c = λ_max(C_k), the variance along its
principal axis (``path_.event_sigma2``). DP-means measures a cluster by its
radius instead: at a fixed point every row is within √λ of its centre, so
each cluster's λ_max(C_k) ≤ trace(C_k) = mean ‖x − μ_k‖² ≤ λ (unweighted): every
DP-means cluster at λ is one the annealing would not split at σ² = λ (with
hard assignments). Conversely, starting from the mean, DP-means opens a
second cluster only below λ₁ = max ‖x − x̄‖² ≥ λ_max(Cov X) = σ²_c of the
first split. The λ ladder thus lies above the σ² ladder, with equality only
for two equal point masses a distance s apart (λ₁ = σ²_c = s²/4); for blobs
the ratio depends on their masses and tails (radius² over principal
variance). Measured (largest λ giving ≥ j clusters, over the σ² of the
step at which the anneal made its (j−1)-th split): 3.6–6.1 on five round 2-D blobs, 5.1–9.3 on a
generated 4-D mixture of six. As that factor is not known before a fit, no
``--penalty-from-path`` is offered: ``n_clusters=K`` finds the λ of a
chosen K directly.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from dask_emk._logging import STEPS_LOGGER
from dask_emk.core.assign import opening_key
from dask_emk.core.hartigan import EMPTIED_FRACTION
from dask_emk.core.mstep import weighted_means
from dask_emk.engine.cache import kept_rows
from dask_emk.engine.inputs import InputData
from dask_emk.engine.passes import assign_pass, costliest_pass
from dask_emk.models._docs import fill_doc
from dask_emk.models.anneal import reference_row
from dask_emk.models.base import CentreDistancesOut, ChunkedEstimator
from dask_emk.models.kmeans import KMeans, relative_tolerance
from dask_emk.models.params import DPMEANS
from dask_emk.models.validation import NoTrainingDataInPickle

if TYPE_CHECKING:
    import xarray as xr

#: One line per run at a λ: its clusters, passes, time (the CLI shows it, ``-q`` hides it).
steps_log = logging.getLogger(STEPS_LOGGER)

#: Rows kept per pass as candidates for new centres (the farthest-rows list).
#: Checking them on the client costs microseconds each; more rows above λ
#: than this take another pass.
CANDIDATES = 256
#: The λ search stops when the bracket [lo, hi] has hi / lo − 1 below this ...
BISECTION_RTOL = 1e-2
#: ... or after this many runs (each warm-started, most a few passes).
SEARCH_RUNS = 40
#: Relative tolerance (``tol``'s rule) of the runs that only count K in the λ
#: search; the run kept is taken on to its fixed point.
SEARCH_TOL = 1e-4
#: The search's first λ is the largest key to the mean times 1 + this.
TOP_MARGIN = 1e-9
#: Without a lower end, λ is divided by what log K against log λ
#: extrapolates, at least LOWER_MIN and at most LOWER_MAX.
LOWER_MIN, LOWER_MAX = 1.1, 256.0


def next_penalty(target: int, hi, lo, runs: list, n_features: int) -> float:
    """The next λ of the search: log λ interpolated linearly in log K.

    ``hi`` has K < target, ``lo`` (or None) K > target. Inside the bracket
    the point is kept to its middle half (in log λ), and is the midpoint when
    the last run moved the same end as the one before (K(λ) is a staircase:
    interpolation alone can creep). Below ``hi`` alone, the slope of the two
    runs with the largest K below the target extrapolates; from K = 1 alone,
    the slope d / 2 of n balls of radius √λ covering a d-dimensional region
    (K ∝ λ^(−d/2)) does. Either step divides λ by :data:`LOWER_MIN` to :data:`LOWER_MAX`.
    """
    if lo is not None:
        k_hi, k_lo = np.log(hi.n_clusters), np.log(lo.n_clusters)
        t = min(max((np.log(target) - k_hi) / (k_lo - k_hi), 0.25), 0.75)
        last = runs[-2:]
        if len(last) == 2 and (last[0].n_clusters > target) == (last[1].n_clusters > target):
            t = 0.5
        return float(hi.penalty * (lo.penalty / hi.penalty) ** t)
    below = [r for r in runs if r.n_clusters < hi.n_clusters and r.penalty > hi.penalty]
    slope = n_features / 2
    if below:
        prev = max(below, key=lambda r: r.n_clusters)
        slope = np.log(hi.n_clusters / prev.n_clusters) / np.log(prev.penalty / hi.penalty)
    factor = np.exp(np.log(target / hi.n_clusters) / slope)
    return float(hi.penalty / min(max(factor, LOWER_MIN), LOWER_MAX))


def _log_run(run: DPRun, cap: int | None, seconds: float) -> None:
    """What a run at one λ ended with: clusters, passes, why it stopped, its time."""
    end = "fixed point" if run.converged else "max_iter reached"
    if run.converged and run.tol_abs > 0:
        end = "within tolerance"
    capped = f", opening at most {cap} clusters" if cap is not None else ""
    steps_log.info("dpmeans run at λ %.6g%s: %d clusters after %d passes (%s), %.2f s",
                   run.penalty, capped, run.n_clusters, run.n_iter, end, seconds)  # fmt: skip


def dp_objective(inertia: float, penalty: float, n_clusters: int) -> float:
    """J = Σ w ‖x − μ_z‖² + λ K."""
    return float(inertia + penalty * n_clusters)


def dp_update(
    stats: dict, origin: np.ndarray, penalty: float, room: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """New centres after one pass: open, close, recentre (the client's step).

    Parameters
    ----------
    stats : dict from :func:`dask_emk.engine.passes.costliest_pass`
        ``N`` (K,), ``S`` (K, d) about ``origin``, the kept rows ``far_dist``
        (their opening key, descending), ``far_label``, ``far_weight``,
        ``far_x`` (m, d).
    origin : ndarray of shape (d,)
    penalty : float, λ
    room : int, optional
        Open at most this many clusters (None: no limit).

    Returns
    -------
    centers : ndarray of shape (K', d), weighted means of the clusters kept
    opened : ndarray of shape (m,), the keys of the rows opened
    closed : int, clusters closed
    """
    N, S = stats["N"].copy(), stats["S"].copy()
    # Where the pass's clusters move to: a row within √λ of one of these joins
    # it next pass, so opening there would split one region in two.
    held = N > 0
    near = list(weighted_means(origin, N[held], S[held])[0])
    new_x, new_w, keys, split = [], [], [], set()
    labels = stats["far_label"].astype(int)
    for key, label, w, x in zip(stats["far_dist"], labels, stats["far_weight"], stats["far_x"],
                                strict=True):  # fmt: skip
        if not key > penalty or len(new_x) == room:  # sorted: no later row opens
            break
        if label in split or (
            near and opening_key(((np.asarray(near) - x) ** 2).sum(axis=1).min(), w) <= penalty
        ):
            continue
        near.append(x)
        split.add(label)
        S[label] -= (x - origin) * w
        N[label] -= w
        new_x.append(x)
        new_w.append(w)
        keys.append(key)
    new_x, new_w = np.reshape(new_x, (-1, S.shape[1])), np.asarray(new_w, dtype=np.float64)
    before = np.concatenate([stats["N"], new_w])
    N = np.concatenate([N, new_w])
    S = np.concatenate([S, (new_x - origin) * new_w[:, None]])
    # Sums of weights carry rounding: a cluster whose rows all moved holds ~0.
    keep = N > EMPTIED_FRACTION * before
    closed = int(np.count_nonzero(~keep))
    return weighted_means(origin, N[keep], S[keep])[0], np.asarray(keys, dtype=float), closed


@dataclass
class DPRun:
    """Outcome of one DP-means run at one λ (float64)."""

    penalty: float
    centers: np.ndarray
    weights: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    objective_history: list = field(default_factory=list)
    n_clusters_history: list = field(default_factory=list)
    tol_abs: float = 0.0  # the run's stopping tolerance (0: it ended at its fixed point)
    next_centers: np.ndarray | None = None  # after the last pass: where it would go on
    largest_key: float = np.inf  # the largest opening key of the last pass
    lowest_opened: float = np.inf  # the smallest key of a row the run opened at
    capped: bool = False  # opened up to a number of clusters only (the λ search's)

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])

    @property
    def objective(self) -> float:
        return dp_objective(self.inertia, self.penalty, self.n_clusters)


@dataclass
class Start:
    """What every run of a fit shares: the first centres, the reference point,
    the absolute tolerances (``tol``'s and the λ search's) and the data's
    spread Σ w ‖x − x̄‖² / Σ w (the default λ)."""

    centers: np.ndarray
    origin: np.ndarray
    tol_abs: float
    search_tol: float
    spread: float


@fill_doc
class DPMeans(
    NoTrainingDataInPickle, CentreDistancesOut, TransformerMixin, ClusterMixin, ChunkedEstimator
):
    """DP-means: k-means with a price λ per cluster, the number of clusters found.

    Minimises Σ w ‖x − μ_z‖² + λ K over the centres, the assignments and K,
    on numpy, dask, xarray or zarr input; each iteration is one pass over the
    data. The module docstring (:mod:`dask_emk.models.dpmeans`) derives it
    from the small-variance limit of a Dirichlet-process mixture, proves that
    the objective never increases and states the fixed point.

    Parameters
    ----------
    penalty : float, optional
        The price of a cluster, λ > 0, in squared data units: a row farther
        than √λ from every centre opens a cluster (with weights:
        min(w, 1) ‖x − μ‖² > λ). At most one
        of ``penalty`` and ``n_clusters``; with neither, λ is the data's
        spread Σ w ‖x − x̄‖² / Σ w (n_features on standardised data).
    n_clusters : int, optional
        A target K: λ is searched, a few warm-started runs (see the module
        docstring; a ConvergenceWarning when no fixed point with K clusters
        is found, e.g. with fewer distinct rows than K).
    init : array of shape (k, n_features), optional
        Starting centres (``penalty`` only); default: one centre at the
        weighted data mean (one pass to find it), as Kulis & Jordan.
    max_iter : int, default=300
        Iterations (passes) per run at one λ.
    tol : float, default=0
        0: a run stops at its fixed point (a pass opens, closes and moves
        nothing: unchanged assignments). Above 0: as soon as a pass opens and
        closes nothing and the squared centre shift is at most ``tol`` times
        the mean feature variance (scikit-learn's k-means rule), before the
        centres are the means of their rows.
    random_state : int, RandomState or None
        Not used: DP-means is deterministic (it starts from the mean and
        takes rows in a fixed order). Accepted as the other estimators do.
    split_every : int, optional
        Fan-in of the Dask tree reduction (32 when None).
    verbose : int, default=0
        Print one line per iteration.
    callback : callable, optional
        ``callback(model, info)`` after every iteration; ``info`` holds
        ``iteration`` (within the run), ``penalty``, ``objective`` and
        ``n_clusters`` (of the pass's centres), ``opened``, ``closed``,
        ``shift``, ``centers`` (the new centres) and ``converged``.
    nan_policy : {'raise', 'omit', 'marginalize'}, default='raise'
        As :class:`dask_emk.KMeans`: ``'omit'`` leaves rows holding NaN out of
        every statistic (label -1). ``'marginalize'`` is not supported (a
        ValueError): use :class:`dask_emk.KMeans` with it, or ``'omit'``.
    {feature_dim}
    {sample_dims}
    {missing_chunks}
    {cache}

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (K, n_features)
        In the data's float dtype; K is ``n_clusters_``.
    labels_ : ndarray (numpy input) or lazy dask array / xarray.DataArray
        Nearest centre of each training sample (lazy ones are left out when
        the model is pickled, as :class:`dask_emk.KMeans`'s).
    n_clusters_ : int
    penalty_ : float
        λ of the fit (``penalty``, the one the search found, or the data's spread).
    objective_ : float
        Σ w ‖x − μ‖² + λ K at ``cluster_centers_``.
    inertia_ : float
        Σ w ‖x − μ‖², the objective without the price of the clusters.
    n_iter_ : int
        Iterations of the run kept.
    objective_history_ : list of float
        The objective at the start of every iteration of that run (never increasing).
    n_clusters_history_ : list of int
        The number of centres each of those iterations started with.
    cluster_weights_ : ndarray of shape (K,)
        Weight (count without sample weights) of each cluster.
    penalty_search_ : list of dict
        Every run of the fit: ``penalty``, ``n_clusters``, ``n_iter``,
        ``converged``, ``capped`` (a run that opened up to ``n_clusters``
        only, to get past a jump of K(λ); see the module docstring). A search
        run taken on to its fixed point is listed again after it: the run
        kept is the last one at ``penalty_``. One entry with ``penalty``.
    n_passes_ : int
        Passes over the data during ``fit`` (``labels_`` excluded).
    n_features_in_ : int
    feature_names_in_ : ndarray, only for xarray input with feature labels

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(8, 1, (100, 2))])
    >>> from dask_emk import DPMeans
    >>> dp = DPMeans(n_clusters=2).fit(X)  # λ searched for K = 2
    >>> dp.n_clusters_
    2
    >>> dp.cluster_centers_.round(1)
    array([[-0.1,  0.1],
           [ 7.9,  7.9]])
    """

    _parameter_specs = DPMEANS
    _weights_are_ratios = False  # counts: w copies of a row (module docstring)

    def __init__(
        self,
        penalty=None,
        n_clusters=None,
        *,
        init=None,
        max_iter=300,
        tol=0.0,
        random_state=None,
        split_every=None,
        verbose=0,
        callback=None,
        nan_policy="raise",
        feature_dim=None,
        sample_dims=None,
        missing_chunks="raise",
        cache="auto",
    ):
        self.penalty = penalty
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.split_every = split_every
        self.verbose = verbose
        self.callback = callback
        self.nan_policy = nan_policy
        self.feature_dim = feature_dim
        self.sample_dims = sample_dims
        self.missing_chunks = missing_chunks
        self.cache = cache

    # ------------------------------------------------------------------ checks
    def _check_parameters(self, data: InputData) -> None:
        if data.nan_policy.marginalizes:
            raise ValueError(
                "DPMeans has no nan_policy='marginalize' (it opens clusters at whole rows, "
                "which a gap leaves undefined); use nan_policy='omit' to leave out the rows "
                "holding NaN, or KMeans(nan_policy='marginalize')."
            )
        if self.penalty is not None and self.n_clusters is not None:
            raise ValueError(
                "DPMeans takes penalty (λ, the price of a cluster in squared data units) or "
                "n_clusters (a target K), got both; pass one (or neither: λ is then the "
                "data's spread)."
            )
        if self.n_clusters is not None:
            self._check_n_samples(data, "n_clusters")
            if self.init is not None:
                raise ValueError(
                    "init applies with penalty only (with n_clusters every run starts from "
                    "the data mean or a warm start); drop init or pass penalty."
                )
        if self.init is not None:
            self._user_centers(data.n_features)

    def _user_centers(self, d: int) -> np.ndarray:
        centers = np.asarray(self.init, dtype=np.float64)
        if centers.ndim != 2 or centers.shape[1] != d or centers.shape[0] < 1:
            raise ValueError(
                f"init must have shape (k, n_features) = (k, {d}) with k >= 1, got "
                f"{centers.shape}; pass one row per starting centre."
            )
        if not np.isfinite(centers).all():
            raise ValueError("init contains NaN or infinity; pass finite centres.")
        return centers

    # --------------------------------------------------------------- fitting
    def _fit(self, X, data: InputData, weight) -> None:
        # Every pass reads the rows kept for the fit (``cache``), released when it ends.
        with kept_rows(data.array, self.cache, data.nan_policy.omits_rows) as self._rows:
            try:
                self._fit_kept(X, data, weight)
            finally:
                del self._rows

    def _fit_kept(self, X, data: InputData, weight) -> None:
        self._runs, self.n_passes_ = [], 0
        start = self._start(data, weight)
        if self.n_clusters is not None:
            best = self._search(data, weight, start)
        else:
            penalty = start.spread if self.penalty is None else float(self.penalty)
            best = self._run(data, weight, penalty, start, start.centers, start.tol_abs)
        if not best.converged:
            warnings.warn(
                f"DPMeans did not reach its fixed point in max_iter={self.max_iter} "
                f"iterations at penalty={best.penalty:.6g}; raise max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.cluster_centers_ = best.centers.astype(data.array.dtype)
        self.n_clusters_ = best.n_clusters
        self.penalty_ = best.penalty
        self.objective_ = best.objective
        self.inertia_ = float(best.inertia)
        self.n_iter_ = best.n_iter
        self.objective_history_ = best.objective_history
        self.n_clusters_history_ = best.n_clusters_history
        self.cluster_weights_ = best.weights
        self.penalty_search_ = [
            {"penalty": r.penalty, "n_clusters": r.n_clusters, "n_iter": r.n_iter,
             "converged": r.converged, "capped": r.capped} for r in self._runs
        ]  # fmt: skip
        del self._runs
        self.labels_ = self._labels(data)

    def _start(self, data: InputData, weight) -> Start:
        """The first centres (``init``, or the weighted mean), the spread and the
        tolerances: one pass, with the moments."""
        row = reference_row(data, 0)
        stats = self._pass(data, weight, row[None], row, 0, True, assign_pass)
        delta = stats["S"][0] / stats["N"][0]
        # Σ w ‖x − x̄‖² / Σ w, from the sums about `row` (a data row: no large offset).
        spread = (stats["inertia"] - stats["N"][0] * delta @ delta) / stats["N"][0]
        spread = max(float(spread), np.finfo(np.float64).tiny)
        mean = (row + delta)[None]
        centers = mean if self.init is None else self._user_centers(data.n_features)
        return Start(
            centers, mean[0], relative_tolerance(stats, self.tol),
            relative_tolerance(stats, SEARCH_TOL), spread,
        )  # fmt: skip

    def _pass(self, data, weight, centers, origin, n_far, moments, kind=costliest_pass) -> dict:
        self.n_passes_ += 1
        return kind(
            self._rows, weight, centers, origin, n_far, moments, split_every=self.split_every,
            nan_policy=data.nan_policy,
        )  # fmt: skip

    def _run(self, data, weight, penalty, start: Start, centers, tol_abs, cap=None) -> DPRun:
        """DP-means at one λ from ``centers`` until a pass opens and closes
        nothing and moves the centres by at most ``tol_abs`` (0: not at all,
        the fixed point), or max_iter; opening up to ``cap`` clusters only
        (None: no limit)."""
        objectives, counts = [], []
        new, lowest, began = centers, np.inf, time.perf_counter()
        for i in range(self.max_iter):
            centers = new
            stats = self._pass(data, weight, centers, start.origin, CANDIDATES, False)
            objectives.append(dp_objective(stats["inertia"], penalty, centers.shape[0]))
            counts.append(int(centers.shape[0]))
            room = None if cap is None else max(cap - int(np.count_nonzero(stats["N"] > 0)), 0)
            new, opened, closed = dp_update(stats, start.origin, penalty, room)
            lowest = min(lowest, opened.min(initial=np.inf))
            # Unchanged assignments give bit-identical sums (same blocks, same
            # reduction order): a zero shift is Lloyd's strict convergence.
            shift = np.inf if opened.size or closed else float(((new - centers) ** 2).sum())
            converged = shift <= tol_abs
            self._report(i, penalty, objectives[-1], counts[-1], opened.size, closed, shift, new,
                         converged)  # fmt: skip
            if converged:
                break
        # The pass's own centres: its labels, inertia and weights belong to them.
        run = DPRun(
            penalty, centers, stats["N"], float(stats["inertia"]), i + 1, converged, objectives,
            counts, tol_abs, new, float(stats["far_dist"][0]), lowest,
        )  # fmt: skip
        self._runs.append(run)
        _log_run(run, cap, time.perf_counter() - began)
        return run

    def _report(self, i, penalty, objective, n_clusters, opened, closed, shift, new, converged):
        if self.verbose:
            print(
                f"Iteration {i}, penalty {penalty:.6g}, objective {objective:.10g}, "
                f"{n_clusters} clusters, {opened} opened, {closed} closed."
            )
        if self.callback is not None:
            info = {
                "iteration": i + 1, "penalty": penalty, "objective": objective,
                "n_clusters": n_clusters, "opened": opened, "closed": closed, "shift": shift,
                "centers": new, "converged": converged,
            }  # fmt: skip
            self.callback(self, info)

    # ------------------------------------------------------------ λ search
    def _search(self, data, weight, start: Start) -> DPRun:
        """The run whose K is ``n_clusters`` (or the closest): bracket λ, then
        interpolate log λ against log K, each run warm-started (module docstring)."""
        target = self.n_clusters
        mean = start.centers
        largest = self._pass(data, weight, mean, start.origin, 1, False)["far_dist"][0]
        # Above the largest key nothing opens from the mean: K = 1, at once (a
        # hair above, or the rounding of the recentred mean could open a row).
        top = max(float(largest) * (1 + TOP_MARGIN), np.finfo(float).tiny)
        hi = self._run(data, weight, top, start, mean, start.tol_abs)
        lo = None
        for _ in range(SEARCH_RUNS if target > 1 else 0):
            if lo is None and hi.inertia <= np.finfo(float).eps * largest:
                break  # every row on its centre: no λ gives more clusters
            if lo is not None and hi.penalty / lo.penalty - 1 <= BISECTION_RTOL:
                break
            penalty = next_penalty(target, hi, lo, self._runs, data.n_features)
            run = self._run(data, weight, penalty, start, hi.centers, start.search_tol)
            if run.n_clusters == target:
                # Search runs stop early; at the fixed point K may still change.
                run = self._finish(data, weight, run, start)
                if run.n_clusters == target:
                    return run
            lo, hi = (run, hi) if run.n_clusters > target else (lo, run)
        return self._closest(target, hi, lo, data, weight, start)

    def _closest(self, target, hi, lo, data, weight, start: Start) -> DPRun:
        """No search run gave K = ``n_clusters``: a capped run if it has K, else
        the run closest to it, at its fixed point, warned."""
        if lo is not None:
            capped = self._capped(data, weight, target, hi, lo, start)
            if capped is not None:
                return capped
        runs = [r for r in self._runs if not r.capped]
        best = min(runs, key=lambda r: (abs(r.n_clusters - target), -r.penalty))
        if best.tol_abs > start.tol_abs:
            best = self._finish(data, weight, best, start)
        if best.n_clusters != target:
            jump = ""
            if lo is not None:
                jump = (f": K(λ) jumps from {hi.n_clusters} at λ={hi.penalty:.6g} to "
                        f"{lo.n_clusters} at λ={lo.penalty:.6g}")  # fmt: skip
            warnings.warn(
                f"No penalty found with n_clusters={target}{jump}; returning the fit with "
                f"{best.n_clusters} clusters (penalty_={best.penalty:.6g}). Pass penalty= "
                "to choose λ yourself, or another n_clusters.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return best

    def _finish(self, data, weight, run: DPRun, start: Start) -> DPRun:
        """``run`` (stopped at the search tolerance) taken on to its fixed point:
        a run from where it would go on, listed after it."""
        if not run.converged:
            return run  # max_iter spent already
        return self._run(data, weight, run.penalty, start, run.next_centers, start.tol_abs)

    def _capped(self, data, weight, target, hi, lo, start: Start) -> DPRun | None:
        """K(λ) jumped over ``target`` between ``hi`` and ``lo``: a fixed point
        with ``target`` clusters, from DP-means at lo's λ started at hi's centres
        and opening up to ``target`` clusters only (a capped run, listed as such).

        Its end has every key at most a; for λ* ≥ a it is a fixed point at λ*
        (and for λ* < b, the smallest key it opened at, the capped run itself
        was a run at λ*). λ* is the bracket's geometric middle when that lies
        in [a, b), else √(ab) when a < b, else a hair above a; a run at λ*
        from its centres confirms it (one pass). None when either run misses
        ``target`` clusters or the fixed point.
        """
        capped = self._run(data, weight, lo.penalty, start, hi.centers, start.tol_abs, target)
        capped.capped = True
        if capped.n_clusters != target or not capped.converged:
            return None
        a, b = max(capped.largest_key, np.finfo(float).tiny), capped.lowest_opened
        middle = float(np.sqrt(lo.penalty * hi.penalty))
        if a <= middle < b:
            penalty = middle
        else:
            penalty = float(np.sqrt(a * b)) if a < b else a * (1 + TOP_MARGIN)
        run = self._run(data, weight, penalty, start, capped.centers, start.tol_abs)
        return run if run.n_clusters == target and run.converged else None

    # ------------------------------------------------------------ prediction
    # The nearest centre, as k-means: one definition (KMeans's) for both.
    _centers64 = KMeans._centers64
    _labels = KMeans._labels
    predict = KMeans.predict
    _distances = KMeans._distances
    _transform = KMeans._transform

    @fill_doc
    def transform(self, X: Any) -> Any:
        """Euclidean distance of each sample to each centre.

        As :meth:`KMeans.transform`: columns ``dpmeans0``, ``dpmeans1``, ...
        (``get_feature_names_out``), a table under ``set_output`` for numpy
        or pandas input, lazy for lazy input.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples, ``n_clusters_``)
            {per_sample_component}
        """
        return self._transform(X)

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

    def to_xarray(self) -> xr.Dataset:
        """The fitted model as an ``xarray.Dataset`` (see :func:`export.dpmeans_dataset`).

        Returns
        -------
        xarray.Dataset
            ``weights``, ``means`` and ``sizes`` along ``component``, the objective's
            history along ``iteration``, the settings and fitted scalars as attributes.
        """
        from dask_emk.models.export import dpmeans_dataset

        check_is_fitted(self, "cluster_centers_")
        return dpmeans_dataset(self)
