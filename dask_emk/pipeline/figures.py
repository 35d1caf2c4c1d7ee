"""PNG figures of a pipeline run: convergence, annealing path, 2-D clusters, the
label map of gridded input, the quantised image of a photograph, model search.

matplotlib is optional (``pip install 'dask-emk[plot]'``) and imported only
here, only when a figure is drawn, with the Agg backend (no display needed).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import xarray as xr

from dask_emk.engine.locations import open_store
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
    names = ("convergence", "path", "clusters", "labels", "quantised", "criterion")
    return {name: beside(results, f"{stem}.{name}.png") for name in names}


def plot_convergence(history, objective: str, path: Path, n_clusters=()) -> Path:
    """Objective (lower bound, inertia, DP-means objective) against iteration,
    and below it the number of clusters per iteration when given (dpmeans)."""
    plt = require_matplotlib()
    iterations = [h.iteration for h in history]
    if len(n_clusters):
        fig, (ax, below) = plt.subplots(2, 1, figsize=(5, 5), sharex=True)
        below.step(iterations, n_clusters, "o-", where="post", ms=3)
        below.set_ylabel("clusters")
        below.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(iterations, [h.value for h in history], "o-", ms=3)
    (below if len(n_clusters) else ax).set_xlabel("iteration")
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


def label_map_slice(grid, chosen: dict | None) -> dict:
    """Where to cut a grid for its label map: ``{dim: index}`` for every dim but two.

    The map shows the last two sample dims not named in ``chosen``
    (``output.map_slice``); every other dim is taken at its ``chosen`` index,
    else its first (the first time step).

    Raises
    ------
    ValueError
        ``chosen`` names a dim the grid lacks, an index outside it, or leaves
        fewer than two dims to draw.
    """
    chosen = dict(chosen or {})
    sizes = dict(zip(grid.dims, grid.shape, strict=True))
    for dim, index in chosen.items():
        if dim not in sizes:
            raise ValueError(
                f"output.map_slice names {dim!r}, which is not a sample dim of the input "
                f"{tuple(sizes)}; name one of those."
            )
        if not -sizes[dim] <= index < sizes[dim]:
            raise ValueError(
                f"output.map_slice {dim} = {index} is outside 0 … {sizes[dim] - 1}; "
                "choose an index in that range."
            )
    free = [dim for dim in grid.dims if dim not in chosen]
    if len(free) < 2:
        raise ValueError(
            f"output.map_slice {chosen} leaves {free} of the sample dims {grid.dims} to "
            "draw; a map needs two: remove one of its keys."
        )
    return {dim: chosen.get(dim, 0) for dim in free[:-2]} | chosen


def read_labels(results) -> xr.DataArray:
    """The labels of a results store, lazily (NaN where they were left out)."""
    return xr.open_zarr(open_store(results), consolidated=False)["labels"]


def plot_label_map(labels: xr.DataArray, path) -> Path:
    """A 2-D slice of gridded labels as a map: one colour per component, NaN blank.

    An axis without coordinates is drawn as an image (first row at the top).
    """
    plt = require_matplotlib()
    labels = labels.squeeze(drop=False)
    n = int(np.nanmax(labels.values)) + 1 if np.isfinite(labels.values).any() else 1
    row_dim = labels.dims[0]
    colours = max(n, 2)
    cmap = plt.get_cmap("tab10" if colours <= 10 else "tab20", colours)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels.plot.imshow(
        ax=ax, cmap=cmap, vmin=-0.5, vmax=colours - 0.5, yincrease=row_dim in labels.coords,
        cbar_kwargs={"label": "component", "ticks": range(n)},
    )  # fmt: skip
    scalars = [d for d in labels.coords if labels[d].ndim == 0]
    where = ", ".join(f"{d} = {labels[d].values.item()}" for d in scalars)
    ax.set_title(f"labels{f' at {where}' if where else ''}")
    return _save(fig, path)


def save_quantised(labels: xr.DataArray, centres: np.ndarray, path) -> Path:
    """The photograph in its cluster centres' colours (rounded), white where unlabelled.

    Written as a palette PNG, one pixel per pixel: exact, and small.
    """
    require_matplotlib()
    from PIL import Image, PngImagePlugin  # pillow: a dependency of matplotlib

    index = _palette_index(labels.transpose("y", "x").values, centres.shape[0])
    image = Image.fromarray(index.astype(np.uint8), mode="P")
    image.putpalette(_palette(centres).ravel().tolist())
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    png = io.BytesIO()
    image.save(png, format="png", pnginfo=info, optimize=True)
    write_file_atomically(path, png.getvalue(), PLOT)
    return path


def _palette(centres: np.ndarray) -> np.ndarray:
    """(K + 1, 3) uint8 colours: the centres (rounded, clipped to 0 … 255), then white."""
    colours = np.clip(np.round(np.asarray(centres, np.float64)), 0, 255).astype(np.uint8)
    return np.vstack([colours, np.full((1, 3), 255, np.uint8)])


def _palette_index(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Labels as palette indices; unlabelled pixels (NaN, -1) the last, white."""
    labels = np.asarray(labels, np.float64)
    return np.where(np.isfinite(labels) & (labels >= 0), labels, n_clusters).astype(np.intp)


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
        Where to draw (default: a new figure's).

    Returns
    -------
    matplotlib Axes
        The axes drawn on.
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
