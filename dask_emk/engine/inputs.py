"""Input checks and conversion: numpy, dask, xarray and zarr to one form.

Every estimator turns its input into an :class:`InputData`: a 2-D float
array (numpy or dask, chunked along rows only) plus what is needed to give
results back in the caller's kind (numpy in → numpy out, dask or xarray in →
lazy out of the same kind). Checks here are cheap metadata checks; NaN/inf
in lazy data is reported by the E-step of the first pass (no extra pass).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr
import zarr

from dask_emk.engine.reduction import numpy_block_rows
from dask_emk.engine.storage import (
    check_zarr_chunks,
    checked_reads,
    chunked_if_stored,
    open_zarr_array,
    read_zarr,
)


@dataclass
class InputData:
    """A validated 2-D input and how to return per-sample results.

    Attributes
    ----------
    array : ndarray or dask.array.Array of shape (n_samples, n_features)
        float32 or float64; a dask array is chunked along rows only.
    kind : {'numpy', 'dask', 'xarray'}
        'numpy' also for pandas input.
    sample_dim, feature_dim : str
        Dimension names (xarray input; defaults otherwise).
    sample_coords : dict
        Coordinates along the sample dimension, carried to per-sample output.
    feature_labels : ndarray or None
        Labels along the feature dimension (xarray coordinate, DataFrame
        columns), unique; carried to the fitted parameters and matched at predict.
    """

    array: np.ndarray | da.Array
    kind: str
    sample_dim: str = "sample"
    feature_dim: str = "feature"
    sample_coords: dict = field(default_factory=dict)
    feature_labels: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        return int(self.array.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.array.shape[1])

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.array, da.Array)

    def wrap_rows(self, values, extra_dim: str | None = None):
        """Give per-sample results back in the input's kind.

        Parameters
        ----------
        values : ndarray or dask array of shape (n,) or (n, m)
        extra_dim : str, optional
            Name of the second dimension for xarray output.
        """
        if self.kind != "xarray":
            return values
        dims = (self.sample_dim,) if values.ndim == 1 else (self.sample_dim, extra_dim)
        return xr.DataArray(values, dims=dims, coords=self.sample_coords)


def as_input(X, *, name: str = "X") -> InputData:
    """Validate X and convert it to :class:`InputData`.

    Accepts numpy arrays (and array-likes), pandas DataFrames, dask arrays,
    xarray DataArrays (dims (sample, feature), or (feature, sample) when the
    first is named ``feature``), zarr arrays and zarr store paths or
    ``file://`` URLs. Reads of zarr-backed input raise when chunk files are
    missing (:mod:`dask_emk.engine.storage` says how, for each kind of input).

    Raises
    ------
    ValueError
        Not 2-D, no rows or no features, non-numeric or complex dtype,
        NaN/inf or missing values in in-memory input, an xarray.Dataset,
        duplicate feature labels.
    """
    if isinstance(X, (str, os.PathLike)):
        X = open_zarr_array(X)
    if isinstance(X, zarr.Array):
        _check_shape_dtype(X.shape, np.dtype(X.dtype), name)
        X = read_zarr(X)
    if isinstance(X, xr.Dataset):
        raise ValueError(
            f"{name} is an xarray.Dataset; pass a DataArray laid out as (sample, feature), "
            'e.g. ds.to_dataarray("feature") to make each data variable a feature.'
        )
    if isinstance(X, xr.DataArray):
        X = chunked_if_stored(X)
        return _from_xarray(X, name)
    if isinstance(X, da.Array):
        return InputData(_as_float_dask(X, name), "dask")
    labels = None
    if isinstance(X, pd.DataFrame):
        labels = _unique_labels(X.columns.to_numpy(), name, "rename the columns")
        X = _from_pandas(X, name)
    return InputData(_as_float_numpy(X, name), "numpy", feature_labels=labels)


def _from_xarray(X: xr.DataArray, name: str) -> InputData:
    if X.ndim > 2:
        others = [str(d) for d in X.dims if d != "feature"]
        samples = others if len(others) < X.ndim else others[:-1]
        feature = "feature" if len(others) < X.ndim else others[-1]
        raise ValueError(
            f"{name} is a {X.ndim}-D DataArray with dims {tuple(map(str, X.dims))}; dask_emk "
            "fits 2-D (sample, feature) data: stack the other dimensions into one sample "
            f"dimension, e.g. X.stack(sample={samples}).transpose('sample', '{feature}')."
        )
    if X.ndim != 2:
        _check_shape_dtype(X.shape, X.dtype, name)
    if X.dims[0] == X.dims[1]:
        raise ValueError(
            f"{name} has the dimension {X.dims[0]!r} twice; name its dims (sample, feature)."
        )
    if X.dims[0] == "feature":
        X = X.transpose()  # a (feature, sample) layout, e.g. from Dataset.to_dataarray
    sample_dim, feature_dim = X.dims
    data = X.data
    array = (
        _as_float_dask(data, name) if isinstance(data, da.Array) else _as_float_numpy(data, name)
    )
    if not isinstance(array, da.Array):
        # Blocks as for numpy input, so the passes run in parallel (one
        # whole-array chunk ran every pass on a single thread).
        array = da.from_array(array, chunks=(numpy_block_rows(array.shape[1]), -1))
    coords = {k: v for k, v in X.coords.items() if v.dims == (sample_dim,)}
    labels = X[feature_dim].values if feature_dim in X.coords else None
    labels = _unique_labels(labels, name, f"X.assign_coords({feature_dim}=...)")
    return InputData(array, "xarray", str(sample_dim), str(feature_dim), coords, labels)


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


def _as_float_numpy(X, name: str) -> np.ndarray:
    if sp.issparse(X):
        raise TypeError(
            f"Sparse input is not supported: {name} is {type(X).__name__}; densify it "
            "(X.toarray()) or pass a dask array."
        )
    X = _asarray(X, name)
    _check_shape_dtype(X.shape, X.dtype, name)
    X = X.astype(float_dtype(X.dtype), copy=False)
    if not np.isfinite(X).all():
        raise ValueError(
            f"{name} contains NaN or infinity; remove or impute those rows "
            "(e.g. X[np.isfinite(X).all(axis=1)])."
        )
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

    A scalar weighs every row the same (as in scikit-learn). Returns an
    ndarray (numpy input) or a dask array chunked like the rows.

    Raises
    ------
    ValueError
        Not numbers, wrong shape, unknown chunk sizes, negative or non-finite
        values, or all zero.
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, xr.DataArray):
        sample_weight = sample_weight.data
    if isinstance(sample_weight, pd.Series):
        sample_weight = sample_weight.to_numpy(dtype=np.float64, na_value=np.nan)
    if isinstance(sample_weight, da.Array) and (sample_weight.ndim == 0 or not data.is_lazy):
        # Weights of in-memory data fit in memory (they are 1/d of it).
        sample_weight = sample_weight.compute()
    if isinstance(sample_weight, da.Array):
        return _lazy_weights(sample_weight, data)
    w = _asarray(sample_weight, "sample_weight")
    _check_numeric(w.dtype, "sample_weight")
    w = w.astype(np.float64)
    if w.ndim == 0:
        w = np.full(data.n_samples, float(w))
    _check_weight_shape(w.shape, data.n_samples)
    check_weight_values(w.min(), w.sum(), np.isfinite(w).all())
    return da.from_array(w, chunks=(data.array.chunks[0],)) if data.is_lazy else w


def _lazy_weights(w: da.Array, data: InputData) -> da.Array:
    _check_numeric(np.dtype(w.dtype), "sample_weight")
    if any(np.isnan(size) for size in w.shape):
        raise ValueError(
            "sample_weight has unknown chunk sizes; call sample_weight.compute_chunk_sizes() first."
        )
    _check_weight_shape(w.shape, data.n_samples)
    w = w.astype(np.float64).rechunk((data.array.chunks[0],))
    # One small compute up front beats a bad fit.
    w_min, w_sum, finite = da.compute(w.min(), w.sum(), da.isfinite(w).all())
    check_weight_values(w_min, w_sum, finite)
    return w


def _check_weight_shape(shape: tuple, n: int) -> None:
    if shape != (n,):
        raise ValueError(
            f"sample_weight must have shape ({n},) (one weight per row) or be a scalar, "
            f"got shape {shape}."
        )


def check_weight_values(w_min: float, w_sum: float, all_finite: bool) -> None:
    """Raise a clear ValueError for unusable sample weights."""
    if not all_finite:
        raise ValueError("sample_weight contains NaN or infinity; pass finite weights.")
    if w_min < 0:
        raise ValueError("sample_weight has negative values; weights must be >= 0.")
    if w_sum <= 0:
        raise ValueError("sample_weight sums to zero; at least one weight must be positive.")
