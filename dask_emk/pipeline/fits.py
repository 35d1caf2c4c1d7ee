"""Resumable fits: the estimators' own loops, checkpointed after every iteration.

GaussianMixture and KMeans call a ``callback`` after every iteration; here it
records the iteration, reports it and checkpoints the small state reached
(the GaussianMixture itself, whose float64 state a ``warm_start`` refit
continues from exactly; the KMeans centres, which a refit takes as ``init``).
A resumed run restarts the same estimator from that state with the remaining
iteration budget, so it converges to the same parameters as an uninterrupted
run, with one pass over the data per iteration in both.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.pipeline.checkpoint import Checkpoint


@dataclass
class Iteration:
    """One iteration of a fit: its objective, the change, its wall time."""

    iteration: int
    value: float
    change: float
    seconds: float


@dataclass
class FitOutcome:
    """A fitted estimator with the history of the iterations that made it."""

    model: object
    history: list[Iteration] = field(default_factory=list)
    converged: bool = False
    objective: str = "lower_bound"
    #: Clusters at each iteration, for models that change their number (dpmeans);
    #: a class-level default, so outcomes pickled before it existed still load.
    n_clusters: tuple[int, ...] = ()
    #: The GaussianMixtureIC whose best model ``model`` is (gmm-ic runs only).
    search: object = None


Progress = Callable[[str, Iteration], None]


def format_iteration(stage: str, objective: str, it: Iteration) -> str:
    """One progress line: stage, iteration, objective, change, seconds."""
    change = "" if not np.isfinite(it.change) else f"{it.change:+.3e}"
    label = objective.replace("_", " ")
    return (
        f"{stage:>6} iter {it.iteration:4d}  {label} {it.value:16.8g}  "
        f"change {change:>11}  {it.seconds:6.2f} s"
    )


def fit_gmm(
    X, params: dict, checkpoint: Checkpoint, progress: Progress, sample_weight=None
) -> FitOutcome:
    """GaussianMixture fitted with a checkpoint after every EM iteration.

    Parameters
    ----------
    X : lazy 2-D input (dask array or xarray.DataArray)
    params : dict
        GaussianMixture parameters (``max_iter``: total EM iterations).
    """
    from dask_emk.models.gmm import GaussianMixture

    outcome = checkpoint.get("model") or FitOutcome(GaussianMixture(**params))
    remaining = params["max_iter"] - len(outcome.history)
    if outcome.converged or remaining <= 0:
        return outcome
    record = _recorder("gmm", outcome, checkpoint, progress)

    def on_iteration(model, info):
        record(info["lower_bound"], info["converged"], checkpointable(model))

    model = outcome.model.set_params(
        callback=on_iteration, max_iter=remaining, warm_start=bool(outcome.history)
    )
    with warnings.catch_warnings():
        # The pipeline reports convergence itself (summary line and results).
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, sample_weight=sample_weight)
    outcome.model = checkpointable(model)
    checkpoint.save("model", outcome)
    return outcome


def fit_kmeans(
    X, params: dict, checkpoint: Checkpoint, progress: Progress, sample_weight=None
) -> FitOutcome:
    """KMeans fitted with a checkpoint (the centres) after every Lloyd iteration.

    ``params['init']`` is a seeding name or an array of centres; a resumed
    run starts from the checkpointed centres instead.
    """
    from dask_emk.models.kmeans import KMeans

    outcome = checkpoint.get("model") or FitOutcome(None, objective="inertia")
    remaining = params["max_iter"] - len(outcome.history)
    if outcome.converged or remaining <= 0:
        return outcome
    record = _recorder("kmeans", outcome, checkpoint, progress)

    last = {"converged": False}

    def on_iteration(_model, info):
        # Marked converged only once the fit (and its final pass) is done: a
        # run killed in between resumes from the centres, a no-op iteration.
        last.update(info)
        record(info["inertia"], False, info["centers"])

    start = dict(params, max_iter=remaining, callback=on_iteration)
    if outcome.history:
        start.update(init=outcome.model, n_init=1)
    outcome.model = checkpointable(KMeans(**start).fit(X, sample_weight=sample_weight))
    outcome.converged = bool(last["converged"])
    checkpoint.save("model", outcome)
    return outcome


def fit_dpmeans(
    X, params: dict, checkpoint: Checkpoint, progress: Progress, sample_weight=None
) -> FitOutcome:
    """DPMeans fitted once, with a progress line per iteration (pass).

    The checkpoint holds the fitted model; an interrupted fit restarts from
    its beginning, which gives the same result (DP-means is deterministic).
    The history is the kept run's (with ``n_clusters``, the λ search tries several).
    """
    saved = checkpoint.get("model")
    if saved is not None:
        return saved
    from dask_emk.models.dpmeans import DPMeans

    runs, clock = [], [time.perf_counter()]

    def on_iteration(_model, info):
        if info["iteration"] == 1:
            runs.append([])
        now = time.perf_counter()
        previous = runs[-1][-1].value if runs[-1] else np.nan
        value = info["objective"]
        it = Iteration(info["iteration"], value, value - previous, now - clock[0])
        clock[0] = now
        runs[-1].append(it)
        progress("dpmeans", it)

    model = DPMeans(**params, callback=on_iteration).fit(X, sample_weight=sample_weight)
    search = model.penalty_search_
    # The last at its λ: a search run taken on to its fixed point is listed again after it.
    kept = max(i for i, run in enumerate(search) if run["penalty"] == model.penalty_)
    outcome = FitOutcome(
        checkpointable(model), runs[kept], search[kept]["converged"], "objective",
        tuple(model.n_clusters_history_),
    )  # fmt: skip
    checkpoint.save("model", outcome)
    return outcome


def fit_gmm_ic(
    X, params: dict, checkpoint: Checkpoint, progress: Progress, sample_weight=None
) -> FitOutcome:
    """GaussianMixtureIC fitted once; the outcome's model is its best GaussianMixture.

    Every candidate reports its iterations (stage ``K/type``); the checkpoint
    holds the finished search only: an interrupted search restarts from its
    beginning and gives the same result (the seeds are fixed).
    """
    saved = checkpoint.get("model")
    if saved is not None:
        return saved
    from dask_emk.models.ic import GaussianMixtureIC

    clock = {}

    def on_iteration(model, info):
        stage = f"{model.n_components}/{model.covariance_type}"
        now = time.perf_counter()
        seconds, clock[stage] = now - clock.get(stage, now), now
        progress(stage, Iteration(info["iteration"], info["lower_bound"], info["change"], seconds))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search = GaussianMixtureIC(**params, callback=on_iteration).fit(
            X, sample_weight=sample_weight
        )
    best = search.best_estimator_.set_params(callback=None)  # a closure: not picklable
    bounds = [float(v) for v in best.lower_bounds_]
    history = [Iteration(i + 1, v, v - bounds[i - 1] if i else np.inf, np.nan)
               for i, v in enumerate(bounds)]  # fmt: skip
    outcome = FitOutcome(checkpointable(best), history, bool(best.converged_))
    outcome.search = checkpointable(search)
    checkpoint.save("model", outcome)
    return outcome


def _recorder(stage: str, outcome: FitOutcome, checkpoint, progress):
    """A function recording one iteration: history, progress line, checkpoint."""
    clock = [time.perf_counter()]

    def record(value: float, converged: bool, state) -> None:
        now = time.perf_counter()
        previous = outcome.history[-1].value if outcome.history else np.nan
        it = Iteration(
            len(outcome.history) + 1, float(value), float(value - previous), now - clock[0]
        )
        clock[0] = now
        outcome.history.append(it)
        outcome.converged, outcome.model = bool(converged), state
        progress(stage, it)
        checkpoint.save("model", outcome)

    return record


def fit_anneal(X, params: dict, checkpoint: Checkpoint, sample_weight=None) -> object:
    """AnnealedGaussianMixture fitted once (it logs its steps on ``dask_emk.steps``).

    The checkpoint holds the fitted model; an interrupted anneal restarts
    from its beginning, which gives the same result (it is deterministic for
    a given ``random_state``).
    """
    saved = checkpoint.get("anneal")
    if saved is not None:
        return saved
    from dask_emk.models.anneal import AnnealedGaussianMixture

    model = checkpointable(AnnealedGaussianMixture(**params).fit(X, sample_weight=sample_weight))
    checkpoint.save("anneal", model)
    return model


def anneal_outcome(model) -> FitOutcome:
    """The annealed model as a pipeline's final model (history: its last Lloyd run)."""
    inertia = [float(v) for v in model.kmeans_.inertia_history_]
    history = [
        Iteration(i + 1, v, v - inertia[i - 1] if i else np.inf, np.nan)
        for i, v in enumerate(inertia)
    ]
    return FitOutcome(model, history, True, objective="inertia")


def gmm_init_from_anneal(anneal, covariance_type: str, n_samples: int) -> dict:
    """GaussianMixture initial parameters from annealed centres.

    Means and weights are the anneal's; every component starts spherical with
    the pooled within-cluster variance inertia / (n d), so the first E-step
    already has soft, well-scaled responsibilities.
    """
    means = np.asarray(anneal.means_, dtype=np.float64)
    weights = np.asarray(anneal.weights_, dtype=np.float64)
    K, d = means.shape
    precision = 1.0 / max(anneal.inertia_ / (n_samples * d), np.finfo(np.float64).tiny)
    precisions = COVARIANCE_TYPES[covariance_type].isotropic(precision, K, d)
    return {
        "weights_init": weights / weights.sum(),
        "means_init": means,
        "precisions_init": precisions,
    }


def checkpointable(model):
    """A shallow copy fit to pickle: no callback (a closure). Lazy ``labels_``,
    which refer to the data, are left out by the estimators' own pickling
    (:class:`dask_emk.models.validation.NoTrainingDataInPickle`), also in a
    nested ``kmeans_``."""
    slim = copy.copy(model)
    if hasattr(slim, "callback"):
        slim.callback = None
    return slim
