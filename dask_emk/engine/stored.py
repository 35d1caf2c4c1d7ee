"""The input's storage step: every zarr decision about X, taken once, before its form.

:func:`resolve_storage` turns X into what form conversion takes
(:func:`dask_emk.engine.inputs.as_input`), so that no conversion asks about
storage again:

- a store path or URL is opened (:func:`dask_emk.engine.storage.open_zarr_array`),
  and a ``zarr.Array`` read through checked block reads (:func:`read_zarr`);
- an xarray variable read lazily from a store, not chunked, becomes dask in
  its stored chunks (:func:`chunked_if_stored`);
- the zarr reads in a dask array's graph (or an xarray variable's) are
  swapped for checked ones (:func:`checked_reads`); zarr arrays whose reads
  cannot be swapped are listed for missing files now, once;
- xarray variables that are plain reads of zarr arrays (:func:`stored_values`)
  are recorded, so a grid whose layout allows it is read straight from zarr
  into rows (:meth:`StoredInput.stacked_rows`).

Checked reads raise on a missing chunk file, or read the fill value with the
estimators' ``missing_chunks='fill'`` (given to :func:`resolve_storage`).

:mod:`dask_emk.engine.storage` says which check each kind of input gets and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from dask_emk.engine.arrays import check_shape_dtype
from dask_emk.engine.storage import (
    check_zarr_chunks,
    checked_reads,
    checked_xarray,
    chunked_if_stored,
    open_zarr_array,
    read_zarr,
    stacked_rows,
    stored_values,
)


@dataclass(frozen=True)
class StoredInput:
    """X with its storage resolved (:func:`resolve_storage`).

    Attributes
    ----------
    value : object
        X as form conversion takes it: a dask array for a path or a zarr
        array; xarray input as given (a DataArray: its resolved variable);
        anything else as given.
    variables : tuple of xarray.DataArray
        xarray input's data variables in feature order
        (:func:`feature_variables`; a DataArray: itself), in stored chunks,
        with checked reads.
    sources : tuple of (zarr.Array, str) or None
        Per variable, the zarr array whose values it holds as stored and its
        ``missing_chunks``; None unless every variable is such a read, with
        one ``missing_chunks``.
    """

    value: Any
    variables: tuple = ()
    sources: tuple | None = None

    def stacked_rows(self, samples: tuple, feature: str | None = None) -> da.Array | None:
        """The variables' rows read straight from zarr, one task a grid block; else None.

        For float variables on the sample dims (then ``feature``, in one
        chunk, if given) in this order, in the same chunks and dtype, each a
        plain read of a zarr array (:attr:`sources`), a block's variables go
        into one (points, features) buffer in one copy, in one task
        (:class:`~dask_emk.engine.storage.StackedZarrRows`). Anything else is
        stacked from xarray's arrays (:mod:`dask_emk.engine.gridded`).
        """
        if self.sources is None or self.variables[0].chunks is None:
            return None
        first, dims = self.variables[0], samples + ((feature,) if feature else ())
        same = all(
            var.dims == dims and var.chunks == first.chunks and var.dtype == first.dtype
            for var in self.variables
        )
        if not same or first.dtype.kind != "f" or not first.dtype.isnative:
            return None
        if feature and len(first.chunks[-1]) > 1:
            return None
        chunks = first.data.chunks[: len(samples)]
        return stacked_rows([array for array, _ in self.sources], chunks, self.sources[0][1])


def resolve_storage(X, name: str, missing_chunks: str = "raise") -> StoredInput:
    """Open, chunk and check X's zarr reads (see the module docstring); reads no values.

    ``missing_chunks='fill'``: a missing chunk file reads as the fill value
    (the estimators' ``missing_chunks``); reads X already checks keep their own choice.

    Raises ValueError for a zarr or dask array that is not 2-D or not
    numeric (before any store is listed), and
    :class:`~dask_emk.engine.storage.MissingChunksError` for missing files
    of arrays whose reads cannot be checked as they go.
    """
    if isinstance(X, (str, os.PathLike)):
        X = open_zarr_array(X)
    if isinstance(X, zarr.Array):
        check_shape_dtype(X.shape, np.dtype(X.dtype), name)
        return StoredInput(read_zarr(X, missing_chunks))
    if isinstance(X, da.Array):
        check_shape_dtype(X.shape, np.dtype(X.dtype), name)
        return StoredInput(_checked(X, missing_chunks))
    if missing_chunks != "raise" and isinstance(X, (xr.Dataset, xr.DataArray)):
        X = checked_xarray(X, missing_chunks)  # before _sources: the rows keep the choice
    variables: tuple[xr.DataArray, ...]
    if isinstance(X, xr.DataArray):
        variables = (chunked_if_stored(X),)
    elif isinstance(X, xr.Dataset):
        variables = tuple(chunked_if_stored(X[v]) for v in feature_variables(X))
    else:
        return StoredInput(X)
    sources = _sources(variables)
    variables = tuple(_checked_variable(var) for var in variables)
    return StoredInput(variables[0] if isinstance(X, xr.DataArray) else X, variables, sources)


def feature_variables(ds: xr.Dataset) -> list:
    """A Dataset's data variables in the order they are features: sorted by name.

    Not the Dataset's own order, which the data do not fix: xarray finds
    ``ds[["t", "q"]]`` and ``ds[["q", "t"]]`` equal, and a zarr 3 store
    opened without consolidated metadata lists its variables in a different
    order from open to open. The features, their names and the sample dims
    (the first variable's order, :mod:`dask_emk.engine.gridded`) follow from
    this order, so the same data give the same model.

    Parameters
    ----------
    ds : xarray.Dataset

    Returns
    -------
    list
        The names of ``ds``'s data variables, sorted by their text.
    """
    return sorted(ds.data_vars, key=str)


def _sources(variables: tuple) -> tuple | None:
    """:attr:`StoredInput.sources` of ``variables``."""
    found = [stored_values(var.data) for var in variables]
    known = [f for f in found if f is not None]
    if not found or len(known) < len(found) or len({m for _, m in known}) > 1:
        return None
    return tuple(known)


def _checked(X: da.Array, missing_chunks: str = "raise") -> da.Array:
    """X with its zarr reads checked as they go; arrays whose reads cannot be
    swapped are listed here, once."""
    X, unchecked = checked_reads(X, missing_chunks)
    for array in unchecked:
        check_zarr_chunks(array)
    return X


def _checked_variable(var: xr.DataArray) -> xr.DataArray:
    if not isinstance(var.data, da.Array):
        return var
    data = _checked(var.data)
    return var if data is var.data else var.copy(deep=False, data=data)
