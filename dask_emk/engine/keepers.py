"""Where kept rows live: what a block keeps, and a worker's keeper of its blocks.

:func:`keep_block` is what a block keeps of its read, :func:`block_stats` a
pass's statistics row of a block from its kept rows or from its read: the
same rows, weights and indices as a pass without the cache
(:func:`dask_emk.engine.reduction.call_block`). On a distributed cluster
each worker's kept blocks are held by a :class:`RowKeeper`, a
``distributed`` Actor: a pass calls it directly (no task graph, no scheduler
round): ~2 ms a pass against ~40 ms for a graph of one task per block on
this machine (benchmarks/RESULTS.md, issue 28).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from dask_emk.core.blocks import rows_without_nan
from dask_emk.engine import reduction


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


class RowKeeper:
    """One worker's kept blocks, by block index (a ``distributed`` Actor).

    Parameters
    ----------
    nthreads : int
        Threads its blocks are read and passed over with: the worker's own
        (an actor's calls run on one thread of their own).
    """

    def __init__(self, nthreads: int = 1):
        self.nthreads = max(1, int(nthreads))
        self.blocks: dict[int, tuple] = {}
        self.offsets: dict[int, int] = {}
        self.weights: tuple = (None, {})  # (token, {block index: weights (n_i,)})

    def read(self, reads: dict, drop_nan_rows: bool) -> int:
        """Read and keep blocks ``{i: (delayed block (n_i, d), first global row)}``;
        returns the bytes kept."""

        def read_one(item):
            i, (block, offset) = item
            x = reduction.compute_one(block, scheduler="sync")  # this thread reads it
            return i, offset, keep_block(np.asarray(x), offset, drop_nan_rows)

        for i, offset, kept in self._map(read_one, list(reads.items())):
            self.blocks[i], self.offsets[i] = kept, offset
        return sum(x.nbytes + (0 if r is None else r.nbytes) for x, r in self.blocks.values())

    def stats(self, block_fn: Callable, args: tuple, drop_nan_rows: bool, weights=None) -> dict:
        """``{i: block_stats of block i}`` (1, size) for every kept block.

        ``weights``: None (no weights), or ``(token, blocks)``: ``blocks``
        ``{i: weights or their delayed read}`` when the token is new here,
        else None (the weights kept with that token).
        """
        w = self._weights(weights)
        keyed = isinstance(block_fn, reduction.RowKeyed)

        def one(i):
            part, offset = self.blocks[i], self.offsets[i]
            return i, block_stats(part, w.get(i), offset, True, keyed, block_fn, args,
                                  drop_nan_rows)  # fmt: skip

        return dict(self._map(one, sorted(self.blocks)))

    def _weights(self, weights) -> dict:
        if weights is None:
            return {}
        token, blocks = weights
        if token != self.weights[0]:
            values = reduction.compute_one(blocks, scheduler="sync")
            self.weights = (token, {i: np.asarray(w) for i, w in values.items()})
        return self.weights[1]

    def _map(self, fn: Callable, items: Iterable) -> list:
        items = list(items)
        if self.nthreads == 1 or len(items) < 2:
            return [fn(item) for item in items]
        return list(_pool(self.nthreads).map(fn, items))


@lru_cache(maxsize=2)
def _pool(nthreads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(nthreads, thread_name_prefix="dask-emk-keeper")
