"""Input checks and conversion: numpy, dask, xarray and zarr to one form.

Every estimator turns its input into an :class:`InputData`: a 2-D float
array (numpy or dask, chunked along rows only) plus what is needed to give
results back in the caller's kind (numpy in → numpy out, dask or xarray in →
lazy out of the same kind). Checks here are cheap metadata checks; NaN/inf
in lazy data is reported by the E-step of the first pass (no extra pass).

xarray input is data on a grid of *sample dimensions* (:class:`Grid`): a
Dataset's data variables, or an N-D DataArray's ``feature_dim``, are the
features; of the other dimensions, time and horizontal ones are sample
dimensions and vertical ones give features (:func:`dim_role`, from CF
metadata or the names), unless ``sample_dims`` says. Its rows are the grid's
blocks one after the other (:func:`dask.array.reshape_blockwise`), so
stacking moves no data between chunks; no statistic depends on row order,
and per-row results go back onto the grid the same way.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr
import zarr
from dask.array.core import normalize_chunks

from dask_emk.core.blocks import LABEL_FILL
from dask_emk.engine.options import NAN_POLICIES
from dask_emk.engine.reduction import compute_one, nonfinite_error, numpy_block_rows
from dask_emk.engine.storage import (
    check_missing_chunks,
    check_zarr_chunks,
    checked_reads,
    checked_xarray,
    chunked_if_stored,
    open_zarr_array,
    read_zarr,
    stacked_rows,
    stored_values,
)


def check_input_options(nan_policy, feature_dim, sample_dims) -> tuple[str, ...] | None:
    """Validate the estimators' ``nan_policy``, ``feature_dim`` and ``sample_dims``.

    Returns
    -------
    sample_dims as a tuple of names, or None.
    """
    if not isinstance(nan_policy, str) or nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}.")
    if feature_dim is not None and not isinstance(feature_dim, str):
        raise ValueError(f"feature_dim must be None or a dimension name, got {feature_dim!r}.")
    if sample_dims is None:
        return None
    dims = (sample_dims,) if isinstance(sample_dims, str) else sample_dims
    try:
        dims = tuple(dims)
    except TypeError:
        dims = ()
    if not dims or not all(isinstance(d, str) for d in dims) or len(set(dims)) < len(dims):
        raise ValueError(
            "sample_dims must be None, a dimension name or a list of distinct dimension "
            f"names, got {sample_dims!r}."
        )
    return dims


@dataclass(frozen=True)
class Grid:
    """The sample dimensions of xarray input, and how rows map onto them.

    Row i of the 2-D array is a point of the grid: the grid's blocks (its
    ``chunks``) one after the other in C order of the blocks, each block's
    points in C order (the layout of :func:`dask.array.reshape_blockwise`).

    Attributes
    ----------
    dims : tuple of str
        Sample dimensions, in the input's order.
    chunks : tuple of tuple of int
        Chunks along each sample dimension (their sums are the grid's shape).
    coords : dict
        Coordinates of the input on sample dimensions only, for the outputs.
    """

    dims: tuple
    chunks: tuple
    coords: dict

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(sum(c)) for c in self.chunks)

    def to_rows(self, array: da.Array) -> da.Array:
        """(*grid, *rest) → (n_points, *rest), block by block (no data moves between chunks)."""
        if len(self.dims) == 1:
            return array
        return da.reshape_blockwise(array, (math.prod(self.shape), *array.shape[len(self.dims) :]))

    def from_rows(self, values: da.Array, extra_dim: str | None, attrs: dict) -> xr.DataArray:
        """Per-row values (n,) or (n, m) (row chunks as made by :meth:`to_rows`) on the grid."""
        shape, chunks, dims = self.shape, self.chunks, self.dims
        if values.ndim == 2:
            shape, dims = shape + (values.shape[1],), dims + (extra_dim,)
            chunks = chunks + ((values.shape[1],),)
        if len(self.dims) > 1:
            values = da.reshape_blockwise(values, shape, chunks)
        return xr.DataArray(values, dims=dims, coords=self.coords, attrs=attrs)

    def weights(self, weight: xr.DataArray) -> da.Array:
        """Sample weights on (some of) the sample dimensions, as rows (broadcast over the rest).

        Matched to X by label, as xarray aligns: along a dim where both have
        an index the weights are put in X's order (a ``lat`` that runs the
        other way is reordered), and labels X lacks are refused; a dim
        without labels on either side is matched by position.
        """
        sizes = dict(zip(self.dims, self.shape, strict=True))
        other = [str(d) for d in weight.dims if d not in sizes]
        wrong = {str(d): n for d, n in weight.sizes.items() if d in sizes and n != sizes[d]}
        if other or wrong:
            raise ValueError(
                f"sample_weight has dims {dict(weight.sizes)}, but X's sample dims are "
                f"{sizes}; give weights on (some of) these dims with these sizes (they are "
                "broadcast over the others)."
            )
        weight = self._aligned(weight)
        missing = {d: n for d, n in sizes.items() if d not in weight.dims}
        weight = chunked_if_stored(weight).expand_dims(missing).transpose(*self.dims)
        values = weight.data
        if isinstance(values, da.Array):
            values = values.rechunk(self.chunks)
        else:
            values = da.from_array(np.asarray(values), chunks=self.chunks)
        return self.to_rows(values)

    def _aligned(self, weight: xr.DataArray) -> xr.DataArray:
        """``weight`` in X's label order along every dim both index; other labels refused."""
        for dim in map(str, weight.dims):
            if dim not in weight.indexes or dim not in self.coords:
                continue
            ours, theirs = pd.Index(self.coords[dim].values), weight.indexes[dim]
            if ours.equals(theirs):
                continue
            order = theirs.get_indexer(ours) if theirs.is_unique else np.array([-1])
            if (order < 0).any():
                foreign = theirs[~theirs.isin(ours)].tolist()[:5]
                raise ValueError(
                    f"sample_weight's {dim!r} labels are not X's: {foreign or 'repeated'} "
                    f"are not labels of X's {dim!r} ({ours[0]} … {ours[-1]}); weights are "
                    "matched to X by label: compute them from X's coordinate (e.g. "
                    f"np.cos(np.deg2rad(ds.lat))), or, if they are in X's order, "
                    f"weight.assign_coords({dim}=ds.{dim})."
                )
            weight = weight.isel({dim: order})
        return weight


@dataclass
class InputData:
    """A validated 2-D input and how to return per-sample results.

    Attributes
    ----------
    array : ndarray or dask.array.Array of shape (n_samples, n_features)
        float32 or float64; a dask array is chunked along rows only.
    kind : {'numpy', 'dask', 'xarray'}
        'numpy' also for pandas input.
    feature_labels : ndarray or None
        Labels of the features (xarray coordinate, names made from a Dataset's
        variables, DataFrame columns), unique; carried to the fitted
        parameters and matched at predict.
    grid : Grid or None
        For xarray input: where the rows sit.
    nan_policy : str
        One of :data:`NAN_POLICIES`.
    """

    array: np.ndarray | da.Array
    kind: str
    feature_labels: np.ndarray | None = None
    grid: Grid | None = None
    nan_policy: str = "raise"

    @property
    def n_samples(self) -> int:
        return int(self.array.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.array.shape[1])

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.array, da.Array)

    @property
    def omit_nan(self) -> bool:
        """Rows holding NaN take no part in any statistic (``nan_policy='omit'``)."""
        return self.nan_policy == "omit"

    @property
    def marginal(self) -> bool:
        """NaN entries are missing features, marginalised (``nan_policy='marginalize'``)."""
        return self.nan_policy == "marginalize"

    def describe(self) -> str:
        """The layout in a line: samples × features, and from which dims and variables."""
        text = f"{self.n_samples} samples × {self.n_features} features"
        if self.grid is not None:
            sizes = zip(self.grid.dims, self.grid.shape, strict=True)
            shape = " × ".join(f"{d} {n}" for d, n in sizes)
            text += f"; samples from dims ({shape})"
        if self.feature_labels is not None:
            names = list(map(str, self.feature_labels[:12]))
            text += f"; features {names}{' …' if self.n_features > 12 else ''}"
        return text

    def wrap_rows(self, values, extra_dim: str | None = None):
        """Give per-sample results back in the input's kind.

        Parameters
        ----------
        values : ndarray or dask array of shape (n,) or (n, m)
        extra_dim : str, optional
            Name of the second dimension for xarray output.

        Returns
        -------
        ``values`` for numpy and dask input; for xarray input a DataArray on
        the input's sample dims and coordinates (plus ``extra_dim``). Rows
        left out by ``nan_policy='omit'`` hold NaN, or :data:`LABEL_FILL` in
        integer outputs, which xarray output records as ``_FillValue`` (so
        the labels read back from zarr or netCDF hold NaN there).
        """
        if self.grid is None:
            return values
        integer = np.dtype(values.dtype).kind in "iu"
        attrs = {"_FillValue": LABEL_FILL} if integer and self.nan_policy != "raise" else {}
        return self.grid.from_rows(values, extra_dim, attrs)


def as_input(
    X,
    *,
    name: str = "X",
    nan_policy: str = "raise",
    feature_dim: str | None = None,
    sample_dims=None,
    missing_chunks: str = "raise",
) -> InputData:
    """Validate X and convert it to :class:`InputData`.

    Accepts numpy arrays (and array-likes), pandas DataFrames, dask arrays,
    xarray Datasets and DataArrays, zarr arrays and zarr store paths or
    ``file://`` URLs (and :class:`InputData`, returned as it is). Reads of
    zarr-backed input raise when chunk files are missing
    (:mod:`dask_emk.engine.storage` says how, for each kind of input).

    xarray input: a Dataset's data variables are the features, in the
    Dataset's order. Of the dims that all of them have, one alone is the
    sample dim; of several, time and horizontal dims (T, X, Y) are sample
    dims and vertical ones (Z) are not, told by :func:`dim_role` from CF
    metadata (``axis``, ``positive``, ``standard_name``, ``units``) or the
    dim's name; a shared dim of unknown role is refused, naming
    ``sample_dims=``. A variable with dims beyond the sample dims gives one
    feature per point of those (named like ``z[level=850]``): ERA-Interim's
    ``z``, ``u``, ``v`` on (month, level, latitude, longitude) are 3 × n_level
    features on (month, latitude, longitude). An N-D DataArray has its
    features along ``feature_dim`` (default: a dim named ``feature``, or the
    second of two dims), its other dims sorted by the same rules (a vertical
    dim gives one feature per feature label and level, ``z[level=850]``).
    ``sample_dims`` names the sample dims instead; without it and
    ``feature_dim``, the sample dims recorded by a transform's xarray output
    (:data:`LAYOUT_ATTR`) are used. A dim of length 0 is refused.

    Parameters
    ----------
    nan_policy : {'raise', 'omit', 'marginalize'}
        'raise': NaN is an error; 'omit': rows holding NaN take no part in
        any statistic (checked in the passes, lazily); 'marginalize': NaN
        entries are missing features, marginalised by the kernels
        (:mod:`dask_emk.core.marginal`); ±inf is always an error.
    feature_dim : str, optional
    sample_dims : str or sequence of str, optional
    missing_chunks : {'raise', 'fill'}
        A missing chunk file of zarr-backed X: an error, or read as the fill
        value (:func:`dask_emk.engine.storage.checked_xarray`); reads X already
        wraps keep their own choice.

    Raises
    ------
    ValueError
        Not 2-D (numpy, dask, zarr), no rows or no features, non-numeric or
        complex dtype, NaN/inf or missing values in in-memory input (inf
        only, with ``nan_policy='omit'``), xarray dims that do not say which
        are the samples, duplicate feature labels.
    """
    if isinstance(X, InputData):
        return X
    if feature_dim is None and sample_dims is None:
        sample_dims = recorded_sample_dims(X)
    sample_dims = check_input_options(nan_policy, feature_dim, sample_dims)
    X = _with_missing_chunks(X, check_missing_chunks(missing_chunks), name)
    data = _convert(X, name, nan_policy != "raise", feature_dim, sample_dims)
    data.nan_policy = nan_policy
    return data


#: The attribute in which xarray output of dask_emk's transforms records the
#: sample dims it was read with, so the next step of a Pipeline reads it the same way.
LAYOUT_ATTR = "dask_emk_sample_dims"


def recorded_sample_dims(X) -> list | None:
    """The sample dims recorded in xarray ``X``'s attributes (:data:`LAYOUT_ATTR`), or None."""
    if not isinstance(X, (xr.Dataset, xr.DataArray)):
        return None
    dims = X.attrs.get(LAYOUT_ATTR)
    if isinstance(dims, str):  # one dim, as netCDF reads a list of one back
        dims = [dims]
    if not isinstance(dims, (list, tuple, np.ndarray)):
        return None
    dims = [str(d) for d in dims]
    # Data cut since (a dim dropped) no longer has the recorded layout: infer it again.
    return dims if set(dims) <= set(map(str, X.dims)) else None


def _with_missing_chunks(X, missing_chunks: str, name: str):
    """X whose zarr reads fill missing chunk files (``missing_chunks='fill'``), else X;
    what is not zarr-backed is returned as is."""
    if missing_chunks == "raise":
        return X  # the reads below check with 'raise' (read_zarr, _as_float_dask)
    if isinstance(X, (str, os.PathLike)):
        X = open_zarr_array(X)
    if isinstance(X, zarr.Array):
        _check_shape_dtype(X.shape, np.dtype(X.dtype), name)
        return read_zarr(X, missing_chunks)
    if isinstance(X, (xr.Dataset, xr.DataArray)):
        return checked_xarray(X, missing_chunks)
    if isinstance(X, da.Array):
        return checked_reads(X, missing_chunks)[0]
    return X


def _convert(X, name: str, allow_nan: bool, feature_dim, sample_dims) -> InputData:
    if isinstance(X, (str, os.PathLike)):
        X = open_zarr_array(X)
    if isinstance(X, zarr.Array):
        _check_shape_dtype(X.shape, np.dtype(X.dtype), name)
        X = read_zarr(X)
    if isinstance(X, xr.Dataset):
        return _from_dataset(X, name, feature_dim, sample_dims)
    if isinstance(X, xr.DataArray):
        return _from_dataarray(chunked_if_stored(X), name, feature_dim, sample_dims)
    if isinstance(X, da.Array):
        return InputData(_as_float_dask(X, name), "dask")
    labels = None
    if isinstance(X, pd.DataFrame):
        labels = _unique_labels(X.columns.to_numpy(), name, "rename the columns")
        X = _from_pandas(X, name)
    return InputData(_as_float_numpy(X, name, allow_nan), "numpy", feature_labels=labels)


# ----------------------------------------------------------------- xarray
def _from_dataarray(X: xr.DataArray, name: str, feature_dim, sample_dims) -> InputData:
    samples, feature = _dataarray_dims(X, name, feature_dim, sample_dims)
    _check_not_empty(dict(X.sizes), samples, name)
    features = [str(d) for d in X.dims if d not in samples]  # the feature dim, and levels
    if len(features) > 1:
        labels = np.asarray(_feature_point_names(X, feature, features), dtype=object)
    else:
        labels = X[feature].values if feature in X.coords else None
    labels = _unique_labels(labels, name, f"X.assign_coords({feature}=...)")
    stored = _stored_rows([X], samples, feature)
    if stored is not None:
        return _on_grid(X, stored, samples, X.data.chunks[: len(samples)], labels, name)
    values = X.transpose(*samples, *features).data
    if feature is None:  # every dim a sample dim: one feature
        values = values[..., None]
    return _gridded(X, [values], samples, labels, name)


def _feature_point_names(X: xr.DataArray, feature: str, dims: list) -> list[str]:
    """Names of the features of a DataArray along ``feature`` and vertical ``dims``.

    As a Dataset's variables with levels: ``z[level=850]`` for the label
    ``z`` of the feature dim (its index where it has no labels); C order of
    ``dims`` (X's order), as the values are laid out.
    """
    values = [X[d].values if d in X.coords else np.arange(X.sizes[d]) for d in dims]
    at = dims.index(feature)
    return [
        f"{point[at]}["
        + ", ".join(f"{d}={v}" for i, (d, v) in enumerate(zip(dims, point, strict=True)) if i != at)
        + "]"
        for point in itertools.product(*values)
    ]


def _dataarray_dims(X: xr.DataArray, name: str, feature_dim, sample_dims):
    """(sample dims in X's order, feature dim or None) of a DataArray."""
    dims = tuple(str(d) for d in X.dims)
    twice = [d for d in dims if dims.count(d) > 1]
    if twice:
        raise ValueError(
            f"{name} has the dimension {twice[0]!r} twice; name its dims (sample, feature)."
        )
    for given in (feature_dim, *(sample_dims or ())):
        if given is not None and given not in dims:
            raise ValueError(
                f"{given!r} (from feature_dim or sample_dims) is not a dimension of {name}, "
                f"whose dims are {dims}; name one of those."
            )
    if sample_dims is not None:
        rest = [d for d in dims if d not in sample_dims]
        # Vertical dims may join the feature dim (a Dataset's levels, laid out as a DataArray).
        main = [d for d in rest if d == feature_dim or dim_role(d, X.coords.get(d)) != "vertical"]
        main = main or rest[:1]
        if len(main) > 1 or (feature_dim is not None and main != [feature_dim]):
            raise ValueError(
                f"sample_dims={list(sample_dims)} leaves {rest} of {name}'s dims {dims} for "
                "the features; the features lie along one dimension: name it with "
                "feature_dim= and every other dimension in sample_dims."
            )
        return tuple(d for d in dims if d in sample_dims), (main[0] if main else None)
    if X.ndim < 2:
        _check_shape_dtype(X.shape, X.dtype, name)  # raises: not 2-D
    if feature_dim is None and "feature" in dims:
        feature_dim = "feature"
    if feature_dim is None and X.ndim > 2:
        raise ValueError(
            f"{name} is a {X.ndim}-D DataArray with dims {dims} and none is named "
            f"'feature'; say which dimension holds the features, e.g. "
            f"feature_dim={dims[-1]!r} (every other dimension then holds samples), or "
            "name the sample dimensions with sample_dims=[...]."
        )
    feature_dim = dims[1] if feature_dim is None else feature_dim  # 2-D: (sample, feature)
    # Other dims: samples, but vertical ones give features (as a Dataset's).
    samples = tuple(d for d in dims if d != feature_dim)
    if len(samples) > 1:
        samples = _sample_dims_of(samples, X.coords, name)
    return samples, feature_dim


def _from_dataset(ds: xr.Dataset, name: str, feature_dim, sample_dims) -> InputData:
    if feature_dim is not None:
        raise ValueError(
            f"feature_dim={feature_dim!r} applies to a DataArray, but {name} is an "
            "xarray.Dataset, whose data variables are the features; leave feature_dim unset."
        )
    variables = [chunked_if_stored(ds[v]) for v in ds.data_vars]
    if not variables:
        raise ValueError(f"{name} is an xarray.Dataset without data variables; pass some.")
    for var in variables:
        _check_numeric(var.dtype, f"{name}[{var.name!r}]")
    samples = _dataset_sample_dims(variables, name, sample_dims)
    _check_not_empty({d: n for var in variables for d, n in var.sizes.items()}, samples, name)
    parts, labels = [], []
    for var in variables:
        levels = [d for d in var.dims if d not in samples]
        parts.append(var.transpose(*samples, *levels).data)
        labels.extend(_level_names(var, levels))
    labels = _unique_labels(np.asarray(labels, dtype=object), name, "rename the variables")
    stored = _stored_rows(variables, samples)
    if stored is not None:
        return _on_grid(ds, stored, samples, variables[0].data.chunks, labels, name)
    return _gridded(ds, parts, samples, labels, name)


def _stored_rows(variables: list, samples: tuple, feature: str | None = None) -> da.Array | None:
    """The rows of variables read as stored from one zarr grid, one task a block; else None.

    For float variables on the sample dims (then ``feature``, in one chunk,
    if given) in this order, in the same chunks and dtype, each a plain
    read of a zarr array (:func:`stored_values`: no decoding that changes
    values, no computation on top), the rows are read straight from zarr
    (:class:`StackedZarrRows`): a block's variables go into one (points,
    features) buffer in one copy, in one task. Anything else is stacked from
    xarray's arrays (:func:`_gridded`).
    """
    first = variables[0]
    if first.chunks is None:  # in memory
        return None
    dims = samples + ((feature,) if feature else ())
    same = all(
        var.dims == dims and var.chunks == first.chunks and var.dtype == first.dtype
        for var in variables
    )
    if not same or first.dtype.kind != "f" or not first.dtype.isnative:
        return None
    if feature and len(first.chunks[-1]) > 1:
        return None
    found = [stored_values(var.data) for var in variables]
    if any(f is None for f in found) or len({policy for _, policy in found}) > 1:
        return None
    chunks = first.data.chunks[: len(samples)]
    return stacked_rows([array for array, _ in found], chunks, found[0][1])


def _dataset_sample_dims(variables: list, name: str, sample_dims) -> tuple[str, ...]:
    """The sample dims (in the first variable's order): given, or those all variables have."""
    first = [str(d) for d in variables[0].dims]
    if sample_dims is None:
        shared = tuple(d for d in first if all(d in var.dims for var in variables))
        if not shared:
            dims = {str(var.name): tuple(map(str, var.dims)) for var in variables}
            raise ValueError(
                f"The data variables of {name} share no dimension ({dims}); name the "
                "dimensions that hold samples with sample_dims=[...]."
            )
        return _sample_dims_of(shared, _dim_coords(variables), name)
    lacking = {
        str(var.name): [d for d in sample_dims if d not in var.dims]
        for var in variables
        if not set(sample_dims) <= set(var.dims)
    }
    if lacking:
        raise ValueError(
            f"Every data variable of {name} needs the sample dims {list(sample_dims)}; "
            f"{lacking} lack them: drop those variables or broadcast them "
            "(e.g. ds[name].broadcast_like(ds[other]))."
        )
    return tuple(d for d in first if d in sample_dims)


# ------------------------------------------------- which dims hold samples
#: CF ``axis`` values, ``standard_name`` values and units of sample dims
#: (time and horizontal position), and (lower-case) dim names taken for them.
SAMPLE_AXES = ("T", "X", "Y")
SAMPLE_STANDARD_NAMES = (
    "time", "latitude", "longitude", "grid_latitude", "grid_longitude",
    "projection_x_coordinate", "projection_y_coordinate",
)  # fmt: skip
SAMPLE_UNITS = ("degrees_north", "degree_north", "degrees_n", "degrees_east", "degree_east",
                "degrees_e")  # fmt: skip
SAMPLE_DIM_NAMES = (
    "time", "t", "date", "year", "month", "day", "hour", "season", "valid_time",
    "lat", "latitude", "lon", "longitude", "x", "y", "rlat", "rlon", "nlat", "nlon",
    "sample", "samples", "station", "cell", "ncells", "node", "point", "pixel",
)  # fmt: skip
#: ``standard_name`` prefixes, pressure units and dim names of vertical dims (CF §4.3).
VERTICAL_STANDARD_NAMES = (
    "air_pressure", "depth", "height", "altitude", "model_level_number", "atmosphere_",
    "ocean_sigma", "ocean_s_coordinate", "ocean_double_sigma", "sea_water_pressure",
)  # fmt: skip
VERTICAL_UNITS = ("pa", "hpa", "kpa", "mbar", "millibar", "bar", "dbar", "decibar", "atm")
VERTICAL_DIM_NAMES = (
    "level", "levels", "lev", "plev", "pressure", "pressure_level", "isobaricinhpa",
    "model_level", "depth", "height", "altitude", "z", "sigma", "hybrid",
)  # fmt: skip


def dim_role(dim: str, coord: xr.DataArray | None) -> str | None:
    """'sample' (time, latitude, longitude, x, y), 'vertical' (a level) or None (unknown).

    From the dim's coordinate, CF first: ``axis`` T/X/Y or Z, a ``positive``
    attribute (only vertical coordinates have one), ``standard_name``, a
    datetime dtype, ``units`` (``… since …``, degrees north/east, pressure);
    then the dim's name (:data:`SAMPLE_DIM_NAMES`, :data:`VERTICAL_DIM_NAMES`).
    """
    attrs = {} if coord is None else coord.attrs
    axis = str(attrs.get("axis", "")).upper()
    standard = str(attrs.get("standard_name", "")).lower()
    units = str(attrs.get("units", "")).lower().strip()
    if axis in SAMPLE_AXES or standard in SAMPLE_STANDARD_NAMES:
        return "sample"
    if axis == "Z" or "positive" in attrs or standard.startswith(VERTICAL_STANDARD_NAMES):
        return "vertical"
    if (coord is not None and coord.dtype.kind == "M") or " since " in units:
        return "sample"
    if units in SAMPLE_UNITS:
        return "sample"
    if units in VERTICAL_UNITS:
        return "vertical"
    name = dim.lower()
    if name in SAMPLE_DIM_NAMES:
        return "sample"
    return "vertical" if name in VERTICAL_DIM_NAMES else None


def _sample_dims_of(dims: tuple, coords, name: str) -> tuple[str, ...]:
    """Which of ``dims`` (shared by all features) hold samples, by :func:`dim_role`.

    One dim holds the samples. Of several, the time and horizontal ones do
    and vertical ones give features (a variable on (time, level, lat, lon)
    is one feature per level); a dim of unknown role, or no sample dim at
    all, is ambiguous and refused, naming ``sample_dims=``.
    """
    if len(dims) == 1:
        return dims
    roles = {d: dim_role(d, coords.get(d)) for d in dims}
    samples = tuple(d for d in dims if roles[d] == "sample")
    unknown = [d for d in dims if roles[d] is None]
    if unknown or not samples:
        guess = [d for d in dims if roles[d] != "vertical"] or list(dims)
        raise ValueError(
            f"Which dims of {name} hold samples is ambiguous: its features share the dims "
            f"{dims}, and {unknown or list(dims)} are not known as time, latitude, longitude, "
            "x or y (by a CF axis, standard_name or units attribute or by name), nor as a "
            f"vertical level (whose points are features); name the sample dims, e.g. "
            f"sample_dims={guess} (every other dim then gives one feature per point)."
        )
    return samples


def _dim_coords(variables: list) -> dict:
    """The coordinate of each dim of ``variables`` that has one."""
    return {d: var.coords[d] for var in variables for d in var.dims if d in var.coords}


def _check_not_empty(sizes: dict, samples: tuple, name: str) -> None:
    """One clear error for a dim of length 0 (numpy's and dask's reshape errors otherwise)."""
    empty = [d for d, n in sizes.items() if n == 0]
    if empty:
        what = "sample" if empty[0] in samples else "feature"
        raise ValueError(
            f"{name} has no {what}s: its {what} dim {empty[0]!r} has length 0 (sizes "
            f"{dict(sizes)}); pass data with at least one point along every dim."
        )


def _level_names(var: xr.DataArray, levels: list) -> list[str]:
    """Feature names of a variable: its name, one per point of its non-sample dims."""
    if not levels:
        return [str(var.name)]
    values = [var[d].values if d in var.coords else np.arange(var.sizes[d]) for d in levels]
    return [
        f"{var.name}[" + ", ".join(f"{d}={v}" for d, v in zip(levels, point, strict=True)) + "]"
        for point in itertools.product(*values)
    ]


def _gridded(source, parts: list, samples: tuple, labels, name: str) -> InputData:
    """Rows of xarray values: ``parts`` are (*samples, *levels) arrays, one per variable.

    Each part becomes (*samples, f) with its levels whole in one chunk, in
    the sample chunks of the first dask part (or of about
    :func:`numpy_block_rows` rows for in-memory values); the parts are
    joined along features and the grid's blocks laid out as rows.
    """
    ns = len(samples)
    for part in parts:
        if isinstance(part, da.Array) and any(math.isnan(c) for c in sum(part.chunks, ())):
            raise ValueError(f"{name} has unknown chunk sizes; call X.compute_chunk_sizes() first.")
    shape = tuple(int(n) for n in np.shape(parts[0])[:ns])
    lazy = [part for part in parts if isinstance(part, da.Array)]
    if lazy:
        chunks = lazy[0].chunks[:ns]
    else:
        n_features = sum(math.prod(np.shape(part)[ns:]) for part in parts)
        rows = numpy_block_rows(n_features)
        auto = (rows,) if ns == 1 else ("auto",) * ns
        chunks = normalize_chunks(auto, shape, limit=8 * rows, dtype=np.float64)
    columns = [_feature_columns(part, chunks, ns, name) for part in parts]
    values = columns[0] if len(columns) == 1 else _join_features(columns, ns)
    return _on_grid(source, values, samples, chunks, labels, name)


def _on_grid(
    source, values: da.Array, samples: tuple, chunks: tuple, labels, name: str
) -> InputData:
    """InputData of xarray input: ``values`` (*samples, f) on the grid, or its rows (n, f)."""
    coords = {k: c for k, c in source.coords.items() if set(c.dims) <= set(samples)}
    grid = Grid(samples, chunks, coords)
    rows = grid.to_rows(values) if values.ndim > 2 else values
    return InputData(_as_float_dask(rows, name), "xarray", labels, grid)


def _join_features(columns: list, ns: int) -> da.Array:
    """(*samples, f_i) arrays, features in one chunk each → (*samples, Σ f_i), one task a block.

    Features are few, so one chunk of them is cheap. A concatenate and a
    rechunk did the same in two tasks a block, the second one copying
    through dask's concatenate3 (10% of a gridded k-means pass).
    """
    width = sum(column.shape[ns] for column in columns)
    dtype = np.result_type(*columns)
    return da.map_blocks(
        _concatenate_last, *columns, chunks=columns[0].chunks[:ns] + ((width,),), dtype=dtype,
        meta=np.empty((0,) * (ns + 1), dtype=dtype),
    )  # fmt: skip


def _concatenate_last(*blocks: np.ndarray) -> np.ndarray:
    return np.concatenate(blocks, axis=-1)


def _feature_columns(part, chunks: tuple, ns: int, name: str) -> da.Array:
    """(*samples, *levels) values → dask (*samples, f) in ``chunks``, levels in one chunk."""
    if not isinstance(part, da.Array):
        part = _asarray(part, name)
        return da.from_array(part.reshape(part.shape[:ns] + (-1,)), chunks=chunks + (-1,))
    if part.ndim == ns:
        part = part[..., None]
    part = part.rechunk(chunks + (-1,) * (part.ndim - ns))
    if part.ndim == ns + 1:
        return part
    return da.reshape_blockwise(part, part.shape[:ns] + (math.prod(part.shape[ns:]),))


def _unique_labels(labels: np.ndarray | None, name: str, fix: str) -> np.ndarray | None:
    """``labels`` if they name every feature once; predictions match features by them."""
    index = pd.Index([] if labels is None else labels)
    if not index.is_unique:
        repeated = index[index.duplicated()].unique().tolist()
        raise ValueError(
            f"{name} has duplicate feature labels {repeated}; give every feature its own "
            f"label ({fix})."
        )
    return labels


def _from_pandas(X: pd.DataFrame, name: str) -> np.ndarray:
    """A DataFrame's values as floats; missing values (None, NaN, pd.NA) become NaN.

    float32 columns (numpy or nullable ``Float32``) stay float32, as float32 arrays do.
    """
    # Object columns may hold numbers (converted below); dates and the like do not.
    bad = {str(c): str(t) for c, t in X.dtypes.items() if getattr(t, "kind", "O") not in "biufO"}
    if bad:
        raise ValueError(
            f"{name} has columns that are not numbers: {bad}; convert or drop them "
            "(e.g. X.select_dtypes('number'))."
        )
    single = all(np.dtype(getattr(t, "numpy_dtype", t)) == np.float32 for t in X.dtypes)
    try:
        return X.to_numpy(dtype=np.float32 if single else np.float64, na_value=np.nan)
    except (TypeError, ValueError):  # strings or other objects in an object column
        raise ValueError(
            f"{name} has non-numeric values in its object columns; pass numbers."
        ) from None


def _check_shape_dtype(shape, dtype: np.dtype, name: str) -> None:
    if len(shape) != 2:
        hint = (
            " Reshape your data with X.reshape(-1, 1) if it has a single feature."
            if len(shape) == 1
            else ""
        )
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got {len(shape)}-D "
            f"with shape {tuple(shape)}.{hint}"
        )
    for axis, what in ((0, "sample(s)"), (1, "feature(s)")):
        if shape[axis] == 0:
            # Wording as scikit-learn's check_array, which its estimator checks expect.
            raise ValueError(
                f"{name} is empty: found array with 0 {what} (shape={tuple(shape)}) "
                "while a minimum of 1 is required."
            )
    _check_numeric(dtype, name)


def _check_numeric(dtype: np.dtype, name: str) -> None:
    if dtype.kind == "c":
        raise ValueError(
            f"Complex data not supported: {name} has dtype {dtype}; pass real-valued data."
        )
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{name} has non-numeric dtype {dtype}; pass numbers (convert with .astype(float))."
        )


def float_dtype(dtype: np.dtype) -> np.dtype:
    """float32 (of either byte order) stays float32, everything else computes as
    float64; both in the machine's byte order."""
    single = dtype.kind == "f" and dtype.itemsize == 4
    return np.dtype(np.float32) if single else np.dtype(np.float64)


def _as_float_dask(X: da.Array, name: str) -> da.Array:
    _check_shape_dtype(X.shape, np.dtype(X.dtype), name)
    # Reads of zarr arrays in the graph check their chunk files as they go;
    # arrays whose reads cannot be swapped are listed here, once.
    X, unchecked = checked_reads(X)
    for array in unchecked:
        check_zarr_chunks(array)
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError(f"{name} has unknown chunk sizes; call X.compute_chunk_sizes() first.")
    X = X.astype(float_dtype(X.dtype))
    if len(X.chunks[1]) > 1:
        # The kernels need whole rows; features are few, so one chunk of them is cheap.
        X = X.rechunk({1: -1})
    return X


def _as_float_numpy(X, name: str, allow_nan: bool = False) -> np.ndarray:
    if sp.issparse(X):
        raise TypeError(
            f"Sparse input is not supported: {name} is {type(X).__name__}; densify it "
            "(X.toarray()) or pass a dask array."
        )
    X = _asarray(X, name)
    _check_shape_dtype(X.shape, X.dtype, name)
    X = X.astype(float_dtype(X.dtype), copy=False)
    if np.isfinite(X).all():
        return X
    if not allow_nan or np.isinf(X).any():
        raise nonfinite_error(name, "", allow_nan, "X[np.isfinite(X).all(axis=1)]")
    return X


def _asarray(values, name: str) -> np.ndarray:
    """``np.asarray`` with errors that name ``name``; object arrays become floats.

    Object arrays of numbers are numbers (as in scikit-learn); missing values
    in them (None, pd.NA) become NaN; anything else is not a number (a
    ValueError, or for objects such as dicts a TypeError as in scikit-learn).
    """
    try:
        values = np.asarray(values)
    except ValueError:  # numpy: "inhomogeneous shape"
        raise ValueError(
            f"{name} has rows of different lengths; pass a 2-D array (n_samples, n_features)."
        ) from None
    if values.dtype != object:
        return values
    try:
        return np.where(pd.isna(values), np.nan, values).astype(np.float64)
    except (TypeError, ValueError) as exc:
        # The type is numpy's (scikit-learn's estimator checks expect TypeError
        # for objects such as dicts), the message ours.
        raise type(exc)(
            f"{name} has non-numeric values in an object array ({exc}); pass numbers."
        ) from None


def as_sample_weight(sample_weight, data: InputData):
    """Validate sample weights against the data; None stays None.

    A scalar weighs every row the same (as in scikit-learn). For xarray
    input, a DataArray on (some of) the sample dims, matched to X's
    coordinates by label and broadcast over the others (:meth:`Grid.weights`).
    Negative weights that are zeros up to the rounding of their dtype
    (:func:`rounding_floor`: ``cos(90°)`` of float32 latitudes is −4.4e-8)
    count as 0. Returns an ndarray (numpy input) or a dask array chunked like
    the rows.

    Raises
    ------
    ValueError
        Not numbers, wrong shape or labels, unknown chunk sizes, negative
        (beyond rounding) or non-finite values, or all zero.
    """
    if sample_weight is None:
        return None
    grid = data.grid
    if isinstance(sample_weight, xr.DataArray):
        sample_weight = sample_weight.data if grid is None else grid.weights(sample_weight)
    elif grid is not None and len(grid.dims) > 1 and np.ndim(sample_weight) > 0:
        raise ValueError(
            f"X is gridded on {grid.dims}: give sample_weight as an xarray.DataArray on "
            "(some of) these dims, e.g. np.cos(np.deg2rad(ds.lat)) (its rows are laid out "
            "block by block, so a flat array has no defined order)."
        )
    if isinstance(sample_weight, pd.Series):
        sample_weight = sample_weight.to_numpy(dtype=np.float64, na_value=np.nan)
    if isinstance(sample_weight, da.Array) and (sample_weight.ndim == 0 or not data.is_lazy):
        # Weights of in-memory data fit in memory (they are 1/d of it).
        sample_weight = compute_one(sample_weight, optimize_graph=True)
    if isinstance(sample_weight, da.Array):
        return _lazy_weights(sample_weight, data)
    w = _asarray(sample_weight, "sample_weight")
    _check_numeric(w.dtype, "sample_weight")
    stored = w.dtype
    w = w.astype(np.float64)
    if w.ndim == 0:
        w = np.full(data.n_samples, float(w))
    _check_weight_shape(w.shape, data.n_samples)
    if check_weight_values(w.min(), w.max(), w.sum(), np.isfinite(w).all(), stored):
        w = np.maximum(w, 0.0)
    return da.from_array(w, chunks=(data.array.chunks[0],)) if data.is_lazy else w


def _lazy_weights(w: da.Array, data: InputData) -> da.Array:
    _check_numeric(np.dtype(w.dtype), "sample_weight")
    if any(np.isnan(size) for size in w.shape):
        raise ValueError(
            "sample_weight has unknown chunk sizes; call sample_weight.compute_chunk_sizes() first."
        )
    _check_weight_shape(w.shape, data.n_samples)
    stored = np.dtype(w.dtype)
    w = w.astype(np.float64).rechunk((data.array.chunks[0],))
    # One small compute up front beats a bad fit.
    summary = (w.min(), w.max(), w.sum(), da.isfinite(w).all())
    if check_weight_values(*compute_one(summary, optimize_graph=True), stored):
        w = da.maximum(w, 0.0)
    return w


def _check_weight_shape(shape: tuple, n: int) -> None:
    if shape != (n,):
        raise ValueError(
            f"sample_weight must have shape ({n},) (one weight per row) or be a scalar, "
            f"got shape {shape}."
        )


def rounding_floor(w_max: float, dtype: np.dtype) -> float:
    """How negative a weight may be and still be a zero, rounded: 8 ulps of the largest.

    Weights computed in float32 carry its rounding: ``np.cos(np.deg2rad(lat))``
    at lat = ±90 is −4.4e-8 (0.37 ε of float32 times the largest weight, 1),
    as π/2 rounds up in float32. A few ε of the weights' own dtype (float64
    for anything but float32) times the largest weight holds such zeros and
    no weight a user meant to be negative.
    """
    return 8.0 * float(np.finfo(float_dtype(np.dtype(dtype))).eps) * max(float(w_max), 0.0)


def check_weight_values(
    w_min: float, w_max: float, w_sum: float, all_finite: bool, dtype: np.dtype
) -> bool:
    """Raise a clear ValueError for unusable sample weights.

    Returns
    -------
    True when some weights are negative zeros (:func:`rounding_floor`), to be set to 0.
    """
    if not all_finite:
        raise ValueError("sample_weight contains NaN or infinity; pass finite weights.")
    floor = rounding_floor(w_max, dtype)
    if w_min < -floor:
        raise ValueError(
            f"sample_weight has negative values (down to {w_min:.3g}); weights must be >= 0 "
            f"(values down to -{floor:.2g}, zeros up to the rounding of {np.dtype(dtype)}, "
            "count as 0)."
        )
    if w_sum <= 0:
        raise ValueError("sample_weight sums to zero; at least one weight must be positive.")
    return bool(w_min < 0)
