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
key is still above λ against every centre, the ones just opened included
(Kulis & Jordan's sequential rule, on the kept rows); clusters left without
weight close; every centre moves to the weighted mean of its rows. When
more than :data:`CANDIDATES` rows are above λ the pass opens among those it
kept and the next pass sees the rest: J still falls, one pass later.

**J never increases.** With J(z, μ) as above and K the number of clusters:
(a) the pass assigns each row to its nearest centre, so no term grows;
(b) opening a centre at a kept row x_j and moving that row alone there
changes J by λ − w_j D_j ≤ λ − min(w_j, 1) D_j < 0 (D_j = ‖x_j − μ_{z_j}‖²;
rows near a just-opened centre are skipped, not moved, so each opening is
such a move); (c) closing a cluster without weight lowers J by λ; (d) the
weighted mean of a cluster's rows minimises its Σ w ‖x − μ‖². The next
pass starts from there, so the objective of every pass (``objective_history_``)
is at most the one before. A pass that finds a key above λ opens at least its
first kept row, so a run cannot stall on one.

**Fixed point** (where a run stops): the pass finds every row within √λ of
its nearest centre (min(w, 1) ‖x − μ‖² ≤ λ), no cluster empty, and the
weighted means of the clusters equal their centres (squared shift 0 with
``tol=0``, else at most ``tol`` × the mean feature variance). The centres
returned are those of that last pass, so ``labels_`` are their nearest
centres and ``objective_`` is J at them exactly.

**n_clusters = K** finds λ by bisection on log λ. The bracket comes from the
data: from λ₁ = max min(w, 1) ‖x − x̄‖² up nothing opens from the mean x̄
(K = 1); λ is divided by 4 until K(λ) ≥ K. Each fit starts from the centres
of the bracket end with the larger λ (fewer clusters): DP-means opens and
closes but never merges, so a start with more clusters would keep them.
K(λ) is not monotone in general (the fixed point reached depends on the
start), and it may jump over K. The search stops when it hits K, or when
the bracket is narrower than :data:`BISECTION_RTOL` (relative); then the fit
with the K closest to the target is returned (the larger λ among ties) with
a ConvergenceWarning that names the jump. ``penalty_search_`` lists every
fit tried.

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

import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import ClusterMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from dask_emk.core.assign import opening_key
from dask_emk.core.hartigan import EMPTIED_FRACTION
from dask_emk.core.mstep import weighted_means
from dask_emk.engine.inputs import InputData
from dask_emk.engine.passes import assign_pass, costliest_pass
from dask_emk.models.anneal import reference_row
from dask_emk.models.base import ChunkedEstimator
from dask_emk.models.kmeans import KMeans, relative_tolerance
from dask_emk.models.params import DPMEANS
from dask_emk.models.validation import NoTrainingDataInPickle

#: Rows kept per pass as candidates for new centres (the farthest-rows list).
#: Checking them on the client costs microseconds each; more rows above λ
#: than this take another pass.
CANDIDATES = 256
#: The λ search stops when the bracket [lo, hi] has hi / lo − 1 below this.
BISECTION_RTOL = 1e-4
#: λ is divided by this while looking for the lower end of the bracket ...
LOWER_FACTOR = 4.0
#: ... at most this many times (4⁻⁴⁰ ≈ 1e-24 of the data's largest key).
LOWER_STEPS = 40


def dp_objective(inertia: float, penalty: float, n_clusters: int) -> float:
    """J = Σ w ‖x − μ_z‖² + λ K."""
    return float(inertia + penalty * n_clusters)


def dp_update(stats: dict, origin: np.ndarray, penalty: float) -> tuple[np.ndarray, int, int]:
    """New centres after one pass: open, close, recentre (the client's step).

    Parameters
    ----------
    stats : dict from :func:`dask_emk.engine.passes.costliest_pass`
        ``N`` (K,), ``S`` (K, d) about ``origin``, the kept rows ``far_dist``
        (their opening key, descending), ``far_label``, ``far_weight``,
        ``far_x`` (m, d).
    origin : ndarray of shape (d,)
    penalty : float, λ

    Returns
    -------
    centers : ndarray of shape (K', d), weighted means of the clusters kept
    opened, closed : int, clusters opened and closed
    """
    N, S = stats["N"].copy(), stats["S"].copy()
    new_x, new_w = [], []
    labels = stats["far_label"].astype(int)
    for key, label, w, x in zip(stats["far_dist"], labels, stats["far_weight"], stats["far_x"],
                                strict=True):  # fmt: skip
        if not key > penalty:  # sorted: no later row opens (also the -inf padding)
            break
        if new_x and opening_key(((np.asarray(new_x) - x) ** 2).sum(axis=1).min(), w) <= penalty:
            continue
        S[label] -= (x - origin) * w
        N[label] -= w
        new_x.append(x)
        new_w.append(w)
    new_x, new_w = np.reshape(new_x, (-1, S.shape[1])), np.asarray(new_w, dtype=np.float64)
    before = np.concatenate([stats["N"], new_w])
    N = np.concatenate([N, new_w])
    S = np.concatenate([S, (new_x - origin) * new_w[:, None]])
    # Sums of weights carry rounding: a cluster whose rows all moved holds ~0.
    keep = N > EMPTIED_FRACTION * before
    closed = int(np.count_nonzero(~keep))
    return weighted_means(origin, N[keep], S[keep])[0], len(new_w), closed


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

    @property
    def n_clusters(self) -> int:
        return int(self.centers.shape[0])

    @property
    def objective(self) -> float:
        return dp_objective(self.inertia, self.penalty, self.n_clusters)


@dataclass
class Start:
    """What every run of a fit shares: the reference point and the tolerance."""

    centers: np.ndarray
    origin: np.ndarray
    tol_abs: float | None


class DPMeans(NoTrainingDataInPickle, ClusterMixin, ChunkedEstimator):
    """DP-means: k-means with a price λ per cluster, the number of clusters found.

    Minimises Σ w ‖x − μ_z‖² + λ K over the centres, the assignments and K,
    on numpy, dask, xarray or zarr input; each iteration is one pass over the
    data. The module docstring (:mod:`dask_emk.models.dpmeans`) derives it
    from the small-variance limit of a Dirichlet-process mixture, proves that
    the objective never increases and states the fixed point.

    Parameters
    ----------
    penalty : float, optional
        λ > 0, in squared data units: a row farther than √λ from every centre
        opens a cluster (with weights: min(w, 1) ‖x − μ‖² > λ). Exactly one
        of ``penalty`` and ``n_clusters``.
    n_clusters : int, optional
        A target K: λ is found by bisection (see the module docstring; a
        ConvergenceWarning when no λ gives K exactly).
    init : array of shape (k, n_features), optional
        Starting centres (``penalty`` only); default: one centre at the
        weighted data mean (one pass to find it), as Kulis & Jordan.
    max_iter : int, default=300
        Iterations (passes) per run at one λ.
    tol : float, default=1e-4
        Relative tolerance: a run stops when a pass opens and closes nothing
        and the squared centre shift is at most ``tol`` times the mean
        feature variance (scikit-learn's k-means rule); 0 runs to the exact
        fixed point.
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
    feature_dim : str, optional
        The dimension of an N-D DataArray that holds the features.
    sample_dims : str or list of str, optional
        The dimensions of xarray input that hold samples; see
        :class:`dask_emk.GaussianMixture`.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters_, n_features)
        In the data's float dtype.
    labels_ : ndarray (numpy input) or lazy dask array / xarray.DataArray
        Nearest centre of each training sample (lazy ones are left out when
        the model is pickled, as :class:`dask_emk.KMeans`'s).
    n_clusters_ : int
    penalty_ : float
        λ of the fit (``penalty``, or the one the search found).
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
    cluster_weights_ : ndarray of shape (n_clusters_,)
        Weight (count without sample weights) of each cluster.
    penalty_search_ : list of dict
        Every run of the fit: ``penalty``, ``n_clusters``, ``n_iter``,
        ``converged`` (one entry with ``penalty``).
    n_passes_ : int
        Passes over the data during ``fit`` (``labels_`` excluded).
    n_features_in_ : int
    feature_names_in_ : ndarray, only for xarray input with feature labels
    """

    _parameter_specs = DPMEANS

    def __init__(
        self,
        penalty=None,
        n_clusters=None,
        *,
        init=None,
        max_iter=300,
        tol=1e-4,
        random_state=None,
        split_every=None,
        verbose=0,
        callback=None,
        nan_policy="raise",
        feature_dim=None,
        sample_dims=None,
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

    # ------------------------------------------------------------------ checks
    def _check_parameters(self, data: InputData) -> None:
        if data.marginal:
            raise ValueError(
                "DPMeans has no nan_policy='marginalize' (it opens clusters at whole rows, "
                "which a gap leaves undefined); use nan_policy='omit' to leave out the rows "
                "holding NaN, or KMeans(nan_policy='marginalize')."
            )
        if (self.penalty is None) == (self.n_clusters is None):
            given = "both" if self.penalty is not None else "neither"
            raise ValueError(
                f"DPMeans needs exactly one of penalty (λ, the price of a cluster in squared "
                f"data units) or n_clusters (a target K), got {given}; pass one."
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
        self._runs, self.n_passes_ = [], 0
        start = self._start(data, weight)
        if self.penalty is not None:
            best = self._run(data, weight, float(self.penalty), start, start.centers)
        else:
            best = self._search(data, weight, start)
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
             "converged": r.converged} for r in self._runs
        ]  # fmt: skip
        del self._runs
        self.labels_ = self._labels(data)

    def _start(self, data: InputData, weight) -> Start:
        """The first centres: ``init``, or the weighted mean (one pass, with the moments)."""
        if self.init is not None:
            centers = self._user_centers(data.n_features)
            return Start(centers, centers.mean(axis=0), None if self.tol > 0 else 0.0)
        row = reference_row(data, 0)
        stats = self._pass(data, weight, row[None], row, 0, self.tol > 0, assign_pass)
        mean = row + stats["S"][0] / stats["N"][0]
        tol_abs = relative_tolerance(stats, self.tol) if self.tol > 0 else 0.0
        return Start(mean[None], mean, tol_abs)

    def _pass(self, data, weight, centers, origin, n_far, moments, kind=costliest_pass) -> dict:
        self.n_passes_ += 1
        return kind(
            data.array, weight, centers, origin, n_far, moments, split_every=self.split_every,
            omit_nan=data.omit_nan,
        )  # fmt: skip

    def _run(self, data, weight, penalty: float, start: Start, centers: np.ndarray) -> DPRun:
        """DP-means at one λ from ``centers`` to its fixed point (or max_iter)."""
        objectives, counts, new = [], [], centers
        for i in range(self.max_iter):
            centers = new
            moments = start.tol_abs is None
            stats = self._pass(data, weight, centers, start.origin, CANDIDATES, moments)
            if moments:
                start.tol_abs = relative_tolerance(stats, self.tol)
            objectives.append(dp_objective(stats["inertia"], penalty, centers.shape[0]))
            counts.append(int(centers.shape[0]))
            new, opened, closed = dp_update(stats, start.origin, penalty)
            same = not (opened or closed)
            shift = float(((new - centers) ** 2).sum()) if same else np.inf
            converged = shift <= start.tol_abs
            self._report(i, penalty, objectives[-1], counts[-1], opened, closed, shift, new,
                         converged)  # fmt: skip
            if converged:
                break
        # The pass's own centres: its labels, inertia and weights belong to them.
        run = DPRun(penalty, centers, stats["N"], float(stats["inertia"]), i + 1, converged,
                    objectives, counts)  # fmt: skip
        self._runs.append(run)
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
        """The run whose K is ``n_clusters`` (or the closest): bracket, then bisect log λ."""
        target = self.n_clusters
        mean = start.centers
        largest = self._pass(data, weight, mean, start.origin, 1, False)["far_dist"][0]
        # Above the largest key nothing opens from the mean: K = 1.
        hi = self._run(data, weight, max(float(largest), np.finfo(float).tiny), start, mean)
        lo = None
        for _ in range(LOWER_STEPS if hi.n_clusters < target else 0):
            run = self._run(data, weight, hi.penalty / LOWER_FACTOR, start, hi.centers)
            if run.n_clusters >= target:
                lo = run
                break
            hi = run
        while lo is not None and lo.n_clusters != target and hi.n_clusters != target:
            if hi.penalty / lo.penalty - 1 <= BISECTION_RTOL:
                break
            run = self._run(data, weight, float(np.sqrt(lo.penalty * hi.penalty)), start,
                            hi.centers)  # fmt: skip
            lo, hi = (run, hi) if run.n_clusters > target else (lo, run)
        best = min(self._runs, key=lambda r: (abs(r.n_clusters - target), -r.penalty))
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

    # ------------------------------------------------------------ prediction
    # The nearest centre, as k-means: one definition (KMeans's) for both.
    _centers64 = KMeans._centers64
    _labels = KMeans._labels
    predict = KMeans.predict

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return ``labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def to_xarray(self):
        """The fitted model as an ``xarray.Dataset`` (see :func:`export.dpmeans_dataset`)."""
        from dask_emk.models.export import dpmeans_dataset

        check_is_fitted(self, "cluster_centers_")
        return dpmeans_dataset(self)
