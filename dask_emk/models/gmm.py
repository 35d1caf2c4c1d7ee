"""GaussianMixture: EM on chunks with scikit-learn's interface and semantics."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dask_emk.core import marginal, mixture
from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.kernels import BlockKernels, block_kernels
from dask_emk.core.layout import StatsLayout
from dask_emk.core.mstep import GaussianState, m_step, precision_cholesky
from dask_emk.core.nan_policy import NanPolicy
from dask_emk.engine import reduction
from dask_emk.engine.batch import Batch, Pass, Steps
from dask_emk.engine.inputs import InputData, as_input
from dask_emk.engine.mixture_passes import (
    log_prob_rows,
    mixture_block,
    most_probable_rows,
    resp_block,
    resp_rows,
)
from dask_emk.models._docs import fill_doc
from dask_emk.models.base import LABEL_DTYPE, ChunkedEstimator
from dask_emk.models.export import named_output
from dask_emk.models.params import GAUSSIAN_MIXTURE, Integer
from dask_emk.models.seeding import done, kmeans_plusplus_steps, random_rows_steps
from dask_emk.models.squarem import squarem_steps
from dask_emk.models.validation import check_features, input_options, validate_features

if TYPE_CHECKING:
    import xarray as xr

#: Added to each component's weight in the M-step (scikit-learn's 10 eps), that
#: of float64 whatever the data's dtype: the statistics are float64, and float32
#: storage of the same values must give the same fit (float32's moved a fit
#: from random responsibilities by 1e-6).
M_STEP_EPS = 10 * np.finfo(np.float64).eps


class _Progress:
    """Lower bounds, convergence and reports of one EM run, iteration by iteration.

    With ``verbose`` it prints scikit-learn's lines ("Initialization i", then
    "  Iteration n" every ``verbose_interval``, with times and the change at
    verbose >= 2, then whether the run converged); a line of a run batched
    with others says which run it is of and which still run.
    """

    def __init__(self, model, data: InputData, init: int, batch, bound: float):
        self.model, self.dtype, self.init, self.batch = model, data.array.dtype, init, batch
        self.bound, self.bounds, self.n_iter, self.converged = bound, [], 0, False
        self.started = self.last = time.perf_counter()
        if model.verbose:
            print(f"Initialization {init}")

    def record(self, stats: dict, state: GaussianState) -> bool:
        """An iteration whose E-step gave ``stats`` and M-step ``state``; True when converged."""
        model, bound = self.model, float(stats["loglik"] / stats["n"])
        previous, self.bound = self.bound, bound
        self.n_iter += 1
        self.bounds.append(bound)
        self._print_iteration(bound - previous)
        self.converged = bool(abs(bound - previous) < model.tol)
        if model.callback is not None:
            model._report(
                self.init, self.n_iter, state, self.dtype, self.bounds, self.converged,
                self._running(),
            )  # fmt: skip
        return self.converged

    def run(self, state: GaussianState) -> EMRun:
        if self.model.verbose:
            said = "converged" if self.converged else "did not converge"
            if self.model.verbose >= 2:
                lapse = time.perf_counter() - self.started
                said += f". time lapse {lapse:.5f}s\t lower bound {self.bound:.5f}"
            print(f"Initialization {said}.{self._which()}")
        return EMRun(state, self.bound, self.bounds, self.n_iter, self.converged)

    def _running(self) -> tuple:
        return tuple(self.batch.running) if self.batch is not None else (self.init,)

    def _which(self) -> str:
        """Which run a line is of, when several run in the batch."""
        running = self._running()
        if len(running) <= 1:
            return ""
        return f"\t init {self.init}; running: {', '.join(map(str, running))}"

    def _print_iteration(self, change: float) -> None:
        model = self.model
        if not model.verbose or self.n_iter % model.verbose_interval:
            return
        line = f"  Iteration {self.n_iter}"
        if model.verbose >= 2:
            now = time.perf_counter()
            line += f"\t time lapse {now - self.last:.5f}s\t ll change {change:.5f}"
            self.last = now
        print(line + self._which())


@dataclass
class EMRun:
    """Outcome of EM from one initialisation (float64)."""

    state: GaussianState
    bound: float
    bounds: list
    n_iter: int
    converged: bool


@fill_doc
class GaussianMixture(DensityMixin, ChunkedEstimator):
    """Gaussian mixture fitted by EM over chunked data.

    scikit-learn's :class:`sklearn.mixture.GaussianMixture` interface and
    semantics, on numpy, dask, xarray or zarr input. Each EM iteration is one
    pass over the data and one Dask compute: per-block E-step statistics
    added up by a tree reduction, then a tiny M-step.

    Parameters
    ----------
    n_components : int, default=1
        The number of mixture components K.
    covariance_type : {'full', 'tied', 'diag', 'spherical', 'shared'}, default='full'
        ``'shared'``: one spherical variance σ² for all components
        (``covariances_`` is a 0-d array); see ``variance``.
    tol : float, default=1e-3
        Convergence threshold on the change of the lower bound (mean weighted
        log-likelihood).
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance.
    max_iter : int, default=100
        The most EM iterations (passes over the data) per initialisation;
        0 returns the initial parameters.
    n_init : int, default=1
        Initialisations to run (in shared passes); the one of highest lower
        bound is kept.
    init_params : {'kmeans', 'k-means||', 'k-means++', 'random', 'random_from_data'}
        Default 'kmeans'.
        How responsibilities are initialised. ``'kmeans'`` runs
        :class:`dask_emk.KMeans` (k-means|| seeding, out-of-core);
        ``'k-means||'`` is the same; ``'k-means++'`` and ``'random_from_data'``
        put each mean on one data point (drawn ∝ ``sample_weight``) with
        covariance ``reg_covar`` (as scikit-learn); ``'random'`` draws uniform
        responsibilities per row. Every draw is keyed by row: one
        ``random_state`` gives the same start for any chunking, scheduler,
        input type or float32 storage.
    weights_init, means_init, precisions_init : array-like, optional
        User-provided initial parameters (scikit-learn shapes; ``'shared'``
        takes a scalar precision).
    random_state : int, RandomState or None
        Seed of the initialisations (an integer gives the same fit every time).
    warm_start : bool, default=False
        Start from the previous fit's parameters (same ``n_components``,
        ``covariance_type`` and features) instead of a new initialisation.
    verbose : int, default=0
        > 0: print scikit-learn's progress lines ("Initialization i", then
        "  Iteration n" every ``verbose_interval`` iterations, then
        "Initialization converged." or "... did not converge."); >= 2 adds
        the time taken, the change of the lower bound and the final lower
        bound. Runs batched together say which run a line is of.
    verbose_interval : int, default=10
        Iterations between progress lines with ``verbose=2``.
    variance : float, optional
        With ``covariance_type='shared'``: fix σ² to this value instead of
        learning it (annealing and hard k-means limits).
    split_every : int, optional
        Fan-in of the Dask tree reduction (32 when None: one combine per 32 blocks).
    callback : callable, optional
        ``callback(model, info)`` after every EM iteration, for progress
        display and checkpoints. ``model`` then holds that iteration's
        parameters (``weights_``, ``means_``, ..., ``lower_bound_``,
        ``n_iter_``, ``converged_``); ``info`` is a dict with ``init``,
        ``iteration``, ``lower_bound``, ``change`` and ``converged``. A copy of
        ``model`` saved there and refitted with ``warm_start=True`` continues
        exactly where it left off (parameters are kept in float64 too).
    accelerate : bool, default=False
        SQUAREM-accelerated EM (Varadhan & Roland 2008,
        :mod:`dask_emk.core.squarem`): each cycle makes two EM steps, jumps
        along their path, and keeps the jump only if its lower bound is at
        least the plain EM step's (evaluated in the same pass), so the lower
        bound never decreases. The jump is taken in log-weights, means and
        log-diagonal Cholesky factors of the covariances, so weights stay on
        the simplex and covariances positive definite. An iteration is a
        pass: ``n_iter_``, ``lower_bounds_`` and ``max_iter`` count passes.
    nan_policy : {'raise', 'omit', 'marginalize'}, default='raise'
        NaN in X: ``'raise'`` an error; ``'omit'`` leaves every row (grid
        point) holding a NaN out of every statistic, seeding included, and
        gives it NaN outputs (label -1). ``'marginalize'``: a NaN entry is a
        missing feature; each row takes part with the features it has (EM
        for the observed-data likelihood: the E-step and ``score_samples``,
        ``predict_proba``, ``predict`` use the marginal density of the
        observed features, the M-step is exact), and :meth:`impute` fills
        the gaps; a row with no observed feature takes no part and gets NaN
        outputs. ±inf is always an error.
    {feature_dim}
    {sample_dims}
    {missing_chunks}
    estep : {'auto', 'dense', 'sparse'} or EStepOptions, default='auto'
        How the E-step is computed; every choice gives the same statistics to
        rounding (docs/NUMERICS.md), only the speed differs. ``'auto'``: each
        sub-block of rows takes the sparse E-step (only the (row, component)
        pairs whose responsibility can be non-zero in float64) where a probe
        of its first rows says that pays, else the dense one (all pairs, two
        GEMMs); ``'dense'`` and ``'sparse'`` force one path.
        :class:`dask_emk.core.mixture.EStepOptions` sets the finer options.
        The choice travels with the parameters to every Dask worker.
    {cache}

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_, precisions_, precisions_cholesky_ : ndarray
        Shapes as scikit-learn; 0-d for ``'shared'``.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean weighted log-likelihood from the E-step of the last iteration.
    lower_bounds_ : list of float
        The lower bound of every iteration of the best initialisation.
    n_features_in_ : int
    feature_names_in_ : ndarray, only for xarray input with feature labels

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(8, 1, (100, 2))])
    >>> from dask_emk import GaussianMixture
    >>> gm = GaussianMixture(2, random_state=0).fit(X)
    >>> gm.weights_.round(2)
    array([0.5, 0.5])
    >>> gm.means_.round(1)
    array([[ 7.9,  7.9],
           [-0.1,  0.1]])
    >>> gm.predict([[0, 0], [9, 8]]).tolist()
    [1, 0]

    Dask (or xarray) input gives lazy output, computed when asked for:

    >>> import dask.array as da
    >>> labels = gm.predict(da.from_array(X, chunks=(50, 2)))
    >>> labels.shape, labels.chunks
    ((200,), ((50, 50, 50, 50),))
    >>> labels[:3].compute().tolist()
    [1, 1, 1]
    """

    _parameter_specs = GAUSSIAN_MIXTURE

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        variance=None,
        split_every=None,
        callback=None,
        accelerate=False,
        nan_policy="raise",
        feature_dim=None,
        sample_dims=None,
        missing_chunks="raise",
        estep="auto",
        cache="auto",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.variance = variance
        self.split_every = split_every
        self.callback = callback
        self.accelerate = accelerate
        self.nan_policy = nan_policy
        self.feature_dim = feature_dim
        self.sample_dims = sample_dims
        self.missing_chunks = missing_chunks
        self.estep = estep
        self.cache = cache

    # ------------------------------------------------------------------ checks
    def _check_parameters(self, data: InputData) -> None:
        if self.variance is not None and not COVARIANCE_TYPES[self.covariance_type].one_variance:
            raise ValueError(
                "variance= fixes the shared σ² and needs covariance_type='shared', "
                f"got covariance_type={self.covariance_type!r}."
            )
        if data.n_samples < self.n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = "
                f"{self.n_components}, n_samples = {data.n_samples}; lower n_components."
            )
        if not data.is_lazy and data.n_samples < 2:
            raise ValueError(
                f"Found array with {data.n_samples} sample(s) (shape={data.array.shape}) "
                "while a minimum of 2 is required."
            )

    # --------------------------------------------------------------- fitting
    def _fit_input(self, X) -> InputData:
        data = as_input(X, **input_options(self))
        warm = self.warm_start and hasattr(self, "converged_")
        if warm:
            self._check_warm_start(data)
        # A warm start continues on the fitted features (put in their order by label).
        return check_features(self, data, reset=not warm)

    def _check_warm_start(self, data: InputData) -> None:
        """A warm start needs the fitted model's shapes (scikit-learn fails in numpy)."""
        K, d = self.means_.shape
        fitted = {
            "n_components": K,
            "n_features": d,
            "covariance_type": getattr(self, "_state_covariance_type", self.covariance_type),
        }
        wanted = {
            "n_components": self.n_components,
            "n_features": data.n_features,
            "covariance_type": self.covariance_type,
        }
        changed = [f"{key} {fitted[key]!r} -> {wanted[key]!r}" for key in fitted
                   if fitted[key] != wanted[key]]  # fmt: skip
        if changed:
            raise ValueError(
                "warm_start=True continues the previous fit, but this one differs in "
                f"{', '.join(changed)}; set warm_start=False to start a new fit."
            )

    @fill_doc
    def fit_predict(self, X: Any, y: object = None, sample_weight: Any = None) -> Any:
        """Fit, then return the most probable component of each sample.

        Parameters
        ----------
        {X}
        {y}
        {sample_weight}

        Returns
        -------
        ndarray or dask array of shape (n_samples,)
            The most probable component of each training sample (-1 for omitted rows).
            {per_sample}
        """
        self.fit(X, sample_weight=sample_weight)
        return self.predict(X)

    def _fit(self, X, data: InputData, weight) -> None:
        """EM from ``n_init`` initialisations (or the fitted state) in shared passes.

        Every initialisation draws from the random state before any pass
        (:meth:`fit_steps`), in order, so the ``n_init`` runs of one batch are
        those of ``n_init`` fits one after the other on the same ``RandomState``.
        """
        batch = self._batch(data, weight)
        rng = check_random_state(self.random_state)
        self.keep_best(batch.run(self.fit_steps(data, weight, rng, batch)), data.array.dtype)

    def fit_steps(
        self, data: InputData, weight: Any, rng: np.random.RandomState, batch: Batch | None = None
    ) -> list[Steps]:
        """One step generator per initialisation (:mod:`dask_emk.engine.batch`), each
        returning an :class:`EMRun`; the initialisations draw from ``rng`` now."""
        eps = M_STEP_EPS
        if self.warm_start and hasattr(self, "converged_"):
            start = done(self._state_from_attributes())
            return [self._em_steps(data, start, self.lower_bound_, 0, batch)]
        return [
            self._em_steps(data, self._initial_steps(data, weight, rng, eps, batch), -np.inf,
                           init, batch)  # fmt: skip
            for init in range(self.n_init)
        ]

    def keep_best(self, runs: list[EMRun], dtype: np.dtype) -> None:
        """Set the fitted attributes from the run of highest lower bound (the first of ties)."""
        best = runs[0]
        for run in runs[1:]:
            if run.bound > best.bound:
                best = run
        if not best.converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=4,
            )
        self._set_state(best.state, dtype)
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = float(best.bound)
        self.lower_bounds_ = best.bounds

    def _em_steps(self, data: InputData, start: Steps, bound: float, init: int, batch) -> Steps:
        """EM iterations from the state ``start`` gives, as a step generator returning an EMRun.

        With ``accelerate`` the iterations are SQUAREM's
        (:func:`dask_emk.models.squarem.squarem_steps`).
        """
        kernels = block_kernels(data.nan_policy)
        layout = StatsLayout.mixture(
            self.n_components, data.n_features, self.covariance_type, kernels.gaps
        )
        progress = _Progress(self, data, init, batch, bound)
        state = yield from start
        if self.accelerate:
            state = yield from squarem_steps(self, data, state, layout, progress)
        else:
            while progress.n_iter < self.max_iter:
                stats = yield self._em_request(state, layout, kernels)
                state = self._m_step(stats, state, data)
                if progress.record(stats, state):
                    break
        return progress.run(state)

    def _m_step(self, stats: dict, state: GaussianState, data: InputData) -> GaussianState:
        """The M-step of E-step statistics taken at ``state``."""
        _check_mass(stats, data.nan_policy)
        eps = M_STEP_EPS
        return m_step(
            stats, state.means, self.covariance_type, self.reg_covar, eps=eps,
            variance=self.variance,
        )  # fmt: skip

    def _report(self, init, n_iter, state, dtype, bounds: list, converged: bool, running=None):
        """Publish this iteration's parameters on the model and call the callback.

        ``running``: the initialisations (of the batch) still iterating.
        """
        self._set_state(state, dtype)
        self.lower_bound_, self.lower_bounds_ = bounds[-1], list(bounds)
        self.n_iter_, self.converged_ = n_iter, converged
        previous = bounds[-2] if len(bounds) > 1 else -np.inf
        info = {
            "init": init,
            "iteration": n_iter,
            "lower_bound": bounds[-1],
            "change": bounds[-1] - previous,
            "converged": converged,
            "running": tuple(running) if running is not None else (init,),
        }
        self.callback(self, info)

    def _em_request(
        self, state: GaussianState, layout: StatsLayout, kernels: BlockKernels
    ) -> Pass:
        params = self._kernel_params(state)
        return Pass(layout, mixture_block, (params, layout, kernels))

    # -------------------------------------------------------- initialisation
    def _initial_steps(self, data: InputData, weight, rng, eps: float, batch=None) -> Steps:
        """Step generator of the initial GaussianState; draws from ``rng`` now (a k-means
        start logs its seeding with the others of ``batch``)."""
        K, d = self.n_components, data.n_features
        user = self._user_init(d)
        if all(v is not None for v in user.values()):
            return done(self._state_from_user(user, None))
        if self.init_params in ("k-means++", "random_from_data"):
            guess = self._state_from_centers(self._seed_steps(data, weight, rng), K, d)
        else:
            guess = self._state_from_resp(data, weight, rng, eps, batch)
        return self._with_user(user, guess)

    def _with_user(self, user: dict, guess: Steps) -> Steps:
        return self._state_from_user(user, (yield from guess))

    def _state_from_centers(self, centers: Steps, K: int, d: int) -> Steps:
        centers = yield from centers
        # Each component holds one point: reg_covar (or the fixed σ²) only.
        variance = self.reg_covar if self.variance is None else float(self.variance)
        cov = COVARIANCE_TYPES[self.covariance_type].isotropic(variance, K, d)
        return GaussianState(
            np.full(K, 1.0 / K),
            centers,
            cov,
            precision_cholesky(cov, self.covariance_type, self.reg_covar),
        )

    def _seed_steps(self, data, weight, rng) -> Steps:
        # With gaps, centres are drawn from complete rows only (models.seeding).
        omit = data.nan_policy.allows_nan
        if self.init_params == "k-means++":
            return kmeans_plusplus_steps(data.array, self.n_components, rng, weight, omit)
        return random_rows_steps(data.array, self.n_components, rng, weight, omit)

    def _state_from_resp(self, data, weight, rng, eps, batch=None) -> Steps:
        K = self.n_components
        if self.init_params == "random":
            return self._resp_state(data, done(("random", int(rng.randint(2**31)), K)), eps)
        from dask_emk.models.kmeans import KMeans

        km = KMeans(K, init="k-means||", n_init=1, random_state=rng)
        steps = km.run_steps(data, weight, rng, batch=batch)
        return self._resp_state(data, _nearest_rule(km, steps), eps)

    def _resp_state(self, data, rule: Steps, eps) -> Steps:
        """The M-step of the initial responsibilities that ``rule`` gives (see resp_block)."""
        K, d = self.n_components, data.n_features
        rule = yield from rule
        origin = _origin_guess(data, rule)
        ctype = COVARIANCE_TYPES[self.covariance_type]
        # With gaps, matrix types start from diagonal covariances: the gaps'
        # conditional moments need a covariance to start from.
        kernels = block_kernels(data.nan_policy)
        start_type = "diag" if kernels.gaps and ctype.block == "matrix" else ctype.name
        layout = StatsLayout.mixture(K, d, start_type, kernels.gaps)
        args = (rule, origin, start_type, layout, kernels)
        stats = yield Pass(layout, reduction.RowKeyed(resp_block), args)
        centers = np.broadcast_to(origin, (K, d))
        state = m_step(stats, centers, start_type, self.reg_covar, eps=eps, variance=self.variance)
        if start_type == ctype.name:
            return state
        cov = state.covariances if ctype.name == "full" else state.weights @ state.covariances
        cov = cov[..., None] * np.eye(d)
        return GaussianState(state.weights, state.means, cov, precision_cholesky(cov, ctype.name))

    def _user_init(self, d: int) -> dict:
        K = self.n_components
        out = {"weights": None, "means": None, "precisions": None}
        if self.weights_init is not None:
            w = _as_init("weights_init", self.weights_init, (K,))
            if np.any(w < 0) or np.any(w > 1) or not np.isclose(w.sum(), 1.0, atol=1e-6):
                raise ValueError(
                    "weights_init must be in [0, 1] and sum to 1, got sum "
                    f"{w.sum():.6g}; normalise with w / w.sum()."
                )
            out["weights"] = w
        if self.means_init is not None:
            out["means"] = _as_init("means_init", self.means_init, (K, d))
        if self.precisions_init is not None:
            shape = COVARIANCE_TYPES[self.covariance_type].shape(K, d)
            out["precisions"] = _as_init("precisions_init", self.precisions_init, shape)
        return out

    def _state_from_user(self, user: dict, guess: GaussianState | None) -> GaussianState:
        ctype = COVARIANCE_TYPES[self.covariance_type]
        weights = user["weights"] if user["weights"] is not None else guess.weights
        means = user["means"] if user["means"] is not None else guess.means
        if user["precisions"] is not None:
            chol = ctype.cholesky_from_precisions(user["precisions"])
            cov = ctype.covariances_from_precisions(user["precisions"])
        else:
            chol, cov = guess.precisions_cholesky, guess.covariances
        return GaussianState(weights, means, cov, chol)

    # ------------------------------------------------------------- state I/O
    def _kernel_params(self, state: GaussianState) -> mixture.MixtureParams:
        ct = self.covariance_type
        K, d = state.means.shape
        chol = COVARIANCE_TYPES[ct].to_moment_shape(state.precisions_cholesky, K, d)
        with np.errstate(divide="ignore"):
            log_weights = np.log(state.weights)
        return mixture.MixtureParams(
            means=state.means,
            log_weights=log_weights,
            precisions_cholesky=chol,
            covariance_type=ct,
            origin=state.weights @ state.means,
            estep=mixture.EStepOptions.of(self.estep),
        )

    def _set_state(self, state: GaussianState, dtype) -> None:
        # The float64 state behind the (maybe float32) attributes: warm starts
        # and resumed checkpoints continue from it to the last bit.
        self._state64 = state
        self._state_covariance_type = self.covariance_type  # what a warm start needs
        self.weights_ = state.weights.astype(dtype)
        self.means_ = state.means.astype(dtype)
        self.covariances_ = np.asarray(state.covariances, dtype=dtype)
        self.precisions_cholesky_ = np.asarray(state.precisions_cholesky, dtype=dtype)
        self.precisions_ = (
            COVARIANCE_TYPES[self.covariance_type]
            .precisions_from_cholesky(np.asarray(state.precisions_cholesky, dtype=np.float64))
            .astype(dtype)
        )

    def _state_from_attributes(self) -> GaussianState:
        kept = getattr(self, "_state64", None)
        if kept is not None and self._attributes_match(kept):
            return kept
        return GaussianState(
            np.asarray(self.weights_, dtype=np.float64),
            np.asarray(self.means_, dtype=np.float64),
            np.asarray(self.covariances_, dtype=np.float64),
            np.asarray(self.precisions_cholesky_, dtype=np.float64),
        )

    def _attributes_match(self, state: GaussianState) -> bool:
        """True if the public attributes are still ``state`` cast to their dtype."""
        pairs = (
            (state.weights, self.weights_),
            (state.means, self.means_),
            (state.covariances, self.covariances_),
            (state.precisions_cholesky, self.precisions_cholesky_),
        )
        return all(np.array_equal(np.asarray(a, dtype=b.dtype), b) for a, b in pairs)

    # ------------------------------------------------------------ prediction
    def _rows(self, X, row_fn, n_out=None, dtype=None, extra_dim=None):
        """``row_fn`` per row of X, in ``dtype`` (default X's float dtype, as
        scikit-learn: float32 data give float32 scores and probabilities)."""
        check_is_fitted(self)
        data = validate_features(self, X, reset=False)
        params = self._kernel_params(self._state_from_attributes())
        out = reduction.map_rows(
            data.array, row_fn, params, block_kernels(data.nan_policy), n_out=n_out,
            dtype=data.array.dtype if dtype is None else dtype,
            nan_policy=data.nan_policy,
        )  # fmt: skip
        return data.wrap_rows(out, extra_dim)

    @fill_doc
    def score_samples(self, X: Any) -> Any:
        """Log-likelihood of each sample.

        Gridded xarray input gives a DataArray on its sample dims.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples,)
            The log density log p(x) under the fitted mixture (NaN for omitted rows; with
            ``nan_policy='marginalize'`` the density of the observed features).
            {per_sample}
        """
        return named_output(self._rows(X, log_prob_rows), "log_density", self.n_components)

    @fill_doc
    def predict(self, X: Any) -> Any:
        """Most probable component of each sample.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples,)
            The most probable component (-1 for omitted rows).
            {per_sample}
        """
        labels = self._rows(X, most_probable_rows, dtype=LABEL_DTYPE)
        return named_output(labels, "label", self.n_components)

    @fill_doc
    def predict_proba(self, X: Any) -> Any:
        """Return the responsibilities of the components for each sample.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples, n_components)
            The responsibilities p(k | x), rows summing to 1 (NaN for omitted rows).
            {per_sample_component}
        """
        resp = self._rows(X, resp_rows, n_out=self.n_components, extra_dim="component")
        return named_output(resp, "responsibility", self.n_components)

    def impute(self, X: Any) -> Any:
        """X with each missing (NaN) entry replaced by its conditional expectation.

        E[x_m | x_o] under the fitted mixture: Σ_k p(k | x_o) E_k[x_m | x_o]
        (:func:`dask_emk.core.marginal.impute_rows`); observed entries are kept,
        a row with no observed feature gets the mixture mean. NaN is read as
        missing whatever ``nan_policy`` (±inf is an error).

        Parameters
        ----------
        X : array-like, dask array, xarray Dataset or DataArray, zarr array or store path
            Samples of the fitted features with NaN gaps, shape (n_samples,
            n_features), or gridded xarray data laid out as at fit.

        Returns
        -------
        ndarray or dask array of shape (n_samples, n_features)
            X filled, in X's dtype: numpy for numpy input, lazy for lazy input;
            for xarray input a DataArray on the input's sample dims with a
            ``feature`` dim.
        """
        check_is_fitted(self)
        options = {**input_options(self), "nan_policy": "marginalize"}
        data = check_features(self, as_input(X, **options), reset=False)
        params = self._kernel_params(self._state_from_attributes())
        out = reduction.map_rows(
            data.array, marginal.impute_rows, params, n_out=data.n_features,
            dtype=data.array.dtype, nan_policy=data.nan_policy,
        )  # fmt: skip
        out = data.wrap_rows(out, "feature")
        if data.grid is not None and data.feature_labels is not None:
            out = out.assign_coords(feature=data.feature_labels)
        return named_output(out, "imputed", self.n_components)

    @fill_doc
    def score(self, X: Any, y: object = None) -> float:
        """Mean log-likelihood of the samples in X.

        Parameters
        ----------
        {X}
        {y}

        Returns
        -------
        float
            The mean of :meth:`score_samples`.
            {computed}
        """
        return self._mean_log_likelihood(X)[0]

    def _mean_log_likelihood(self, X) -> tuple[float, int]:
        """Mean log-likelihood and number of the samples (rows left out not counted)."""
        # Through the engine: one BLAS thread per task, zarr errors named.
        values = np.asarray(reduction.compute_one(self.score_samples(X), optimize_graph=True))
        if getattr(self, "nan_policy", "raise") != "raise":
            values = values[~np.isnan(values)]
        # Summed in float64 whatever the scores' dtype: n float32 terms lose digits.
        return float(np.mean(values, dtype=np.float64)), int(values.size)

    def _n_parameters(self) -> int:
        K, d = self.means_.shape
        ctype = COVARIANCE_TYPES[self.covariance_type]
        cov_params = 0 if self.variance is not None else ctype.n_parameters(K, d)
        return int(cov_params + K * d + K - 1)

    @fill_doc
    def bic(self, X: Any) -> float:
        """Bayesian information criterion on X (lower is better).

        Parameters
        ----------
        {X}

        Returns
        -------
        float
            −2 log L + p ln n, with p the model's free parameters (one pass).
        """
        score, n = self._mean_log_likelihood(X)
        return -2 * score * n + self._n_parameters() * math.log(n)

    @fill_doc
    def aic(self, X: Any) -> float:
        """Akaike information criterion on X (lower is better).

        Parameters
        ----------
        {X}

        Returns
        -------
        float
            −2 log L + 2 p, with p the model's free parameters (one pass).
        """
        score, n = self._mean_log_likelihood(X)
        return -2 * score * n + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw samples from the fitted mixture (in memory).

        Parameters
        ----------
        n_samples : int, default=1
            The number of samples to draw.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            The samples, grouped by component.
        y : ndarray of shape (n_samples,), int32
            The component of each sample (labels are int32 everywhere).
        """
        check_is_fitted(self)
        Integer(1).check("n_samples", n_samples)
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_.astype(np.float64) / self.weights_.sum())
        ctype = COVARIANCE_TYPES[self.covariance_type]
        cov, means = np.asarray(self.covariances_, dtype=np.float64), self.means_.astype(np.float64)
        parts = [
            ctype.draw(rng, means[k], ctype.component(cov, k), int(count))
            for k, count in enumerate(counts)
        ]
        labels = np.repeat(np.arange(self.n_components, dtype=LABEL_DTYPE), counts)
        return np.vstack(parts), labels

    def to_xarray(self) -> xr.Dataset:
        """Parameters, lower bound history and fit settings as an xarray.Dataset.

        Returns
        -------
        xarray.Dataset
            In the schema of docs/SCHEMA.md: ``weights``, ``means``,
            ``covariances`` (dims by covariance type), ``history_lower_bound`` along
            ``iteration``, every constructor parameter and fitted scalar as
            attributes.
        """
        from dask_emk.models.export import mixture_dataset

        check_is_fitted(self)
        return mixture_dataset(self)


def _as_init(name: str, value, shape: tuple) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {type(value).__name__}.") from None
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity.")
    return arr


def _nearest_rule(km, run: Steps) -> Steps:
    """The responsibilities rule of the k-means run's centres (warning as KMeans.fit would)."""
    run = yield from run
    km.warn_if_few_distinct(run.weights)
    return ("nearest", run.centers)


def _check_mass(stats: dict, nan_policy: NanPolicy) -> None:
    if stats["n"] <= 0:
        omitted = (
            f" or no row is left (nan_policy={nan_policy.value!r})" if nan_policy.allows_nan else ""
        )
        raise ValueError(
            f"sample_weight sums to zero{omitted}; at least one row must have a "
            "positive weight."
        )


def _origin_guess(data: InputData, rule: tuple) -> np.ndarray:
    """A reference point near the data (mean of the k-means centres if known)."""
    if rule[0] == "nearest":
        return rule[1].mean(axis=0)
    return np.zeros(data.n_features)
