"""PNG figures of a pipeline run: convergence, annealing path, 2-D clusters, model search.

matplotlib is optional (``pip install 'dask-emk[plot]'``) and imported only
here, only when a figure is drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import xarray as xr

from dask_emk.engine.reduction import compute_one
from dask_emk.pipeline.outputs import (
    PLOT,
    PNG_SOFTWARE,
    beside,
    location_name,
    write_file_atomically,
)

#: Points drawn in the 2-D scatter at most.
SCATTER_POINTS = 20_000


class MissingMatplotlib(ImportError):
    """matplotlib is needed for plots but is not installed."""


def require_matplotlib():
    """Import matplotlib with the Agg backend, or raise a clear MissingMatplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise MissingMatplotlib(
            "plots need matplotlib: pip install 'dask-emk[plot]' (or matplotlib), "
            "or set output.plots = false / pass --no-plots."
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_paths(results: str | os.PathLike) -> dict[str, Path | str]:
    """PNG paths (or URLs) next to the results store: ``<stem>.<figure>.png``."""
    stem = location_name(results).removesuffix(".zarr")
    return {
        name: beside(results, f"{stem}.{name}.png")
        for name in ("convergence", "path", "clusters", "criterion")
    }


def plot_convergence(history, objective: str, path: Path) -> Path:
    """Objective (lower bound or inertia) against iteration."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([h.iteration for h in history], [h.value for h in history], "o-", ms=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel(objective.replace("_", " "))
    ax.set_title("convergence")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_criteria(criteria: xr.DataArray, path: Path) -> Path:
    """A model search's criterion (BIC or AIC) against K, one line per covariance type."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks = criteria["n_components"].values
    for ct in criteria["covariance_type"].values:
        ax.plot(ks, criteria.sel(covariance_type=ct).values, "o-", ms=3, label=str(ct))
    best = criteria.where(criteria == criteria.min(), drop=True)
    ax.plot(best["n_components"].values, np.ravel(best.values), "k*", ms=10, label="best")
    ax.set_xticks(ks)
    ax.set_xlabel("number of components")
    ax.set_ylabel(f"{str(criteria.name).upper()} (lower is better)")
    ax.set_title("model selection")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_anneal_path(path_ds, path: Path) -> Path:
    """The annealing path (:func:`plot_path`) as a PNG."""
    require_matplotlib()
    return _save(plot_path(path_ds).figure, path)


def plot_clusters(X2, labels, means, covariances, path: Path, names=("x0", "x1")) -> Path:
    """2-D scatter coloured by cluster with 1σ and 2σ ellipses of each component.

    Parameters
    ----------
    X2 : ndarray (m, 2), a subsample of the data
    labels : ndarray (m,)
    means : ndarray (K, 2)
    covariances : ndarray (K, 2, 2) or None (k-means: centres only)
    """
    plt = require_matplotlib()
    from matplotlib.patches import Ellipse

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(X2[:, 0], X2[:, 1], c=labels, s=2, cmap="tab10", alpha=0.4, linewidths=0)
    ax.plot(means[:, 0], means[:, 1], "k+", ms=12, mew=2)
    for k in range(means.shape[0]) if covariances is not None else ():
        values, vectors = np.linalg.eigh(covariances[k])
        angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
        for scale in (1, 2):
            width, height = 2 * scale * np.sqrt(values[::-1])
            ax.add_patch(Ellipse(means[k], width, height, angle=angle, fill=False, color="k", lw=1))
    ax.set_xlabel(str(names[0]))
    ax.set_ylabel(str(names[1]))
    ax.set_title(f"{means.shape[0]} clusters ({X2.shape[0]:,} points shown)")
    return _save(fig, path)


def subsample_rows(X, n_max: int = SCATTER_POINTS) -> np.ndarray:
    """About ``n_max`` evenly spaced rows of a lazy or in-memory 2-D array."""
    data = getattr(X, "data", X)
    step = max(1, -(-data.shape[0] // n_max))
    rows = data[::step]
    return np.asarray(compute_one(rows, optimize_graph=True) if hasattr(rows, "dask") else rows)


def full_covariances(model) -> np.ndarray | None:
    """(K, d, d) covariances of a fitted GaussianMixture, None for other models."""
    from dask_emk.core.covariance import COVARIANCE_TYPES

    ct = getattr(model, "covariance_type", None)
    if ct is None:
        return None
    cov = np.asarray(model.covariances_, dtype=np.float64)
    return COVARIANCE_TYPES[ct].to_full(cov, *model.means_.shape)


def _save(fig, path: Path) -> Path:
    """Write the PNG with the ``Software: dask-emk`` text chunk that marks it as ours.

    Only a PNG carrying that chunk is ever replaced (:mod:`dask_emk.pipeline.outputs`).
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)
    write_file_atomically(path, png.getvalue(), PLOT)
    return path


# ------------------------------------------------------------- annealing path
def _path_of(model_or_dataset) -> xr.Dataset:
    path = model_or_dataset
    if not isinstance(path, xr.Dataset):
        path = getattr(model_or_dataset, "path_", None)
    if path is None or "step" not in path.dims:
        raise ValueError(
            "plot_path needs a fitted AnnealedGaussianMixture or its path_ (the results "
            "group anneal_path), a Dataset along 'step'."
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
        A fitted model or its ``path_`` (the results group ``anneal_path``).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    plt = require_matplotlib()
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
