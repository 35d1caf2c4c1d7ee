"""Synthetic Gaussian-mixture data written to zarr chunk by chunk, with its truth.

A generated store is a zarr group holding ``X`` (n, d) and the true
``weights`` (K,), ``means`` (K, d), ``covariances`` (K, d, d) and ``labels``
(n,), so every fit can be checked against ground truth. Its root attribute
``dask_emk_generated`` marks it as written here: only such a store is ever
replaced (with ``overwrite=True``; :mod:`dask_emk.pipeline.outputs` holds the rule). It
is published like a results store (:func:`dask_emk.pipeline.outputs.building_store`:
renamed into place from ``<path>.partial`` on a local disk, root ``zarr.json``
written last on an object store): an interrupted run leaves no store that
opens as complete, and the next one removes what it left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dask
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from dask_emk.engine.locations import open_node
from dask_emk.engine.reduction import compute_one
from dask_emk.models import export
from dask_emk.models.persist import consolidate
from dask_emk.pipeline.outputs import (
    GENERATED,
    building_store,
    check_output,
    claim,
    store_marker,
)


@dataclass(frozen=True)
class MixtureTruth:
    """True parameters of a generated mixture (float64)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray


def random_mixture(n_features: int, n_components: int, *, separation: float = 6.0, seed: int = 0):
    """Draw well-separated mixture parameters.

    Parameters
    ----------
    n_features, n_components : int
        The dimension d and the number of components K.
    separation : float
        Scale of the spread of the means relative to unit-scale covariances.
    seed : int
        Seed of the draws.

    Returns
    -------
    MixtureTruth
        With weights (K,), means (K, d), covariances (K, d, d).
    """
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(scale=separation, size=(n_components, n_features))
    factors = rng.normal(scale=0.5, size=(n_components, n_features, n_features))
    covariances = factors @ factors.transpose(0, 2, 1) + 0.5 * np.eye(n_features)
    return MixtureTruth(weights, means, covariances)


def sample_block(truth: MixtureTruth, n_rows: int, rng: np.random.Generator):
    """Draw ``n_rows`` samples and their labels from the mixture (in memory)."""
    labels = rng.choice(truth.weights.size, size=n_rows, p=truth.weights)
    chol = np.linalg.cholesky(truth.covariances)
    X = rng.standard_normal((n_rows, truth.means.shape[1]))
    # One GEMM per component: gathering a d×d factor per row would hold an
    # (n, d, d) array, 512 MB for a million rows in 8-D.
    for k in range(truth.weights.size):
        rows = labels == k
        X[rows] = X[rows] @ chol[k].T + truth.means[k]
    return X, labels


def write_mixture_zarr(
    path: str | os.PathLike,
    n_samples: int,
    truth: MixtureTruth,
    *,
    chunk_rows: int = 100_000,
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
) -> Path | str:
    """Write a mixture data set to a zarr store, one Dask task per chunk.

    Parameters
    ----------
    path : str or os.PathLike
        Path (or object-store URL) of the store to create.
    n_samples : int
        Rows to draw.
    truth : MixtureTruth
        The mixture to draw from (:func:`random_mixture`).
    chunk_rows : int
        Rows per zarr chunk (and per block generated).
    dtype : {'float32', 'float64'}
        The stored rows' dtype.
    seed : int
        Each chunk draws from its own stream spawned from this seed, so the
        data do not depend on how many chunks are written at once.
    overwrite : bool
        Replace an existing store that this function wrote; otherwise an
        existing path is an error. Any other existing path always is.

    Returns
    -------
    Path or str
        Path (URL) of the finished store.

    Notes
    -----
    The chunks are written by the Dask scheduler in effect (local threads
    unless one is set), so with a cluster the store must be on a file system
    the workers share, or on an object store they reach.
    """
    if n_samples < 1 or chunk_rows < 1:
        raise ValueError(f"n_samples and chunk_rows must be >= 1, got {n_samples}, {chunk_rows}.")
    check = partial(check_output, path, GENERATED, where="path", replace=overwrite,
                    replace_hint="overwrite=True")  # fmt: skip
    final = check()
    with claim(final, GENERATED, where="path"):
        check()  # again: the claim may have put back a store a killed run moved aside
        with building_store(final, GENERATED) as store:
            group = zarr.open_group(store=store, mode="r+")
            _write_mixture(group, n_samples, truth, chunk_rows=chunk_rows, dtype=dtype, seed=seed)
            consolidate(store)  # a plain xr.open_zarr reads it without a warning
    return final


def _write_mixture(
    group: zarr.Group, n_samples: int, truth: MixtureTruth, *, chunk_rows: int, dtype: str,
    seed: int,
) -> None:  # fmt: skip
    """Fill an empty group with ``X``, ``labels`` and the truth, one Dask task per chunk."""
    d = truth.means.shape[1]
    compressors = [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
    # Every chunk gets its file, also one of only the fill value (labels all
    # 0, say): a missing file is what the read checks refuse.
    every_chunk = {"write_empty_chunks": True}
    X = group.create_array(
        "X",
        shape=(n_samples, d),
        chunks=(chunk_rows, d),
        dtype=dtype,
        compressors=compressors,
        dimension_names=export.schema_dims(export.GENERATED, "X"),
        config=every_chunk,
    )
    labels = group.create_array(
        "labels",
        shape=(n_samples,),
        chunks=(chunk_rows,),
        dtype="int32",
        compressors=compressors,
        dimension_names=export.schema_dims(export.GENERATED, "labels"),
        config=every_chunk,
    )
    streams = np.random.SeedSequence(seed).spawn(-(-n_samples // chunk_rows))
    shared_truth = dask.delayed(truth)
    write = dask.delayed(_write_chunk, pure=False)
    bounds = [(i * chunk_rows, min((i + 1) * chunk_rows, n_samples)) for i in range(len(streams))]
    # One task per chunk on the scheduler in effect (local threads by
    # default, the cluster inside a pipeline): each writes its own chunks.
    writes = [write(X, labels, *b, shared_truth, s) for b, s in zip(bounds, streams, strict=True)]
    compute_one(writes)
    for name in ("weights", "means", "covariances"):
        dims = export.schema_dims(export.GENERATED, name)
        group.create_array(name, data=getattr(truth, name), dimension_names=dims,
                           config=every_chunk)  # fmt: skip
    attrs = dict(n_samples=n_samples, n_features=d, n_components=truth.weights.size, seed=seed)
    group.attrs.update(export.schema_attrs(export.GENERATED, **attrs))


def _write_chunk(X, labels, start: int, stop: int, truth: MixtureTruth, stream) -> None:
    block, block_labels = sample_block(truth, stop - start, np.random.default_rng(stream))
    X[start:stop] = block.astype(X.dtype)
    labels[start:stop] = block_labels


def read_truth(path: str | os.PathLike) -> MixtureTruth:
    """True parameters stored beside a generated data set (local path or URL)."""
    return truth_of(open_node(path))


def truth_of(group: zarr.Group) -> MixtureTruth:
    """True parameters held by the group of a generated data set."""
    return MixtureTruth(
        *(np.asarray(group[name][...]) for name in ("weights", "means", "covariances"))
    )


# ------------------------------------------------------------------ gridded
#: Root attributes that mark a generated gridded store (``generate --grid``).
GRID_ATTRS = ("land_fraction", "gap_fraction")
GRID_DIMS = ("time", "lat", "lon")
#: Sites per regime of the Voronoi cells that make the regions.
SITES_PER_REGIME = 3


def parse_grid(text: str, what: str = "--grid") -> tuple[int, ...]:
    """``'12x90x180'`` → (12, 90, 180): sizes of time, lat and lon."""
    try:
        sizes = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(
            f"{what} must be TIMExLATxLON with three positive sizes, e.g. 12x90x180; got {text!r}."
        )
    return sizes


def write_grid_zarr(
    path: str | os.PathLike,
    shape: tuple[int, int, int],
    truth: MixtureTruth,
    *,
    chunks: tuple[int, int, int] | None = None,
    land: float = 0.3,
    gaps: float = 0.03,
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
) -> Path | str:
    """Write gridded data with known truth: variables on (time, lat, lon).

    Each ocean point belongs to a regime (a component of ``truth``): regions
    are the Voronoi cells of a few random sites per regime, drifting east by
    one cell per time step, so regimes are spatially coherent and move.
    Its variables ``x0`` … are drawn from that component's Gaussian. A land
    mask (a smooth random field above its ``1 - land`` quantile) is NaN in
    every variable, and a fraction ``gaps`` of the other points has one
    variable NaN. The truth is stored beside the data: ``labels`` (the
    regime of each point, -1 on land), ``land``, and the regimes' weights
    (their share of ocean points), means and covariances.

    Parameters
    ----------
    path : str or os.PathLike
        Path (or object-store URL) of the store to create.
    shape : tuple of int
        The (time, lat, lon) sizes.
    truth : MixtureTruth
        Means (K, d) and covariances (K, d, d) of the regimes (weights unused).
    chunks : tuple of int, optional
        The (time, lat, lon) chunk sizes; default one time step per chunk.
    land, gaps : float
        Fractions in [0, 1): of (lat, lon) points that are land, of the other
        points with one variable NaN.
    dtype, seed, overwrite : str, int, bool
        As :func:`write_mixture_zarr`'s.

    Returns
    -------
    Path or str
        Path (URL) of the finished store.
    """
    chunks = chunks or (1, shape[1], shape[2])
    if not (0 <= land < 1 and 0 <= gaps < 1):
        raise ValueError(f"land and gaps must be fractions in [0, 1), got {land}, {gaps}.")
    check = partial(check_output, path, GENERATED, where="path", replace=overwrite,
                    replace_hint="overwrite=True")  # fmt: skip
    final = check()
    with claim(final, GENERATED, where="path"):
        check()
        ds = gridded_dataset(shape, truth, chunks=chunks, land=land, gaps=gaps, dtype=dtype,
                             seed=seed)  # fmt: skip
        with building_store(final, GENERATED) as store:
            ds = ds.assign_attrs(store_marker(GENERATED))
            ds.to_zarr(store, mode="a", consolidated=False, zarr_format=3,
                       write_empty_chunks=True)  # fmt: skip
            consolidate(store)
    return final


def gridded_dataset(
    shape, truth: MixtureTruth, *, chunks, land: float, gaps: float, dtype: str, seed: int
):
    """The lazy Dataset :func:`write_grid_zarr` writes (the truth's weights computed)."""
    import dask.array as da
    import xarray as xr

    T, Y, X = shape
    K, d = truth.means.shape
    rng = np.random.default_rng(seed)
    sites = rng.uniform((0, 0), (Y, X), size=(SITES_PER_REGIME * K, 2))
    regimes = rng.permutation(np.arange(sites.shape[0]) % K)
    coast = coastline((Y, X), land, rng)
    block_chunks = tuple(
        tuple(min(c, n - i) for i in range(0, n, c)) for c, n in zip(chunks, shape, strict=True)
    )
    # Each task gets the few numbers that define the regions and the land, never a mask.
    where = (sites, regimes, coast, (Y, X), block_chunks)
    labels = da.map_blocks(_labels_block, *where, chunks=block_chunks, dtype=np.int32,
                           meta=np.empty((0, 0, 0), np.int32))  # fmt: skip
    values = da.map_blocks(
        _values_block, *where, truth, seed, gaps, np.dtype(dtype),
        chunks=(*block_chunks, (d,)), dtype=dtype,
        meta=np.empty((0, 0, 0, 0), dtype),
    )  # fmt: skip
    counts = compute_one(da.bincount(labels[labels >= 0].ravel(), minlength=K))
    weights = counts / max(counts.sum(), 1)
    names = [f"x{i}" for i in range(d)]
    coords = {
        "time": np.arange(T),
        "lat": np.linspace(-80.0, 80.0, Y),
        "lon": np.arange(X) * (360.0 / X),
        **export.parameter_coords(K, np.asarray(names, dtype=object)),
    }
    coords.pop("iteration")
    ds = xr.Dataset({name: (GRID_DIMS, values[..., i]) for i, name in enumerate(names)})
    truth_vars = {
        "labels": xr.DataArray(labels, dims=GRID_DIMS, attrs={"_FillValue": -1}),
        "land": is_land(coast, (Y, X), np.arange(Y), np.arange(X)),
        "weights": weights,
        "means": truth.means,
        "covariances": truth.covariances,
    }
    ds = ds.merge(export.schema_dataset(export.GRID, truth_vars, coords)).assign_coords(
        {dim: coords[dim] for dim in GRID_DIMS}
    )
    ds.attrs = export.schema_attrs(
        export.GRID, n_features=d, n_components=K, seed=seed, land_fraction=land,
        gap_fraction=gaps,
    )  # fmt: skip
    return ds


def coastline(shape: tuple[int, int], fraction: float, rng: np.random.Generator) -> tuple:
    """A smooth random land mask covering about ``fraction`` of a (lat, lon) grid:
    (coarse field, threshold); :func:`is_land` evaluates it anywhere."""
    coarse = rng.standard_normal((5, 9))
    if fraction == 0:
        return coarse, np.inf
    field = _coarse_field(coarse, shape, np.arange(shape[0]), np.arange(shape[1]))
    return coarse, float(np.quantile(field, 1 - fraction))


def is_land(coast: tuple, shape: tuple[int, int], y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(len(y), len(x)) mask of the rows ``y`` and columns ``x`` of the grid."""
    coarse, threshold = coast
    return _coarse_field(coarse, shape, y, x) > threshold


def _coarse_field(coarse: np.ndarray, shape, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The coarse field interpolated (bilinear) onto grid rows ``y`` and columns ``x``."""
    from scipy.ndimage import map_coordinates

    (cy, cx), (ny, nx) = coarse.shape, shape
    where = np.meshgrid(y * (cy - 1) / max(ny - 1, 1), x * (cx - 1) / max(nx - 1, 1), indexing="ij")
    return map_coordinates(coarse, where, order=1)


def _block_regimes(sites, regimes, coast, shape, block_chunks, block_id) -> np.ndarray:
    """Regime of each point of one (time, lat, lon) block, -1 on land."""
    starts = [sum(c[:i]) for c, i in zip(block_chunks, block_id, strict=False)]
    sizes = [c[i] for c, i in zip(block_chunks, block_id, strict=False)]
    t, y, x = (np.arange(s, s + n) for s, n in zip(starts, sizes, strict=True))
    X = shape[1]
    site_y = sites[:, 0]
    site_x = (sites[None, :, 1] + t[:, None]) % X  # (t, site): one cell east per step
    dy = y[:, None] - site_y[None, :]  # (y, site)
    dx = np.abs(x[None, :, None] - site_x[:, None, :])  # (t, x, site), periodic in lon
    dx = np.minimum(dx, X - dx)
    dist = dy[None, :, None, :] ** 2 + dx[:, None, :, :] ** 2  # (t, y, x, site)
    labels = regimes[np.argmin(dist, axis=-1)].astype(np.int32)
    labels[:, is_land(coast, shape, y, x)] = -1
    return labels


def _labels_block(sites, regimes, coast, shape, block_chunks, block_id=None) -> np.ndarray:
    return _block_regimes(sites, regimes, coast, shape, block_chunks, block_id)


def _values_block(sites, regimes, coast, shape, block_chunks, truth, seed, gaps, dtype,
                  block_id=None) -> np.ndarray:  # fmt: skip
    """The variables of one block: each point drawn from its regime; NaN on land and at gaps."""
    labels = _block_regimes(sites, regimes, coast, shape, block_chunks, block_id)
    # Its own random stream, from the seed and the block's place in the grid.
    rng = np.random.default_rng([seed, *block_id[:3]])
    flat = labels.ravel()
    ocean = flat >= 0
    values = np.full((flat.size, truth.means.shape[1]), np.nan)
    values[ocean] = sample_regimes(truth, flat[ocean], rng)
    gap_rows = np.flatnonzero(ocean & (rng.random(flat.size) < gaps))
    values[gap_rows, rng.integers(0, values.shape[1], gap_rows.size)] = np.nan
    return values.reshape(*labels.shape, -1).astype(dtype)


def sample_regimes(truth: MixtureTruth, labels: np.ndarray, rng) -> np.ndarray:
    """One draw from component ``labels[i]`` of the mixture for each i: (n, d)."""
    chol = np.linalg.cholesky(truth.covariances)
    X = rng.standard_normal((labels.size, truth.means.shape[1]))
    for k in range(truth.means.shape[0]):
        rows = labels == k
        X[rows] = X[rows] @ chol[k].T + truth.means[k]
    return X


# ------------------------------------------------------------- photograph
#: The data variable of a photograph store, (y, x, band).
PHOTO_VARIABLE = "image"
#: Image rows per zarr chunk of a photograph store.
PHOTO_CHUNK_ROWS = 100


def write_photo_zarr(
    path: str | os.PathLike, *, image: str = "china.jpg", clouds: float = 0.05, seed: int = 0,
    overwrite: bool = False,
) -> Path | str:  # fmt: skip
    """Write scikit-learn's sample photograph as ``image`` (y, x, band), float32, with clouds.

    A fraction ``clouds`` of the pixels (drawn with ``seed``) is NaN in every
    band. scikit-learn ships the image inside the package: no download.
    """
    import xarray as xr
    from sklearn.datasets import load_sample_image

    check = partial(check_output, path, GENERATED, where="input.photo.path", replace=overwrite,
                    replace_hint="overwrite=True")  # fmt: skip
    final = check()
    pixels = load_sample_image(image).astype(np.float32)
    rng = np.random.default_rng(seed)
    n_pixels = pixels.shape[0] * pixels.shape[1]
    cloudy = rng.choice(n_pixels, size=round(clouds * n_pixels), replace=False)
    pixels.reshape(n_pixels, -1)[cloudy] = np.nan
    dims = export.schema_dims(export.GRID, PHOTO_VARIABLE)
    bands = np.array(["red", "green", "blue"], dtype=object)
    ds = xr.Dataset({PHOTO_VARIABLE: (dims, pixels)}, coords={"band": bands})
    ds.attrs = export.schema_attrs(export.GRID, image=image, clouds=clouds, seed=seed)
    encoding = {PHOTO_VARIABLE: {"chunks": (PHOTO_CHUNK_ROWS, *pixels.shape[1:])}}
    with claim(final, GENERATED, where="input.photo.path"):
        check()
        with building_store(final, GENERATED) as store:
            ds.assign_attrs(store_marker(GENERATED)).to_zarr(
                store, mode="a", consolidated=False, zarr_format=3, encoding=encoding,
                write_empty_chunks=True,
            )  # fmt: skip
            consolidate(store)
    return final
