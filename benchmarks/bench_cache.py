"""Reading the store once (issue 28): a fit on a zarr store with and without ``cache``.

On a distributed LocalCluster of 2 single-threaded workers, ``KMeans(16)``
(k-means|| seeding, then Lloyd to convergence at the default tol) fits a
local zarr store of ``--n`` x 8 float32 rows drawn from a 16-component
mixture (zarr's default compression), three ways, interleaved, ``--repeat``
times each:

- ``cache=False``: every pass reads the store (today's behaviour);
- ``cache='auto'``: the first pass reads it, the others read the rows kept
  on the workers;
- the reference: the same fit on the numpy array in memory (local threads),
  plus one plain read pass of the store on the cluster (``X.sum(axis=0)``
  computed once): what a fit that reads its input once cannot beat.

It prints each time (best of the repeats), the number of passes, the
ratios ``auto / (numpy + read)`` (target <= 1.3) and ``False / auto``, the
load average, and the command line. ``--model gmm`` runs a full-covariance
``GaussianMixture(16)`` instead (tol 1e-3, at most 100 iterations).

    python benchmarks/bench_cache.py --dir /tmp/bench-cache

Heavy imports live inside the functions: the workers are spawned processes
that re-import this module.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

K, D = 16, 8


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def make_store(path: Path, n: int, chunk_rows: int) -> Path:
    """A K-component mixture, float32, written chunk by chunk (written once, then reused)."""
    import numpy as np
    import zarr

    if path.exists():
        return path
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(K, D))
    z = zarr.create_array(store=str(path), shape=(n, D), chunks=(chunk_rows, D), dtype="f4")
    for start in range(0, n, chunk_rows):
        m = min(chunk_rows, n - start)
        labels = rng.integers(K, size=m)
        z[start : start + m] = (centres[labels] + rng.normal(size=(m, D))).astype(np.float32)
    return path


def model(kind: str, cache):
    from dask_emk import GaussianMixture, KMeans

    if kind == "kmeans":
        return KMeans(K, random_state=0, cache=cache)
    return GaussianMixture(K, covariance_type="full", random_state=0, tol=1e-3, cache=cache)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-cache"))
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--chunk-rows", type=int, default=125_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", choices=("kmeans", "gmm"), default="kmeans")
    args = parser.parse_args(argv)

    import dask.array as da
    import numpy as np
    import zarr
    from distributed import Client, LocalCluster

    from dask_emk.engine.reduction import compute_one

    args.dir.mkdir(parents=True, exist_ok=True)
    store = make_store(args.dir / f"X-{args.n}-{args.chunk_rows}.zarr", args.n, args.chunk_rows)
    X = zarr.open_array(str(store), mode="r")[:]
    print(f"store {store}: {args.n} x {D} float32, {args.chunk_rows}-row chunks, "
          f"{X.nbytes / 2**20:.0f} MiB; model {args.model}")  # fmt: skip
    times: dict[str, list[float]] = {"False": [], "auto": [], "numpy": [], "read": []}
    fitted = {}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        # Warm-up: numba compiles in every process, the page cache holds the store.
        model(args.model, "auto").set_params(max_iter=2).fit(str(store))
        model(args.model, False).set_params(max_iter=2).fit(X[:100_000])
        for r in range(args.repeat):
            for name in ("False", "auto", "numpy", "read"):
                if name == "numpy":  # in memory: local threads, no Dask
                    t, out = timed(lambda: model(args.model, False).fit(X))
                elif name == "read":
                    t, out = timed(lambda: compute_one(da.from_zarr(str(store)).sum(axis=0)))
                else:
                    cache = name if name == "auto" else False
                    t, out = timed(lambda c=cache: model(args.model, c).fit(str(store)))
                times[name].append(t)
                fitted[name] = out
                print(f"  round {r}: {name:6s} {t:7.2f} s  ({load()})", flush=True)
    best = {name: min(ts) for name, ts in times.items()}
    attr = "cluster_centers_" if args.model == "kmeans" else "means_"
    same = np.array_equal(getattr(fitted["False"], attr), getattr(fitted["auto"], attr))
    floor = best["numpy"] + best["read"]
    print(f"\niterations: store {fitted['auto'].n_iter_}, numpy {fitted['numpy'].n_iter_}; "
          f"cache on/off bit-identical: {same}")  # fmt: skip
    print("| cache=False | cache='auto' | numpy fit | one read | auto / (numpy + read) "
          "| False / (numpy + read) | False / auto |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {best['False']:.2f} s | {best['auto']:.2f} s | {best['numpy']:.2f} s "
          f"| {best['read']:.2f} s | {best['auto'] / floor:.2f}x | {best['False'] / floor:.2f}x "
          f"| {best['False'] / best['auto']:.2f}x |")  # fmt: skip
    print(f"({load()}) command: python {shlex.join(sys.argv)}")


if __name__ == "__main__":
    main()
