"""Out-of-core benchmarks: bounded memory, read-pass speed, scaling, per-chunk overhead.

All on a distributed LocalCluster of 2 single-threaded workers, each with a
memory limit, fitting compressed zarr stores on local disk (float32, d=8,
K=16 mixture written by dask_emk.pipeline.generate chunk by chunk).

1. Bounded memory: k-means and GMM iterations on a store 1x and 4x the
   workers' total memory limit; peak worker RSS (sampled every 0.1 s) must
   match within 10%, with no spilling, pausing or restarted workers.
2. Speed: one k-means (and GMM) iteration vs one plain read pass
   ``da.from_zarr(...).sum(axis=0)`` of the 1x store, same cluster.
3. Scaling: time per k-means iteration on 1x, 2x, 4x, 8x the rows (prefixes
   of the 1x store, same chunks).
4. Per-chunk overhead: time per iteration on persisted data in 1,000-row
   chunks vs 100,000-row chunks, difference per extra chunk; on the
   distributed cluster (4) and on the local threaded scheduler (5).

    python benchmarks/bench_outofcore.py --dir /work/bench-data
    python benchmarks/bench_outofcore.py --speed-only    # part 2 alone
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from dask.utils import parse_bytes
from distributed import Client, LocalCluster
from sklearn.exceptions import ConvergenceWarning

from dask_emk import GaussianMixture, KMeans
from dask_emk.engine import reduction
from dask_emk.pipeline.generate import random_mixture, write_mixture_zarr

D, K = 8, 16
ROW_BYTES = 4 * D


def ensure_store(path: Path, n: int, chunk_rows: int) -> Path:
    """Generate the benchmark store unless it exists with the same shape."""
    if path.exists():
        X = zarr.open_array(path / "X", mode="r")
        if X.shape == (n, D) and X.chunks[0] == chunk_rows:
            return path
    start = time.perf_counter()
    truth = random_mixture(D, K, seed=5)
    write_mixture_zarr(path, n, truth, chunk_rows=chunk_rows, seed=5, overwrite=True)
    print(
        f"  generated {path.name}: {n * ROW_BYTES / 1e9:.2f} GB "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return path


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class MemorySampler:
    """Peak RSS, paused state and spilled keys of every worker, sampled in a thread."""

    def __init__(self, client: Client, interval: float = 0.1):
        self.client, self.interval = client, interval
        self.peak: dict[str, int] = {}
        self.paused = False
        self.spilled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for addr, (rss, status, spilled) in self.client.run(_worker_state).items():
                self.peak[addr] = max(self.peak.get(addr, 0), rss)
                self.paused |= status == "paused"
                self.spilled = max(self.spilled, spilled)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _worker_state(dask_worker) -> tuple[int, str, int]:
    import psutil

    slow = getattr(dask_worker.data, "slow", {})
    return psutil.Process().memory_info().rss, dask_worker.status.name, len(slow)


def worker_pids(client: Client) -> dict:
    return client.run(os.getpid)


def kmeans_iteration(X, centers, m: int) -> float:
    """Seconds per Lloyd iteration: (fit with 1+m − fit with 1) / m, tol=0."""

    def timed(max_iter):
        start = time.perf_counter()
        KMeans(K, init=centers, n_init=1, max_iter=max_iter, tol=0.0).fit(X)
        return time.perf_counter() - start

    return (timed(1 + m) - timed(1)) / m


def gmm_iteration(X, centers, m: int) -> float:
    """Seconds per EM iteration (full covariance) from given initial parameters."""
    init = dict(
        weights_init=np.full(K, 1 / K),
        means_init=centers,
        precisions_init=np.tile(np.eye(D), (K, 1, 1)),
        tol=0.0,
    )

    def timed(max_iter):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            GaussianMixture(K, max_iter=max_iter, **init).fit(X)
        return time.perf_counter() - start

    return (timed(1 + m) - timed(1)) / m


def read_pass(X) -> float:
    start = time.perf_counter()
    X.sum(axis=0).compute()
    return time.perf_counter() - start


def bounded_memory(client, stores: dict, centers) -> dict:
    """Fit each store (2 k-means iterations + final pass, 1 GMM iteration + its
    initial pass) while sampling worker memory."""
    out = {}
    pids = worker_pids(client)
    for name, path in stores.items():
        X = da.from_zarr(str(path / "X"))
        client.run(_gc)
        with MemorySampler(client) as sampler:
            start = time.perf_counter()
            KMeans(K, init=centers, n_init=1, max_iter=2, tol=0.0).fit(X)
            gmm_iteration_fit(X, centers, 1)
            seconds = time.perf_counter() - start
        out[name] = dict(
            peak=max(sampler.peak.values()),
            paused=sampler.paused,
            spilled=sampler.spilled,
            seconds=seconds,
        )
        print(
            f"  {name}: peak worker RSS {out[name]['peak'] / 2**20:.0f} MiB, "
            f"paused={sampler.paused}, spilled keys={sampler.spilled}, {seconds:.1f} s"
        )
    out["restarted"] = worker_pids(client) != pids
    return out


def gmm_iteration_fit(X, centers, iters: int) -> None:
    init = dict(
        weights_init=np.full(K, 1 / K),
        means_init=centers,
        precisions_init=np.tile(np.eye(D), (K, 1, 1)),
        tol=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixture(K, max_iter=iters, **init).fit(X)


def _gc() -> None:
    import gc

    gc.collect()


def chunk_overhead(n: int, group: bool) -> dict:
    """Per-chunk cost: persisted data in small vs large chunks, same rows.

    ``group=False`` turns off the engine's grouping of small chunks into
    ~4 MiB tasks, which shows the scheduler's own cost per task.
    """
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(K, D))
    times = {}
    grouping = {} if group else {reduction.MIN_TASK_BYTES_KEY: 0}
    with dask.config.set(grouping):
        for rows in (100_000, 1_000):
            X = da.random.default_rng(1).standard_normal((n, D), chunks=(rows, D))
            X = X.astype(np.float32).persist()
            X.sum().compute()  # wait until persisted
            # 10 timed iterations: a 1M-row iteration is only tens of ms.
            times[rows] = min(kmeans_iteration(X, centers, 10) for _ in range(3))
            del X
    extra = n // 1_000 - n // 100_000
    return dict(times=times, per_chunk=(times[1_000] - times[100_000]) / extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/work/bench-data"))
    # 768 MiB: the workers' baseline (numpy, scipy, scikit-learn, numba...) is
    # ~330 MiB of unmanaged memory; at 500 MiB distributed's spill threshold
    # (70% of the limit) sat just above it.
    parser.add_argument("--memory-limit", default="768MiB", help="per worker")
    parser.add_argument("--chunk-rows", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=2, help="extra iterations per timing")
    parser.add_argument("--overhead-only", action="store_true", help="parts 4 and 5 only")
    parser.add_argument("--speed-only", action="store_true", help="part 2 only (1x store)")
    args = parser.parse_args()
    if args.overhead_only:
        return overhead_parts()
    args.dir.mkdir(parents=True, exist_ok=True)
    limit = parse_bytes(args.memory_limit)
    total = 2 * limit
    n1 = total // ROW_BYTES // args.chunk_rows * args.chunk_rows
    print(
        f"workers: 2 x {limit / 2**20:.0f} MiB; 1x store = {n1:,} rows "
        f"= {n1 * ROW_BYTES / 2**20:.0f} MiB"
    )
    stores = {
        "1x": ensure_store(args.dir / "mem1x.zarr", n1, args.chunk_rows),
    }
    if not args.speed_only:
        stores["4x"] = ensure_store(args.dir / "mem4x.zarr", 4 * n1, args.chunk_rows)
    for name, path in stores.items():
        print(f"  {name}: {disk_bytes(path) / 2**20:.0f} MiB on disk (compressed)")
    centers = zarr.open_array(stores["1x"] / "means", mode="r")[:] + 0.5
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit=limit, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        if not args.speed_only:
            print("1. bounded memory")
            memory = bounded_memory(client, stores, centers)
            ratio = memory["4x"]["peak"] / memory["1x"]["peak"]
            print(f"  peak 4x / 1x = {ratio:.3f}; workers restarted: {memory['restarted']}")

        # Speed and scaling on the 1x store (2 cores: the 4x one would take long).
        print("2. speed vs a plain read pass (1x store)")
        X = da.from_zarr(str(stores["1x"] / "X"))
        read = min(read_pass(X) for _ in range(2))
        km = kmeans_iteration(X, centers, args.repeat)
        gm = gmm_iteration(X, centers, args.repeat)
        print(
            f"  read pass {read:.2f} s; k-means {km:.2f} s/iter ({km / read:.2f}x); "
            f"GMM full {gm:.2f} s/iter ({gm / read:.2f}x)"
        )
        if args.speed_only:
            return

        print("3. scaling (prefixes of the 1x store, same chunks)")
        base = n1 // 8 // args.chunk_rows * args.chunk_rows
        scaling = {}
        for f in (1, 2, 4, 8):
            scaling[f] = kmeans_iteration(X[: f * base], centers, args.repeat)
            print(
                f"  {f}x ({f * base:,} rows): {scaling[f]:.2f} s/iter "
                f"({scaling[f] / scaling[1]:.2f}x)"
            )

    overhead_parts(limit)


def overhead_parts(limit: int = 768 * 2**20) -> None:
    """Parts 4 and 5: per-chunk overhead, distributed and local threads."""
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit=limit, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
    ):
        print("4. per-chunk overhead (persisted, 1,000,000 rows), distributed")
        for group in (True, False):
            print_overhead(chunk_overhead(1_000_000, group), group)
    print("5. per-chunk overhead (1,000,000 rows in memory), local threaded scheduler")
    with dask.config.set(scheduler="threads"):
        for group in (True, False):
            print_overhead(chunk_overhead(1_000_000, group), group)


def print_overhead(overhead: dict, group: bool) -> None:
    t = overhead["times"]
    print(
        f"  {'grouped (default)' if group else 'grouping off'}: "
        f"10 chunks {t[100_000] * 1e3:.0f} ms/iter, "
        f"1000 chunks {t[1_000] * 1e3:.0f} ms/iter: "
        f"{overhead['per_chunk'] * 1e3:.2f} ms per extra chunk per iteration"
    )


if __name__ == "__main__":
    main()
