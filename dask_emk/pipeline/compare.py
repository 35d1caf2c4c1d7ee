"""Fitted parameters against the generator's truth: matching and a printed table."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.pipeline.figures import full_covariances


def match_components(fitted_means: np.ndarray, true_means: np.ndarray) -> np.ndarray:
    """Index of the fitted component matching each true one (Hungarian on distances)."""
    cost = ((true_means[:, None, :] - fitted_means[None, :, :]) ** 2).sum(axis=2)
    _, cols = linear_sum_assignment(cost)
    return cols


def fitted_parameters(model, scaler=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(weights, means, full covariances or None) of any fitted dask_emk model,
    in the data's units for a model fitted behind a StandardScaler ``scaler``."""
    if scaler is not None:
        ds = scaler.original_units(model)
        K, d = ds["means"].shape
        cov = ds.get("covariances")
        if cov is not None:
            cov = COVARIANCE_TYPES[cov.attrs["covariance_type"]].to_full(cov.values, K, d)
        return ds["weights"].values, ds["means"].values, cov
    means = getattr(model, "means_", None)
    if means is None:  # KMeans
        sizes = np.asarray(model.cluster_weights_, dtype=np.float64)
        return sizes / sizes.sum(), np.asarray(model.cluster_centers_, np.float64), None
    return (
        np.asarray(model.weights_, np.float64),
        np.asarray(means, np.float64),
        full_covariances(model),
    )


def truth_table(model, truth, scaler=None) -> tuple[list[str], float]:
    """Lines comparing fitted and true parameters, and the largest mean error
    in units of the true standard deviation (``scaler``: see :func:`fitted_parameters`).

    One row per fitted component, numbered as the model numbers it (the
    labels' values), beside the true component it matches; ``max|Δcov|``
    only for a model with covariances (not k-means).
    """
    weights, means, cov = fitted_parameters(model, scaler)
    if means.shape != truth.means.shape:
        return [f"(fitted {means.shape[0]} components, truth has {truth.means.shape[0]})"], np.inf
    order = match_components(means, truth.means)  # true k ↔ fitted order[k]
    head = f"{'k':>2} {'true':>4} {'weight fitted / true':>20}  {'mean fitted / true':<48}"
    lines = [head + (f" {'max|Δcov|':>9}" if cov is not None else "")]
    worst = 0.0
    for k, j in sorted(enumerate(order), key=lambda pair: pair[1]):
        scale = np.sqrt(np.diag(truth.covariances[k]))
        worst = max(worst, float(np.max(np.abs(means[j] - truth.means[k]) / scale)))
        cov_err = "" if cov is None else f" {np.max(np.abs(cov[j] - truth.covariances[k])):9.4f}"
        fitted, true = _short(means[j]), _short(truth.means[k])
        weight = f"{weights[j]:9.3f} / {truth.weights[k]:.3f}"
        lines.append(f"{j:>2} {k:>4} {weight}  {fitted:>22} / {true:<23}{cov_err}")
    lines.append(f"largest mean error: {worst:.4f} true standard deviations")
    return lines, worst


def _short(vector: np.ndarray, shown: int = 3) -> str:
    """A mean vector in fixed width: its first ``shown`` entries, then …"""
    text = " ".join(f"{v:6.2f}" for v in vector[:shown])
    return f"[{text}{' …' if vector.size > shown else ''}]"
