"""Plots of fitted models (matplotlib is optional: ``pip install dask-emk[plot]``)."""

from __future__ import annotations

import numpy as np
import xarray as xr


def _path_of(model_or_dataset) -> xr.Dataset:
    if isinstance(model_or_dataset, xr.Dataset):
        return model_or_dataset
    path = getattr(model_or_dataset, "path_", None)
    if path is None:
        raise ValueError(
            "plot_path needs a fitted AnnealedGaussianMixture or its path_ / to_xarray() Dataset."
        )
    return path


def plot_path(model_or_dataset, ax=None):
    """Distance of each mean from the data mean against σ² (log axis).

    Each component slot is one line, drawn from the step it was born at;
    split events are marked with triangles at the splitting mean, merge
    events with crosses. σ² decreases left to right, as in the annealing.

    Parameters
    ----------
    model_or_dataset : AnnealedGaussianMixture or xarray.Dataset
        A fitted model, its ``path_``, or its ``to_xarray()``.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "plot_path needs matplotlib; install it with `pip install dask-emk[plot]`."
        ) from exc
    path = _path_of(model_or_dataset)
    if ax is None:
        _, ax = plt.subplots()
    sigma2 = path["sigma2"].values
    offset = path["means"].values - path["data_mean"].values[None, None, :]
    dist = np.sqrt((offset**2).sum(axis=-1))  # (step, component), NaN when closed
    ax.plot(sigma2, dist, lw=1)
    for kind, marker, label in ((1, "^", "split"), (-1, "x", "merge")):
        sel = path["event_kind"].values == kind
        steps, comps = path["event_step"].values[sel], path["event_component"].values[sel]
        ax.scatter(path["event_sigma2"].values[sel], dist[steps, comps], marker=marker,
                   color="k", zorder=3, label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("σ² (shared variance)")
    ax.set_ylabel("distance of mean from data mean")
    ax.legend()
    return ax
