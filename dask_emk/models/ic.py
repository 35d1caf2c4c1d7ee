"""GaussianMixtureIC: the number of components and covariance type by BIC or AIC.

Every candidate (K, covariance type) is a :class:`GaussianMixture` fitted in
the same passes (:mod:`dask_emk.engine.batch`): a pass over the data serves
every candidate still iterating, and one more pass gives every candidate's
log-likelihood at its fitted parameters, from which the criterion comes.
After scikit-learn's proposed ``GaussianMixtureIC`` and mclust.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import xarray as xr
from sklearn.base import DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dask_emk._logging import STEPS_LOGGER
from dask_emk.core.kernels import block_kernels
from dask_emk.core.layout import StatsLayout
from dask_emk.engine.batch import Pass, Steps, batch_pass
from dask_emk.engine.inputs import InputData
from dask_emk.models._docs import fill_doc
from dask_emk.models.base import ChunkedEstimator
from dask_emk.models.gmm import GaussianMixture, mixture_block
from dask_emk.models.params import GAUSSIAN_MIXTURE_IC, SKLEARN_COVARIANCE_TYPES
from dask_emk.models.validation import check_features

#: The parameters every candidate takes from the GaussianMixtureIC.
SHARED = ("tol", "reg_covar", "max_iter", "n_init", "init_params", "random_state", "verbose",
          "verbose_interval", "split_every", "callback", "accelerate", "nan_policy", "feature_dim",
          "sample_dims", "missing_chunks", "estep")  # fmt: skip

#: One line per candidate: K, covariance type, criterion, time (the CLI shows it).
steps_log = logging.getLogger(STEPS_LOGGER)


def information_criterion(criterion: str, loglik: float, n: float, n_parameters: int) -> float:
    """BIC (−2 log L + p ln n) or AIC (−2 log L + 2 p); lower is better."""
    penalty = n_parameters * (math.log(n) if criterion == "bic" else 2.0)
    return -2.0 * loglik + penalty


def _timed(steps: Steps, finished: dict, i: int) -> Steps:
    """``steps`` run as they are; ``finished[i]`` is the time the last of candidate
    ``i``'s runs ended (candidates share passes: each runs until it converges)."""
    result = yield from steps
    finished[i] = time.perf_counter()
    return result


def _log_candidate(model: GaussianMixture, criterion: str, value: float, seconds: float) -> None:
    state = "converged" if model.converged_ else "NOT converged"
    steps_log.info("gmm-ic candidate K=%d %s: %s %.8g, %d EM iterations, %s, done after "
                   "%.2f s (candidates share passes)", model.n_components, model.covariance_type,
                   criterion.upper(), value, model.n_iter_, state, seconds)  # fmt: skip


@fill_doc
class GaussianMixtureIC(DensityMixin, ChunkedEstimator):
    """Gaussian mixtures over a range of K and covariance types, the best by BIC or AIC.

    Fits a :class:`dask_emk.GaussianMixture` for every number of components
    in ``[min_components, max_components]`` and every covariance type in
    ``covariance_type``, all in shared passes over the data (a pass costs
    about what one fit's pass costs, whatever the number of candidates),
    then keeps the one of lowest criterion on the training data. Candidates
    draw their initialisations from one random state in the order (type,
    then K), so each is the fit it would be alone after the candidates
    before it on the same ``RandomState``.

    Parameters
    ----------
    min_components : int, default=1
        The smallest number of components tried.
    max_components : int, default=10
        The largest number of components tried.
    covariance_type : str or list of str, default='full'
        One type, a list of types, or ``'all'``: scikit-learn's four
        ('full', 'tied', 'diag', 'spherical').
    criterion : {'bic', 'aic'}, default='bic'
        The information criterion that picks the model (lower is better).
    tol, reg_covar, max_iter, n_init, init_params : see GaussianMixture
        Given to every candidate.
    random_state : int, RandomState or None
        One random state for all candidates (see above).
    verbose, verbose_interval : int
        Progress lines, as GaussianMixture's.
    split_every : int, optional
        Fan-in of the Dask tree reduction (32 when None).
    callback : callable, optional
        As GaussianMixture's, with the candidate as ``model``.
    accelerate : bool, default=False
        SQUAREM-accelerated EM for every candidate, see GaussianMixture.
    nan_policy : {'raise', 'omit', 'marginalize'}, default='raise'
        NaN in X, as GaussianMixture's.
    {feature_dim}
    {sample_dims}
    {missing_chunks}
    estep : {'auto', 'dense', 'sparse'} or EStepOptions, default='auto'
        The E-step of every candidate, see GaussianMixture.
    {cache}

    Attributes
    ----------
    n_components_ : int
    covariance_type_ : str
    best_estimator_ : GaussianMixture
    criteria_ : xarray.DataArray of shape (n_candidates_K, n_types)
        The criterion of every candidate, over ``n_components`` × ``covariance_type``.
    n_features_in_ : int
    feature_names_in_ : ndarray, only for xarray input with feature labels

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(8, 1, (100, 2))])
    >>> from dask_emk import GaussianMixtureIC
    >>> ic = GaussianMixtureIC(1, 4, covariance_type="all", random_state=0).fit(X)
    >>> ic.n_components_, ic.covariance_type_
    (2, 'spherical')
    >>> ic.criteria_.dims, ic.criteria_.shape
    (('n_components', 'covariance_type'), (4, 4))
    """

    _parameter_specs = GAUSSIAN_MIXTURE_IC

    def __init__(
        self,
        min_components=1,
        max_components=10,
        *,
        covariance_type="full",
        criterion="bic",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        random_state=None,
        verbose=0,
        verbose_interval=10,
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
        self.min_components = min_components
        self.max_components = max_components
        self.covariance_type = covariance_type
        self.criterion = criterion
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.split_every = split_every
        self.callback = callback
        self.accelerate = accelerate
        self.nan_policy = nan_policy
        self.feature_dim = feature_dim
        self.sample_dims = sample_dims
        self.missing_chunks = missing_chunks
        self.estep = estep
        self.cache = cache

    def _covariance_types(self) -> tuple[str, ...]:
        if self.covariance_type == "all":
            return SKLEARN_COVARIANCE_TYPES
        if isinstance(self.covariance_type, str):
            return (self.covariance_type,)
        return tuple(self.covariance_type)

    def _check_parameters(self, data: InputData) -> None:
        if self.max_components < self.min_components:
            raise ValueError(
                f"max_components={self.max_components} is below min_components="
                f"{self.min_components}; set max_components >= min_components."
            )
        self._check_n_samples(data, "max_components")

    def _fit(self, X, data: InputData, weight) -> None:
        shared = {name: getattr(self, name) for name in SHARED}
        ks = np.arange(self.min_components, self.max_components + 1)
        types = self._covariance_types()
        candidates = [GaussianMixture(int(k), covariance_type=ct, **shared)
                      for ct in types for k in ks]  # fmt: skip
        rng = check_random_state(self.random_state)
        batch = self._batch(data, weight)
        fits, owner = [], []
        finished: dict[int, float] = {}  # when each candidate's last run ended
        start = time.perf_counter()
        for i, model in enumerate(candidates):
            check_features(model, data, reset=True, announce=False)  # this fit announced it
            steps = model.fit_steps(data, weight, rng, batch)
            fits += [_timed(step, finished, i) for step in steps]
            owner += [i] * len(steps)
        runs = batch.run(fits)
        for i, model in enumerate(candidates):
            mine = [run for run, o in zip(runs, owner, strict=True) if o == i]
            model.keep_best(mine, data.array.dtype)
        values = self._criteria(data, candidates)
        for i, model in enumerate(candidates):
            _log_candidate(model, self.criterion, values[i], finished[i] - start)
        self.criteria_ = xr.DataArray(
            values.reshape(len(types), ks.size).T,
            dims=("n_components", "covariance_type"),
            coords={"n_components": ks, "covariance_type": list(types)},
            name=self.criterion,
        )
        best = int(np.argmin(values))  # the first of ties: fewer types, then fewer K
        self.best_estimator_ = candidates[best]
        self.n_components_ = self.best_estimator_.n_components
        self.covariance_type_ = self.best_estimator_.covariance_type

    def _criteria(self, data: InputData, candidates: list[GaussianMixture]) -> np.ndarray:
        """The criterion of each candidate on the training data (one pass for all).

        As ``bic(X)``/``aic(X)``: unweighted log-likelihood at the fitted
        parameters, n = the rows counted (those left out by
        ``nan_policy='omit'`` are not, nor those with no observed feature under
        'marginalize', whose log-likelihood is that of the observed features).
        """
        requests, kernels = [], block_kernels(data.nan_policy)
        for model in candidates:
            layout = StatsLayout.mixture(
                model.n_components, data.n_features, model.covariance_type, kernels.gaps
            )
            params = model._kernel_params(model._state64)
            requests.append(Pass(layout, mixture_block, (params, layout, kernels)))
        stats = batch_pass(
            data.array, None, requests, self.split_every, nan_policy=data.nan_policy
        )
        return np.array([
            information_criterion(self.criterion, s["loglik"], s["n"], m._n_parameters())
            for s, m in zip(stats, candidates, strict=True)
        ])  # fmt: skip

    # ------------------------------------------------ delegated to the best
    def _best(self) -> GaussianMixture:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_

    @fill_doc
    def predict(self, X: Any) -> Any:
        """Most probable component of each sample under the best model.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples,)
            The most probable component (-1 for omitted rows).
            {per_sample}
        """
        return self._best().predict(X)

    @fill_doc
    def predict_proba(self, X: Any) -> Any:
        """Return the responsibilities under the best model.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples, ``n_components_``)
            The responsibilities p(k | x) under ``best_estimator_``.
            {per_sample_component}
        """
        return self._best().predict_proba(X)

    @fill_doc
    def score_samples(self, X: Any) -> Any:
        """Log-likelihood of each sample under the best model.

        Parameters
        ----------
        {X}

        Returns
        -------
        ndarray or dask array of shape (n_samples,)
            {per_sample}
        """
        return self._best().score_samples(X)

    @fill_doc
    def score(self, X: Any, y: object = None) -> float:
        """Mean log-likelihood of X under the best model.

        Parameters
        ----------
        {X}
        {y}

        Returns
        -------
        float
            The best model's :meth:`GaussianMixture.score`.
            {computed}
        """
        return self._best().score(X)

    @fill_doc
    def bic(self, X: Any) -> float:
        """BIC of the best model on X.

        Parameters
        ----------
        {X}

        Returns
        -------
        float
            −2 log L + p ln n (one pass).
        """
        return self._best().bic(X)

    @fill_doc
    def aic(self, X: Any) -> float:
        """AIC of the best model on X.

        Parameters
        ----------
        {X}

        Returns
        -------
        float
            −2 log L + 2 p (one pass).
        """
        return self._best().aic(X)

    def to_xarray(self) -> xr.Dataset:
        """The best model's :meth:`GaussianMixture.to_xarray`.

        Returns
        -------
        xarray.Dataset
            The parameters and history of ``best_estimator_``.
        """
        return self._best().to_xarray()
