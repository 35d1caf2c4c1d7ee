"""Progress within a pass: what a pass's compute has done, told to a hook.

A caller that wants to watch the passes of a fit (the CLI's progress bar)
enters :func:`watch_passes` with a :class:`PassProgress`;
:func:`dask_emk.engine.reduction.reduce_pass` reads it (:func:`pass_progress`)
and hands it, as a value, to :func:`dask_emk.engine.reduction.compute_one`,
which reports its compute through :func:`reporting`. Without a hook (the
API's default) nothing is counted and nothing is said.

How the tasks are counted: on Dask's local schedulers (sync, threads,
processes) by a callback passed to that compute (dask.diagnostics' format); on a
distributed cluster by polling the scheduler's task stream
(:meth:`distributed.Client.get_task_stream`) from a thread while the compute
runs: one call as the pass starts (it makes the scheduler record tasks), then
one every :data:`POLL_SECONDS`, so a short pass costs one call on the side.
The same records show which worker is slow (:func:`slow_workers`).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import dask
from dask.utils import key_split

#: Seconds between two looks at a distributed scheduler's task stream.
POLL_SECONDS = 0.5
#: A worker is named slow when its median task time in a pass is this many
#: times the median over all the pass's tasks ...
SLOW_RATIO = 3.0
#: ... and at least this many seconds (scheduling noise on short tasks is not news).
SLOW_FLOOR_SECONDS = 0.5


class PassProgress(Protocol):
    """What a pass reports: its start, tasks done of total as they finish, its end,
    and the slow workers it saw (address, what was seen)."""

    def pass_started(self) -> None: ...

    def tasks_done(self, done: int, total: int) -> None: ...

    def pass_ended(self) -> None: ...

    def slow_worker(self, address: str, seen: str) -> None: ...


_HOOK: ContextVar[PassProgress | None] = ContextVar("dask_emk_pass_progress", default=None)


@contextmanager
def watch_passes(progress: PassProgress | None) -> Iterator[PassProgress | None]:
    """Report every pass run in the body (in this thread's context) to ``progress``."""
    token = _HOOK.set(progress)
    try:
        yield progress
    finally:
        _HOOK.reset(token)


def pass_progress() -> PassProgress | None:
    """The hook of :func:`watch_passes` around the caller, else None."""
    return _HOOK.get()


@contextmanager
def reporting(progress: PassProgress | None, result: Any) -> Iterator[dict]:
    """Report the compute of ``result`` run in the body to ``progress``.

    Yields the keyword arguments to give ``dask.compute`` (a callback on a
    local scheduler, none on a distributed one, which is polled instead).
    """
    if progress is None:
        yield {}
        return
    client = distributed_client()
    progress.pass_started()
    try:
        if client is None:
            yield {"callbacks": [_local_counter(progress)]}
        else:
            with _polling(client, result, progress):
                yield {}
    finally:
        progress.pass_ended()


def distributed_client():
    """The distributed Client that runs ``dask.compute`` here, else None."""
    if "distributed" not in sys.modules:
        return None
    from dask.base import get_scheduler
    from distributed import Client

    client = getattr(get_scheduler(), "__self__", None)
    return client if isinstance(client, Client) else None


def _local_counter(progress: PassProgress) -> tuple:
    """Tasks done of total after each task on a local scheduler (as dask's ProgressBar
    counts them): the (start, start_state, pretask, posttask, finish) callbacks
    that ``dask.compute(..., callbacks=[...])`` takes."""

    def posttask(key, result, dsk, state, worker_id):
        done = len(state["finished"])
        left = sum(len(state[k]) for k in ("ready", "waiting", "running"))
        progress.tasks_done(done, done + left)

    return (None, None, None, posttask, None)


@contextmanager
def _polling(client, result, progress: PassProgress) -> Iterator[None]:
    """A thread that counts the compute's finished tasks in the task stream."""
    keys = _graph_keys(result)
    stop, began = threading.Event(), time.time()  # the task stream is in wall-clock time
    records: list = []

    def poll():
        # A display must not fail the fit: a scheduler that stops answering
        # (a killed cluster) ends the polling; the compute reports the failure.
        with contextlib.suppress(Exception):
            client.get_task_stream(start=began)  # the scheduler records from now on, if not yet
            while not stop.wait(POLL_SECONDS):
                records[:] = _records(client, began, keys)
                progress.tasks_done(len(records), len(keys))

    thread = threading.Thread(target=poll, name="dask-emk-pass-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2 * POLL_SECONDS)  # a call in flight to a dead scheduler is left
    if records:  # the pass succeeded and lasted a poll: look at its workers
        with contextlib.suppress(Exception):
            records[:] = _records(client, began, keys)
        for address, seen in slow_workers(records):
            progress.slow_worker(address, seen)


def _graph_keys(result: Any) -> set:
    parts = result if isinstance(result, tuple) else (result,)
    keys: set = set()
    for part in parts:
        if dask.is_dask_collection(part):
            keys.update(_key(k) for k in part.__dask_graph__().keys())
    return keys


def _key(key: Any) -> Any:
    """A task key as the client and the task stream both spell it (tuples may come as lists)."""
    return tuple(key) if isinstance(key, list) else key


def _records(client, since: float, keys: set) -> list[dict]:
    """The task stream's records of ``keys`` finished since ``since`` (first call: the
    scheduler starts recording)."""
    return [r for r in client.get_task_stream(start=since) if _key(r["key"]) in keys]


def slow_workers(records: list[dict]) -> list[tuple[str, str]]:
    """(address, what was seen) of each worker whose median time on one kind of task
    (its key's name: reads, kernels, sums) is over :data:`SLOW_RATIO` times that
    kind's median over all workers, and over :data:`SLOW_FLOOR_SECONDS`.

    ``records``: task stream records (``key``, ``worker``, ``startstops`` with
    the ``compute`` action's ``start`` and ``stop``) of one pass.
    """
    kinds: dict[str, dict[str, list[float]]] = {}
    for record in records:
        took = sum(s["stop"] - s["start"] for s in record["startstops"] if s["action"] == "compute")
        kind = kinds.setdefault(_kind(record["key"]), {})
        kind.setdefault(record["worker"], []).append(took)
    slow = {}
    for name, times in kinds.items():
        if len(times) < 2:
            continue
        overall = statistics.median(t for ts in times.values() for t in ts)
        for address, ts in times.items():
            mine = statistics.median(ts)
            if mine > max(SLOW_RATIO * overall, SLOW_FLOOR_SECONDS) and address not in slow:
                slow[address] = (f"its {len(ts)} {name} tasks took {mine:.2f} s each (median) "
                                 f"against {overall:.2f} s over all workers")  # fmt: skip
    return sorted(slow.items())


def _kind(key: Any) -> str:
    """What a task does, in a word: a pass's blocks ("block-stats-…") are "block" tasks."""
    name = key_split(_key(key))
    return "block" if name.startswith("block-stats") else name
