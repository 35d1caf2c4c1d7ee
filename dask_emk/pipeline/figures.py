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

#: Points drawn in the 2-D scatter at most. Every ``plot_*`` function writes its
#: PNG to ``path`` and returns it; given ``path=None`` it returns the figure.
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


#: Components drawn in the same colour in every figure: component k is ``colour(k)``.
COMPONENT_CMAP = "tab10"


def colour(k: int):
    """The colour of component ``k`` in the clusters plot, the annealing path and the map."""
    import matplotlib

    cmap = matplotlib.colormaps[COMPONENT_CMAP]
    return cmap(k % cmap.N)


def plot_convergence(history, objective: str, path: Path, n_clusters=(), model: str = "",
                     tol: float | None = None, units: str = "") -> Path:  # fmt: skip
    """|change| of the objective (lower bound, inertia, DP-means objective) per
    iteration on a log scale, and below it the number of clusters per iteration
    when given (dpmeans). The title names ``model``, ``tol`` and the final value
    with its ``units`` (as the console and ``show`` give them); ``tol`` is drawn
    as a line for the lower bound only (the others' tol is not on the objective)."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    iterations = [h.iteration for h in history]
    if len(n_clusters):
        fig, (ax, below) = plt.subplots(2, 1, figsize=(5, 5), sharex=True)
        below.step(iterations, n_clusters, "o-", where="post", ms=3)
        below.set_ylabel("clusters")
        below.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    change = np.abs([h.change for h in history], dtype=np.float64)
    shown = np.isfinite(change) & (change > 0)  # the first has no change; log: no zeros
    label = objective.replace("_", " ")
    ax.plot(np.asarray(iterations)[shown], change[shown], "o-", ms=3, label=f"|change of {label}|")
    if tol and objective == "lower_bound":
        ax.axhline(tol, color="k", ls="--", lw=1, label=f"tol = {tol:g}")
    ax.set_yscale("log")
    (below if len(n_clusters) else ax).set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"|change of {label}|")
    last = f", final {label} {history[-1].value:.8g}" if history else ""
    last += f"\n({units})" if history and units else ""
    tolerance = f", tol {tol:g}" if tol is not None else ""
    ax.set_title(f"{model or 'fit'} convergence{tolerance}{last}", fontsize=9)
    ax.legend(fontsize=7)
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


def plot_anneal_path(path_ds, path: Path, final_means=None) -> Path:
    """The annealing path (:func:`plot_path`) as a PNG, each line in the colour of
    the ``final_means`` (the model's, in the path's units) it ends nearest."""
    require_matplotlib()
    return _save(plot_path(path_ds, final_means=final_means).figure, path)


def point_style(n: int) -> tuple[float, float]:
    """Marker area (pt²) and alpha for ``n`` points: a few hundred stand out (area
    ~15, nearly opaque), tens of thousands show their density (area 1, alpha ~0.3)."""
    return float(np.clip(4000 / max(n, 1), 1, 16)), float(np.clip(np.sqrt(2000 / max(n, 1)),
                                                                    0.15, 0.9))  # fmt: skip


def plot_clusters(X2, labels, means, covariances, path: Path, names=("x0", "x1"), units="") -> Path:
    """2-D scatter in each component's colour, its mean and its 1σ and 2σ ellipses,
    on equal axes, with a legend.

    Parameters
    ----------
    X2 : ndarray (m, 2), a subsample of the data
    labels : ndarray (m,)
    means : ndarray (K, 2)
    covariances : ndarray (K, 2, 2) or None (k-means: centres only)
    units : str
        Appended to the axis labels (e.g. "data units").
    """
    plt = require_matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Ellipse

    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    size, alpha = point_style(X2.shape[0])
    for k in range(means.shape[0]):
        mine = labels == k
        ax.scatter(X2[mine, 0], X2[mine, 1], s=size, alpha=alpha, color=colour(k),
                   linewidths=0, label=f"component {k} ({mine.sum():,} points)")  # fmt: skip
    ax.plot(means[:, 0], means[:, 1], "k+", ms=12, mew=2, label="means")
    for k in range(means.shape[0]) if covariances is not None else ():
        values, vectors = np.linalg.eigh(covariances[k])
        angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
        for scale, style in ((1, "-"), (2, "--")):
            width, height = 2 * scale * np.sqrt(values[::-1])
            ax.add_patch(Ellipse(means[k], width, height, angle=angle, fill=False, ls=style,
                                 color="k", lw=1))  # fmt: skip
    # Legend markers of one size, opaque, whatever the points' size and alpha;
    # one entry per ellipse kind, not per component.
    handles = [Line2D([], [], ls="", marker="o", ms=5, color=colour(k), label=label)
               for k, label in enumerate(ax.get_legend_handles_labels()[1][:-1])]  # fmt: skip
    handles.append(Line2D([], [], ls="", marker="+", ms=9, mew=2, color="k", label="means"))
    if covariances is not None:
        handles += [Line2D([], [], color="k", lw=1, ls=ls, label=f"{s}σ ellipses")
                    for s, ls in ((1, "-"), (2, "--"))]  # fmt: skip
    ax.legend(handles=handles, fontsize=7)
    ax.set_aspect("equal", adjustable="datalim")
    suffix = f" ({units})" if units else ""
    ax.set_xlabel(f"{names[0]}{suffix}")
    ax.set_ylabel(f"{names[1]}{suffix}")
    ax.set_title(f"{means.shape[0]} clusters ({X2.shape[0]:,} points shown)", fontsize=9)
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
    return xr.open_zarr(open_store(results), consolidated=False)["label"]


#: Axis labels of the map for dims named like latitude and longitude (degrees).
DEGREES = {"lat": "latitude (°N)", "latitude": "latitude (°N)", "lon": "longitude (°E)",
           "longitude": "longitude (°E)"}  # fmt: skip
#: The map's colours for points without a label: no data at all, and left out.
LAND_COLOUR, OMITTED_COLOUR = "0.55", "white"


def missing_everywhere(X, feature_dim: str | None) -> xr.DataArray:
    """Grid points where every variable (feature) is NaN, e.g. land in ocean data.

    ``X`` is the gridded input: a Dataset of variables, or a DataArray whose
    ``feature_dim`` holds the features (None: one feature)."""
    if isinstance(X, xr.Dataset):
        return X.to_dataarray("variable").isnull().all("variable")
    return X.isnull().all(feature_dim) if feature_dim else X.isnull()


def plot_label_map(labels: xr.DataArray, path, land: xr.DataArray | None = None) -> Path:
    """A 2-D slice of gridded labels as a map: components in their colours (:func:`colour`),
    ``land`` (points with no data) grey, other unlabelled (omitted) points white, with
    a legend; latitude and longitude in degrees.

    An axis without coordinates is drawn as an image (first row at the top).
    """
    plt = require_matplotlib()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    labels = labels.squeeze(drop=False)
    n = int(np.nanmax(labels.values)) + 1 if np.isfinite(labels.values).any() else 1
    row_dim = labels.dims[0]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.set_facecolor(OMITTED_COLOUR)
    options = {"ax": ax, "add_colorbar": False, "yincrease": row_dim in labels.coords}
    cmap = ListedColormap([colour(k) for k in range(n)])
    labels.plot.imshow(cmap=cmap, vmin=-0.5, vmax=n - 0.5, **options)
    handles = [Patch(color=colour(k), label=f"component {k}") for k in range(n)]
    if land is not None:
        land = land.squeeze(drop=False).transpose(*labels.dims)
        land.where(land).plot.imshow(cmap=ListedColormap([LAND_COLOUR]), **options)
        handles.append(Patch(color=LAND_COLOUR, label="no data (land)"))
    omitted = np.isnan(labels.values) & ~(False if land is None else land.values)
    if omitted.any():
        handles.append(Patch(facecolor=OMITTED_COLOUR, edgecolor="k", label="omitted (NaN)"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel(DEGREES.get(str(labels.dims[1]), str(labels.dims[1])))
    ax.set_ylabel(DEGREES.get(str(row_dim), str(row_dim)))
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


def _save(fig, path: Path | None):
    """Write the PNG with the ``Software: dask-emk`` text chunk that marks it as ours,
    and return ``path``; with ``path`` None return the open figure instead (to look at
    or test it).

    Only a PNG carrying that chunk is ever replaced (:mod:`dask_emk.pipeline.outputs`).
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    if path is None:
        return fig
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


def plot_path(model_or_dataset, ax=None, final_means=None):
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
    final_means : ndarray (K, d), optional
        The final model's means in the path's units: each line takes the
        colour (:func:`colour`) of the one its last position is nearest, as
        in the clusters plot. Default: the fitted model's, else the path's
        last step.

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
    if final_means is None:
        final_means = getattr(model_or_dataset, "means_", None)
    for j, k in enumerate(_nearest_final(path["means"].values, final_means)):
        ax.plot(sigma2, dist[:, j], lw=1, color=colour(k))
    for kind, marker, label in ((1, "^", "split"), (-1, "x", "merge")):
        sel = path["event_kind"].values == kind
        steps, comps = path["event_step"].values[sel], path["event_component"].values[sel]
        ax.scatter(path["event_sigma2"].values[sel], dist[steps, comps], marker=marker,
                   color="k", zorder=3, label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("σ² (shared variance, fitted units²)")
    ax.set_ylabel("distance of mean from data mean")
    ax.set_title(f"annealing path: {dist.shape[1]} means from σ² {sigma2[0]:.3g} to "
                 f"{sigma2[-1]:.3g}", fontsize=9)  # fmt: skip
    ax.legend()
    return ax


def _nearest_final(means: np.ndarray, final_means) -> np.ndarray:
    """For each path slot (column of ``means`` (step, slot, d)), the index of the
    final mean nearest its last position (the last step's slot order without
    ``final_means``)."""
    last_step = np.where(np.isfinite(means).all(axis=-1), np.arange(means.shape[0])[:, None], -1)
    last = means[last_step.max(axis=0), np.arange(means.shape[1])]  # (slot, d)
    final = last[np.isfinite(last).all(axis=1)] if final_means is None else final_means
    final = np.asarray(final, np.float64)
    return ((last[:, None, :] - final[None]) ** 2).sum(axis=-1).argmin(axis=1)
