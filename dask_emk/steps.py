"""Resumable fits: the estimators driven one iteration at a time, checkpointed.

Each iteration is one public ``fit`` call that continues from the state the
previous one left (GaussianMixture ``warm_start=True, max_iter=1``; KMeans
``init=centres, max_iter=1``), so after every iteration the state is a small
estimator that is checkpointed and reported. A resumed run continues from the
saved estimator through the same calls as an uninterrupted run, which makes
the two identical to the last bit (the stepping is also what an uninterrupted
pipeline run does; it differs from one long ``fit`` only in rounding the
parameters to the data's dtype between iterations).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from .checkpoint import Checkpoint


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


Progress = Callable[[str, Iteration], None]


def format_iteration(stage: str, objective: str, it: Iteration) -> str:
    """One progress line: stage, iteration, objective, change, seconds."""
    change = "" if not np.isfinite(it.change) else f"{it.change:+.3e}"
    label = objective.replace("_", " ")
    return (
        f"{stage:>6} iter {it.iteration:4d}  {label} {it.value:16.8g}  "
        f"change {change:>11}  {it.seconds:6.2f} s"
    )


def fit_gmm(X, params: dict, checkpoint: Checkpoint, progress: Progress) -> FitOutcome:
    """EM one iteration per ``fit`` call; converged when |Δ lower bound| < tol.

    Parameters
    ----------
    X : lazy 2-D input (dask array or xarray.DataArray)
    params : dict
        GaussianMixture parameters, ``max_iter`` meaning total EM iterations.
    """
    from .gmm import GaussianMixture

    params = dict(params)
    max_iter = params.pop("max_iter")
    saved = checkpoint.get("model")
    if saved is not None:
        outcome = saved
    else:
        outcome = FitOutcome(GaussianMixture(**params, max_iter=1))
    while not outcome.converged and len(outcome.history) < max_iter:
        model, history = outcome.model, outcome.history
        previous = model.lower_bound_ if history else -np.inf
        start = time.perf_counter()
        with warnings.catch_warnings():
            # One iteration per call never "converges" by itself; we judge below.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.set_params(warm_start=bool(history)).fit(X)
        change = model.lower_bound_ - previous
        it = Iteration(len(history) + 1, float(model.lower_bound_), float(change), 0.0)
        it.seconds = time.perf_counter() - start
        history.append(it)
        outcome.converged = bool(len(history) > 1 and abs(change) < params["tol"])
        progress("gmm", it)
        checkpoint.save("model", outcome)
    return outcome


def fit_kmeans(X, params: dict, checkpoint: Checkpoint, progress: Progress) -> FitOutcome:
    """Lloyd one iteration per ``fit`` call; converged when the squared centre
    shift is at most ``tol`` × the mean feature variance (scikit-learn's rule).

    ``params['init']`` is a seeding name or an array of centres.
    """
    from .kmeans import KMeans

    params = dict(params)
    max_iter, tol = params.pop("max_iter"), params.pop("tol")
    saved = checkpoint.get("model")
    if saved is not None:
        outcome, tol_abs = saved
    else:
        outcome, tol_abs = FitOutcome(None, objective="inertia"), mean_variance(X) * tol
    while not outcome.converged and len(outcome.history) < max_iter:
        old = outcome.model
        step = dict(params, init=old.cluster_centers_) if old is not None else params
        start = time.perf_counter()
        km = KMeans(**step, n_init=1, max_iter=1, tol=0.0).fit(X)
        previous = old.inertia_ if old is not None else np.inf
        it = Iteration(len(outcome.history) + 1, float(km.inertia_), 0.0, 0.0)
        it.change = float(km.inertia_ - previous)
        it.seconds = time.perf_counter() - start
        shift = np.inf if old is None else _shift(old.cluster_centers_, km.cluster_centers_)
        outcome.model = without_lazy(km)
        outcome.history.append(it)
        outcome.converged = bool(shift <= tol_abs)
        progress("kmeans", it)
        checkpoint.save("model", (outcome, tol_abs))
    return outcome


def fit_anneal(X, params: dict, checkpoint: Checkpoint, verbose: bool) -> object:
    """AnnealedGaussianMixture fitted once (its own lines report progress).

    The checkpoint holds the fitted model; an interrupted anneal restarts
    from its beginning, which gives the same result (it is deterministic for
    a given ``random_state``).
    """
    saved = checkpoint.get("anneal")
    if saved is not None:
        return saved
    from .anneal import AnnealedGaussianMixture

    params = dict(params)
    params.setdefault("verbose", int(verbose))
    model = without_lazy(AnnealedGaussianMixture(**params).fit(X))
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
    precisions = {
        "full": np.tile(precision * np.eye(d), (K, 1, 1)),
        "tied": precision * np.eye(d),
        "diag": np.full((K, d), precision),
        "spherical": np.full(K, precision),
        "shared": np.asarray(precision),
    }[covariance_type]
    return {
        "weights_init": weights / weights.sum(),
        "means_init": means,
        "precisions_init": precisions,
    }


def mean_variance(X) -> float:
    """Mean of the per-feature variances (one pass over lazy data)."""
    import dask.array as da

    from .io import storage_errors

    data = getattr(X, "data", X)  # xarray.DataArray → its dask array
    result = da.asarray(data).astype(np.float64).var(axis=0).mean()
    with storage_errors(result):
        return float(result.compute())


def without_lazy(model):
    """A shallow copy without lazy per-sample attributes (``labels_``), also in
    a nested ``kmeans_``: small to pickle, and nothing refers to the data."""
    slim = copy.copy(model)
    if hasattr(slim, "labels_"):
        del slim.labels_
    if hasattr(slim, "kmeans_"):
        slim.kmeans_ = without_lazy(slim.kmeans_)
    return slim


def _shift(old: np.ndarray, new: np.ndarray) -> float:
    return float(((np.asarray(new, np.float64) - np.asarray(old, np.float64)) ** 2).sum())
