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
  computed once): what a fit that reads its input once cannot beat;
- ``persisted``: the same fit on the rows persisted on the workers by the
  caller (``client.persist(da.from_array(X))``, ``cache=False``): the
  cluster's own cost of a pass over rows in memory, without the cache.

It prints each time (best of the repeats; with the CPU seconds of this
process and the workers, which other jobs on a shared machine change less),
the number of passes, the ratios ``auto / (numpy + read)`` (target <= 1.3), ``auto / (persisted +
read)`` and ``False / auto``, the load average, and the command line.
``--scheduler threads`` runs the store fits on the threaded scheduler instead
(kept rows in this process; no ``persisted``). ``--model gmm`` runs a full-covariance
``GaussianMixture(16)`` instead (tol 1e-3, at most 100 iterations).
``--fits`` picks some of the fits (comma-separated names above), and
``--n-init 1,10`` runs each store fit (False, auto, persisted) once per
``n_init`` and prints ``n_init=10 / n_init=1`` per fit (issue 28: target <= 3
on cached rows).

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
    # Overlapping components: Lloyd takes tens of iterations to converge.
    centres = rng.normal(scale=1.5, size=(K, D))
    z = zarr.create_array(store=str(path), shape=(n, D), chunks=(chunk_rows, D), dtype="f4")
    for start in range(0, n, chunk_rows):
        m = min(chunk_rows, n - start)
        labels = rng.integers(K, size=m)
        z[start : start + m] = (centres[labels] + rng.normal(size=(m, D))).astype(np.float32)
    return path


def model(kind: str, cache, n_init: int = 1):
    from dask_emk import GaussianMixture, KMeans

    if kind == "kmeans":
        return KMeans(K, random_state=0, cache=cache, n_init=n_init)
    return GaussianMixture(
        K, covariance_type="full", random_state=0, tol=1e-3, cache=cache, n_init=n_init
    )


def _process_cpu() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def cpu_seconds(client) -> float:
    """CPU seconds used so far by this process and the cluster's workers: unlike
    wall time, hardly changed by other jobs on a shared machine."""
    return time.process_time() + sum(client.run(_process_cpu).values())


def timed(fn, client) -> tuple[float, float, object]:
    """Wall and CPU seconds of ``fn()`` (see :func:`cpu_seconds`), and its value."""
    start, cpu = time.perf_counter(), cpu_seconds(client)
    out = fn()
    return time.perf_counter() - start, cpu_seconds(client) - cpu, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-cache"))
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--chunk-rows", type=int, default=125_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", choices=("kmeans", "gmm"), default="kmeans")
    parser.add_argument("--scheduler", choices=("cluster", "threads"), default="cluster")
    parser.add_argument("--fits", default="False,auto,numpy,read,persisted")
    parser.add_argument("--n-init", default="1", help="comma-separated, e.g. 1,10")
    args = parser.parse_args(argv)
    n_inits = [int(v) for v in args.n_init.split(",")]

    import dask
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
    names = [name for name in args.fits.split(",")
             if name != "persisted" or args.scheduler == "cluster"]  # fmt: skip
    runs = [(name, n_init) for name in names
            for n_init in (n_inits if name in ("False", "auto", "persisted") else [1])]  # fmt: skip
    times: dict[tuple, list[float]] = {run: [] for run in runs}
    cpus: dict[tuple, list[float]] = {run: [] for run in runs}
    fitted = {}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
        dask.config.set(scheduler="threads" if args.scheduler == "threads" else client),
    ):
        persisted = client.persist(da.from_array(X, chunks=(args.chunk_rows, D)))
        # Warm-up: numba compiles in every process, the page cache holds the store.
        model(args.model, "auto").set_params(max_iter=2).fit(str(store))
        model(args.model, False).set_params(max_iter=2).fit(X[:100_000])
        for r in range(args.repeat):
            for name, n_init in runs:
                if name == "numpy":  # in memory: local threads, no Dask
                    t, c, out = timed(lambda: model(args.model, False).fit(X), client)
                elif name == "read":
                    t, c, out = timed(
                        lambda: compute_one(da.from_zarr(str(store)).sum(axis=0)), client
                    )
                elif name == "persisted":
                    t, c, out = timed(
                        lambda i=n_init: model(args.model, False, i).fit(persisted), client
                    )
                else:
                    cache = name if name == "auto" else False
                    t, c, out = timed(
                        lambda c=cache, i=n_init: model(args.model, c, i).fit(str(store)), client
                    )
                times[name, n_init].append(t)
                cpus[name, n_init].append(c)
                fitted[name, n_init] = out
                print(f"  round {r}: {name:9s} n_init={n_init:<3d} {t:7.2f} s, "
                      f"CPU {c:7.2f} s  ({load()})", flush=True)  # fmt: skip
    for name, n_init in runs:
        if n_init != n_inits[0]:
            first = (name, n_inits[0])
            print(f"{name}: n_init={n_init} / n_init={n_inits[0]}: wall "
                  f"{min(times[name, n_init]) / min(times[first]):.2f}x, CPU "
                  f"{min(cpus[name, n_init]) / min(cpus[first]):.2f}x")  # fmt: skip
    best = {name: min(ts) for (name, n_init), ts in times.items() if n_init == n_inits[0]}
    fitted = {name: out for (name, n_init), out in fitted.items() if n_init == n_inits[0]}
    attr = "cluster_centers_" if args.model == "kmeans" else "means_"
    if not {"False", "auto", "numpy", "read"} <= set(best):
        print(f"({load()}) command: python {shlex.join(sys.argv)}")
        return
    same = np.array_equal(getattr(fitted["False"], attr), getattr(fitted["auto"], attr))
    floor = best["numpy"] + best["read"]
    print(f"\niterations: store {fitted['auto'].n_iter_}, numpy {fitted['numpy'].n_iter_}; "
          f"cache on/off bit-identical: {same}")  # fmt: skip
    rows = [("cache=False", best["False"]), ("cache='auto'", best["auto"]),
            ("numpy fit", best["numpy"]), ("one read", best["read"])]  # fmt: skip
    ratios = [("auto / (numpy + read)", best["auto"] / floor),
              ("False / (numpy + read)", best["False"] / floor),
              ("False / auto", best["False"] / best["auto"])]  # fmt: skip
    if "persisted" in best:
        rows.append(("persisted", best["persisted"]))
        in_memory = best["persisted"] + best["read"]
        ratios.append(("auto / (persisted + read)", best["auto"] / in_memory))
    print("| " + " | ".join(name for name, _ in rows + ratios) + " |")
    print("|" + "---|" * (len(rows) + len(ratios)))
    cells = [f"{t:.2f} s" for _, t in rows] + [f"{x:.2f}x" for _, x in ratios]
    print("| " + " | ".join(cells) + " |")
    print(f"({load()}) command: python {shlex.join(sys.argv)}")


if __name__ == "__main__":
    main()
