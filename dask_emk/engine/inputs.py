"""Input checks and conversion: numpy, dask, xarray and zarr to one form.

Every estimator turns its input into an :class:`InputData`: a 2-D float
array (numpy or dask, chunked along rows only) plus what is needed to give
results back in the caller's kind (numpy in → numpy out, dask or xarray in →
lazy out of the same kind). Checks here are cheap metadata checks; NaN/inf
in lazy data is reported by the E-step of the first pass (no extra pass).

The input's path is a straight line (:func:`as_input`): the options are
checked, the storage step takes every zarr decision about X
(:func:`dask_emk.engine.stored.resolve_storage`), then X is converted by
its form: a plain array (:mod:`dask_emk.engine.arrays`) or gridded xarray
data (:mod:`dask_emk.engine.gridded`).
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from dask_emk.core.blocks import LABEL_FILL
from dask_emk.core.nan_policy import NanPolicy
from dask_emk.engine.arrays import (
    as_float_dask,
    as_float_numpy,
    as_numbers,
    check_numeric,
    float_dtype,
    from_pandas,
    unique_labels,
)
from dask_emk.engine.gridded import (  # noqa: F401 (Grid, dim_role: public here too)
    LAYOUT_ATTR,
    Grid,
    dim_role,
    from_dataarray,
    from_dataset,
    recorded_sample_dims,
)
from dask_emk.engine.reduction import compute_one
from dask_emk.engine.storage import check_missing_chunks
from dask_emk.engine.stored import StoredInput, resolve_storage


def check_input_options(
    nan_policy, feature_dim, sample_dims
) -> tuple[NanPolicy, tuple[str, ...] | None]:
    """Validate the estimators' ``nan_policy``, ``feature_dim`` and ``sample_dims``.

    Returns
    -------
    The :class:`NanPolicy`, and sample_dims as a tuple of names or None.
    """
    policy = NanPolicy.parse(nan_policy)
    if feature_dim is not None and not isinstance(feature_dim, str):
        raise ValueError(f"feature_dim must be None or a dimension name, got {feature_dim!r}.")
    if sample_dims is None:
        return policy, None
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
    return policy, dims


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
    nan_policy : NanPolicy
        How NaN in ``array`` is read.
    """

    array: np.ndarray | da.Array
    kind: str
    feature_labels: np.ndarray | None = None
    grid: Grid | None = None
    nan_policy: NanPolicy = NanPolicy.RAISE

    @property
    def n_samples(self) -> int:
        return int(self.array.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.array.shape[1])

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.array, da.Array)

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
        attrs = {"_FillValue": LABEL_FILL} if integer and self.nan_policy.allows_nan else {}
        return self.grid.from_rows(values, extra_dim, attrs)


def as_input(
    X,
    *,
    name: str = "X",
    nan_policy: str | NanPolicy = "raise",
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

    xarray input: a Dataset's data variables are the features, in name order
    whatever the Dataset's order
    (:func:`~dask_emk.engine.stored.feature_variables`). Of the dims that all
    of them have, one alone is the sample dim; of several, time and horizontal
    dims (T, X, Y) are sample dims and vertical ones (Z) are not, told by
    :func:`dim_role` from CF metadata (``axis``, ``positive``,
    ``standard_name``, ``units``) or the dim's name; a shared dim of unknown
    role is refused, naming ``sample_dims=``. A variable with dims beyond the
    sample dims gives one feature per point of those (named like
    ``z[level=850]``): ERA-Interim's ``z``, ``u``, ``v`` on (month, level,
    latitude, longitude) are 3 × n_level features on (month, latitude,
    longitude). An N-D DataArray has its features along ``feature_dim``
    (default: a dim named ``feature``, or the second of two dims), its other
    dims sorted by the same rules (a vertical dim gives one feature per
    feature label and level, ``z[level=850]``). ``sample_dims`` names the
    sample dims instead; without it and ``feature_dim``, the sample dims
    recorded by a transform's xarray output (:data:`LAYOUT_ATTR`) are used. A
    dim of length 0 is refused.

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
        value (:func:`dask_emk.engine.stored.resolve_storage`); reads X already
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
    policy, sample_dims = check_input_options(nan_policy, feature_dim, sample_dims)
    stored = resolve_storage(X, name, check_missing_chunks(missing_chunks))
    data = _convert(stored, name, policy.allows_nan, feature_dim, sample_dims)
    data.nan_policy = policy
    return data


def _convert(
    stored: StoredInput, name: str, allow_nan: bool, feature_dim, sample_dims
) -> InputData:
    """InputData of X by its form, its storage resolved (:func:`resolve_storage`)."""
    X = stored.value
    if isinstance(X, (xr.Dataset, xr.DataArray)):
        convert = from_dataset if isinstance(X, xr.Dataset) else from_dataarray
        rows, labels, grid = convert(stored, name, feature_dim, sample_dims)
        return InputData(rows, "xarray", labels, grid)
    if isinstance(X, da.Array):
        return InputData(as_float_dask(X, name), "dask")
    labels = None
    if isinstance(X, pd.DataFrame):
        labels = unique_labels(X.columns.to_numpy(), name, "rename the columns")
        X = from_pandas(X, name)
    return InputData(as_float_numpy(X, name, allow_nan), "numpy", feature_labels=labels)


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
    w = as_numbers(sample_weight, "sample_weight")
    check_numeric(w.dtype, "sample_weight")
    stored = w.dtype
    w = w.astype(np.float64)
    if w.ndim == 0:
        w = np.full(data.n_samples, float(w))
    _check_weight_shape(w.shape, data.n_samples)
    if check_weight_values(w.min(), w.max(), w.sum(), np.isfinite(w).all(), stored):
        w = np.maximum(w, 0.0)
    return da.from_array(w, chunks=(data.array.chunks[0],)) if data.is_lazy else w


def _lazy_weights(w: da.Array, data: InputData) -> da.Array:
    check_numeric(np.dtype(w.dtype), "sample_weight")
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
