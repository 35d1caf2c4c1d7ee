"""Plain arrays to the fits' form: shape and dtype checks, floats, feature labels.

What every input form ends in (:func:`dask_emk.engine.inputs.as_input`): a
2-D float32 or float64 array, numpy or dask chunked along rows only, whose
features have unique labels. Checks here read metadata only, except that
in-memory values are checked for NaN and infinity (lazy ones are by the
first pass).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from dask_emk.engine.reduction import nonfinite_error


def unique_labels(labels: np.ndarray | None, name: str, fix: str) -> np.ndarray | None:
    """``labels`` if they name every feature once; predictions match features by them."""
    index = pd.Index([] if labels is None else labels)
    if not index.is_unique:
        repeated = index[index.duplicated()].unique().tolist()
        raise ValueError(
            f"{name} has duplicate feature labels {repeated}; give every feature its own "
            f"label ({fix})."
        )
    return labels


def from_pandas(X: pd.DataFrame, name: str) -> np.ndarray:
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


def check_shape_dtype(shape, dtype: np.dtype, name: str) -> None:
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
    check_numeric(dtype, name)


def check_numeric(dtype: np.dtype, name: str) -> None:
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


def as_float_dask(X: da.Array, name: str) -> da.Array:
    check_shape_dtype(X.shape, np.dtype(X.dtype), name)
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError(f"{name} has unknown chunk sizes; call X.compute_chunk_sizes() first.")
    X = X.astype(float_dtype(X.dtype))
    if len(X.chunks[1]) > 1:
        # The kernels need whole rows; features are few, so one chunk of them is cheap.
        X = X.rechunk({1: -1})
    return X


def as_float_numpy(X, name: str, allow_nan: bool = False) -> np.ndarray:
    if sp.issparse(X):
        raise TypeError(
            f"Sparse input is not supported: {name} is {type(X).__name__}; densify it "
            "(X.toarray()) or pass a dask array."
        )
    X = as_numbers(X, name)
    check_shape_dtype(X.shape, X.dtype, name)
    X = X.astype(float_dtype(X.dtype), copy=False)
    if np.isfinite(X).all():
        return X
    if not allow_nan or np.isinf(X).any():
        raise nonfinite_error(name, "", allow_nan, "X[np.isfinite(X).all(axis=1)]")
    return X


def as_numbers(values, name: str) -> np.ndarray:
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
