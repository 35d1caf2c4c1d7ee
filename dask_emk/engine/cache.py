"""Reading the store once: a fit's rows kept in memory between its passes.

A fit makes tens of passes over the same rows (seeding rounds, Lloyd or EM
iterations); from a store each pass pays the read (decompressing zarr
chunks, ~2.0 s per GiB here, against ~0.32 s for a KMeans(16) kernel over
the same rows). :func:`kept_rows` reads the fit's input once and keeps each
block's rows in memory, where later passes read them: on a
``distributed`` cluster the blocks are persisted on the workers that read
them (``Client.persist``; a lost worker's blocks are recomputed from the
store by the scheduler), on the local schedulers they are numpy arrays in
this process. As Spark MLlib's KMeans and GaussianMixture persist their
input themselves (``handlePersistence``), with an explicit choice and a
memory share here.

The kept blocks are the blocks a pass runs on
(:func:`dask_emk.engine.reduction.group_small_chunks` of the input's
chunks), each with its first global row: every kernel sees the same rows
in the same order with the same row indices
(:class:`dask_emk.engine.reduction.RowKeyed` draws), so a fit is bit for
bit the same with and without the cache. Under ``nan_policy='omit'`` a
block keeps only the rows a pass would use, with their global indices.

The cache belongs to one run of :class:`dask_emk.engine.batch.Batch` (a
fit): released when the run ends, also on an error or KeyboardInterrupt;
an estimator never holds it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from dask_emk.core.blocks import rows_without_nan
from dask_emk.engine import reduction

#: Share of the free memory (per worker, the memory below its spill threshold
#: minus what the process holds now; on the local schedulers the machine's
#: available memory) that ``cache='auto'`` fills. Half: the kernels need their
#: own temporaries (a few blocks per thread) next to the kept rows.
AUTO_SHARE = 0.5

#: A chunk smaller than this costs more in per-chunk overhead (~1 ms of
#: scheduling and zarr work per chunk on this machine, whatever the chunk
#: holds) than in reading and computing its rows (~2.3 ms per MiB for a zarr
#: read plus a KMeans(16) kernel): the overhead dominates below ~0.5 MiB.
TINY_CHUNK_BYTES = 2**19

#: Chunk size suggested instead: the ~1 ms of overhead is then ~3% of a chunk's work.
SUGGESTED_CHUNK_BYTES = 16 * 2**20

#: Fewer chunks than this cost at most ~0.1 s of overhead a pass: no warning.
TINY_CHUNK_COUNT = 100


class TinyChunksWarning(UserWarning):
    """The input's chunks are so small that per-chunk overhead dominates a pass
    (as dask's ``PerformanceWarning``)."""


@contextmanager
def kept_rows(X, cache, drop_nan_rows: bool = False, free: int | None = None) -> Iterator:
    """The input of a fit's passes: ``X``, or its rows kept in memory, until the ``with`` ends.

    Parameters
    ----------
    X : ndarray or dask array of shape (n, d)
        In-memory input is yielded as it is (nothing to keep).
    cache : {'auto', True, False}
        'auto' keeps the first blocks that fit in :data:`AUTO_SHARE` of the
        free memory, True keeps all or refuses, False keeps none.
    drop_nan_rows : bool
        Keep only the rows without NaN (``nan_policy='omit'``).
    free : int, optional
        Bytes free for the rows (default: measured, :func:`free_memory`).

    Yields
    ------
    ``X`` or a :class:`CachedRows` (what :func:`dask_emk.engine.reduction.run_pass` takes).

    Raises
    ------
    ValueError
        ``cache=True`` and the rows do not fit in the free memory (before any read).
    """
    if not isinstance(X, da.Array):
        yield X
        return
    warn_tiny_chunks(X)
    if cache is False or not cache:
        yield X
        return
    held: list[CachedRows] = []
    try:
        cached = CachedRows.read(X, cache, drop_nan_rows, held, free)
        yield X if cached is None else cached
    finally:
        for rows in held:
            rows.release()


def warn_tiny_chunks(X: da.Array) -> None:
    """Warn (:class:`TinyChunksWarning`) when X's row chunks are below :data:`TINY_CHUNK_BYTES`."""
    sizes = X.chunks[0]
    row_bytes = X.shape[1] * X.dtype.itemsize
    typical = int(np.median(sizes)) * row_bytes if sizes else 0
    if len(sizes) < TINY_CHUNK_COUNT or typical >= TINY_CHUNK_BYTES:
        return
    rows = min(max(1, SUGGESTED_CHUNK_BYTES // max(row_bytes, 1)), X.shape[0])
    warnings.warn(
        f"X is read in {len(sizes)} chunks of about {int(np.median(sizes))} rows "
        f"({_size(typical)}): at ~1 ms of overhead per chunk, a pass costs more in "
        f"overhead than in work. Store or rechunk it in chunks of about {rows} rows "
        f"({_size(rows * row_bytes)}), e.g. X.rechunk({{0: {rows}}}).",
        TinyChunksWarning,
        stacklevel=4,
    )


@dataclass
class CachedRows:
    """The pass input of a fit with a cache: X's pass blocks, the first ones kept in memory.

    Attributes
    ----------
    source : dask array of shape (n, d)
        X as given: the store that storage errors and missing files are named from.
    parts : list
        Per block: its kept ``(x, rows)`` (a numpy tuple, or a persisted
        delayed of one on a distributed cluster; ``rows`` None when the block
        keeps all its rows) or, for a block not kept, the delayed read of
        its rows (n_i, d).
    kept : ndarray of bool, shape (m,)
        Whether block i is kept.
    offsets : ndarray of int64, shape (m + 1,)
        First global row of each block, then n.
    drop_nan_rows : bool
        Rows holding NaN are left out of every pass.
    """

    source: da.Array
    parts: list
    kept: np.ndarray
    offsets: np.ndarray
    drop_nan_rows: bool
    client: object = None
    #: On the local schedulers, until the first pass: the kept blocks are not read yet.
    unread: bool = False

    @classmethod
    def read(
        cls, X: da.Array, cache, drop_nan_rows: bool, held: list, free=None
    ) -> CachedRows | None:
        """Choose the blocks to keep and start reading them (None: none is kept).

        On the local schedulers the kept blocks are read by the first pass,
        in its compute (:meth:`first_read`, :meth:`hold`); on a cluster they
        are persisted now and the first pass waits for them.
        The object is appended to ``held`` as soon as it holds anything.
        """
        grouped, _ = reduction.group_small_chunks(X, None)
        offsets = np.concatenate([[0], np.cumsum(grouped.chunks[0])]).astype(np.int64)
        client = _client_of(X)
        free, where = free_memory(client) if free is None else (free, "there is")
        row_bytes = _kept_row_bytes(X, drop_nan_rows)
        kept = choose_blocks(np.diff(offsets), row_bytes, cache, free, where)
        if not kept.any():
            return None
        blocks = grouped.to_delayed(optimize_graph=True).ravel().tolist()
        keep = [
            dask.delayed(keep_block, pure=False)(block, offsets[i], drop_nan_rows)
            for i, block in enumerate(blocks) if kept[i]
        ]  # fmt: skip
        rows = cls(X, blocks, kept, offsets, drop_nan_rows, client)
        held.append(rows)
        if client is not None:
            keep = client.persist(keep, optimize_graph=False)
        rows._set_kept(keep)
        rows.unread = client is None
        return rows

    def _set_kept(self, keep: list) -> None:
        """The kept blocks' parts: their (x, rows), or delayed ones still to be read."""
        kept = iter(keep)
        pairs = zip(self.kept, self.parts, strict=True)
        self.parts = [next(kept) if k else part for k, part in pairs]

    def first_read(self) -> list:
        """The kept blocks' delayed (x, rows) still to be read (local schedulers: computed
        with the first pass, in its one compute), else an empty list."""
        if not self.unread:
            return []
        return [part for part, k in zip(self.parts, self.kept, strict=True) if k]

    def hold(self, kept: list) -> None:
        """Keep the (x, rows) of :meth:`first_read`, computed (nothing to do if it was empty)."""
        if self.unread and kept:
            self._set_kept(kept)
            self.unread = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.shape

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    def stats_parts(self, weight, block_fn, size: int, args: tuple, drop_nan_rows: bool) -> list:
        """Delayed (1, size) statistics of each block, in block order, as
        :func:`dask_emk.engine.reduction.block_stats_array` gives them."""
        if drop_nan_rows and not self.drop_nan_rows:
            raise ValueError("rows were kept without omitting NaN: a pass cannot omit them now")
        weights = self._weight_blocks(weight)
        packed_args = dask.delayed(args, pure=False, traverse=False)
        keyed = isinstance(block_fn, reduction.RowKeyed)
        # Keys in block order under one name: the schedulers run the blocks in
        # the order they run a plain pass's (random keys per block ran them in random order).
        name = f"kept-stats-{packed_args.key}"
        return [
            dask.delayed(block_stats, pure=False)(
                part, w, int(self.offsets[i]), bool(self.kept[i]), keyed, block_fn, packed_args,
                drop_nan_rows, dask_key_name=(name, i),
            )
            for i, (part, w) in enumerate(zip(self.parts, weights, strict=True))
        ]  # fmt: skip

    def _weight_blocks(self, weight) -> list:
        m = len(self.parts)
        if weight is None:
            return [None] * m
        if not isinstance(weight, da.Array):
            weight = np.asarray(weight)
            return [weight[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]
        chunks = (tuple(np.diff(self.offsets).tolist()),)
        if weight.chunks != chunks:
            weight = weight.rechunk(chunks)
        return weight.to_delayed(optimize_graph=True).ravel().tolist()

    def release(self) -> None:
        """Drop the kept rows (cancel their futures on a cluster)."""
        if self.client is not None:
            from distributed import futures_of

            futures = [f for part, k in zip(self.parts, self.kept, strict=True) if k
                       for f in futures_of(part)]  # fmt: skip
            if futures:
                self.client.cancel(futures)
        self.parts, self.kept = [], np.zeros(0, bool)


def keep_block(x: np.ndarray, offset: int, drop_nan_rows: bool) -> tuple:
    """What a block keeps: ``(x, None)``, or under ``drop_nan_rows`` its rows
    without NaN and their global indices (as :func:`dask_emk.core.blocks.without_nan_rows`)."""
    keep = rows_without_nan(x) if drop_nan_rows else None
    rows = None if keep is None else np.flatnonzero(keep)
    x = x if rows is None else np.take(x, rows, axis=0)
    x.flags.writeable = False  # every later pass reads these rows: none may change them
    return x, None if rows is None else rows + offset


def block_stats(part, w, offset, kept, keyed, block_fn, args, drop_nan_rows) -> np.ndarray:
    """A block's statistics row from its kept rows or from its read
    (:func:`dask_emk.engine.reduction.call_block` on the same rows, weights and indices)."""
    if not kept:
        rows = np.arange(offset, offset + part.shape[0]) if keyed else None
        return reduction.call_block(part, w, rows, block_fn, args, drop_nan_rows)
    x, rows = part
    if rows is not None and w is not None:
        w = np.take(w, rows - offset)
    if rows is None and keyed:
        rows = np.arange(offset, offset + x.shape[0])
    return reduction.call_block(x, w, rows, block_fn, args, False)


def choose_blocks(sizes, row_bytes: int, cache, free: int, where: str = "there is") -> np.ndarray:
    """Which blocks to keep (bool (m,)): all, the first that fit, or none.

    ``sizes``: the blocks' row counts (m,); ``free``: bytes free, ``where``
    says whose, in the words of :func:`free_memory`.

    Raises
    ------
    ValueError
        ``cache=True`` and all the blocks take more than the free memory.
    """
    need = np.cumsum(np.asarray(sizes, dtype=np.int64) * row_bytes)
    if cache is True or isinstance(cache, np.bool_):
        if need.size and need[-1] > free:
            raise ValueError(
                f"cache=True: the rows to keep take {_size(need[-1])} but {where} "
                f"{_size(free)} free; pass cache='auto' to keep the first blocks that fit in "
                f"{AUTO_SHARE:.0%} of it ({_size(AUTO_SHARE * free)}) and read the rest on "
                "every pass, or cache=False."
            )
        return np.ones(need.size, bool)
    return need <= AUTO_SHARE * free


def free_memory(client) -> tuple[int, str]:
    """Bytes free for kept rows, and where, in words.

    On a cluster: the sum over workers of the memory below the spill threshold
    (``distributed.worker.memory.spill`` of the limit) minus what the worker
    process holds now (a worker started without a limit counts for
    nothing: dask's default limit is its share of the machine); on the local
    schedulers: the machine's available memory.
    """
    if client is None:
        import psutil

        return int(psutil.virtual_memory().available), "this machine has"
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    # Up to the spill threshold, not the limit: a worker that already holds half
    # its limit would otherwise spill the kept rows to disk (bench_cache_budget).
    spill = dask.config.get("distributed.worker.memory.spill", 0.7) or 1.0
    free = sum(max(0, int(spill * int(w.get("memory_limit") or 0)) - int(w["metrics"]["memory"]))
               for w in workers)  # fmt: skip
    return free, f"the {len(workers)} worker(s) have, below their spill threshold,"


def _kept_row_bytes(X: da.Array, drop_nan_rows: bool) -> int:
    """Bytes a kept row takes at most: its values (and its global index under omit)."""
    return X.shape[1] * X.dtype.itemsize + (8 if drop_nan_rows else 0)


def _client_of(X: da.Array):
    """The distributed Client a compute of X would run on, or None (local scheduler)."""
    scheduler = dask.base.get_scheduler(collections=[X])
    owner = getattr(scheduler, "__self__", None)
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    return owner if isinstance(owner, Client) else None


def _size(n_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} B"
