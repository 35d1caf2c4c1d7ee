"""Where a pipeline computes: a local Dask scheduler, a LocalCluster or a remote cluster.

``--scheduler`` values: ``sync``, ``threads``, ``processes``, ``local`` or
``local:N`` (a ``distributed.LocalCluster`` with N single-threaded workers;
sized to the machine without N) and ``tcp://HOST:PORT`` (an existing cluster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import dask

#: Seconds to wait for a remote scheduler before giving up.
CONNECT_TIMEOUT = 5
LOCAL_SCHEDULERS = ("sync", "threads", "processes")


class SchedulerError(ValueError):
    """A scheduler that cannot be parsed or reached; the message says what to do."""


def parse_scheduler(spec: str) -> tuple[str, str | int | None]:
    """Split a scheduler spec into (kind, argument).

    Returns
    -------
    ('sync'|'threads'|'processes', None), ('local', n_workers or None) or
    ('tcp', address).
    """
    if spec in LOCAL_SCHEDULERS:
        return spec, None
    match = re.fullmatch(r"local(?::(\d+))?", spec)
    if match:
        n = int(match.group(1)) if match.group(1) else None
        if n == 0:
            raise SchedulerError("local:N needs N >= 1 workers, e.g. --scheduler local:2.")
        return "local", n
    if re.fullmatch(r"(tcp|tls)://[^\s:/]+:\d+", spec):
        return "tcp", spec
    raise SchedulerError(
        f"unknown scheduler {spec!r}; use sync, threads, processes, local, local:N "
        "or tcp://HOST:PORT."
    )


@contextlib.contextmanager
def use_scheduler(spec: str, echo: Callable[[str], None] = print) -> Iterator[None]:
    """Run the body with ``spec`` as Dask's scheduler; clusters it starts are closed after.

    Raises
    ------
    SchedulerError
        Unknown spec, or a remote scheduler that does not answer within
        ``CONNECT_TIMEOUT`` seconds.
    """
    kind, arg = parse_scheduler(spec)
    if kind == "processes":
        # One pool for the whole run: dask's default makes a new pool per
        # compute, i.e. new processes every iteration (seconds each).
        with (
            ProcessPoolExecutor(os.cpu_count()) as pool,
            dask.config.set(scheduler=kind, pool=pool),
        ):
            echo(f"scheduler: {kind} ({os.cpu_count()} processes)")
            yield
        return
    if kind in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=kind):
            echo(f"scheduler: {kind}")
            yield
        return
    from distributed import Client, LocalCluster

    if kind == "local":
        # Single-threaded workers: the block kernels call BLAS, and one
        # thread per core avoids oversubscribing it.
        cluster_kwargs = {"threads_per_worker": 1} if arg is not None else {}
        cluster = LocalCluster(n_workers=arg, dashboard_address=":0", **cluster_kwargs)
        try:
            with Client(cluster):  # closed first: the cluster's workers then stop
                n = len(cluster.scheduler_info["workers"])
                echo(f"scheduler: LocalCluster, {n} workers, {dashboard(cluster.dashboard_link)}")
                yield
        finally:
            with _no_kill_warning():
                cluster.close()
        return
    client = connect(arg)
    try:
        echo(f"scheduler: {arg}, {dashboard(client.dashboard_link, remote=True)}")
        yield
    finally:
        client.close()


class _KillWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "still alive after" not in record.getMessage()


@contextlib.contextmanager
def _no_kill_warning() -> Iterator[None]:
    """Without the nanny's "Worker process still alive after 4.0 seconds, killing".

    At a LocalCluster's close every nanny gives its worker process 4 s (its
    close timeout 5 s × 0.8) to exit, then kills it; a loaded machine's
    workers, their work done and the results written, took longer (one
    warning per worker at the end of every run on 2 busy cores). It is noise
    there; during the run a worker that dies still warns.
    """
    nanny, quiet = logging.getLogger("distributed.nanny"), _KillWarning()
    nanny.addFilter(quiet)
    try:
        yield
    finally:
        nanny.removeFilter(quiet)


#: The oldest bokeh Dask's dashboard serves pages with (distributed's own check).
BOKEH_MIN = (3, 1)


def dashboard(link: str, remote: bool = False) -> str:
    """The dashboard's link, where it shows something: Dask serves its pages only with
    bokeh >= 3.1 installed (else the link answers "Dask needs bokeh"). bokeh is not a
    dependency (a large package, with its own, for a view the logged progress
    lines replace); a remote scheduler's own bokeh is not known here, so its
    link is given."""
    from importlib.metadata import PackageNotFoundError, version

    if remote:
        return f"dashboard {link}"
    try:
        found = tuple(int(part) for part in version("bokeh").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        found = None
    if found is None or found < BOKEH_MIN:
        return "no dashboard (pip install 'bokeh>=3.1' for one)"
    return f"dashboard {link}"


def connect(address: str):
    """A ``distributed.Client`` for an existing cluster, or a SchedulerError."""
    from distributed import Client

    try:
        return Client(address, timeout=f"{CONNECT_TIMEOUT}s")
    except (OSError, TimeoutError) as exc:
        raise SchedulerError(
            f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT} s "
            f"({type(exc).__name__}); start it with `dask scheduler`, check the address, "
            "or use --scheduler local."
        ) from None
