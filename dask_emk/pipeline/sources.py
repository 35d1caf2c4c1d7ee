"""Pipeline inputs: a zarr store array, an xarray store, a small CSV file, a
generated mixture (flat or on a grid) or scikit-learn's sample photograph.

A 2-D input becomes a lazy ``xarray.DataArray`` with dims (sample, feature),
chunked along samples only; an xarray store (``input.variables``,
``feature_dim`` or ``sample_dims``, a store from ``generate --grid`` or
``[input.photo]``) is opened lazily with ``xarray.open_zarr`` and fitted as
it is, so per-sample outputs come back on its grid. The generator's true
parameters come along when the store holds them. Checks are metadata-only
and raise :class:`dask_emk.pipeline.config.PipelineError` naming the fix.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from dask_emk.engine.inputs import InputData, as_input, as_sample_weight
from dask_emk.engine.locations import is_url, normalize_location, open_node, open_store
from dask_emk.engine.storage import checked_xarray, read_zarr
from dask_emk.engine.stored import feature_variables
from dask_emk.pipeline.config import COSLAT, XARRAY_KEYS, PipelineError, Section, not_utf8
from dask_emk.pipeline.generate import (
    GRID_ATTRS,
    PHOTO_VARIABLE,
    MixtureTruth,
    parse_grid,
    random_mixture,
    truth_of,
    write_grid_zarr,
    write_mixture_zarr,
    write_photo_zarr,
)
from dask_emk.pipeline.outputs import GENERATED, claim, written_by_dask_emk

TRUTH_ARRAYS = ("weights", "means", "covariances")


@dataclass
class Source:
    """A pipeline's input data.

    Attributes
    ----------
    X : xarray.DataArray (sample, feature), or an xarray Dataset or N-D
        DataArray (gridded), dask-backed: what the estimators fit
    truth : MixtureTruth or None
    description : str
    data : InputData
        ``X`` as the estimators see it (rows, feature labels, grid).
    options : dict
        The estimator parameters that read ``X`` (:func:`estimator_options`).
    photo : bool
        The input is a colour image (y, x, band): its quantised image is drawn.
    weights : xarray.DataArray or None
        The sample weights of ``[input] weights``, on (some of) the sample dims
        (the estimators align them with X as they align a DataArray).
    """

    X: xr.DataArray | xr.Dataset
    truth: MixtureTruth | None
    description: str
    data: InputData
    options: dict
    photo: bool = False
    weights: xr.DataArray | None = None

    @property
    def gridded(self) -> bool:
        """Per-sample outputs lie on a grid of sample dims, not along ``sample``."""
        return self.data.grid is not None and self.data.grid.dims != ("sample",)


def check_input(cfg: Section) -> Source | None:
    """Fail early (before a scheduler starts or anything is written) on bad input.

    Returns the opened input store (lazily), None for input made by the run.
    """
    if cfg.store is not None:
        return open_source(cfg)
    if cfg.csv is not None:
        read_csv(cfg.csv, cfg.columns)
    return None


def estimator_options(cfg: Section) -> dict:
    """The estimator parameters [input] sets: nan_policy, feature_dim, sample_dims,
    missing_chunks."""
    return {"nan_policy": cfg.nan_policy, "feature_dim": cfg.feature_dim,
            "sample_dims": cfg.sample_dims, "missing_chunks": cfg.missing_chunks}  # fmt: skip


def open_source(cfg: Section, echo=print) -> Source:
    """The pipeline's input as a :class:`Source`; generates the data if asked to."""
    if cfg.photo is not None:
        store = ensure_photo(cfg.photo, echo)
        return _xarray_source(store, cfg.replace(variables=[PHOTO_VARIABLE], feature_dim="band"),
                              photo=True)  # fmt: skip
    if cfg.generate is not None:
        store, array = ensure_generated(cfg.generate, echo), "X"
        if cfg.generate.grid:
            return _xarray_source(store, cfg)
    elif cfg.csv is not None:
        values, names = read_csv(cfg.csv, cfg.columns)
        X = xr.DataArray(da.from_array(values, chunks=(-1, -1)), dims=("sample", "feature"))
        X = X.assign_coords(feature=np.asarray(names, dtype=str))
        description = f"{cfg.csv} ({values.shape[0]} rows, columns {names})"
        return Source(X, None, description, _as_input(X, cfg, cfg.csv), estimator_options(cfg))
    else:
        store, array = cfg.store, cfg.array
        if array is None and _is_xarray_store(store, cfg):
            return _xarray_source(store, cfg)
    if cfg.weights is not None:
        raise PipelineError(
            f"input.weights applies to an xarray store (variables on a grid), not to "
            f"{'a CSV file' if cfg.csv else 'a 2-D array'}; remove it, or fit an xarray store."
        )
    arr = open_array(store, array)
    _as_input(arr, cfg, f"input {store}/{arr.path}")
    X = xr.DataArray(read_zarr(arr, cfg.missing_chunks), dims=("sample", "feature"))
    description = f"{store}/{arr.path} {arr.shape} {arr.dtype}, chunks {arr.chunks}"
    data = _as_input(X, cfg, f"input {store}")
    return Source(X, store_truth(store), description, data, estimator_options(cfg))


def _as_input(X, cfg: Section, name: str) -> InputData:
    """``X`` as the estimators will see it (metadata checks only), or a PipelineError."""
    try:
        return as_input(X, name=name, **estimator_options(cfg))
    except ValueError as exc:
        raise PipelineError(str(exc)) from None


def _is_xarray_store(store: str, cfg: Section) -> bool:
    """An xarray store: named as one by [input] keys, a gridded store of ``generate``,
    or a group of several arrays that all name their dims (as xarray writes them)
    but for the row stores of ``generate`` (X beside its truth)."""
    if any(getattr(cfg, key) is not None for key in XARRAY_KEYS + ("weights",)):
        return True
    node = _open_node(store)
    if _is_generated_grid(node):
        return True
    if not isinstance(node, zarr.Group) or all(name in node for name in TRUTH_ARRAYS):
        return False
    arrays = [member for _, member in node.members(max_depth=None)
              if isinstance(member, zarr.Array)]  # fmt: skip
    return len(arrays) > 1 and all(_dimension_names(array) for array in arrays)


def _dimension_names(array: zarr.Array) -> list | None:
    """The dims an array names: zarr 3's dimension_names, or xarray's zarr 2 attribute."""
    names = getattr(array.metadata, "dimension_names", None)
    if names:
        return list(names)
    legacy = array.attrs.get("_ARRAY_DIMENSIONS")
    return list(legacy) if isinstance(legacy, list) else None


def _is_generated_grid(node) -> bool:
    return isinstance(node, zarr.Group) and all(key in node.attrs for key in GRID_ATTRS)


def _xarray_source(store: str, cfg: Section, photo: bool = False) -> Source:
    """An xarray store, opened lazily with checked reads, as the estimators will fit it.

    ``input.variables`` picks data variables (default all), which are the
    features in name order, as for the estimators
    (:func:`~dask_emk.engine.stored.feature_variables`; recorded as
    ``feature`` in the results); with ``feature_dim`` they must be one,
    fitted as an N-D DataArray.
    """
    node = _open_node(store)  # a missing store or an unreachable bucket: one clear line
    try:
        ds = xr.open_zarr(open_store(store), consolidated=False, chunks={})
    except Exception as exc:  # xarray and zarr raise several types for what it cannot read
        raise PipelineError(
            f"input store {store!r} is not an xarray store ({type(exc).__name__}: {exc}); "
            "write it with xarray's to_zarr, or name a 2-D array with input.array."
        ) from None
    names = [str(name) for name in feature_variables(ds)]
    weight_name = _weights_variable(cfg, names, store)
    if _is_generated_grid(node):  # its variables, in order, without the truth
        names = [str(name) for name in ds["feature"].values]
    chosen = cfg.variables or [name for name in names if name != weight_name]
    unknown = [v for v in chosen if v not in names]
    if unknown:
        raise PipelineError(
            f"input.variables {unknown} are not data variables of {store!r}, which holds "
            f"{names}; fix input.variables."
        )
    if cfg.feature_dim is not None and len(chosen) != 1:
        raise PipelineError(
            f"input.feature_dim applies to one variable (an N-D array), but {store!r} "
            f"gives {chosen}; name one with input.variables = [{chosen[0]!r}], or drop "
            "input.feature_dim to fit the variables as features."
        )
    X = checked_xarray(ds[chosen], cfg.missing_chunks)
    if cfg.feature_dim is not None:
        X = X[chosen[0]]
    data = _as_input(X, cfg, f"input {store}")
    weights = None
    if cfg.weights is not None:
        weights = (coslat_weights(ds, data.grid.dims) if weight_name is None
                   else checked_xarray(ds[weight_name], cfg.missing_chunks))  # fmt: skip
        try:
            as_sample_weight(weights, data)  # dims and sizes now; values in the fit's passes
        except ValueError as exc:
            raise PipelineError(f"input.weights = {cfg.weights!r}: {exc}") from None
    grid = data.grid
    shape = ", ".join(f"{d}: {n}" for d, n in zip(grid.dims, grid.shape, strict=True))
    features = ", ".join(map(str, data.feature_labels)) if data.feature_labels is not None else ""
    description = f"{store} ({shape}) × {data.n_features} features [{features}]"
    truth = _truth_by_feature(store_truth(store), names, data.feature_labels)
    return Source(X, truth, description, data, estimator_options(cfg), photo, weights)


def _truth_by_feature(truth: MixtureTruth | None, names: list[str], labels) -> MixtureTruth | None:
    """The generator's truth, its features in ``names``' order, in the fit's order ``labels``.

    A generated grid's variables ``x0`` … ``x10`` are features in name order
    (``x10`` before ``x2``); the truth is compared with the fit position by position.
    """
    if truth is None or labels is None or sorted(map(str, labels)) != sorted(names):
        return truth
    at = [names.index(str(label)) for label in labels]
    return MixtureTruth(truth.weights, truth.means[:, at], truth.covariances[:, at][:, :, at])


def _weights_variable(cfg: Section, names: list[str], store: str) -> str | None:
    """The variable of ``[input] weights`` (None for none, or cos(latitude))."""
    if cfg.weights in (None, COSLAT):
        return None
    if cfg.weights not in names:
        raise PipelineError(
            f"input.weights {cfg.weights!r} is not a data variable of {store!r}, which holds "
            f"{names}; name one, or use weights = {COSLAT!r} for area weights."
        )
    if cfg.variables and cfg.weights in cfg.variables:
        raise PipelineError(
            f"input.weights {cfg.weights!r} is also in input.variables; a variable is a "
            "feature or the weights: remove it from one."
        )
    return cfg.weights


#: How a latitude coordinate is told (CF ``standard_name`` and ``units``, else the name).
LATITUDE_UNITS = ("degrees_north", "degree_north", "degrees_n", "degree_n")
LATITUDE_NAMES = ("lat", "latitude")


def coslat_weights(ds: xr.Dataset, sample_dims: tuple) -> xr.DataArray:
    """Area weights cos(latitude) of the grid (in float64) on its latitude dim.

    The latitude dim is the sample dim whose coordinate says so by CF
    (``standard_name = 'latitude'`` or ``units = 'degrees_north'``), else the
    one named ``lat`` or ``latitude``.
    """
    found = [dim for dim in sample_dims if dim in ds.coords and _is_latitude(ds[dim])]
    found = found or [dim for dim in sample_dims if str(dim).lower() in LATITUDE_NAMES]
    if len(found) != 1 or found[0] not in ds.coords:
        raise PipelineError(
            f"input.weights = {COSLAT!r} needs one latitude dim with a coordinate among the "
            f"sample dims {list(sample_dims)} (told by standard_name 'latitude', units "
            f"'degrees_north' or the name lat/latitude), found {found or 'none'}; "
            "name a weights variable instead."
        )
    latitude = ds[found[0]]
    return np.cos(np.deg2rad(latitude.astype(np.float64)))


def _is_latitude(coord: xr.DataArray) -> bool:
    attrs = coord.attrs
    units = str(attrs.get("units", "")).strip().lower()
    return str(attrs.get("standard_name", "")).lower() == "latitude" or units in LATITUDE_UNITS


def _open_node(store: str):
    if not is_url(store) and not os.path.exists(normalize_location(store)):
        raise PipelineError(
            f"input store {store!r} does not exist; check input.store (or create one "
            f"with `dask-emk generate {store} --n ... --d ... --k ...`)."
        )
    try:
        return open_node(store)
    except ValueError as exc:
        raise PipelineError(f"input: {exc}") from None


def open_array(store: str, array: str | None) -> zarr.Array:
    """The input array of a zarr store (local path or URL), with errors that name the fix."""
    node = _open_node(store)
    prefix = ""
    if array is not None:
        if isinstance(node, zarr.Array):
            raise PipelineError(
                f"store {store!r} is itself an array, with no array {array!r} in it; "
                f"name the store alone (`dask-emk fit {store}`; in a pipeline: drop input.array)."
            )
        found = node.get(array)
        if found is None:
            paths = _array_paths(node)
            raise PipelineError(
                f"array {array!r} not found in store {store!r}, which holds {paths}; "
                f"{_name_one(store, paths)}"
            )
        node, prefix = found, f"{array}/"
    if isinstance(node, zarr.Array):
        return node
    paths = _array_paths(node)
    if len(paths) == 1:
        return node[paths[0]]
    where = f"{store}/{prefix}".rstrip("/")
    if not paths:
        raise PipelineError(f"store {where!r} holds no arrays; pass the store that holds the data.")
    paths = [prefix + p for p in paths]
    raise PipelineError(
        f"store {where!r} holds several arrays, {paths}; {_name_one(store, paths)} For an "
        "xarray Dataset, name its variables instead (`dask-emk fit "
        f"{store} --variables A,B`; in a pipeline: input.variables = [...])."
    )


def _array_paths(group: zarr.Group) -> list[str]:
    """Paths of all arrays in a zarr group (nested groups included)."""
    return sorted(path for path, member in group.members(max_depth=None)
                  if isinstance(member, zarr.Array))  # fmt: skip


def _name_one(store: str, paths: list[str]) -> str:
    """How to name one of ``paths``, in the CLI's and a pipeline's terms."""
    if not paths:
        return "pass the store that holds the data."
    return (
        f"name the array to fit, e.g. `dask-emk fit {store}/{paths[0]}` "
        f"(in a pipeline: input.array = {paths[0]!r})."
    )


def store_truth(store: str) -> MixtureTruth | None:
    """True parameters when the store was made by the generator, else None."""
    group = open_node(store)
    if isinstance(group, zarr.Group) and all(name in group for name in TRUTH_ARRAYS):
        return truth_of(group)
    return None


def ensure_generated(gen: Section, echo=print) -> str:
    """Write the generated store (rows, or a grid) unless an identical one exists; its path.

    A different store at the path is replaced only if ``generate`` wrote it
    (:mod:`dask_emk.pipeline.outputs`); the path is locked while it is checked and written.
    """
    path = gen.path
    with claim(path, GENERATED, where="input.generate.path") as notes:
        for note in notes:
            echo(f"input: {note}")
        if _generated_matches(path, gen):
            echo(f"input: reusing generated {path}")
            return path
        start = time.perf_counter()
        if gen.grid:
            write_grid_zarr(
                path, parse_grid(gen.grid), _generated_truth(gen),
                chunks=parse_grid(gen.grid_chunks) if gen.grid_chunks else None,
                land=gen.land, gaps=gen.gaps, dtype=gen.dtype, seed=gen.seed,
                overwrite=True,
            )  # fmt: skip
            size = f"a {gen.grid} grid"
        else:
            write_mixture_zarr(
                path, gen.n, _generated_truth(gen), chunk_rows=gen.chunk_rows,
                dtype=gen.dtype, seed=gen.seed, overwrite=True,
            )  # fmt: skip
            size = f"{gen.n:,} rows"
    echo(f"input: generated {size} to {path} in {time.perf_counter() - start:.1f} s")
    return path


def ensure_photo(photo: Section, echo=print) -> str:
    """Write the photograph store of ``[input.photo]`` unless an identical one exists; its path."""
    path = photo.path
    settings = {"image": photo.image, "clouds": photo.clouds, "seed": photo.seed}
    with claim(path, GENERATED, where="input.photo.path") as notes:
        for note in notes:
            echo(f"input: {note}")
        if written_by_dask_emk(path, GENERATED) and _stored_attrs(path, settings) == settings:
            echo(f"input: reusing {path}")
            return path
        write_photo_zarr(path, **settings, overwrite=True)
    echo(f"input: wrote {photo.image} with {photo.clouds:.0%} clouds to {path}")
    return path


def _stored_attrs(path: str, wanted: dict) -> dict:
    """The root attributes of the store at ``path`` named in ``wanted``."""
    attrs = dict(open_node(path).attrs)
    return {key: attrs.get(key) for key in wanted}


def _generated_truth(gen: Section) -> MixtureTruth:
    return random_mixture(gen.d, gen.k, separation=gen.separation, seed=gen.seed)


def _generated_matches(path: str, gen: Section) -> bool:
    """True if ``path`` is a store ``generate`` wrote with exactly these settings."""
    if not written_by_dask_emk(path, GENERATED):
        return False
    try:
        group = open_node(path)
        data = group["x0"] if gen.grid else group["X"]
        attrs, stored = dict(group.attrs), truth_of(group)
    except Exception:  # arrays missing or unreadable: regenerate
        return False
    truth = _generated_truth(gen)
    if gen.grid:
        shape = parse_grid(gen.grid)
        chunks = parse_grid(gen.grid_chunks) if gen.grid_chunks else (1, *shape[1:])
        layout = (
            data.shape == shape
            and data.chunks == chunks
            and attrs.get("land_fraction") == gen.land
            and attrs.get("gap_fraction") == gen.gaps
        )
    else:
        layout = attrs.get("n_samples") == gen.n and data.chunks[0] == gen.chunk_rows
    return (
        layout
        and attrs.get("seed") == gen.seed
        and str(data.dtype) == gen.dtype
        # The truth follows from d, k, separation and seed: compare it, not settings.
        and all(
            np.array_equal(getattr(stored, name), getattr(truth, name))
            for name in ("means", "covariances")
        )
        and (gen.grid or np.array_equal(stored.weights, truth.weights))
    )


def read_csv(path: str, columns: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """A small numeric CSV file with a header row, in memory: (values, column names)."""
    if not os.path.exists(path):
        raise PipelineError(f"input csv {path!r} does not exist; check input.csv.")
    if os.path.getsize(path) == 0:
        raise PipelineError(f"input csv {path} is empty; write a header row and the data.")
    try:
        table = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8(f"input csv {path}", exc) from None
    except ValueError as exc:  # numpy: rows with a different number of columns
        raise PipelineError(
            f"input csv {path} is not a table: {' '.join(str(exc).split())}; fix the file."
        ) from None
    names = [n.strip('"') for n in table.dtype.names]
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise PipelineError(
                f"columns {missing} not in {path} (it has {names}); fix input.columns."
            )
    chosen = columns or names
    values = np.column_stack([table[table.dtype.names[names.index(c)]] for c in chosen])
    if not np.isfinite(values).all():
        raise PipelineError(f"{path} has empty or non-numeric values; clean the file.")
    return values, chosen
