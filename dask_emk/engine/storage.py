"""Reading zarr input without silent gaps: missing chunk or shard files raise.

zarr reads a chunk file (or, for a sharded array, a shard file) that is
missing from its store as the array's fill value, without complaint, so
rows lost from disk would enter a fit as rows of zeros, or as NaN rows once
xarray has decoded the fill value. Which input gets which check:

- A store path or URL (``file://``, ``s3://``, ... :mod:`dask_emk.engine.locations`)
  or a ``zarr.Array``: read through
  :class:`CheckedZarrRead` (:func:`read_zarr`), so every block read checks
  that the chunk or shard files it covers exist; this holds for the fit,
  ``predict`` and lazy outputs (``labels_``) computed at any later time.
- A dask array from ``da.from_zarr`` (default ``inline_array=False``) and a
  DataArray from ``xarray.open_zarr`` or ``xarray.open_dataarray(...,
  engine='zarr')`` (decoded or not; chunked in its stored chunks if it is
  not, :func:`chunked_if_stored`): the zarr read in their graph is swapped
  for a checked one (:func:`checked_reads`), whatever is computed on top.
- xarray input whose variables are plain reads of float zarr arrays (no
  decoding that changes values, :func:`stored_values`) is read straight
  from zarr into rows, a grid block at a time (:class:`StackedZarrRows`),
  with the same check (and the same ``missing_chunks`` choice).
- Any other dask collection whose graph holds a zarr array (e.g. an xarray
  variable indexed lazily before it was chunked): the store is listed once,
  up front (:func:`check_zarr_chunks`). ``da.from_zarr(...,
  inline_array=True)`` hides its array from the graph and is not checked.

Whatever the input, a fit that finds non-finite rows first lists the stores
it read for missing files (:func:`check_stored_files`).

zarr does not write a chunk that holds only the fill value unless told to
(``zarr.config.set({'array.write_empty_chunks': True})``, which dask-emk's
own writers do), so in a store written without it an all-NaN block (land,
say) has no file. Reading such a store is an explicit choice,
``missing_chunks='fill'`` (:func:`checked_xarray`, :func:`read_zarr`; a
pipeline's ``input.missing_chunks``): missing files are then read as the
fill value, as zarr does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import traceback
from collections.abc import Iterator

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.array.utils import meta_from_array
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from dask.layers import Blockwise
from zarr.buffer import cpu

from dask_emk.engine.locations import (
    connection_failure,
    endpoint_of,
    is_url,
    normalize_location,
    open_node,
)
from dask_emk.engine.options import MISSING_CHUNKS

#: Packages whose frames in a traceback mean "the failure happened reading a store".
STORAGE_PACKAGES = ("zarr", "numcodecs")

#: Missing files named in an error message; more are counted.
NAMED_FILES = 3



class MissingChunksError(ValueError):
    """Chunk or shard files of a zarr array are missing from its store."""


def open_zarr_array(path: str | os.PathLike) -> zarr.Array:
    """Open a zarr array from a store path or URL (:func:`dask_emk.engine.locations.open_store`).

    The path is ``store.zarr`` or ``store.zarr/name``; a group holding
    exactly one array resolves to it.

    Raises
    ------
    ValueError
        If the path does not exist or cannot be reached, holds no array, or
        a group holds several.
    """
    location = normalize_location(path)
    node = open_node(location)
    if isinstance(node, zarr.Array):
        return node
    names = sorted(name for name, _ in node.arrays())
    if len(names) != 1:
        raise ValueError(
            f"zarr group {location!r} holds arrays {names}; name the one to use as "
            f"'{location}/<array name>'."
        )
    return node[names[0]]


class CheckedZarrRead:
    """Array-like read of a zarr array that raises for missing chunk/shard files.

    After each read it asks the store whether the files holding the read
    selection exist: one ``exists`` per file, against a read of the whole
    file. Checking after the read also catches a file that vanished before it.

    Parameters
    ----------
    array : zarr.Array
        The stored array; its chunk (or shard) grid names the files.
    source : array-like, optional
        What to read from (default ``array``): a wrapper indexed in the
        array's own coordinates, such as xarray's decoding of it.
    missing_chunks : {'raise', 'fill'}
        'fill' reads missing files as the fill value, unchecked (the user's
        choice for a store written without empty chunks).
    """

    def __init__(self, array: zarr.Array, source=None, missing_chunks: str = "raise"):
        self.array = array
        self.source = array if source is None else source
        self.missing_chunks = check_missing_chunks(missing_chunks)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.source.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, selection):
        block = self.source[selection]
        if self.missing_chunks == "fill":
            return block
        missing = missing_files(self.array, file_coords(self.array, selection))
        if missing:
            raise missing_files_error(self.array, missing)
        return block


def check_missing_chunks(missing_chunks: str) -> str:
    """``missing_chunks`` if it is one of :data:`MISSING_CHUNKS`, else a ValueError."""
    if missing_chunks not in MISSING_CHUNKS:
        raise ValueError(f"missing_chunks must be one of {MISSING_CHUNKS}, got {missing_chunks!r}.")
    return missing_chunks


def read_zarr(array: zarr.Array, missing_chunks: str = "raise") -> da.Array:
    """A dask array over ``array`` whose every block read checks its files.

    One task per zarr chunk of rows, each holding whole rows (the kernels
    need them; features are few), so no rechunk follows. ``missing_chunks``:
    see :class:`CheckedZarrRead`.
    """
    chunks = (array.chunks[0],) + tuple(array.shape[1:])
    meta = np.empty((0,) * array.ndim, dtype=array.dtype)
    read = CheckedZarrRead(array, missing_chunks=missing_chunks)
    return da.from_array(read, chunks=chunks, asarray=False, fancy=False, meta=meta, name=False)


class StackedZarrRows:
    """Rows of zarr arrays on one grid, a grid block at a time: (n_points, n_features).

    The arrays (same dtype) are the variables of a gridded store: each on
    the grid's dimensions, one feature, or with one more dimension last,
    one feature per point of it. Row blocks are the grid's blocks one after
    the other in C order, each block's points in C order (the layout of
    :meth:`dask_emk.engine.gridded.Grid.to_rows`). A block is read in one
    round trip to zarr's event loop: the arrays' reads run concurrently and
    each decodes straight into its columns of one (block, n_features)
    buffer, so the rows are made in one copy; the chunk or shard files the
    block covers are then checked as :class:`CheckedZarrRead` does.

    Parameters
    ----------
    arrays : list of zarr.Array
    chunks : tuple of tuple of int
        The grid's blocks along each of its dimensions (the arrays' first ones).
    missing_chunks : {'raise', 'fill'}
        As for :class:`CheckedZarrRead`.
    """

    def __init__(self, arrays: list, chunks: tuple, missing_chunks: str = "raise"):
        self.arrays = list(arrays)
        self.missing_chunks = check_missing_chunks(missing_chunks)
        self.blocks = [
            tuple(slice(start, start + size) for start, size in point)
            for point in itertools.product(
                *[list(zip(np.cumsum((0, *c[:-1])).tolist(), c, strict=True)) for c in chunks]
            )
        ]
        sizes = [int(np.prod([s.stop - s.start for s in block])) for block in self.blocks]
        self.row_chunks = tuple(sizes)
        self.starts = np.cumsum((0, *sizes))
        # Each array's columns of a row: its feature index, or a slice along its last dim.
        widths = [int(np.prod(a.shape[len(chunks) :])) for a in self.arrays]
        ends = np.cumsum(widths).tolist()
        self.width = ends[-1]
        self.columns = [
            end - 1 if a.ndim == len(chunks) else slice(end - width, end)
            for a, width, end in zip(self.arrays, widths, ends, strict=True)
        ]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.starts[-1]), self.width

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.arrays[0].dtype)

    @property
    def ndim(self) -> int:
        return 2

    def __getitem__(self, selection):
        if not isinstance(selection, tuple):
            selection = (selection,)
        rows, columns = (*selection, slice(None), slice(None))[:2]
        if isinstance(rows, slice) and rows.step in (None, 1):
            start, stop, _ = rows.indices(self.shape[0])
            b = int(np.searchsorted(self.starts, start, side="right")) - 1
            if b < len(self.blocks) and (start, stop) == tuple(self.starts[b : b + 2]):
                return self.read_block(b)[:, columns]  # what the tasks ask for
        # Any other selection: the blocks it touches, then its rows of them.
        index = np.arange(self.shape[0])[rows]
        flat = np.ravel(index)
        owner = np.searchsorted(self.starts, flat, side="right") - 1
        wanted = np.unique(owner)
        if not wanted.size:
            return np.empty((*np.shape(index), self.width), dtype=self.dtype)[..., columns]
        offset = np.zeros(len(self.blocks), dtype=np.int64)
        offset[wanted] = np.cumsum([0] + [self.row_chunks[b] for b in wanted[:-1]])
        values = np.concatenate([self.read_block(int(b)) for b in wanted])
        local = offset[owner] + flat - self.starts[owner]
        return values[local.reshape(np.shape(index))][..., columns]

    def read_block(self, b: int) -> np.ndarray:
        """Rows of grid block ``b``: (points in the block, n_features), checked."""
        block = self.blocks[b]
        out = np.empty((*(s.stop - s.start for s in block), self.width), dtype=self.dtype)
        columns = [out[..., c] for c in self.columns]
        if self.missing_chunks == "fill":
            _run_in_zarr(_read_columns(self.arrays, block, columns, {}))
            return out.reshape(-1, self.width)
        coords = [file_coords(array, block) for array in self.arrays]
        # Files of remote stores are asked in the read's round trip, local ones
        # after it (:func:`missing_files`).
        remote = {
            i: [file_key(a, c) for c in coords[i]]
            for i, a in enumerate(self.arrays)
            if not isinstance(a.store, zarr.storage.LocalStore)
        }
        found = _run_in_zarr(_read_columns(self.arrays, block, columns, remote))
        for i, array in enumerate(self.arrays):
            if i in found:
                missing = [c for c, ok in zip(coords[i], found[i], strict=True) if not ok]
            else:
                missing = missing_files(array, coords[i])
            if missing:
                raise missing_files_error(array, missing)
        return out.reshape(-1, self.width)


async def _read_columns(arrays: list, block: tuple, columns: list, ask: dict) -> dict:
    """Read ``block`` of every array into its ``columns`` (views of one buffer); then
    whether the files ``ask[i]`` of array ``i`` exist, for each ``i`` in ``ask`` (after
    the read, so a file that vanished before it is caught)."""
    await asyncio.gather(*(
        array.async_array.get_orthogonal_selection(
            block + (slice(None),) * (array.ndim - len(block)),
            out=cpu.NDBuffer.from_numpy_array(column),
        )
        for array, column in zip(arrays, columns, strict=True)
    ))  # fmt: skip
    found = await asyncio.gather(*(_all_exist(arrays[i].store, keys) for i, keys in ask.items()))
    return dict(zip(ask, found, strict=True))


def stacked_rows(arrays: list, chunks: tuple, missing_chunks: str = "raise") -> da.Array:
    """A dask array of :class:`StackedZarrRows`: one task a grid block, no other layer."""
    reader = StackedZarrRows(arrays, chunks, missing_chunks)
    meta = np.empty((0, 0), dtype=reader.dtype)
    return da.from_array(
        reader, chunks=(reader.row_chunks, (reader.width,)), asarray=False, fancy=False,
        meta=meta, name=False,
    )  # fmt: skip


def stored_values(data) -> tuple[zarr.Array, str] | None:
    """The zarr array whose values a dask array holds as stored, and its ``missing_chunks``.

    None unless ``data`` is a plain lazy read of a whole zarr array (from
    ``xarray.open_zarr``, ``chunked_if_stored`` or ``da.from_zarr``, checked or
    not) through xarray wrappers that only index it: an xarray variable that
    decodes (scale, offset, a fill value other than NaN, times) or has been
    sliced or computed on gives None, and is read through xarray.
    """
    graph = data.__dask_graph__() if isinstance(data, da.Array) else None
    if not isinstance(graph, HighLevelGraph) or len(graph.layers) != 2:
        return None
    top = graph.layers.get(data.name)
    held = [layer for layer in graph.layers.values() if layer is not top]
    if not isinstance(top, Blockwise) or not isinstance(held[0], MaterializedLayer):
        return None
    if len(held[0].mapping) != 1:
        return None
    (value,) = held[0].mapping.values()
    missing_chunks = "raise"
    if isinstance(value, CheckedZarrRead):
        value, missing_chunks = value.source, value.missing_chunks
    array = _zarr_array_of(value)
    if array is None or tuple(array.shape) != tuple(data.shape) or array.dtype != data.dtype:
        return None
    if not (_indexes_only(value, array) and _same_coordinates(value, array)):
        return None
    return array, missing_chunks


#: xarray's wrappers of a backend array that only index it (lazily, copy on
#: write, cached): values read through them are the stored values. Any other
#: wrapper (a CF decoding step) may change them.
INDEXING_WRAPPERS = frozenset(
    {"ImplicitToExplicitIndexingAdapter", "CopyOnWriteArray", "MemoryCachedArray",
     "LazilyIndexedArray"}
)  # fmt: skip


def _indexes_only(value, array: zarr.Array) -> bool:
    """Whether ``value`` reads ``array``'s values unchanged (see :data:`INDEXING_WRAPPERS`)."""
    for _ in range(16):
        if value is array:
            return True
        if type(value).__name__ not in INDEXING_WRAPPERS:
            # The bottom: xarray's backend array, which hands out the zarr array.
            return callable(getattr(value, "get_array", None)) and not hasattr(value, "array")
        value = value.array
    return False


def checked_xarray(X, missing_chunks: str = "raise"):
    """A Dataset or DataArray from ``xarray.open_zarr`` whose reads check their files.

    With ``missing_chunks='fill'``, missing chunk files are read as the fill
    value instead (NaN for xarray's float variables), the choice for a store
    written without empty chunks; the estimators keep that choice (their
    own check passes over reads already wrapped).

    Parameters
    ----------
    X : xarray.Dataset or xarray.DataArray
        Opened lazily from a zarr store (``xarray.open_zarr``).
    missing_chunks : {'raise', 'fill'}, default='raise'
        A missing chunk file is an error naming it, or read as the fill value.

    Returns
    -------
    xarray.Dataset or xarray.DataArray
        X with every read of a zarr-backed variable checked.
    """
    check_missing_chunks(missing_chunks)
    if isinstance(X, xr.Dataset):
        return X.map(checked_xarray, missing_chunks=missing_chunks, keep_attrs=True)
    X = chunked_if_stored(X)
    if not isinstance(X.data, da.Array):
        return X
    data, _ = checked_reads(X.data, missing_chunks)
    return X.copy(data=data)


def checked_reads(
    collection: da.Array, missing_chunks: str = "raise"
) -> tuple[da.Array, list[zarr.Array]]:
    """Swap the zarr reads in a dask array's graph for :class:`CheckedZarrRead`.

    ``da.from_zarr`` and ``xarray.open_zarr`` keep the object they read
    from as one value of a materialised layer; the tasks above index it
    with the block's selection. That value is replaced when it is a zarr
    array, or an xarray wrapper of one that keeps its coordinates (same
    shape, no lazy indexing), so the same tasks read through the check.

    Returns
    -------
    collection : dask.array.Array
        The same array (same keys, chunks and values), with checked reads.
    unchecked : list of zarr.Array
        Arrays found in the graph whose reads could not be swapped.
    """
    graph = collection.__dask_graph__()
    if not isinstance(graph, HighLevelGraph):
        return collection, []
    layers, unchecked = dict(graph.layers), []
    for name, layer in graph.layers.items():
        if not isinstance(layer, MaterializedLayer):
            continue
        swaps = {}
        for key, value in layer.mapping.items():
            array = _zarr_array_of(value)
            if array is None or isinstance(value, CheckedZarrRead):
                continue
            if value is array or _same_coordinates(value, array):
                swaps[key] = CheckedZarrRead(array, value, missing_chunks)
            else:
                unchecked.append(array)
        if swaps:
            mapping = {**layer.mapping, **swaps}
            layers[name] = MaterializedLayer(
                mapping, layer.annotations, layer.collection_annotations
            )
    if all(layers[name] is layer for name, layer in graph.layers.items()):
        return collection, unchecked
    new_graph = HighLevelGraph(layers, graph.dependencies)
    meta = meta_from_array(collection)
    return da.Array(new_graph, collection.name, collection.chunks, meta=meta), unchecked


def chunked_if_stored(X: xr.DataArray) -> xr.DataArray:
    """A DataArray read lazily from a store, not chunked, as dask in its stored chunks.

    ``xarray.open_dataarray(..., engine='zarr')`` gives such a variable by
    default; its ``.data`` would load the whole array through zarr, with no
    check for missing files. Chunked, it is read block by block through
    :func:`checked_reads` like ``xarray.open_zarr`` input. Anything else
    (dask-backed, or with no stored chunking in its encoding) is returned as is.
    """
    preferred = X.encoding.get("preferred_chunks")
    if X.chunks is not None or not preferred:
        return X
    return X.chunk({dim: size for dim, size in preferred.items() if dim in X.dims})


def zarr_arrays(collection) -> list[zarr.Array]:
    """The zarr arrays a dask collection reads, for naming them in errors.

    Only materialised layers are searched: ``from_zarr``, xarray,
    :func:`read_zarr` and :func:`stacked_rows` store the object read there
    as one key, and the blockwise layers above it hold no arrays.
    """
    graph = collection.__dask_graph__()
    layers = getattr(graph, "layers", {"": graph})
    found = {}
    for layer in layers.values():
        mapping = layer.mapping if isinstance(layer, MaterializedLayer) else layer
        if not isinstance(mapping, dict):
            continue
        for value in mapping.values():
            arrays = value.arrays if isinstance(value, StackedZarrRows) else [_zarr_array_of(value)]
            for array in arrays:
                if array is not None:
                    found[str(array.store_path)] = array
    return list(found.values())


def _zarr_array_of(value) -> zarr.Array | None:
    """The zarr array that a graph value reads, if any.

    xarray wraps the zarr array of a variable in indexing and decoding
    adapters, each holding the next as ``.array``; its zarr backend array
    at the bottom hands the zarr array out with ``get_array()``.
    """
    for _ in range(16):  # the wrappers are a few deep; never loop forever
        if isinstance(value, zarr.Array):
            return value
        if isinstance(value, CheckedZarrRead):
            return value.array
        get_array = getattr(value, "get_array", None)
        if callable(get_array) and not hasattr(value, "array"):
            inner = get_array()
            return inner if isinstance(inner, zarr.Array) else None
        value = getattr(value, "array", None)
        if value is None:
            return None
    return None


def _same_coordinates(wrapper, array: zarr.Array) -> bool:
    """Whether every wrapper down to ``array`` indexes in the array's coordinates.

    True for xarray's decoding (element-wise, same shape) and for its lazy
    indexing with a key that selects everything; false for a lazily sliced
    or transposed variable, whose selection maps to other chunk files.
    """
    value = wrapper
    while hasattr(value, "array"):
        if tuple(getattr(value, "shape", ())) != tuple(array.shape):
            return False
        key = getattr(value, "key", None)
        if key is not None and not all(
            isinstance(k, slice) and k.indices(n) == (0, n, 1)
            for k, n in zip(getattr(key, "tuple", (None,)), array.shape, strict=False)
        ):
            return False
        value = value.array
    return True


# ----------------------------------------------------------- chunk and shard files
def file_shape(array: zarr.Array) -> tuple[int, ...]:
    """Shape of the region one stored file holds: a shard if sharded, else a chunk."""
    return tuple(array.shards or array.chunks)


def file_kind(array: zarr.Array) -> str:
    return "shard" if array.shards else "chunk"


def file_coords(array: zarr.Array, selection) -> list[tuple[int, ...]]:
    """Grid coordinates of the chunk/shard files that hold ``selection``.

    Slices and integers map exactly (a stepped slice to every file between
    its ends); an index array maps to the files of its indices. Axes not in
    ``selection`` are read whole.
    """
    if not isinstance(selection, tuple):
        selection = (selection,)
    selection = tuple(s for s in selection if s is not None)
    per_axis = []
    for axis, (n, size) in enumerate(zip(array.shape, file_shape(array), strict=True)):
        sel = selection[axis] if axis < len(selection) else slice(None)
        if sel is Ellipsis:
            sel = slice(None)
        if isinstance(sel, slice):
            picked = range(*sel.indices(n))
            low, high = sorted((picked[0], picked[-1])) if picked else (0, -size)
            per_axis.append(range(low // size, high // size + 1))
        else:
            index = np.asarray(sel)
            index = np.flatnonzero(index) if index.dtype == bool else index.ravel() % max(n, 1)
            per_axis.append(np.unique(index // size).tolist())
    return list(itertools.product(*per_axis))


def file_key(array: zarr.Array, coords: tuple[int, ...]) -> str:
    """The store key of the chunk/shard file at grid ``coords``."""
    key = array.metadata.encode_chunk_key(coords)
    return f"{array.path}/{key}" if array.path else key


def missing_files(array: zarr.Array, coords: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Those of ``coords`` whose file is not in the store (one ``exists`` or stat each)."""
    if not coords:
        return []
    keys = [file_key(array, c) for c in coords]
    found = _exist_locally(array.store, keys)
    if found is None:
        found = _run_in_zarr(_all_exist(array.store, keys))
    return [c for c, ok in zip(coords, found, strict=True) if not ok]


def _exist_locally(store, keys: list[str]) -> list[bool] | None:
    """Whether files of a local store exist, asked of the file system directly; None
    for other stores. A stat each: ``LocalStore.exists`` hops to a thread from
    zarr's event loop, which cost ~0.25 ms a file (6% of a gridded k-means pass)."""
    if not isinstance(store, zarr.storage.LocalStore):
        return None
    return [(store.root / key).is_file() for key in keys]


def check_zarr_chunks(array: zarr.Array) -> None:
    """Raise if chunk (or shard) files of ``array`` are missing from its store.

    One listing of the array's keys (metadata only), compared with the
    keys its chunk grid needs; shards are counted as the files they are.

    Raises
    ------
    MissingChunksError (a ValueError)
        Naming the store, the array, how many files are missing and which.
    """
    grid = [range(-(-n // size)) for n, size in zip(array.shape, file_shape(array), strict=True)]
    expected = list(itertools.product(*grid))
    prefix = f"{array.path}/" if array.path else ""
    stored = set(_run_in_zarr(_list_keys(array.store, prefix)))
    missing = [c for c in expected if file_key(array, c) not in stored]
    if missing:
        raise missing_files_error(array, missing, of=len(expected))


def check_stored_files(source) -> None:
    """:func:`check_zarr_chunks` on every zarr array a dask collection reads.

    For failure paths (non-finite rows found): a missing file may be why.
    Anything but a dask collection is not read from a store: nothing to do.
    """
    if isinstance(source, da.Array):
        for array in zarr_arrays(source):
            check_zarr_chunks(array)


def missing_files_error(
    array: zarr.Array, missing: list[tuple[int, ...]], of: int | None = None
) -> MissingChunksError:
    """The error for missing files at grid ``missing``; ``of``: the array's file count.

    Without ``of`` (a read found them), only the files that read needed are
    named, so no total is claimed.
    """
    kind = file_kind(array)
    named = ", ".join(
        f"{array.metadata.encode_chunk_key(c)} ({_extent(array, c)})" for c in missing[:NAMED_FILES]
    )
    more = f" and {len(missing) - NAMED_FILES} more" if len(missing) > NAMED_FILES else ""
    plural = "s" if len(missing) > 1 else ""
    what = (
        f"{len(missing)} of its {of} {kind} files" if of is not None else f"the {kind} file{plural}"
    )
    fill = np.asarray(array.fill_value).item()
    what_reads = "rows" if array.ndim <= 2 else "grid points"
    return MissingChunksError(
        f"zarr array {zarr_label(array)} is missing {what} in its store: {named}{more}. "
        f"zarr reads a missing {kind} as the fill value {fill!r}, so a fit or "
        f"prediction would use {what_reads} that do not exist. Restore the store (rewrite it "
        f"from its source). If those {kind}s really hold only the fill value (zarr skips "
        "writing such files unless zarr.config.set({'array.write_empty_chunks': True})), "
        "read them as such with missing_chunks='fill' "
        "(dask_emk.engine.storage.checked_xarray(X, missing_chunks='fill'); in a pipeline: "
        "input.missing_chunks = 'fill')."
    )


def _extent(array: zarr.Array, coords: tuple[int, ...]) -> str:
    """Where the file at ``coords`` lies: 'rows a-b' (plus its features if it holds
    only some) for a 2-D array, '<dim> a-b, ...' along each dimension otherwise."""
    shape, sizes = array.shape, file_shape(array)
    spans = [
        (c * size, min((c + 1) * size, n) - 1)
        for c, size, n in zip(coords, sizes, shape, strict=True)
    ]
    if array.ndim > 2:
        names = getattr(array.metadata, "dimension_names", None) or [
            f"axis {axis}" for axis in range(array.ndim)
        ]
        return ", ".join(f"{name} {a}-{b}" for name, (a, b) in zip(names, spans, strict=True))
    parts = [f"rows {spans[0][0]}-{spans[0][1]}"]
    if array.ndim == 2 and sizes[1] < shape[1]:
        parts.append(f"features {spans[1][0]}-{spans[1][1]}")
    return ", ".join(parts)


def _run_in_zarr(coroutine):
    """Run a store coroutine to completion from synchronous code.

    zarr 3 stores are asynchronous only; zarr's own synchronous ``Array``
    runs every read through this same helper, on zarr's event-loop thread.
    It is private to zarr (``zarr.core.sync``), hence used here only.
    """
    from zarr.core.sync import sync

    return sync(coroutine)


async def _all_exist(store, keys: list[str]) -> list[bool]:
    return list(await asyncio.gather(*(store.exists(key) for key in keys)))


async def _list_keys(store, prefix: str) -> list[str]:
    return [key async for key in store.list_prefix(prefix)]


def zarr_label(array: zarr.Array) -> str:
    """The store location and array path, as a user would recognise it.

    A local store gives its directory, an fsspec store its URL (what
    ``da.from_zarr`` on a local path opens: its path); anything else its own
    description.
    """
    store = array.store
    base = getattr(store, "root", None) or getattr(store, "path", None) or store
    fs = getattr(store, "fs", None)
    if fs is not None and "file" not in fs.protocol:
        base = fs.unstrip_protocol(str(base))
    return f"{base}/{array.path}" if array.path else str(base)


# ------------------------------------------------------------- unreadable chunks
@contextlib.contextmanager
def storage_errors(collection) -> Iterator[None]:
    """Turn a failure inside zarr or a codec, while computing ``collection``, into
    a ValueError that names the zarr array being read.

    A corrupted or unreadable chunk file otherwise surfaces as a RuntimeError
    (or other error) from deep inside numcodecs, possibly relayed by a
    distributed worker, that does not say which store is broken. A
    :class:`MissingChunksError` already says so and passes unchanged.
    """
    try:
        yield
    except MissingChunksError:
        raise
    except Exception as exc:
        arrays = zarr_arrays(collection) if _raised_in_storage(exc) else []
        if not arrays:
            raise
        names = ", ".join(zarr_label(a) for a in arrays)
        message = " ".join(str(exc).split()) or type(exc).__name__
        remote = [label for label in map(zarr_label, arrays) if is_url(label)]
        lost = connection_failure(exc) if remote else None
        if lost is not None:
            raise unreachable_error(remote[0], names, lost) from exc
        raise ValueError(
            f"reading zarr array {names} failed: a chunk file is corrupted or "
            f"unreadable ({type(exc).__name__}: {message}). Check the store "
            "(e.g. zarr.open_array(...)[:] on it) and rewrite it from its source."
        ) from exc


@contextlib.contextmanager
def endpoint_errors(collection) -> Iterator[None]:
    """Name the endpoint when a remote store read by ``collection`` stops answering.

    Only connection failures: a computation that also writes (the results'
    export) must not blame the input for a failed write, as
    :func:`storage_errors` would for any error raised in zarr's frames.
    """
    try:
        yield
    except Exception as exc:
        lost = connection_failure(exc)
        remote = [zarr_label(a) for a in zarr_arrays(collection)] if lost is not None else []
        remote = [label for label in remote if is_url(label)]
        if lost is None or not remote:
            raise
        raise unreachable_error(remote[0], ", ".join(remote), lost) from exc


def unreachable_error(url: str, names: str, exc: BaseException) -> ValueError:
    """The error for a store whose endpoint stopped answering while ``names`` were read:
    the store is not known to be damaged, so it is not blamed."""
    endpoint, source = endpoint_of(url)
    at = f"{endpoint} ({source})" if endpoint else "the storage endpoint (AWS)"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return ValueError(
        f"reading zarr array {names} failed: {at} cannot be reached ({type(exc).__name__}: "
        f"{detail}). Check that the endpoint is up and reachable, then retry (a pipeline "
        "run: with --resume, to continue from its checkpoint)."
    )


def _raised_in_storage(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it chains to) came through zarr/numcodecs frames.

    distributed re-raises a worker's exception with the worker's traceback,
    so this also holds for failures on remote workers.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame in traceback.extract_tb(exc.__traceback__):
            parts = frame.filename.replace("\\", "/").split("/")
            if any(package in parts for package in STORAGE_PACKAGES):
                return True
        exc = exc.__cause__ or exc.__context__
    return False
