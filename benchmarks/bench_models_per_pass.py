"""Many models per pass: a K sweep and n_init against single fits, out of core.

On a distributed LocalCluster of 2 single-threaded workers with a memory
limit each, fitting a compressed zarr store (float32, d=8, K=16 mixture
written chunk by chunk) of ``--times`` x the workers' total memory:

1. ``KMeans(16)`` and ``GaussianMixture(16)``, ``n_init=10`` against
   ``n_init=1`` (target: at most 1.5x the wall time);
2. ``GaussianMixtureIC(1, 20)`` (full covariances) against one
   ``GaussianMixture(20)`` fit (target: the sweep at most 3x the wall time).

Both sides of a comparison use the same tol, max_iter and random_state.
Every figure is taken twice: ``warm`` (the store stays in the page cache, as
it does here: the machine's RAM holds it) and ``cold`` (every chunk file is
evicted from the page cache before every compute with
``posix_fadvise(POSIX_FADV_DONTNEED)``, so each pass reads the disk as it
would where the store exceeds the RAM). The load average is printed with
every figure; the script ends with a table to paste and its own command line.

First it prints the split of a pass: read + decode of the store (a plain
read pass on the cluster, warm and cold) against each model's kernel (one
chunk in this process, one BLAS thread, scaled to the store's chunks and the
workers): the wall-time ratios of many models per pass follow from it.

    python benchmarks/bench_models_per_pass.py --dir /work/bench-data

Duration: a pass costs about chunks / 2 workers x (read + the models'
kernels) of one chunk, as printed first. On 2 idle cores the 4 GiB store of
the defaults (536 chunks, 512 MiB workers, the least a worker's ~300 MiB
footprint allows) makes the 10 k-means|| seedings of ``n_init=10`` ~2 min a
pass and the IC sweep's EM ~3 min a pass, so the whole run takes over an
hour; ``--parts`` and ``--cache`` run a part, ``--times 1`` a store of the
workers' size (the ratios depend on the per-chunk split, not on the size).

Heavy imports live inside the functions: the workers are spawned processes
that re-import this module, and every package it imports at the top would sit
in each worker's memory.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

N_WORKERS = 2
TARGETS = {"n_init": 1.5, "sweep": 3.0}


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def chunk_files(store: Path) -> list[Path]:
    return [p for p in (store / "X").rglob("*") if p.is_file()]


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache (clean pages: nothing is lost)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Computes:
    """Counts the package's computes, evicting the store before each with ``files``.

    Every compute of the package goes through ``reduction.compute_one``
    (dask's local callbacks do not see a distributed client's).
    """

    def __init__(self, files: list[Path] | None = None):
        self.files, self.count = files, 0

    def __enter__(self):
        from dask_emk.engine import reduction

        self._module, self._original = reduction, reduction.compute_one

        def counted(*args, **kwargs):
            self.count += 1
            if self.files:
                evict(self.files)
            return self._original(*args, **kwargs)

        reduction.compute_one = counted
        return self

    def __exit__(self, *exc):
        self._module.compute_one = self._original


def timed(make, X, files) -> tuple[float, int]:
    """Wall seconds and computes of ``make().fit(X)``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with Computes(files) as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        make().fit(X)
        return time.perf_counter() - start, counter.count


def read_pass(X, files) -> float:
    """Wall seconds of a plain read of the store (a sum over its rows) on the cluster."""
    if files:
        evict(files)
    start = time.perf_counter()
    X.sum(axis=0).compute()
    return time.perf_counter() - start


def kernel_seconds(store: Path, max_k: int) -> dict:
    """Thread seconds of each model's block kernel on the store's first chunk.

    Parameters come from a short fit on the chunk's first rows; the kernels
    are the ones a pass runs (k-means Lloyd assignment, GMM E-step).
    """
    import warnings

    import numpy as np
    import zarr
    from threadpoolctl import threadpool_limits

    from dask_emk import GaussianMixture
    from dask_emk.core import seeding
    from dask_emk.core.layout import StatsLayout
    from dask_emk.engine import mixture_passes, passes

    z = zarr.open_array(store / "X", mode="r")
    x = z[: z.chunks[0]]
    origin = x.mean(axis=0).astype(np.float64)

    def best(fn, repeat=5) -> float:
        times = []
        for _ in range(repeat):
            start = time.thread_time()
            fn()
            times.append(time.thread_time() - start)
        return min(times)

    out = {}
    # Loaded after the imports, so every BLAS library (numba calls scipy's) is limited.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        centers = x[:16].astype(np.float64)
        layout = passes.assign_layout(16, x.shape[1], 0, False)
        out["KMeans(16) Lloyd"] = best(
            lambda: passes.assign_block(x, None, centers, origin, 0, False, layout)
        )
        # k-means|| rounds (oversampling 2K, 5 rounds) measure against ~80 candidates on average.
        candidates = x[:80].astype(np.float64)
        none = np.zeros((0, x.shape[1]))
        out["KMeans(16) k-means|| round"] = best(
            lambda: seeding.seed_stats(x, None, candidates, none, origin, 32, 0, 32.0)
        )
        for K in range(1, max_k + 1):
            gm = GaussianMixture(K, max_iter=2, random_state=0).fit(x[:20_000])
            params = gm._kernel_params(gm._state_from_attributes())
            layout = StatsLayout.mixture(K, x.shape[1], "full")
            out[f"GMM({K}) E-step"] = best(
                lambda p=params, lay=layout: mixture_passes.mixture_block(x, None, p, lay)
            )
    return out


def worker_rss(client) -> str:
    def rss() -> int:
        import psutil

        return psutil.Process().memory_info().rss

    values = sorted(client.run(rss).values())
    return "/".join(f"{v / 2**20:.0f}" for v in values) + " MiB"


def split_report(X, files, store: Path, max_k: int, n_chunks: int) -> None:
    """Print a pass's read against its kernels, per pass of the whole store."""
    warm = min(read_pass(X, None) for _ in range(2))
    cold = min(read_pass(X, files) for _ in range(2))
    print(f"read pass (plain sum on the cluster): warm {warm:.2f} s, cold {cold:.2f} s  ({load()})")
    kernels = kernel_seconds(store, max_k)
    scale = n_chunks / N_WORKERS
    print(f"kernel seconds per pass (one chunk's thread time x {n_chunks} chunks / "
          f"{N_WORKERS} workers):")  # fmt: skip
    sweep = sum(s for name, s in kernels.items() if name.startswith("GMM("))
    named = ("KMeans", "GMM(16)", f"GMM({max_k})")
    shown = {n: s for n, s in kernels.items() if n.startswith(named)}
    for name, seconds in {**shown, f"sum GMM(1..{max_k}) E-steps": sweep}.items():
        print(f"  {name:27s} {seconds * 1e3:6.1f} ms/chunk  {seconds * scale:6.2f} s/pass")
    print(f"  ({load()})")


def comparisons(max_k: int, kw: dict, parts: set) -> list:
    """(label, make one, make many, target) for each comparison in ``parts``."""
    from dask_emk import GaussianMixture, GaussianMixtureIC, KMeans

    out = []
    for part, model in (("kmeans", KMeans), ("gmm", GaussianMixture)):
        if part in parts:
            out.append((
                f"{model.__name__}(16) n_init=10 / n_init=1",
                lambda model=model: model(16, n_init=1, **kw),
                lambda model=model: model(16, n_init=10, **kw), TARGETS["n_init"],
            ))  # fmt: skip
    if "ic" in parts:
        out.append((
            f"GaussianMixtureIC(1, {max_k}) / GaussianMixture({max_k})",
            lambda: GaussianMixture(max_k, **kw),
            lambda: GaussianMixtureIC(1, max_k, **kw), TARGETS["sweep"],
        ))  # fmt: skip
    return out


def main() -> None:
    import dask.array as da
    from bench_outofcore import ROW_BYTES, D, ensure_store
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/work/bench-data"))
    # A worker holds ~300 MiB RSS after a fit (numpy, dask.array and what it
    # imports, zarr, numba's compiled loops): 512 MiB leaves room for blocks.
    parser.add_argument("--memory-limit", default="512MiB", help="per worker")
    parser.add_argument("--times", type=float, default=4.0, help="store size / total memory")
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--max-iter", type=int, default=2)
    parser.add_argument("--max-k", type=int, default=20)
    parser.add_argument("--parts", default="kmeans,gmm,ic", help="comma-separated: kmeans, "
                        "gmm (n_init), ic (K sweep); none prints only the split")  # fmt: skip
    parser.add_argument("--cache", default="warm,cold", help="comma-separated: warm (page "
                        "cache), cold (evicted from it before every compute)")  # fmt: skip
    args = parser.parse_args()
    limit = parse_bytes(args.memory_limit)
    n = int(args.times * N_WORKERS * limit / ROW_BYTES) // args.chunk_rows * args.chunk_rows
    store = ensure_store(args.dir / f"models_per_pass_{n}.zarr", n, args.chunk_rows)
    files = chunk_files(store)
    n_chunks = n // args.chunk_rows
    print(f"store: {n:,} rows x {D} float32 ({n * ROW_BYTES / 2**30:.2f} GiB, "
          f"{sum(f.stat().st_size for f in files) / 2**30:.2f} GiB on disk, {n_chunks} chunks); "
          f"{N_WORKERS} workers x {args.memory_limit}, 1 thread each; {load()}")  # fmt: skip
    kw = dict(tol=1e-3, max_iter=args.max_iter, random_state=0)
    cluster = LocalCluster(
        n_workers=N_WORKERS, threads_per_worker=1, memory_limit=limit, dashboard_address=":0"
    )
    rows = []
    with cluster, Client(cluster) as client:
        X = da.from_zarr(str(store), component="X")
        split_report(X, files, store, args.max_k, n_chunks)
        print(f"worker RSS after the read passes: {worker_rss(client)}")
        parts = set(args.parts.split(","))
        for label, one, many, target in comparisons(args.max_k, kw, parts):
            for cache in args.cache.split(","):
                evicting = files if cache == "cold" else None
                if not evicting:
                    read_pass(X, None)  # the store back into the page cache
                a = timed(one, X, evicting)
                print(f"  {label} [{cache}]: one {a[0]:.1f} s / {a[1]} computes ({load()})",
                      flush=True)  # fmt: skip
                b = timed(many, X, evicting)
                ratio = b[0] / a[0]
                rows.append((label, cache, a, b, ratio, target, load()))
                print(f"  {label} [{cache}]: {a[0]:.1f} s / {a[1]} computes vs {b[0]:.1f} s / "
                      f"{b[1]} computes -> {ratio:.2f}x wall (target <= {target}x); "
                      f"{load()}; worker RSS {worker_rss(client)}", flush=True)  # fmt: skip
    print("\n| run | cache | computes | wall one | wall many | wall ratio | target | load |")
    print("|---|---|---|---|---|---|---|---|")
    for label, cache, a, b, ratio, target, at in rows:
        print(f"| {label} | {cache} | {b[1]} / {a[1]} | {a[0]:.1f} s | {b[0]:.1f} s | "
              f"{ratio:.2f}x | <= {target}x | {at.split()[1]} |")  # fmt: skip
    print(f"\ncommand: python {shlex.join(sys.argv)}")


if __name__ == "__main__":
    main()
