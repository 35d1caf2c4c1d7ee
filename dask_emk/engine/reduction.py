"""Dask orchestration: one pass over the data = blockwise kernel + tree sum.

A *block function* maps one block of rows (and its sample weights) to a flat
float64 row of statistics (:class:`dask_emk.core.layout.StatsLayout`). A pass
applies it to every block with ``dask.array.blockwise``, adds the rows in a
tree of delayed combine steps (:func:`combine_tree`), then computes once. Only
the summed vector comes back to the client; responsibilities never leave the
block that made them.

Parameters go into the graph as one ``dask.delayed`` object, so a large one
(full precisions, K·d·d) is a single key shipped once per worker rather than
a copy embedded in every task.

In-memory (numpy) input does not go through Dask: its blocks are views
mapped over a local thread pool. ``dask.array.from_array`` copies the whole
array on every call (dask 2026), which cost more than a k-means pass.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed
from threadpoolctl import ThreadpoolController

from dask_emk.core._numba import announce_compilation
from dask_emk.core.blocks import LABEL_FILL, rows_without_nan, unit_weights, without_nan_rows
from dask_emk.core.nan_policy import NanPolicy
from dask_emk.engine.fingerprint import take_watch
from dask_emk.engine.progress import PassProgress, pass_progress, reporting
from dask_emk.engine.storage import check_stored_files, storage_errors

if TYPE_CHECKING:
    from dask_emk.core.layout import StatsLayout

#: Fan-in of the tree reduction when the caller gives none. A combine adds a
#: few K×d vectors, so wide fan-in is free, while dask's default of 4 makes a
#: third more tasks than blocks (each costs ~1 ms on a distributed cluster).
DEFAULT_SPLIT_EVERY = 32

#: Smallest input a kernel task should get, unless the Dask config key
#: :data:`MIN_TASK_BYTES_KEY` says otherwise: runs of smaller row chunks are
#: grouped up to this. A task costs ~1 ms on a distributed cluster, about
#: what the k-means kernel takes for 1 MiB of rows; grouping copies the rows,
#: so chunks this size or larger are left alone.
DEFAULT_MIN_TASK_BYTES = 4 * 2**20

#: The Dask config key of the smallest task input in bytes, e.g.
#: ``dask.config.set({"dask_emk.min_task_bytes": 0})`` keeps every chunk a
#: task of its own. Read on the client when a pass is built.
MIN_TASK_BYTES_KEY = "dask_emk.min_task_bytes"

#: Grouping never leaves fewer tasks than this, unless the Dask config key
#: :data:`MIN_TASKS_KEY` says otherwise (small data keep their parallelism:
#: one 400 KB task made a k-means fit 2x slower on 2 threads).
DEFAULT_MIN_TASKS = 16

#: The Dask config key of the fewest tasks grouping may leave.
MIN_TASKS_KEY = "dask_emk.min_tasks"

#: Rows per block when the input is an in-memory numpy array.
NUMPY_BLOCK_BYTES = 8 * 2**20


def numpy_block_rows(n_features: int) -> int:
    """Rows per block for in-memory input: about 8 MiB of float64 per block."""
    return max(256, NUMPY_BLOCK_BYTES // (8 * max(n_features, 1)))


@dataclass(frozen=True)
class RowKeyed:
    """A block function that also takes its rows' global indices.

    The engine calls ``fn(x, w, rows, *args)``, ``rows`` of shape (n,) int64
    the position of each of the block's rows in the whole input (rows left
    out, as under ``nan_policy='omit'``, keep theirs), so that random draws
    keyed by them (:func:`dask_emk.core.blocks.row_uniforms`) do not depend
    on the chunking. Other block functions are called ``fn(x, w, *args)``.
    """

    fn: Callable[..., np.ndarray]


def is_kept(X) -> bool:
    """Whether X is a fit's rows kept in memory (:class:`dask_emk.engine.cache.CachedRows`),
    which a pass takes as it takes X (its blocks' rows through ``block_rows``)."""
    return hasattr(X, "block_rows")


def stored_source(X):
    """What X reads from: the array a kept X was read from, else X."""
    return X.source if is_kept(X) else X


def apply_block(block_fn, x, w, rows: np.ndarray, args: tuple) -> np.ndarray:
    """``block_fn`` of one block, given its rows' indices if it is :class:`RowKeyed`."""
    if isinstance(block_fn, RowKeyed):
        return block_fn.fn(x, w, rows, *args)
    return block_fn(x, w, *args)


class RowIndex:
    """The row numbers 0..n-1 as an array-like, read by slices as a dask array's chunks.

    ``dask.array.from_array`` makes a blockwise layer of it that is fused
    into the pass's tasks (a numpy array of the numbers would add a task
    per block), so each block gets its rows' numbers on every scheduler.
    """

    def __init__(self, n: int):
        self.shape, self.ndim, self.dtype = (n,), 1, np.dtype(np.int64)

    def __getitem__(self, key) -> np.ndarray:
        (rows,) = key if isinstance(key, tuple) else (key,)
        return np.arange(*rows.indices(self.shape[0]), dtype=np.int64)

    def __dask_tokenize__(self):
        return ("dask-emk-row-index", self.shape[0])


def row_index(X: da.Array) -> da.Array:
    """Global row number of every row of ``X``, shape (n,) chunked as X's rows."""
    return da.from_array(RowIndex(X.shape[0]), chunks=(X.chunks[0],))


def block_stats_array(
    X: da.Array,
    weight: da.Array | None,
    block_fn: Callable[..., np.ndarray],
    size: int,
    *args: Any,
    drop_nan_rows: bool = False,
) -> da.Array:
    """Lazy (n_blocks, size) array: ``block_fn(x_block, w_block, *args)`` per block.

    ``args`` are wrapped in one ``dask.delayed`` so they enter the graph once,
    under a random key: hashing them (pure=True) cost ~1.5 ms a pass. The
    layer is named from that key, which saves hashing its arguments too.
    With ``drop_nan_rows`` each block's rows holding NaN are dropped first
    (:func:`call_block`). A :class:`RowKeyed` ``block_fn`` also gets its
    rows' indices, a blockwise argument (:func:`row_index`) of X's chunks.
    """
    packed_args = dask.delayed(args, pure=False, traverse=False)
    w_arg = (None, None) if weight is None else (weight, "i")
    rows_arg = (row_index(X), "i") if isinstance(block_fn, RowKeyed) else (None, None)
    return da.blockwise(
        call_block,
        "ij",
        X,
        "ij",
        *w_arg,
        *rows_arg,
        block_fn,
        None,
        packed_args,
        None,
        drop_nan_rows,
        None,
        adjust_chunks={"i": 1, "j": size},
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
        concatenate=True,
        name=f"block-stats-{packed_args.key}",
    )


def call_block(x, w, rows, block_fn, args, drop_nan_rows: bool = False):
    """``block_fn(x, w, *args)``; with ``drop_nan_rows`` on the rows without NaN only.

    ``nan_policy='omit'`` lives here, in the pass the fit makes anyway: no
    mask is computed ahead, and the kernels never see a NaN row, so such a
    row takes no part in any statistic (sums, counts, farthest rows, draws).
    ``rows``: the block's global row indices (n,), or None when ``block_fn``
    is not :class:`RowKeyed`. No weights are weights of 1, here for every
    kernel: a fit without ``sample_weight`` is bit for bit the fit with
    ``np.ones(n)`` (the kernels' sums without weights round otherwise).
    """
    if w is None:
        w = unit_weights(x.shape[0])
    if drop_nan_rows:
        x, w, rows = without_nan_rows(x, w, rows)
    return apply_block(block_fn, x, w, rows, args)


def run_pass(
    X: np.ndarray | da.Array,
    weight: np.ndarray | da.Array | None,
    layout: StatsLayout,
    block_fn: Callable[..., np.ndarray],
    *args: Any,
    split_every: int | None = None,
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
    also: tuple | None = None,
    nan_policy: NanPolicy = NanPolicy.RAISE,
    complete_rows: bool = False,
):
    """One pass over the data, unpacked: every pass of the package runs here.

    :func:`reduce_pass` of ``block_fn``, whose packed rows ``layout``
    describes, then :meth:`StatsLayout.unpack`; the statistics must hold a
    ``nonfinite`` count (rows holding NaN or infinity), which raises.

    Parameters
    ----------
    layout : StatsLayout
        Layout of ``block_fn``'s row, with a ``nonfinite`` entry.
    also : tuple, optional
        Other arrays (numpy, or dask from the same data) computed with the
        pass, in its one compute, each chunk read once.
    nan_policy : NanPolicy
        'omit' leaves out the rows holding NaN (:func:`call_block`);
        'marginalize': ``block_fn`` takes NaN as missing values. Under both
        only ±inf is an error.
    complete_rows : bool
        Leave out the rows holding NaN whatever ``nan_policy`` (a pass that
        draws complete rows under 'marginalize').

    Returns
    -------
    dict of the summed statistics by ``layout``; with ``also``, a tuple
    (that dict, the values of ``also``).

    Raises
    ------
    ValueError
        If the data holds NaN or infinity (:func:`raise_on_nonfinite`).
    """
    drop_nan_rows = nan_policy.omits_rows or complete_rows
    out = reduce_pass(
        X, weight, block_fn, layout.size, *args, split_every=split_every, combine=combine,
        also=also, drop_nan_rows=drop_nan_rows,
    )  # fmt: skip
    vector, values = out if also is not None else (out, None)
    stats = layout.unpack(vector)
    raise_on_nonfinite(stats["nonfinite"], stored_source(X), drop_nan_rows or nan_policy.allows_nan)
    return stats if also is None else (stats, values)


def reduce_pass(
    X: np.ndarray | da.Array,
    weight: np.ndarray | da.Array | None,
    block_fn: Callable[..., np.ndarray],
    size: int,
    *args: Any,
    split_every: int | None = None,
    combine: Callable[[np.ndarray], np.ndarray] | None = None,
    also: tuple | None = None,
    drop_nan_rows: bool = False,
):
    """One pass over the data: sum of ``block_fn`` over all blocks, shape (size,).

    Exactly one ``compute`` with the scheduler in effect for dask input;
    in-memory numpy input is split into blocks here and run on local threads
    (:func:`local_map`), without Dask.

    Parameters
    ----------
    X : ndarray or dask array of shape (n, d), rows chunked only
        Or a fit's rows kept in memory (:func:`is_kept`): the same blocks,
        from memory; the first such pass also reads the blocks to keep.
    weight : ndarray or dask array of shape (n,), or None
    block_fn : callable ``(x, w, *args) -> ndarray (1, size)``
    size : int
        Length of the statistics vector.
    *args
        Extra arguments for ``block_fn`` (parameters).
    split_every : int, optional
        Fan-in of the tree reduction (:data:`DEFAULT_SPLIT_EVERY` when None).
    combine : callable ``(rows (r, size)) -> (1, size)``, optional
        How to merge block rows (default: add them). It must be associative
        and keep meaning when applied to its own outputs; rows arrive in
        block order.
    also : tuple, optional
        See :func:`run_pass`; then returns (the vector, the values of ``also``).
    drop_nan_rows : bool
        Leave out the rows holding NaN (:func:`call_block`; set by :func:`run_pass`).
    """
    announce_compilation()  # the first pass after an install compiles: say it first
    watch = take_watch()  # a pipeline's content check: the first pass also hashes the rows
    if watch is not None:
        # The rows as read (kept rows are past the NaN rule): the fingerprint
        # does not depend on the cache.
        return watch.run(
            reduce_pass, call_block, stored_source(X), weight, block_fn, size, *args,
            split_every=split_every, combine=combine, also=also, drop_nan_rows=drop_nan_rows,
            wrap=RowKeyed,
        )  # fmt: skip
    if is_kept(X):
        rows, values = X.block_rows(weight, block_fn, args, drop_nan_rows, also or ())
        vector = combine_rows(rows, combine or _add_rows, split_every or DEFAULT_SPLIT_EVERY)
        vector = vector.reshape(size)
        return vector if also is None else (vector, values)
    if not isinstance(X, da.Array):
        w = None if weight is None else np.asarray(weight)
        rows = local_map(
            lambda sl: call_block(
                X[sl], None if w is None else w[sl], np.arange(*sl.indices(X.shape[0])),
                block_fn, args, drop_nan_rows,
            ),
            X.shape[0],
            X.shape[1],
        )  # fmt: skip
        stacked = np.concatenate([np.asarray(r, dtype=np.float64).reshape(1, -1) for r in rows])
        # As the tree's last step would (e.g. sorting a top-m list).
        vector = (combine or _add_rows)(stacked).reshape(size)
        return vector if also is None else (vector, also)
    X, weight = group_small_chunks(X, weight)
    blocks = block_stats_array(X, weight, block_fn, size, *args, drop_nan_rows=drop_nan_rows)
    # With ``also`` nothing is optimised: the chunk reads stay tasks of their
    # own, shared by the pass and ``also`` (fused into either they were read twice).
    fused = also is None
    total = combine_tree(
        blocks, combine or _add_rows, split_every or DEFAULT_SPLIT_EVERY, optimize_graph=fused
    )
    progress = pass_progress()  # a caller watching the passes (the CLI's bar), else None
    if fused:
        return np.asarray(compute_one(total, source=blocks, progress=progress)).reshape(size)
    total, *values = compute_one((total, *also), source=blocks, progress=progress)
    return np.asarray(total).reshape(size), tuple(values)


def _add_rows(rows: np.ndarray) -> np.ndarray:
    return rows.sum(axis=0, keepdims=True)


def min_task_bytes() -> int:
    """The smallest task input in bytes: Dask's config :data:`MIN_TASK_BYTES_KEY`,
    default :data:`DEFAULT_MIN_TASK_BYTES`."""
    return int(dask.config.get(MIN_TASK_BYTES_KEY, DEFAULT_MIN_TASK_BYTES))


def group_small_chunks(X: da.Array, weight: da.Array | None):
    """Merge runs of consecutive row chunks smaller than :func:`min_task_bytes`.

    Runs stop at that size or at 1/``min_tasks`` (:data:`MIN_TASKS_KEY`,
    default :data:`DEFAULT_MIN_TASKS`) of the rows, whichever is smaller.
    Only merges (a pure concatenation, never a split), so data in
    1,000-row chunks costs one task per ~4 MiB instead of one per chunk.
    Results do not depend on it beyond the order of float64 additions.
    """
    row_bytes = max(X.shape[1] * X.dtype.itemsize, 1)
    min_tasks = int(dask.config.get(MIN_TASKS_KEY, DEFAULT_MIN_TASKS))
    target = max(1, min(min_task_bytes() // row_bytes, X.shape[0] // min_tasks))
    sizes = X.chunks[0]
    if len(sizes) < 2 or max(sizes) >= target:
        return X, weight
    grouped, run = [], 0
    for size in sizes:
        run += size
        if run >= target:
            grouped.append(run)
            run = 0
    if run:
        grouped.append(run)
    chunks = (tuple(grouped),)
    return X.rechunk(chunks + ((X.shape[1],),)), None if weight is None else weight.rechunk(chunks)


def local_map(fn: Callable[[slice], Any], n_rows: int, n_features: int) -> list:
    """``fn`` over row slices of :func:`numpy_block_rows` rows, in block order.

    One block runs here; more run on a process-wide pool of one thread per
    core, with one BLAS thread each. Small inputs are frequent (the annealing
    runs thousands of passes on its sample) and need no pool at all.
    """
    step = numpy_block_rows(n_features)
    slices = [slice(start, start + step) for start in range(0, max(n_rows, 1), step)]
    with single_blas_thread():
        if len(slices) == 1:
            return [fn(slices[0])]
        return list(_local_pool().map(fn, slices))


@lru_cache(maxsize=1)
def _local_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="dask-emk")


def compute_one(
    result,
    source: da.Array | None = None,
    optimize_graph: bool = False,
    progress: PassProgress | None = None,
    scheduler: str | None = None,
):
    """``dask.compute`` of one result with one BLAS thread per task.

    Every compute of the package goes through here. Dask already runs one
    task per core: BLAS threads inside each task would oversubscribe the
    cores (measured 5-30x slower on 2 cores). Distributed workers get the
    same limit from their nanny's environment. A failure reading a zarr
    store of ``source`` (default: ``result``) becomes a ValueError naming
    the store (:func:`dask_emk.engine.storage.storage_errors`).

    Parameters
    ----------
    result : dask collection, or a tuple of them (computed together)
    source : dask array, optional
    optimize_graph : bool, default False
        Passes come optimised (:func:`combine_tree`); a plain slice of the
        data needs optimising, or every chunk of the data would be read.
    progress : PassProgress, optional
        Told of the tasks done as they finish (:func:`dask_emk.engine.progress.reporting`).
    scheduler : str, optional
        Dask's scheduler to use instead of the one in effect (``'sync'``: a
        keeper reading its blocks on a worker, :mod:`dask_emk.engine.keepers`).
    """
    chosen: dict[str, Any] = {} if scheduler is None else {"scheduler": scheduler}
    if scheduler is None and on_multiprocessing() and dask.config.get("pool", None) is None:
        chosen["pool"] = process_pool()  # dask would start a pool for this compute
    with (
        single_blas_thread(),
        storage_errors(result if source is None else source),
        reporting(progress, result) as extra,
    ):
        (value,) = dask.compute(result, optimize_graph=optimize_graph, **extra, **chosen)
    return value


def on_multiprocessing() -> bool:
    """Whether a compute here runs on dask's multiprocessing scheduler."""
    import dask.multiprocessing

    return dask.base.get_scheduler() is dask.multiprocessing.get


@lru_cache(maxsize=1)
def process_pool() -> ProcessPoolExecutor:
    """One pool of worker processes for every compute of this process on dask's
    multiprocessing scheduler, shut down when Python exits: a new pool per
    compute imports numpy, dask and the kernels again every pass (3.5 s a
    KMeans pass over 500,000 rows on 2 cores, against 0.3 s with this pool)."""
    import multiprocessing

    context = multiprocessing.get_context(dask.config.get("multiprocessing.context", "spawn"))
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    return ProcessPoolExecutor(workers, mp_context=context)


@lru_cache(maxsize=1)
def blas_controller() -> ThreadpoolController:
    """The process's thread pools, inspected once (a fresh scan costs ~2 ms)."""
    return ThreadpoolController()


_blas_lock = threading.Lock()
_blas_state = {"users": 0, "limiter": None}


@contextmanager
def single_blas_thread():
    """Limit BLAS to one thread while any pass in this process runs.

    threadpoolctl's limits are process-wide, so passes running concurrently
    in several client threads share one limit: the first in sets it, the last
    out restores the original (nested save/restore would leave it wrong).
    """
    with _blas_lock:
        if _blas_state["users"] == 0:
            _blas_state["limiter"] = blas_controller().limit(limits=1, user_api="blas")
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0:
                _blas_state["limiter"].restore_original_limits()


def combine_tree(
    blocks: da.Array,
    combine: Callable[[np.ndarray], np.ndarray],
    split_every: int,
    optimize_graph: bool = True,
) -> Delayed:
    """Tree-reduce (n_blocks, size) rows with ``combine`` into one delayed (1, size).

    Each step hands ``combine`` the rows of up to ``split_every`` blocks (or
    steps) stacked in block order, so the result does not depend on the
    scheduler. The blocks' graph is optimised here, once, as a compute
    would (a block's zarr read stays fused with its kernel); the tree is a
    few delayed calls. ``dask.array.reduction`` in its place cost ~2 ms
    more per pass in building, hashing and optimising its layers.
    """
    parts = blocks.to_delayed(optimize_graph=optimize_graph).ravel().tolist()
    return combine_parts(parts, combine, split_every, blocks.name)


def combine_parts(
    parts: list, combine: Callable[[np.ndarray], np.ndarray], split_every: int, name=None
) -> Delayed:
    """:func:`combine_tree` of the blocks' delayed (1, size) rows, in block order;
    ``name`` makes the keys (default: a random one)."""
    name = name or uuid.uuid4().hex
    level = 0
    while True:
        parts = [
            dask.delayed(_combine_rows, pure=False)(
                combine, *parts[i : i + split_every],
                dask_key_name=f"combine-{level}-{i // split_every}-{name}",
            )
            for i in range(0, len(parts), split_every)
        ]  # fmt: skip
        if len(parts) == 1:
            return parts[0]
        level += 1


def combine_rows(rows: list, combine: Callable[[np.ndarray], np.ndarray], split_every: int):
    """:func:`combine_parts` in memory: the same steps on the same rows (1, size), in
    block order, so the same bits as the tree of tasks."""
    while True:
        rows = [_combine_rows(combine, *rows[i : i + split_every])
                for i in range(0, len(rows), split_every)]  # fmt: skip
        if len(rows) == 1:
            return np.asarray(rows[0])


def _combine_rows(combine, *rows):
    return combine(np.concatenate(rows))


def map_rows(
    X: np.ndarray | da.Array,
    row_fn: Callable[..., np.ndarray],
    *args: Any,
    n_out: int | None = None,
    dtype=np.float64,
    nan_policy: NanPolicy = NanPolicy.RAISE,
) -> np.ndarray | da.Array:
    """Apply ``row_fn(x_block, *args)`` per block of rows.

    Lazy (a dask array) for dask input; computed now, with local threads, for
    numpy input. Each block is checked as it is computed (:func:`check_rows`),
    so a lazy result holding a refused row raises when computed, never
    returns a made-up value for it.

    Parameters
    ----------
    row_fn : callable returning (n_block,) if ``n_out`` is None else (n_block, n_out)
    n_out : int, optional
        Width of the per-row output; None for one value per row.
    nan_policy : NanPolicy
        RAISE: a row holding NaN is an error; OMIT: such rows are not
        passed to ``row_fn`` and their outputs are NaN (:data:`LABEL_FILL`
        for integer ``dtype``); MARGINALIZE: ``row_fn`` takes NaN as
        missing. ±inf is an error under every policy.
    """
    options = (dtype, nan_policy, n_out)
    if not isinstance(X, da.Array):
        parts = local_map(lambda sl: _call_rows(X[sl], row_fn, args, *options), *X.shape)
        return np.concatenate(parts)
    packed_args = dask.delayed(args, pure=False, traverse=False)
    index, extra = ("i", {}) if n_out is None else ("ij", {"adjust_chunks": {"j": n_out}})
    return da.blockwise(
        _call_rows, index, X, "ij", row_fn, None, packed_args, None,
        *(part for option in options for part in (option, None)),
        dtype=dtype, meta=np.empty((0,) * len(index), dtype=dtype), concatenate=True, **extra,
    )  # fmt: skip


def _call_rows(x, row_fn, args, dtype, nan_policy=NanPolicy.RAISE, n_out=None):
    check_rows(x, nan_policy)
    keep = rows_without_nan(x) if nan_policy.omits_rows else None
    if keep is None:
        # The declared dtype of a dask array is not a cast: make the blocks match it.
        return np.asarray(row_fn(x, *args)).astype(dtype, copy=False)
    missing = LABEL_FILL if np.dtype(dtype).kind in "iu" else np.nan
    out = np.full(x.shape[:1] + (() if n_out is None else (n_out,)), missing, dtype=dtype)
    if keep.any():
        out[keep] = _call_rows(x[keep], row_fn, args, dtype)
    return out


def check_rows(x: np.ndarray, nan_policy: NanPolicy) -> None:
    """Raise :func:`nonfinite_error` for the rows of block ``x`` that ``nan_policy`` refuses.

    NaN under 'raise', ±inf always: what numpy input is refused for up front,
    checked here for lazy input as each block is computed.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(x.sum()):  # one cheap reduction; overflow only sends us on
            return
    allow_nan = nan_policy.allows_nan
    bad = np.isinf(x) if allow_nan else ~np.isfinite(x)
    count = int(bad.any(axis=1).sum())
    if count:
        where = f" in {count} row(s) of a block of {x.shape[0]}"
        raise nonfinite_error("X", where, allow_nan, "X[da.isfinite(X).all(axis=1)]")


def raise_on_nonfinite(count: float, source=None, allow_nan: bool = False) -> None:
    """Raise the error for NaN/inf rows that a pass over the data counted.

    The kernels count rows whose statistics are not finite in the pass they
    already make, so lazy input needs no extra pass just to look for NaN.
    Missing zarr chunk files read as the fill value (NaN in stores written
    by xarray), so the zarr arrays of ``source`` (the data passed over) are
    first checked for missing files, which are reported instead. With
    ``allow_nan`` the rows counted hold ±inf (rows with NaN were left out, or
    their NaN marginalised).
    """
    if count <= 0:
        return
    check_stored_files(source)
    where = f" in {int(count)} row(s) (or values too large for float64 arithmetic)"
    raise nonfinite_error("Input", where, allow_nan, "X[da.isfinite(X).all(axis=1)]")


def nonfinite_error(name: str, where: str, allow_nan: bool, example: str) -> ValueError:
    """The error for non-finite input, one wording for every check.

    ``name`` and ``where`` say what holds the values ("X", " in 3 row(s)"),
    ``allow_nan`` whether NaN is already taken as missing (then only infinity
    is wrong), ``example`` how to drop the rows with the input's own library.
    """
    if allow_nan:
        return ValueError(
            f"{name} contains infinity{where}; nan_policy='omit' and 'marginalize' take "
            "NaN as missing, never infinity: remove or clip the infinite values."
        )
    return ValueError(
        f"{name} contains NaN or infinity{where}; pass nan_policy='omit' to leave out "
        "the rows holding NaN or nan_policy='marginalize' to use the features each row "
        "has (`--nan-policy` on the command line, nan_policy in a pipeline), "
        f"or remove or impute them, e.g. {example}."
    )
