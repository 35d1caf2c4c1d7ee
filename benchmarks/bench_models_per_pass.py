"""Many models per pass: a K sweep and n_init against single fits, out of core.

On a distributed LocalCluster of 2 single-threaded workers with a memory
limit each, fitting a compressed zarr store (float32, d=8, K=16 mixture
written chunk by chunk) of ``--times`` x the workers' total memory:

1. ``GaussianMixtureIC(1, 20)`` (full covariances) against one
   ``GaussianMixture(20)`` fit, same tol and max_iter: wall time and computes
   (target: the sweep at most 3x the wall time of the single fit);
2. ``n_init=10`` against ``n_init=1`` for KMeans and GaussianMixture
   (target: at most 1.5x the wall time).

    python benchmarks/bench_models_per_pass.py --dir /work/bench-data --memory-limit 512MiB
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import dask.array as da
from bench_outofcore import ROW_BYTES, D, ensure_store
from dask.utils import parse_bytes
from distributed import Client, LocalCluster
from sklearn.exceptions import ConvergenceWarning

from dask_emk import GaussianMixture, GaussianMixtureIC, KMeans
from dask_emk.engine import reduction


class Computes:
    """Counts the package's computes: every one goes through ``reduction.compute_one``
    (dask's local callbacks do not see a distributed client's)."""

    def __enter__(self):
        self.count, self._original = 0, reduction.compute_one

        def counted(*args, **kwargs):
            self.count += 1
            return self._original(*args, **kwargs)

        reduction.compute_one = counted
        return self

    def __exit__(self, *exc):
        reduction.compute_one = self._original


def timed(make, X) -> tuple[float, int, object]:
    with Computes() as counter, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model = make().fit(X)
        return time.perf_counter() - start, counter.count, model


def report(name: str, one, many, target: float) -> None:
    ratio = many[0] / one[0]
    print(
        f"  {name}: {one[0]:7.1f} s / {one[1]:3d} computes  vs  {many[0]:7.1f} s / "
        f"{many[1]:3d} computes  ->  {ratio:.2f}x wall, {many[1] / one[1]:.2f}x computes "
        f"(target <= {target}x wall)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/work/bench-data"))
    # A worker that has imported dask-emk holds ~330 MiB RSS here (RESULTS.md): less dies.
    parser.add_argument("--memory-limit", default="512MiB", help="per worker")
    parser.add_argument("--times", type=float, default=4.0, help="store size / total memory")
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--max-k", type=int, default=20)
    args = parser.parse_args()
    limit = parse_bytes(args.memory_limit)
    n = int(args.times * 2 * limit / ROW_BYTES) // args.chunk_rows * args.chunk_rows
    store = ensure_store(args.dir / f"models_per_pass_{n}.zarr", n, args.chunk_rows)
    print(f"store: {n:,} rows x {D} ({n * ROW_BYTES / 2**30:.2f} GiB), 2 workers x "
          f"{args.memory_limit}")  # fmt: skip
    kw = dict(tol=1e-3, max_iter=args.max_iter, random_state=0)
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, memory_limit=limit, dashboard_address=":0"
    )
    with cluster, Client(cluster):
        X = da.from_zarr(str(store), component="X")
        single = timed(lambda: GaussianMixture(args.max_k, **kw), X)
        sweep = timed(lambda: GaussianMixtureIC(1, args.max_k, **kw), X)
        report(f"GaussianMixtureIC(1, {args.max_k}) vs one K={args.max_k} fit", single, sweep, 3)
        print(f"    picked K={sweep[2].n_components_}")
        for name, model in (("KMeans", KMeans), ("GaussianMixture", GaussianMixture)):
            one = timed(lambda model=model: model(16, n_init=1, **kw), X)
            ten = timed(lambda model=model: model(16, n_init=10, **kw), X)
            report(f"{name} n_init=10 vs 1", one, ten, 1.5)


if __name__ == "__main__":
    main()
