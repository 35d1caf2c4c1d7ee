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

``--source`` picks the data and the stores the fits read:

- ``local`` (default): the store above, in a local folder;
- ``s3``: the same store also written to a bucket of moto's S3 server (a
  process on 127.0.0.1, started here): the store fits (False, auto) run on
  both, interleaved, and ``s3 / local`` is printed per fit (target for
  ``auto``: <= 1.2);
- ``gridded``: a (time, lat, lon) Dataset store of 4 float32 variables with
  30% of its points masked (``bench_gridded.make_cube``: land and gaps),
  fitted with ``nan_policy='omit'``, and its valid rows stored dense (the
  reference store of ``numpy``, ``read`` and ``persisted``): the store
  fits run on both, and ``gridded / dense`` is printed (target for
  ``auto``: <= 1.1).

``--iters N`` starts every fit from the same given centres (K rows of the
data; a GaussianMixture also from equal weights and identity precisions) and
runs N iterations at tol 0, so that fits whose rows carry other
indices (a grid's rows count its masked points: k-means|| draws other
candidates) still do the same passes.

``--model gmmic`` measures ``GaussianMixtureIC(1..10, covariance_type='full')``
(issue 28: target <= 1.1) on the local store, interleaved, ``--repeat``
times each:

- ``ic``: ``GaussianMixtureIC(1, 10, covariance_type='full', cache='auto',
  random_state=0)`` at its default criterion (BIC) and tol (1e-3), on the
  store. It fits its ten candidates batched, not one after the other: each
  round of passes serves every candidate still running (its k-means||
  seeding, Lloyd, the initial responsibilities, EM) with one pass over the
  kept rows, and a candidate that converges leaves the batch; then one more
  pass gives every candidate's log-likelihood for the criterion (that pass
  runs after the batch, so it reads the store again, uncached);
- ``candidates``: the reference kernels, each candidate
  ``GaussianMixture(k, covariance_type='full')`` fitted alone on the numpy
  array in memory (local threads), with the settings the IC gives it
  (``dask_emk.models.ic.SHARED``: tol, max_iter, init_params, n_init, ...)
  and the IC's draws (one ``RandomState(0)`` for k = 1, 2, ..., 10 in
  order, as the IC draws its candidates' starts), times summed;
- ``read``: one plain read pass of the store (as above);
- ``ic-numpy``: the IC on the numpy array (checks that it fits exactly the
  separate candidates; its time over theirs is the batching's own cost);
- ``ic-False``: the IC on the store with ``cache=False`` (not by default).

It prints the best wall and CPU seconds, ``ic / (candidates + read)``, and
per K the iterations and how far each IC's candidate is from the separate
fit (lower bound, BIC): the IC on the numpy array runs the same blocks as
the separate fits and must give them bit for bit (the script fails after
printing otherwise); the IC on the store sums other blocks (its chunks), so
it agrees to rounding.

    python benchmarks/bench_cache.py --dir /tmp/bench-cache
    python benchmarks/bench_cache.py --dir /tmp/bench-cache --source s3 --fits False,auto
    python benchmarks/bench_cache.py --dir /tmp/bench-cache --source gridded --iters 20
    python benchmarks/bench_cache.py --dir /tmp/bench-cache --model gmmic --scheduler threads

Heavy imports live inside the functions: the workers are spawned processes
that re-import this module.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

K, D = 16, 8
#: ``--model gmmic``: its fits (see the module docstring) and its range of K.
GMMIC_FITS = "ic,candidates,read,ic-numpy"
IC_RANGE = (1, 10)


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


def model(kind: str, cache, n_init: int = 1, init=None, iters: int = 0, nan_policy="raise"):
    """The fit; with ``init`` (K x d centres): from them, ``iters`` iterations at tol 0."""
    import numpy as np

    from dask_emk import GaussianMixture, KMeans

    given = {} if init is None else {"max_iter": iters, "tol": 0.0}
    if kind == "kmeans":
        if init is not None:
            given["init"] = init
        return KMeans(K, random_state=0, cache=cache, n_init=n_init, nan_policy=nan_policy,
                      **given)  # fmt: skip
    if init is not None:  # all three given: no k-means start, whose draws depend on row indices
        K_, d = init.shape
        given.update(means_init=init, weights_init=np.full(K_, 1 / K_),
                     precisions_init=np.broadcast_to(np.eye(d), (K_, d, d)))  # fmt: skip
    given = {"tol": 1e-3, **given}
    return GaussianMixture(K, covariance_type="full", random_state=0, cache=cache,
                           n_init=n_init, nan_policy=nan_policy, **given)  # fmt: skip


def open_source(source: str, folder: Path, n: int, chunk_rows: int, grid: tuple) -> tuple:
    """The stores the fits read: (inputs, X, store, stop).

    ``inputs``: {name: (opener of the fit input, nan_policy)}, the reference
    first; ``X``: the reference's rows in memory; ``store``: the reference
    store's path (what ``read`` reads); ``stop``: call it at the end.
    """
    import zarr

    if source == "gridded":
        from bench_gridded import make_cube, open_gridded, write_stores

        cube = make_cube(grid, 0.30)
        gridded, dense, X = write_stores(cube, (grid[0] // 6, grid[1], grid[2]), folder, "zstd")
        inputs = {"dense": (lambda: dense, "raise"),
                  "gridded": (lambda: open_gridded(gridded), "omit")}  # fmt: skip
        return inputs, X, Path(dense), lambda: None
    store = make_store(folder / f"X-{n}-{chunk_rows}.zarr", n, chunk_rows)
    X = zarr.open_array(str(store), mode="r")[:]
    inputs = {"local": (lambda: str(store), "raise")}
    if source == "local":
        return inputs, X, store, lambda: None
    import fsspec
    from bench_object_storage import start_server  # sets AWS_*: before the cluster starts

    server, _ = start_server()
    url = f"s3://bench/{store.name}"
    fsspec.filesystem("s3").mkdir("bench")
    z = zarr.create_array(store=zarr.storage.FsspecStore.from_url(url), shape=X.shape,
                          chunks=(chunk_rows, X.shape[1]), dtype=X.dtype)  # fmt: skip
    z[:] = X
    inputs["s3"] = (lambda: url, "raise")
    return inputs, X, store, lambda: (server.terminate(), server.wait())


@contextlib.contextmanager
def cluster_client(scheduler: str):
    """A LocalCluster of 2 single-threaded workers and its client; the store fits
    run on it, or on the threaded scheduler (the client then only counts CPU)."""
    import dask
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
        dask.config.set(scheduler="threads" if scheduler == "threads" else client),
    ):
        yield client


def read_pass(store: Path):
    """One plain read pass of the store (``X.sum(axis=0)``): the floor of a fit that reads once."""
    import dask.array as da

    from dask_emk.engine.reduction import compute_one

    return compute_one(da.from_zarr(str(store)).sum(axis=0))


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
    parser.add_argument("--model", choices=("kmeans", "gmm", "gmmic"), default="kmeans")
    parser.add_argument("--scheduler", choices=("cluster", "threads"), default="cluster")
    parser.add_argument("--fits", help="default: False,auto,numpy,read,persisted; "
                        f"gmmic: {GMMIC_FITS}")  # fmt: skip
    parser.add_argument("--n-init", default="1", help="comma-separated, e.g. 1,10")
    parser.add_argument("--source", choices=("local", "s3", "gridded"), default="local")
    parser.add_argument("--grid", type=int, nargs=3, default=(48, 180, 360),
                        metavar=("T", "Y", "X"), help="gridded: its shape")  # fmt: skip
    parser.add_argument("--iters", type=int, default=0,
                        help="from given centres, this many iterations at tol 0")  # fmt: skip
    args = parser.parse_args(argv)
    n_inits = [int(v) for v in args.n_init.split(",")]
    if args.model == "gmmic" and (args.source != "local" or args.iters or n_inits != [1]):
        parser.error("--model gmmic runs on the local store only: drop --source, --iters "
                     "and --n-init")  # fmt: skip
    fits = args.fits or (GMMIC_FITS if args.model == "gmmic" else "False,auto,numpy,read,persisted")
    unknown = set(fits.split(",")) - {*GMMIC_FITS.split(","), "ic-False"}
    if args.model == "gmmic" and unknown:
        parser.error(f"--model gmmic: unknown fits {sorted(unknown)}; pick from "
                     f"{GMMIC_FITS},ic-False")  # fmt: skip

    import dask.array as da
    import numpy as np
    import zarr
    from sklearn.exceptions import ConvergenceWarning

    args.dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).parent))  # bench_gridded, bench_object_storage
    inputs, X, store, stop = open_source(args.source, args.dir, args.n, args.chunk_rows,
                                         tuple(args.grid))  # fmt: skip
    first = next(iter(inputs))
    print(f"store {store}: {X.shape[0]} x {X.shape[1]} float32, "
          f"{zarr.open_array(str(store), mode='r').chunks[0]}-row chunks, "
          f"{X.nbytes / 2**20:.0f} MiB; model {args.model}")  # fmt: skip
    if len(inputs) > 1:
        print(f"store fits also on: {', '.join(list(inputs)[1:])} ({args.source})")
    if args.model == "gmmic":
        return run_gmmic(fits.split(","), X, store, args)
    init = None
    if args.iters:  # tol 0 stops at max_iter by design: not a warning
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        init = X[np.random.default_rng(1).choice(X.shape[0], K, replace=False)].astype(np.float64)
        print(f"every fit from the same {K} centres, {args.iters} iterations at tol 0")
    names = [name for name in fits.split(",")
             if name != "persisted" or args.scheduler == "cluster"]  # fmt: skip
    # Each store fit on the other stores right after the reference's: A/B interleaved.
    names = [f"{name}@{src}" if src != first else name for name in names
             for src in (inputs if name in ("False", "auto") else [first])]  # fmt: skip
    runs = [(name, n_init) for name in names
            for n_init in (n_inits if name.split("@")[0] in ("False", "auto", "persisted")
                           else [1])]  # fmt: skip
    times: dict[tuple, list[float]] = {run: [] for run in runs}
    cpus: dict[tuple, list[float]] = {run: [] for run in runs}
    fitted = {}
    with cluster_client(args.scheduler) as client:
        persisted = client.persist(da.from_array(X, chunks=(args.chunk_rows, X.shape[1])))
        # Warm-up: numba compiles in every process, the page cache holds the store.
        for opened, policy in inputs.values():
            model(args.model, "auto", nan_policy=policy).set_params(max_iter=2).fit(opened())
        model(args.model, False).set_params(max_iter=2).fit(X[:100_000])
        fit = functools.partial(model, args.model, init=init, iters=args.iters)
        for r in range(args.repeat):
            for name, n_init in runs:
                if name == "numpy":  # in memory: local threads, no Dask
                    t, c, out = timed(lambda: fit(False).fit(X), client)
                elif name == "read":
                    t, c, out = timed(lambda: read_pass(store), client)
                elif name == "persisted":
                    t, c, out = timed(lambda i=n_init: fit(False, i).fit(persisted), client)
                else:
                    cache, _, src = name.partition("@")
                    opened, policy = inputs[src or first]
                    cache = cache if cache == "auto" else False
                    t, c, out = timed(
                        lambda c=cache, i=n_init, o=opened, p=policy: fit(c, i, nan_policy=p).fit(
                            o()
                        ),
                        client,
                    )
                times[name, n_init].append(t)
                cpus[name, n_init].append(c)
                fitted[name, n_init] = out
                print(f"  round {r}: {name:9s} n_init={n_init:<3d} {t:7.2f} s, "
                      f"CPU {c:7.2f} s  ({load()})", flush=True)  # fmt: skip
    stop()
    print_sources(inputs, times, cpus, fitted, n_inits[0], args.model)
    for name, n_init in runs:
        if n_init != n_inits[0]:
            one = (name, n_inits[0])
            print(f"{name}: n_init={n_init} / n_init={n_inits[0]}: wall "
                  f"{min(times[name, n_init]) / min(times[one]):.2f}x, CPU "
                  f"{min(cpus[name, n_init]) / min(cpus[one]):.2f}x")  # fmt: skip
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


class Candidates:
    """A GaussianMixtureIC ``callback`` keeping its candidates: {K: the candidate}
    (the IC keeps only the best; each candidate holds its fitted attributes)."""

    def __init__(self):
        self.models = {}

    def __call__(self, model, info) -> None:
        self.models[model.n_components] = model


def ic_model(cache, callback=None):
    """The fit of ``--model gmmic`` (defaults: BIC, tol 1e-3, k-means starts)."""
    from dask_emk import GaussianMixtureIC

    return GaussianMixtureIC(*IC_RANGE, covariance_type="full", random_state=0, cache=cache,
                             callback=callback)  # fmt: skip


def separate_candidates(ic) -> list:
    """The IC's candidates as separate GaussianMixture fits: the settings the IC
    gives each (``SHARED``), and its draws: one random state, K in order."""
    from sklearn.utils import check_random_state

    from dask_emk import GaussianMixture
    from dask_emk.models.ic import SHARED

    rng = check_random_state(ic.random_state)  # the IC's: a fresh RandomState(0)
    shared = {name: getattr(ic, name) for name in SHARED}
    return [GaussianMixture(k, covariance_type=ic.covariance_type,
                            **{**shared, "random_state": rng, "callback": None})
            for k in range(ic.min_components, ic.max_components + 1)]  # fmt: skip


def fit_candidates(X, client) -> tuple[float, float, dict]:
    """Each candidate fitted alone on ``X`` in order: summed wall and CPU seconds,
    and {K: (fitted model, wall seconds)}."""
    wall, cpu, out = 0.0, 0.0, {}
    for model in separate_candidates(ic_model(False)):
        t, c, fitted = timed(lambda m=model: m.fit(X), client)
        wall, cpu, out[model.n_components] = wall + t, cpu + c, (fitted, t)
    return wall, cpu, out


def run_gmmic(names: list[str], X, store: Path, args) -> None:
    """``--model gmmic``: the fits ``names`` interleaved, then the figures and checks."""
    times = {name: [] for name in names}
    cpus = {name: [] for name in names}
    fitted = {}
    with cluster_client(args.scheduler) as client:
        # Warm-up: numba compiles in every process, the page cache holds the store.
        with warnings.catch_warnings(action="ignore"):  # 2 iterations: not converged
            ic_model("auto").set_params(max_components=2, max_iter=2).fit(str(store))
            ic_model(False).set_params(max_components=2, max_iter=2).fit(X[:100_000])
        for r in range(args.repeat):
            for name in names:
                if name == "candidates":
                    t, c, out = fit_candidates(X, client)
                elif name == "read":
                    t, c, out = timed(lambda: read_pass(store), client)
                else:
                    kept = Candidates()
                    model = ic_model(False if name == "ic-False" else "auto", kept)
                    data = X if name == "ic-numpy" else str(store)
                    t, c, out = timed(lambda m=model, d=data: m.fit(d), client)
                    out = (out, kept.models)
                times[name].append(t)
                cpus[name].append(c)
                fitted[name] = out
                print(f"  round {r}: {name:10s} {t:7.2f} s, CPU {c:7.2f} s  ({load()})",
                      flush=True)  # fmt: skip
    identical = print_candidates(fitted, X) if "candidates" in fitted else None
    print_gmmic_ratios(times, cpus)
    print(f"({load()}) command: python {shlex.join(sys.argv)}")
    if identical is False:
        raise SystemExit("the IC on the numpy array did not fit its candidates bit for bit")


def print_candidates(fitted: dict, X) -> bool | None:
    """Per K: the separate fit against each IC's candidate (iterations, relative
    differences of the lower bound and of the criterion), and each IC's choice.

    Returns whether the IC on the numpy array fitted every separate candidate
    bit for bit (None when it did not run).
    """
    alone = {k: model for k, (model, _) in fitted["candidates"].items()}
    start = time.perf_counter()
    bics = {k: model.bic(X) for k, model in alone.items()}  # the IC's default criterion
    print(f"\nthe separate fits' BIC on X, one pass each: {time.perf_counter() - start:.2f} s "
          "(the IC's criterion pass: this E-step again, beyond the fits)")  # fmt: skip
    ics = {name: out for name, out in fitted.items() if name.startswith("ic")}
    same = {name: True for name in ics}
    print("| K | alone: iterations, s | " + " | ".join(
        f"{name}: iterations, rel. Δ lower bound, rel. Δ BIC" for name in ics) + " |")  # fmt: skip
    print("|---|---|" + "---|" * len(ics))
    for k, model in alone.items():
        cells = [f"{k}", f"{model.n_iter_}, {fitted['candidates'][k][1]:.2f}"]
        for name, (ic, candidates) in ics.items():
            cand, bound = candidates[k], model.lower_bound_
            bic = float(ic.criteria_.sel(n_components=k, covariance_type="full"))
            cells.append(f"{cand.n_iter_}, {abs(cand.lower_bound_ - bound) / abs(bound):.1e}, "
                         f"{abs(bic - bics[k]) / abs(bics[k]):.1e}")  # fmt: skip
            same[name] = same[name] and same_fit(cand, model)
        print("| " + " | ".join(cells) + " |")
    lowest = min(bics, key=bics.get)
    for name, (ic, _) in ics.items():
        print(f"{name}: chose K={ic.n_components_} (the separate fits' lowest BIC: K={lowest}); "
              f"every candidate bit-identical to its separate fit: {same[name]}")  # fmt: skip
    return same.get("ic-numpy")


def print_gmmic_ratios(times: dict, cpus: dict) -> None:
    """Best wall (and CPU) seconds of each fit, and ``ic / (candidates + read)``."""
    best = {name: min(ts) for name, ts in times.items()}
    cpu = {name: min(cs) for name, cs in cpus.items()}
    names = [name for name in ("ic", "ic-False", "ic-numpy", "candidates", "read") if name in best]
    cells = [f"{best[name]:.2f} s (CPU {cpu[name]:.2f} s)" for name in names]
    if {"ic", "candidates", "read"} <= set(best):
        names.append("ic / (candidates + read)")
        floor, cpu_floor = best["candidates"] + best["read"], cpu["candidates"] + cpu["read"]
        cells.append(f"{best['ic'] / floor:.2f}x (CPU {cpu['ic'] / cpu_floor:.2f}x)")
    if {"ic-numpy", "candidates"} <= set(best):
        names.append("ic-numpy / candidates")
        cells.append(f"{best['ic-numpy'] / best['candidates']:.2f}x")
    print("\n| " + " | ".join(names) + " |")
    print("|" + "---|" * len(names))
    print("| " + " | ".join(cells) + " |")


def same_fit(a, b) -> bool:
    """Bit for bit the same fitted mixture (parameters in the data's dtype, iterations,
    and the float64 lower bound)."""
    import numpy as np

    arrays = ("weights_", "means_", "covariances_", "precisions_cholesky_")
    same = all(np.array_equal(getattr(a, attr), getattr(b, attr)) for attr in arrays)
    return same and a.n_iter_ == b.n_iter_ and a.lower_bound_ == b.lower_bound_


def print_sources(inputs: dict, times: dict, cpus: dict, fitted: dict, n_init: int, kind: str):
    """Each store fit on each other store against the same fit on the reference store:
    best and median wall time, CPU, iterations, and the ratios (nothing with one store)."""
    import statistics

    import numpy as np

    first, *others = inputs
    attr = "cluster_centers_" if kind == "kmeans" else "means_"
    for src in others:
        for cache in ("False", "auto"):
            a, b = (cache, n_init), (f"{cache}@{src}", n_init)
            if a not in times or b not in times:
                continue
            diff = np.abs(getattr(fitted[a], attr) - getattr(fitted[b], attr)).max()
            print(f"{src} / {first}, cache={cache}: best {min(times[b]):.2f} / "
                  f"{min(times[a]):.2f} s = {min(times[b]) / min(times[a]):.2f}x, median "
                  f"{statistics.median(times[b]) / statistics.median(times[a]):.2f}x, CPU "
                  f"{min(cpus[b]) / min(cpus[a]):.2f}x; iterations {fitted[b].n_iter_} / "
                  f"{fitted[a].n_iter_}; {attr} differ by {diff:.2g} at most")  # fmt: skip


if __name__ == "__main__":
    main()
