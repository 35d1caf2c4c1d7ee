"""Reading the store once: a fit's rows kept in memory between its passes.

A fit makes tens of passes over the same rows (seeding rounds, Lloyd or EM
iterations); from a store each pass pays the read (decompressing zarr
chunks, ~2.0 s per GiB here, against ~0.32 s for a KMeans(16) kernel over
the same rows). :func:`kept_rows` reads the fit's input once and keeps each
block's rows in memory, where later passes read them: on the local
schedulers numpy arrays in this process; on a ``distributed`` cluster each
worker's blocks are read and held by one
:class:`~dask_emk.engine.keepers.RowKeeper` (an Actor) that every pass calls
directly: a task graph per pass cost ~40 ms of client, scheduler and worker
CPU on 2 cores, more than the kernels of a KMeans(16) pass over 2M rows. A
lost worker's blocks are read again from the store on a live worker, as
the scheduler would recompute a lost task. As Spark MLlib's KMeans and GaussianMixture persist their
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

import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from dask_emk.engine import reduction
from dask_emk.engine.keepers import RowKeeper, block_stats, keep_block
from dask_emk.engine.progress import pass_progress
from dask_emk.engine.storage import storage_errors

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
    # On dask's multiprocessing scheduler rows kept in this process travel to the
    # workers on every pass: slower than reading them there (10.6 against 7.5 s).
    if cache is False or not cache or (cache == "auto" and reduction.on_multiprocessing()):
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
class WorkerRows:
    """One worker's share of the kept blocks: its :class:`~dask_emk.engine.keepers.RowKeeper`."""

    address: str
    blocks: list
    future: Any  # the actor's future: cancelled, the worker drops the rows
    keeper: Any  # the Actor handle its passes call
    reading: Any  # the read's ActorFuture, until a pass has waited for it
    weights: Any = None  # token of the weights it holds


@dataclass
class CachedRows:
    """The pass input of a fit with a cache: X's pass blocks, the first ones kept in memory.

    Attributes
    ----------
    source : dask array of shape (n, d)
        X as given: the store that storage errors and missing files are named from.
    reads : list
        Per block: the delayed read of its rows (n_i, d).
    kept : ndarray of bool, shape (m,)
        Whether block i is kept.
    offsets : ndarray of int64, shape (m + 1,)
        First global row of each block, then n.
    drop_nan_rows : bool
        Rows holding NaN are left out of every pass.
    parts : list
        On the local schedulers, per block: its kept ``(x, rows)`` (``rows``
        None when the block keeps all its rows) once read, else its read.
    workers : list of WorkerRows
        On a distributed cluster: who keeps which blocks.
    """

    source: da.Array
    reads: list
    kept: np.ndarray
    offsets: np.ndarray
    drop_nan_rows: bool
    client: Any = None
    parts: list = field(default_factory=list)
    workers: list = field(default_factory=list)
    #: On the local schedulers, until the first pass: the kept blocks are not read yet.
    unread: bool = False
    _weight: tuple = (None, None, None)  # the weights last passed, their token, their blocks

    @classmethod
    def read(
        cls, X: da.Array, cache, drop_nan_rows: bool, held: list, free=None
    ) -> CachedRows | None:
        """Choose the blocks to keep and start reading them (None: none is kept).

        On the local schedulers the kept blocks are read by the first pass,
        in its compute; on a cluster each worker's keeper starts reading its
        blocks now and the first pass waits for them. The object is appended
        to ``held`` as soon as it holds anything.
        """
        grouped, _ = reduction.group_small_chunks(X, None)
        offsets = np.concatenate([[0], np.cumsum(grouped.chunks[0])]).astype(np.int64)
        client = _client_of(X)
        room = {} if client is None else worker_room(client)  # asked once, used twice
        free, where = free_memory(client, room) if free is None else (free, "there is")
        row_bytes = _kept_row_bytes(X, drop_nan_rows)
        sizes = np.diff(offsets)
        kept = choose_blocks(sizes, row_bytes, cache, free, where)
        if not kept.any():
            return None
        reads = grouped.to_delayed(optimize_graph=True).ravel().tolist()
        rows = cls(X, reads, kept, offsets, drop_nan_rows, client, parts=list(reads))
        held.append(rows)
        if client is None:  # the first pass computes the kept (x, rows) with its statistics
            rows.parts = [
                dask.delayed(keep_block, pure=False)(read, offsets[i], drop_nan_rows) if k else read
                for i, (read, k) in enumerate(zip(reads, kept, strict=True))
            ]  # fmt: skip
            rows.unread = True
            return rows
        threads = {
            a: w["nthreads"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()
        }
        for address, blocks in assign_workers(sizes * row_bytes, kept, room, threads).items():
            rows.workers.append(rows._start_keeper(address, blocks))
        return rows

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.shape

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    def block_rows(self, weight, block_fn, args: tuple, drop_nan_rows: bool, also=()) -> tuple:
        """One pass's (1, size) statistics row of every block, in block order, and
        the computed values of ``also`` (see :func:`dask_emk.engine.reduction.run_pass`)."""
        if drop_nan_rows and not self.drop_nan_rows:
            raise ValueError("rows were kept without omitting NaN: a pass cannot omit them now")
        with reduction.single_blas_thread():
            if self.client is None:
                return self._local_rows(weight, block_fn, args, drop_nan_rows, also)
            return self._cluster_rows(weight, block_fn, args, drop_nan_rows, also)

    def _local_rows(self, weight, block_fn, args, drop_nan_rows, also) -> tuple:
        """Local schedulers: one compute, which also reads the kept blocks the first time."""
        parts = self._stats_parts(range(len(self.parts)), weight, block_fn, args, drop_nan_rows)
        pairs = list(zip(self.parts, self.kept, strict=True))
        reading = [p for p, k in pairs if k] if self.unread else []
        rows, kept, *values = reduction.compute_one(
            (parts, reading, *also), source=self.source, progress=pass_progress()
        )
        if self.unread:
            read = iter(kept)
            self.parts = [next(read) if k else p for p, k in pairs]
            self.unread = False
        return rows, tuple(values)

    def _cluster_rows(self, weight, block_fn, args, drop_nan_rows, also) -> tuple:
        """A cluster: each worker's keeper called directly, the blocks not kept read by tasks."""
        request = (block_fn, args, drop_nan_rows, self._weight_token(weight))
        with storage_errors(self.source):  # the first pass: the keepers' reads (their errors)
            for k in range(len(self.workers)):
                self._keeper_ready(k)
        # A call may overtake an earlier one on its way to the worker: none before the read ends.
        calls = [self._call(worker, request) for worker in self.workers]
        rows: list = [None] * self.kept.size
        read = np.flatnonzero(~self.kept).tolist()
        values: list = []
        if read or also:
            parts = self._stats_parts(read, weight, block_fn, args, drop_nan_rows)
            got, *values = reduction.compute_one((parts, *also), source=self.source)
            for i, row in zip(read, got, strict=True):
                rows[i] = row
        progress = pass_progress()  # the keepers' blocks, as the tasks of a pass count
        if progress is not None:
            progress.pass_started()
        try:
            with storage_errors(self.source):
                for k, call in enumerate(calls):
                    for i, row in self._collect(k, call, request).items():
                        rows[i] = row
                    if progress is not None:
                        progress.tasks_done(sum(r is not None for r in rows), len(rows))
        finally:
            if progress is not None:
                progress.pass_ended()
        return rows, tuple(values)

    def _stats_parts(self, blocks, weight, block_fn, args, drop_nan_rows) -> list:
        """Delayed (1, size) statistics of ``blocks`` (indices) from their parts."""
        weights = self._weight_blocks(weight)
        packed_args = dask.delayed(args, pure=False, traverse=False)
        keyed = isinstance(block_fn, reduction.RowKeyed)
        # Keys in block order under one name: the schedulers run the blocks in
        # the order they run a plain pass's (random keys per block ran them in random order).
        name = f"kept-stats-{packed_args.key}"
        return [
            dask.delayed(block_stats, pure=False)(
                self.parts[i], weights[i], int(self.offsets[i]), bool(self.kept[i]),
                keyed, block_fn, packed_args, drop_nan_rows, dask_key_name=(name, i),
            )
            for i in blocks
        ]  # fmt: skip

    def _weight_blocks(self, weight) -> list:
        m = len(self.reads)
        if weight is None:
            return [None] * m
        if not isinstance(weight, da.Array):
            weight = np.asarray(weight)
            return [weight[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]
        chunks = (tuple(np.diff(self.offsets).tolist()),)
        if weight.chunks != chunks:
            weight = weight.rechunk(chunks)
        return weight.to_delayed(optimize_graph=True).ravel().tolist()

    def _weight_token(self, weight):
        """A token naming ``weight`` for the keepers (sent to each once), or None."""
        if weight is None:
            return None
        if self._weight[0] is not weight:
            token = weight.name if isinstance(weight, da.Array) else uuid.uuid4().hex
            self._weight = (weight, token, self._weight_blocks(weight))
        return self._weight[1]

    def _start_keeper(self, address: str, blocks: list) -> WorkerRows:
        """A :class:`~dask_emk.engine.keepers.RowKeeper` on ``address``, reading ``blocks``."""
        nthreads = self.client.scheduler_info(n_workers=-1)["workers"][address]["nthreads"]
        future = self.client.submit(RowKeeper, nthreads, workers=[address],
                                    allow_other_workers=False, actor=True, pure=False)  # fmt: skip
        keeper = future.result()
        reads = {i: (self.reads[i], int(self.offsets[i])) for i in blocks}
        return WorkerRows(address, blocks, future, keeper, keeper.read(reads, self.drop_nan_rows))

    def _call(self, worker: WorkerRows, request: tuple):
        """Start ``worker``'s pass (an ActorFuture of ``{block: row}``)."""
        block_fn, args, drop_nan_rows, token = request
        weights = None
        if token is not None:
            blocks = None
            if worker.weights != token:
                every = self._weight[2]
                blocks, worker.weights = {i: every[i] for i in worker.blocks}, token
            weights = (token, blocks)
        return worker.keeper.stats(block_fn, args, drop_nan_rows, weights)

    def _keeper_ready(self, k: int, tries: int = 3) -> None:
        """Wait for worker k's keeper to have read its blocks (a lost worker's blocks
        are read again on a live one, as the scheduler recomputes a lost task)."""
        worker = self.workers[k]
        if worker.reading is None:
            return
        try:
            worker.reading.result()
            worker.reading = None
            return
        except (OSError, RuntimeError) as exc:
            if tries == 0 or not _lost(worker, exc):
                raise
        self._replace(k)
        self._keeper_ready(k, tries - 1)

    def _collect(self, k: int, call, request: tuple, tries: int = 3) -> dict:
        """Worker k's ``{block: row}``; a lost worker's pass is run again on a live one."""
        try:
            got = call.result()
        except (OSError, RuntimeError) as exc:
            if tries == 0 or not _lost(self.workers[k], exc):
                raise
            self._replace(k)
            self._keeper_ready(k)
            return self._collect(k, self._call(self.workers[k], request), request, tries - 1)
        if sorted(got) != self.workers[k].blocks:  # never a sum over fewer blocks
            raise RuntimeError(f"the keeper on {self.workers[k].address} lost kept blocks")
        return got

    def _replace(self, k: int) -> None:
        """A keeper on a live worker reading the blocks of lost worker k."""
        lost = self.workers[k]
        self.client.cancel([lost.future])
        self.workers[k] = self._start_keeper(_live_worker(self.client, lost.address), lost.blocks)

    def release(self) -> None:
        """Drop the kept rows (on a cluster: the keepers, with their rows)."""
        if self.workers:
            self.client.cancel([worker.future for worker in self.workers])
        self.parts, self.workers, self.kept = [], [], np.zeros(0, bool)


def _lost(worker: WorkerRows, exc: BaseException) -> bool:
    """Whether ``exc`` from ``worker``'s keeper says its worker was lost (not an error
    of the pass): the actor's future failed, or distributed could not reach it."""
    return worker.future.status != "finished" or str(exc).startswith(
        ("Unable to contact Actor's worker", "Worker holding Actor was lost")
    )


def _live_worker(client, lost: str, seconds: float = 60.0) -> str:
    """The worker with the most room other than ``lost`` (waiting for a restarted one)."""
    deadline = time.monotonic() + seconds
    while True:
        room = {a: r for a, r in worker_room(client).items() if a != lost}
        if room:
            return max(sorted(room), key=room.__getitem__)
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"worker {lost} was lost with kept rows and no other worker joined in "
                f"{seconds:.0f} s to read them again"
            )
        time.sleep(0.2)


def assign_workers(block_bytes, kept, room: dict, threads: dict) -> dict:
    """The kept blocks by worker, spread for the passes' work: each, in order, to the
    worker with the fewest bytes per thread so far among those with room left for it.

    ``block_bytes`` (m,): what each block keeps; ``room`` and ``threads``: bytes free
    and threads by worker address. Returns ``{address: [block indices]}`` for the
    workers given any. (Filling the roomiest worker first put a small input's every
    block on one worker: the other idled through every pass.)
    """
    load = dict.fromkeys(sorted(room), 0)
    blocks: dict = {address: [] for address in load}
    for i in np.flatnonzero(kept):
        size = int(block_bytes[i])
        fits = [a for a in load if load[a] + size <= room[a]] or list(load)
        address = min(fits, key=lambda a: load[a] / max(int(threads.get(a, 1)), 1))
        blocks[address].append(int(i))
        load[address] += size
    return {address: some for address, some in blocks.items() if some}


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


def free_memory(client, room: dict | None = None) -> tuple[int, str]:
    """Bytes free for kept rows, and where, in words: on a cluster the sum of
    :func:`worker_room` (``room``, if already asked), on the local schedulers the
    machine's available memory."""
    if client is None:
        import psutil

        return int(psutil.virtual_memory().available), "this machine has"
    room = worker_room(client) if room is None else room
    return sum(room.values()), f"the {len(room)} worker(s) have, below their spill threshold,"


def worker_room(client) -> dict[str, int]:
    """Bytes free for kept rows on each worker, by address: the memory below its spill
    threshold (``distributed.worker.memory.spill`` of its limit) minus what the worker
    process holds now (a worker started without a limit counts for nothing: dask's
    default limit is its share of the machine)."""
    limits = {a: int(w.get("memory_limit") or 0)
              for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}  # fmt: skip
    # Asked now: the scheduler's figure is the last heartbeat's, which right after
    # a fit still counts that fit's rows (bench_cache_budget's second fit).
    # A worker that does not answer (lost a moment ago) counts as full.
    held = client.run(_process_memory, workers=list(limits), on_error="ignore")
    # Up to the spill threshold, not the limit: a worker that already holds half
    # its limit would otherwise spill the kept rows to disk (bench_cache_budget).
    spill = dask.config.get("distributed.worker.memory.spill", 0.7) or 1.0
    return {a: max(0, int(spill * limit) - int(held.get(a, limit))) for a, limit in limits.items()}


def _process_memory() -> int:
    """This process's resident memory in bytes (what a worker's memory limit counts)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


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
