"""Reading the store once (issue 28) over the memory budget: a store 2x what cache='auto' keeps.

A LocalCluster of ``--workers`` single-threaded workers with a small
``--memory-limit`` each. After a warm-up fit, the store is sized from the
share ``cache='auto'`` fills (:data:`dask_emk.engine.cache.AUTO_SHARE` of
the workers' free memory, :func:`~dask_emk.engine.cache.free_memory`):
``--ratio`` x that share of float32 rows (``--n`` overrides), written once.
Then, interleaved, ``--repeat`` times each, ``KMeans(16)`` from given
centres, ``--iters`` Lloyd iterations at tol 0 (the same passes every fit):

- ``auto``: the store with ``cache='auto'``: the first blocks that fit are
  kept on the workers, the rest read on every pass;
- ``kernel``: the store's first rows, half as many as ``auto`` keeps
  (all of them would spill: see the printed spill figures),
  ``cache=True``: a pass over rows in memory, scaled by rows to the whole store;
- ``read``: one plain read pass (``sum``) of the whole store;
- ``False``: the store with ``cache=False`` (every pass reads all of it).

Per-iteration time: between consecutive ``callback`` calls, the first
(which holds the first read) left out, median. The figure:
``auto / (uncached share x read + kernel x n / n_kernel)`` (target <= 1.2x), the
uncached share being what ``auto`` would leave out when each of its fits starts
(the free memory changes between fits). During every fit a
thread samples each worker's RSS (``psutil`` on the worker pids, every
0.05 s) and the scheduler's view of each worker (status, spilled bytes);
at the end it prints the peak RSS per worker, whether a worker was paused,
spilled, or lost (its pid changed), and the workers' memory log lines.

    python benchmarks/bench_cache_budget.py --dir /tmp/bench-cache-budget

Heavy imports live inside the functions: the workers are spawned processes
that re-import this module.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

from bench_cache import D, K, make_store  # the same mixture store as bench_cache's fits


class Sampler:
    """Peak RSS per worker pid, and the scheduler's worker states, sampled in a thread."""

    def __init__(self, client, pids: dict):
        self.client, self.pids = client, pids
        self.peak = dict.fromkeys(pids, 0)
        self.statuses: set = set()
        self.spilled = 0
        self.spilled_start: int | None = None  # left on disk by the fit before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        procs = {addr: psutil.Process(pid) for addr, pid in self.pids.items()}
        last_info = 0.0
        while not self._stop.is_set():
            for addr, proc in procs.items():
                try:
                    self.peak[addr] = max(self.peak[addr], proc.memory_info().rss)
                except psutil.NoSuchProcess:
                    self.statuses.add(f"{addr} process gone")
            if time.monotonic() - last_info > 0.5:  # one scheduler call per half second
                last_info = time.monotonic()
                for w in self.client.scheduler_info(n_workers=-1)["workers"].values():
                    self.statuses.add(w.get("status", "?"))
                    spilled = (w["metrics"].get("spilled_bytes") or {}).get("disk", 0)
                    self.spilled = max(self.spilled, spilled)
                if self.spilled_start is None:
                    self.spilled_start = self.spilled
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def iteration_seconds(X, init, iters: int, cache) -> list[float]:
    """Wall seconds of each Lloyd iteration after the first (callback stamps)."""
    from dask_emk import KMeans

    stamps: list[float] = []
    KMeans(K, init=init, n_init=1, max_iter=iters, tol=0.0, cache=cache,
           callback=lambda model, info: stamps.append(time.perf_counter())).fit(X)  # fmt: skip
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def kept_rows_now(client, sizes, row_bytes: int) -> tuple[int, int]:
    """(rows 'auto' would keep if a fit started now, free bytes it sees)."""
    import numpy as np

    from dask_emk.engine.cache import choose_blocks, free_memory

    free, _ = free_memory(client)
    kept = choose_blocks(sizes, row_bytes, "auto", free)
    return int(np.asarray(sizes)[kept].sum()), free


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-cache-budget"))
    parser.add_argument("--memory-limit", default="600MB")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=2.0, help="store size / auto's share")
    parser.add_argument("--n", type=int, default=0, help="rows (default: from --ratio)")
    parser.add_argument("--chunk-rows", type=int, default=125_000)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    import dask
    import dask.array as da
    import numpy as np
    from distributed import Client, LocalCluster

    from dask_emk import KMeans
    from dask_emk.engine.cache import AUTO_SHARE
    from dask_emk.engine.reduction import compute_one

    args.dir.mkdir(parents=True, exist_ok=True)
    row_bytes = D * 4
    with (
        LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None,
                     memory_limit=args.memory_limit) as cluster,
        Client(cluster) as client,
        dask.config.set(scheduler=client),
    ):  # fmt: skip
        warm = make_store(args.dir / "warm.zarr", 250_000, args.chunk_rows)
        KMeans(K, random_state=0, max_iter=2, cache="auto").fit(str(warm))  # compile, imports
        pids = client.run(os.getpid)
        rss0 = client.run(lambda: __import__("psutil").Process().memory_info().rss)
        _, free = kept_rows_now(client, [1], row_bytes)
        n = args.n or int(args.ratio * AUTO_SHARE * free / row_bytes)
        n = n // args.chunk_rows * args.chunk_rows
        store = make_store(args.dir / f"X-{n}-{args.chunk_rows}.zarr", n, args.chunk_rows)
        sizes = [min(args.chunk_rows, n - s) for s in range(0, n, args.chunk_rows)]
        n_kept, free = kept_rows_now(client, sizes, row_bytes)
        print(f"{args.workers} workers x {args.memory_limit}; worker RSS after warm-up "
              f"{[f'{v / 2**20:.0f} MiB' for v in rss0.values()]}; free {free / 2**20:.0f} MiB, "
              f"auto's share ({AUTO_SHARE:.0%}) {AUTO_SHARE * free / 2**20:.0f} MiB")  # fmt: skip
        print(f"store {store}: {n:,} x {D} float32 = {n * row_bytes / 2**20:.0f} MiB "
              f"({n * row_bytes / (AUTO_SHARE * free):.2f}x the share) in {len(sizes)} chunks; "
              f"auto keeps {n_kept:,} rows ({n_kept / n:.0%})")  # fmt: skip
        n_kernel = n_kept // 2 // args.chunk_rows * args.chunk_rows
        init = np.asarray(da.from_zarr(str(store))[: 100 * K][::100].compute(), np.float64)
        fits = {
            "auto": lambda: iteration_seconds(str(store), init, args.iters, "auto"),
            "kernel": lambda: iteration_seconds(
                da.from_zarr(str(store))[:n_kernel], init, args.iters, True
            ),
            "read": lambda: [_timed(lambda: compute_one(da.from_zarr(str(store)).sum(0)))],
            "False": lambda: iteration_seconds(str(store), init, args.iters, False),
        }
        per_iter = {name: [] for name in fits}
        uncached = []  # share of the rows auto leaves out, at each auto fit's start
        samplers = []
        for r in range(args.repeat):
            for name, fit in fits.items():
                kept_now, _ = kept_rows_now(client, sizes, row_bytes)
                if name == "auto":
                    uncached.append(1 - kept_now / n)
                with Sampler(client, pids) as sampler:
                    secs = fit()
                samplers.append((name, sampler))
                per_iter[name].append(statistics.median(secs))
                print(f"  round {r}: {name:6s} {statistics.median(secs):7.2f} s/iteration "
                      f"(each {', '.join(f'{s:.2f}' for s in secs)}); auto would keep "
                      f"{kept_now:,} rows; peak RSS "
                      f"{[f'{v / 2**20:.0f} MiB' for v in sampler.peak.values()]}; worker "
                      f"states {sorted(sampler.statuses)}, spilled to disk "
                      f"{sampler.spilled_start / 2**20:.0f} MiB at start, "
                      f"{sampler.spilled / 2**20:.0f} MiB at most "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
        lost = client.run(os.getpid) != pids
        logs = client.get_worker_logs()
    med = {name: statistics.median(v) for name, v in per_iter.items()}
    kernel_all = med["kernel"] * n / n_kernel
    share = statistics.median(uncached)
    floor = share * med["read"] + kernel_all
    print(f"\nmedians of {args.repeat}, s/iteration: auto {med['auto']:.2f}, kernel on the first "
          f"{n_kernel:,} rows {med['kernel']:.2f} (x {n / n_kernel:.2f} = {kernel_all:.2f} for all "
          f"rows), read of the store {med['read']:.2f} x uncached share {share:.0%}, False "
          f"{med['False']:.2f}")  # fmt: skip
    print(f"auto / (uncached share x read + kernel) = {med['auto'] / floor:.2f}x "
          f"(target <= 1.2x); False / auto = {med['False'] / med['auto']:.2f}x")  # fmt: skip
    peak = {addr: max(s.peak[addr] for _, s in samplers) for addr in pids}
    peak_auto = {addr: max(s.peak[addr] for name, s in samplers if name == "auto") for addr in pids}
    states = set().union(*(s.statuses for _, s in samplers))
    spilled = max(s.spilled for _, s in samplers)
    print(f"peak worker RSS, auto fits: {[f'{v / 2**20:.0f} MiB' for v in peak_auto.values()]}; "
          f"all fits: {[f'{v / 2**20:.0f} MiB' for v in peak.values()]} "
          f"(limit {args.memory_limit}); worker states seen {sorted(states)}; spilled to disk "
          f"{spilled / 2**20:.0f} MiB; a worker lost: {lost}")  # fmt: skip
    for addr, lines in logs.items():
        for level, line in lines:
            words = ("memory", "paus", "spill", "restart", "kill")
            if "Memory:" not in line and any(w in line.lower() for w in words):
                print(f"  {addr} {level}: {line[:200]}")
    print(f"(load {os.getloadavg()[0]:.1f}) command: python {shlex.join(sys.argv)}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
