"""KMeans: Lloyd iterations on chunks with scikit-learn's interface and semantics.

Each Lloyd iteration is one pass over the data and one Dask compute: the
block kernel :func:`dask_emk.core.assign.assign_stats` gives per-cluster weights
and sums, the inertia and the farthest rows; the tree reduction adds the
first and merges the last (:func:`dask_emk.engine.passes.assign_pass`); the centre
update and scikit-learn's empty-cluster relocation run on K×d numbers here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dask_emk.core.kernels import BlockKernels, block_kernels
from dask_emk.core.mstep import weighted_means
from dask_emk.engine import reduction
from dask_emk.engine.batch import Batch, Steps
from dask_emk.engine.inputs import InputData, as_sample_weight
from dask_emk.engine.passes import assign_pass, assign_request, distance_rows, nearest_center_rows
from dask_emk.models._docs import fill_doc
from dask_emk.models.base import LABEL_DTYPE, CentreDistancesOut, ChunkedEstimator
from dask_emk.models.export import named_output
from dask_emk.models.params import KMEANS, KMEANS_INITS
from dask_emk.models.seeding import (
    done,
    kmeans_parallel_steps,
    kmeans_plusplus_steps,
    random_rows_steps,
)
from dask_emk.models.validation import NoTrainingDataInPickle, validate_features

if TYPE_CHECKING:
    import xarray as xr


def update_centers(
    stats: dict, origin: np.ndarray, previous: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """New centres from summed statistics, relocating empty clusters.

    scikit-learn's rule (``_relocate_empty_clusters_dense`` then
    ``_average_centers``): the i-th empty cluster (by index) takes the i-th
    farthest row, which leaves its old cluster; if every row sits on its
    centre nothing moves; a cluster still without weight goes to the centre
    of the heaviest one. The centres are the mixture M-step's weighted means
    (:func:`dask_emk.core.mstep.weighted_means`) in the σ² → 0 limit. With
    gaps (``Nf`` in ``stats``) each coordinate is the mean over the rows
    where it is observed; one observed in none of a cluster's rows keeps
    its ``previous`` value.

    Returns
    -------
    centers : ndarray of shape (K, d)
    weights : ndarray of shape (K,), weight per cluster after relocation
    """
    N, S = stats["N"].copy(), stats["S"].copy()
    Nf = stats["Nf"].copy() if "Nf" in stats else None
    empty = np.flatnonzero(N == 0)
    if empty.size and stats["far_dist"][0] != 0:
        for e, dist, old, w, x in zip(
            empty,
            stats["far_dist"],
            stats["far_label"].astype(int),
            stats["far_weight"],
            stats["far_x"],
            strict=False,
        ):
            if not np.isfinite(dist):  # padding: fewer rows than empty clusters
                break
            moved = (x - origin) * w
            S[old] -= moved
            S[e] = moved
            N[old] -= w
            N[e] = w
            if Nf is not None:  # farthest rows are complete (core.marginal.assign_stats)
                Nf[old] -= w
                Nf[e] = w
    full = N > 0
    centers = np.empty_like(S)
    if Nf is None:
        centers[full] = weighted_means(origin, N[full], S[full])[0]
    else:
        seen = Nf > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            means = weighted_means(origin, Nf, S)[0]
        centers[:] = np.where(seen, means, previous)
    centers[~full] = centers[np.argmax(N)]
    return centers, N


def relative_tolerance(stats: dict, tol: float) -> float:
    """scikit-learn's ``_tolerance``: tol × mean of np.var(X, axis=0), from a
    pass's ``count``, ``ysum`` and ``ysq`` (``moments=True``); with gaps each
    feature's variance over its observed entries (``obs``)."""
    n = stats.get("obs", stats["count"])
    mean = stats["ysum"] / n
    variances = np.maximum(stats["ysq"] / n - mean**2, 0.0)
    return float(variances.mean() * tol)


@dataclass
class LloydRun:
    """Outcome of one Lloyd run (float64)."""

    centers: np.ndarray
    inertia: float
    n_iter: int
    weights: np.ndarray
    history: list = field(default_factory=list)


def same_centers(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two sets of centres (K, d) are the same up to order and rounding (1e-10)."""
    a, b = (c[np.lexsort(c.T[::-1])] for c in (a, b))
    scale = max(float(np.abs(a).max(initial=0.0)), np.finfo(np.float64).tiny)
    return bool(np.allclose(a, b, rtol=1e-10, atol=1e-10 * scale))


def _running(init: int, batch) -> str:
    """Progress text naming the run and the runs of its batch still going."""
    if batch is None or len(batch.running) <= 1:
        return ""
    return f" (init {init}; running: {', '.join(map(str, batch.running))})"


@fill_doc
class KMeans(
    NoTrainingDataInPickle, CentreDistancesOut, TransformerMixin, ClusterMixin, ChunkedEstimator
):
    """K-means clustering by Lloyd iterations over chunked data.

    scikit-learn's :class:`sklearn.cluster.KMeans` interface and semantics
    on numpy, dask, xarray or zarr input. Each iteration is one pass over the
    data and one Dask compute. ``transform`` output columns are named
    ``kmeans0``, ``kmeans1``, ... (``get_feature_names_out``), and
    ``set_output(transform='pandas')`` works for numpy or pandas input.

    Parameters
    ----------
    n_clusters : int, default=8
        The number of clusters K.
    init : {'k-means||', 'k-means++', 'random'}, callable or array of shape (n_clusters, n_features)
        Seeding, see :mod:`dask_emk.models.seeding` (passes over the data: k-means||
        ``init_max_iter + 2``; k-means++ ``n_clusters + 1``; random one). Its
        draws are keyed by row: one ``random_state`` gives the same model for
        any chunking, scheduler, input type or float32 storage. A callable is
        scikit-learn's ``init(X, n_clusters, random_state)`` returning the
        centres, called once per ``n_init`` with the fit's RandomState; ``X``
        is the in-memory input as a 2-D float array (not centred, NaN rows
        included; sample weights are not passed, as in scikit-learn), so it
        needs in-memory input (numpy, pandas, xarray on numpy): lazy input
        is refused (pass an array of centres instead).
    n_init : 'auto' or int, default='auto'
        Number of seedings; the run with the lowest inertia is kept.
        'auto': 10 for 'random' or a callable, else 1 (as scikit-learn).
    max_iter : int, default=300
        The most Lloyd iterations (passes over the data) per run.
    tol : float, default=1e-4
        Relative tolerance: stop when the squared centre shift is at most
        ``tol`` times the mean feature variance (taken from the first pass).
    random_state : int, RandomState or None
        Seed of the seeding (an integer gives the same fit every time).
    copy_x : bool, default=True
        Whether X may be modified in place during the fit (scikit-learn's).
        X is never modified here (blocks are shifted in copies), so both
        values give the same fit.
    algorithm : {'lloyd', 'elkan'}, default='lloyd'
        Both run Lloyd iterations, one pass each: Elkan's triangle-inequality
        bounds save distance computations in memory but need per-row bounds
        kept between passes, which out-of-core data does not allow. The
        result is Lloyd's, which is Elkan's (scikit-learn's ``'elkan'``
        gives the same centres and labels). As scikit-learn, 'elkan' with
        one cluster warns.
    oversampling_factor : float, default=2
        The k-means|| candidates expected per round, ℓ = factor × n_clusters.
    init_max_iter : int, optional
        The number of k-means|| rounds (default 5).
    split_every : int, optional
        Fan-in of the Dask tree reduction (32 when None).
    verbose : int, default=0
        > 0: print what scikit-learn prints ("Initialization complete" after
        each seeding, "Iteration i, inertia ..." per iteration, then why the
        run stopped); runs batched together say which run a line is of.
    callback : callable, optional
        ``callback(model, info)`` after every Lloyd iteration, for progress
        display and checkpoints; ``info`` is a dict with ``iteration``,
        ``inertia`` (at the centres the iteration started from), ``centers``
        (the new centres, float64), ``shift`` (squared centre shift) and
        ``converged``. Refitting with ``init=info['centers']`` continues the
        run from there.
    nan_policy : {'raise', 'omit', 'marginalize'}, default='raise'
        NaN in X: ``'raise'`` an error; ``'omit'`` leaves every row (grid
        point) holding a NaN out of every statistic (seeding draws and the
        farthest rows that refill empty clusters included) and gives it label
        -1 and NaN distances. ``'marginalize'``: a NaN entry is a missing
        coordinate; a row is assigned by its squared distance over its
        observed coordinates, a centre coordinate is the mean over its rows
        where that coordinate is observed, the inertia sums over observed
        coordinates (the σ² → 0 limit of shared-σ² EM with gaps); seeding
        draws complete rows only, and the farthest rows that refill empty
        clusters are complete rows. A row with no observed coordinate takes
        no part (label -1). ±inf is always an error.
    {feature_dim}
    {sample_dims}
    {missing_chunks}
    {cache}

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        In the data's float dtype.
    labels_ : ndarray (numpy input) or lazy dask array / xarray.DataArray
        Index of the nearest centre of each training sample. Lazy labels
        refer to the training data, so they are left out when the model is
        pickled or copied (call ``predict`` on the data instead).
    inertia_ : float
        Σ w ‖x − c‖² over the training data at ``cluster_centers_``.
    n_iter_ : int
    inertia_history_ : list of float
        Inertia at the start of every iteration of the kept run.
    cluster_weights_ : ndarray of shape (n_clusters,)
        Weight (count without sample weights) of each cluster.
    n_features_in_ : int
    feature_names_in_ : ndarray, only for xarray input with feature labels

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(8, 1, (100, 2))])
    >>> from dask_emk import KMeans
    >>> km = KMeans(2, random_state=0).fit(X)
    >>> km.cluster_centers_.round(1)
    array([[ 7.9,  7.9],
           [-0.1,  0.1]])
    >>> km.predict([[0, 0], [9, 8]]).tolist()
    [1, 0]
    >>> round(km.inertia_, 1)
    393.3
    """

    _parameter_specs = KMEANS
    _weight_sums = ("inertia_", "inertia_history_", "cluster_weights_")

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means||",
        n_init="auto",
        max_iter=300,
        tol=1e-4,
        random_state=None,
        copy_x=True,
        algorithm="lloyd",
        oversampling_factor=2,
        init_max_iter=None,
        split_every=None,
        verbose=0,
        callback=None,
        nan_policy="raise",
        feature_dim=None,
        sample_dims=None,
        missing_chunks="raise",
        cache="auto",
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.oversampling_factor = oversampling_factor
        self.init_max_iter = init_max_iter
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
        self._check_n_samples(data, "n_clusters")
        if callable(self.init) and data.is_lazy:
            raise ValueError(
                "init is a callable, which scikit-learn calls with X in memory, but X is "
                "lazy (dask, zarr or xarray on dask); pass init=centres, e.g. "
                "init=f(sample, n_clusters, random_state) on an in-memory sample, "
                "or a named seeding."
            )
        if self.algorithm == "elkan" and self.n_clusters == 1:
            warnings.warn(
                "algorithm='elkan' doesn't make sense for a single cluster. Using 'lloyd' instead.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _user_centers(self, d: int, init=None) -> np.ndarray | None:
        """The centres of an array ``init`` (the parameter, or what a callable gave), checked."""
        init = self.init if init is None else init
        if isinstance(init, str) or callable(init):
            return None
        try:
            centers = np.asarray(init, dtype=np.float64)
        except (TypeError, ValueError):  # strings, ragged lists: numpy's message names neither
            raise ValueError(
                f"init must be one of {KMEANS_INITS}, a callable or a numeric array of shape "
                f"(n_clusters, n_features) = ({self.n_clusters}, {d}); got "
                f"{type(init).__name__} that is not numbers."
            ) from None
        if centers.shape != (self.n_clusters, d):
            # scikit-learn's words, then the shape wanted
            wrong = (
                f"the number of clusters {self.n_clusters}"
                if centers.ndim != 2 or centers.shape[0] != self.n_clusters
                else f"the number of features of the data {d}"
            )
            raise ValueError(
                f"The shape of the initial centers {centers.shape} does not match {wrong}; "
                f"pass init of shape (n_clusters, n_features) = ({self.n_clusters}, {d})."
            )
        if not np.isfinite(centers).all():
            raise ValueError("init contains NaN or infinity.")
        return centers

    def _called_centers(self, data: InputData, rng) -> np.ndarray:
        """scikit-learn's callable ``init(X, n_clusters, random_state)`` on in-memory X."""
        centers = self.init(data.array, self.n_clusters, random_state=rng)
        return self._user_centers(data.n_features, init=centers)

    def _resolve_n_init(self) -> int:
        n_init = self.n_init
        if n_init == "auto":
            named = isinstance(self.init, str)
            n_init = 10 if (named and self.init == "random") or callable(self.init) else 1
        if not isinstance(self.init, str) and not callable(self.init) and n_init != 1:
            warnings.warn(
                "Explicit initial center position passed: performing only one init "
                f"in KMeans instead of n_init={n_init}.",
                RuntimeWarning,
                stacklevel=4,
            )
            n_init = 1
        return n_init

    # --------------------------------------------------------------- fitting
    def _fit(self, X, data: InputData, weight) -> None:
        """Seedings and Lloyd runs in shared passes; the run with the lowest inertia is kept.

        Every run draws its seeding from the random state before any pass
        (:func:`run_steps`), in order, so ``n_init`` runs in one batch give
        the runs of ``n_init`` fits one after the other on the same
        ``RandomState``.
        """
        user = self._user_centers(data.n_features)
        rng = check_random_state(self.random_state)
        batch = self._batch(data, weight)
        fits = [self.run_steps(data, weight, rng, user, i, batch)
                for i in range(self._resolve_n_init())]  # fmt: skip
        self._n_init = len(fits)  # scikit-learn's name for the resolved n_init
        runs = batch.run(fits)
        best = runs[0]
        for run in runs[1:]:
            # As scikit-learn: a lower inertia wins unless it is the same
            # clustering, whose inertia differs by rounding (which the chunking changes).
            if run.inertia < best.inertia and not same_centers(run.centers, best.centers):
                best = run
        self.warn_if_few_distinct(best.weights)
        dtype = data.array.dtype
        self.cluster_centers_ = best.centers.astype(dtype)
        self.inertia_ = float(best.inertia)
        self.n_iter_ = best.n_iter
        self.inertia_history_ = [float(v) for v in best.history]
        self.cluster_weights_ = best.weights
        self._data_kind = data.kind
        # Lazy for lazy input: all labels of out-of-core data are not computed here.
        self.labels_ = self._labels(data)

    def warn_if_few_distinct(self, weights: np.ndarray) -> None:
        """scikit-learn's warning: duplicate points leave clusters without samples."""
        distinct = int(np.count_nonzero(weights > 0))
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than "
                f"n_clusters ({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning,
                stacklevel=4,
            )

    def run_steps(
        self, data: InputData, weight: Any, rng: np.random.RandomState, user: Any = None,
        init: int = 0, batch: Batch | None = None,
    ) -> Steps:
        """One seeding and Lloyd run as a step generator (:mod:`dask_emk.engine.batch`).

        The seeding draws from ``rng`` now; the generator returns a
        :class:`LloydRun`. ``user`` centres replace the seeding; ``init``
        and ``batch`` (whose ``running`` fits are reported) are for the callback,
        ``batch`` also for the seeding's log lines (:class:`~dask_emk.models.seeding.SeedingLog`).
        """
        start = done(user) if user is not None else self._seed_steps(data, weight, rng, batch)
        return self._lloyd(start, block_kernels(data.nan_policy), init, batch)

    def _seed_steps(self, data: InputData, weight, rng, batch: Batch | None = None) -> Steps:
        # With gaps, centres are drawn from complete rows only (models.seeding).
        K, omit = self.n_clusters, data.nan_policy.allows_nan
        if callable(self.init):
            return done(self._called_centers(data, rng))
        if self.init == "k-means++":
            return kmeans_plusplus_steps(data.array, K, rng, weight, omit)
        if self.init == "random":
            return random_rows_steps(data.array, K, rng, weight, omit)
        return kmeans_parallel_steps(
            data.array,
            K,
            rng,
            sample_weight=weight,
            oversampling_factor=self.oversampling_factor,
            n_rounds=self.init_max_iter,
            omit_nan=omit,
            batch=batch,
        )

    def _lloyd(
        self, start: Steps, kernels: BlockKernels, init: int, batch: Batch | None
    ) -> Steps:
        """One Lloyd run from the centres ``start`` gives; returns a LloydRun.

        ``kernels``: those of the fit's ``nan_policy``
        (:func:`dask_emk.core.kernels.block_kernels`).
        """
        centers = yield from start
        if self.verbose:
            print(f"Initialization complete{_running(init, batch)}")
        origin = centers.mean(axis=0)  # fixed for the run: sums stay comparable
        n_far = self.n_clusters - 1
        history, strict, tol_abs = [], False, None
        for i in range(self.max_iter):
            moments = tol_abs is None and self.tol > 0
            stats = yield assign_request(centers, origin, n_far, moments, kernels)
            if tol_abs is None:
                tol_abs = self._tolerance(stats) if moments else 0.0
            history.append(float(stats["inertia"]))
            new, weights = update_centers(stats, origin, centers)
            shift = float(((new - centers) ** 2).sum())
            if self.verbose:
                print(f"Iteration {i}, inertia {stats['inertia']}{_running(init, batch)}.")
            centers = new
            # Unchanged labels give bit-identical sums (same blocks, same
            # reduction order), so a zero shift is scikit-learn's strict
            # convergence, and the pass's inertia already belongs to `centers`.
            strict = shift == 0.0
            if self.callback is not None:
                info = {
                    "init": init,
                    "iteration": i + 1,
                    "inertia": float(stats["inertia"]),
                    "centers": centers,
                    "shift": shift,
                    "converged": strict or shift <= tol_abs,
                    "running": batch.running if batch is not None else (init,),
                }
                self.callback(self, info)
            if strict or shift <= tol_abs:
                self._print_converged(i, strict, shift, tol_abs, init, batch)
                break
        if strict:
            return LloydRun(centers, stats["inertia"], i + 1, weights, history)
        # Final assignment so that inertia (and labels_) match the centres.
        final = yield assign_request(centers, origin, kernels=kernels)
        return LloydRun(centers, final["inertia"], i + 1, final["N"], history)

    def _print_converged(self, i: int, strict: bool, shift, tol_abs, init, batch) -> None:
        if not self.verbose:
            return
        if strict:
            print(f"Converged at iteration {i}: strict convergence{_running(init, batch)}.")
        else:
            print(
                f"Converged at iteration {i}: center shift {shift} within tolerance "
                f"{tol_abs}{_running(init, batch)}."
            )

    def _tolerance(self, stats: dict) -> float:
        return relative_tolerance(stats, self.tol)

    # ------------------------------------------------------------ prediction
    def _centers64(self) -> tuple[np.ndarray, np.ndarray]:
        centers = np.asarray(self.cluster_centers_, dtype=np.float64)
        return centers, centers.mean(axis=0)

    def _labels(self, data: InputData):
        centers, origin = self._centers64()
        labels = reduction.map_rows(
            data.array, nearest_center_rows, centers, origin, block_kernels(data.nan_policy),
            dtype=LABEL_DTYPE,
            nan_policy=data.nan_policy,
        )  # fmt: skip
        return named_output(data.wrap_rows(labels), "label", centers.shape[0])

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
        return self._labels(validate_features(self, X, reset=False))

    @fill_doc
    def transform(self, X: Any) -> Any:
        """Euclidean distance of each sample to each centre.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples, n_clusters)
            {per_sample_component}
            A table under ``set_output`` for numpy or pandas input.
        """
        return self._transform(X)

    def _transform(self, X):
        # Not wrapped by set_output: fit_transform's wrapper wraps once.
        return self._in_memory_output(self._distances(validate_features(self, X, reset=False)))

    def _distances(self, data: InputData):
        centers, origin = self._centers64()
        dist = reduction.map_rows(
            data.array,
            distance_rows,
            centers,
            origin,
            block_kernels(data.nan_policy),
            n_out=centers.shape[0],
            dtype=data.array.dtype,
            nan_policy=data.nan_policy,
        )
        return data.wrap_rows(dist, extra_dim="component")

    @fill_doc
    def score(self, X: Any, y: object = None, sample_weight: Any = None) -> float:
        """Opposite of the inertia of X at the fitted centres (one pass).

        Parameters
        ----------
        {X}
        {y}
        {sample_weight}

        Returns
        -------
        float
            −Σ w ‖x − μ‖².
            {computed}
        """
        return self._score(validate_features(self, X, reset=False), sample_weight)

    def _score(self, data: InputData, sample_weight) -> float:
        weight = as_sample_weight(sample_weight, data)
        centers, origin = self._centers64()
        stats = assign_pass(data.array, weight, centers, origin, nan_policy=data.nan_policy)
        return -float(stats["inertia"])

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
    def fit_transform(self, X: Any, y: object = None, sample_weight: Any = None) -> Any:
        """Fit, then return the distances of X to the centres.

        Parameters
        ----------
        {X}
        {y}
        {sample_weight}

        Returns
        -------
        ndarray or dask array of shape (n_samples, n_clusters)
            {per_sample_component}
        """
        return self.fit(X, sample_weight=sample_weight)._transform(X)

    def to_xarray(self) -> xr.Dataset:
        """The fitted model as an ``xarray.Dataset`` (see :func:`export.kmeans_dataset`).

        Returns
        -------
        xarray.Dataset
            ``weights``, ``means`` and ``sizes`` along ``component``, the inertia's
            history along ``iteration``, the settings and fitted scalars as attributes.
        """
        from dask_emk.models.export import kmeans_dataset

        check_is_fitted(self, "cluster_centers_")
        return kmeans_dataset(self)
