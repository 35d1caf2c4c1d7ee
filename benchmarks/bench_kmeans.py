"""Time per Lloyd iteration: dask_emk KMeans vs scikit-learn vs dask-ml.

Same float32 data, same initial centres, same process, threaded scheduler:

    /work/venv/bin/python benchmarks/bench_kmeans.py --n 1000000 --d 32 --k 16 --workers 2

Each estimator runs ``--iters`` Lloyd iterations from the same centres with
tol=0 (the data is not converged by then); time per iteration = wall time of
the fit / iterations run. scikit-learn runs in memory on the numpy array;
dask_emk and dask-ml get the same dask array.
"""

from __future__ import annotations

import argparse
import time
import traceback

import dask
import dask.array as da
import numpy as np
from sklearn.cluster import KMeans as SKKMeans

from dask_emk import KMeans


def make_data(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping float32 blobs (slow to converge) and K initial rows."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d)).astype(np.float32)
    X = rng.standard_normal((n, d), dtype=np.float32) * 2.0
    X += means[rng.integers(0, k, n)]
    init = X[rng.choice(n, k, replace=False)].astype(np.float64)
    return X, init


def timed(fit) -> tuple[float, object]:
    start = time.perf_counter()
    model = fit()
    return time.perf_counter() - start, model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--chunk", type=int, default=125_000, help="rows per dask chunk")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="best of this many fits")
    args = p.parse_args()
    X, init = make_data(args.n, args.d, args.k)
    Xd = da.from_array(X, chunks=(args.chunk, -1))
    kw = {"init": init, "max_iter": args.iters, "tol": 0.0}
    print(
        f"n={args.n} d={args.d} K={args.k} float32, {args.iters} iterations, "
        f"chunks of {args.chunk} rows, threaded scheduler with {args.workers} workers"
    )
    per_iter = {}

    def best(name, fit):
        runs = [timed(fit) for _ in range(args.repeat)]
        seconds, model = min(runs, key=lambda r: r[0])
        per_iter[name] = seconds / model.n_iter_
        print(
            f"{name:>10}: {per_iter[name] * 1e3:8.1f} ms/iteration "
            f"(n_iter={model.n_iter_}, inertia={float(model.inertia_):.6g})"
        )
        return model

    sk = best("sklearn", lambda: SKKMeans(args.k, n_init=1, algorithm="lloyd", **kw).fit(X))
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        ours = best("dask_emk", lambda: KMeans(args.k, **kw).fit(Xd))
        try:
            from dask_ml.cluster import KMeans as DMKMeans

            best("dask-ml", lambda: DMKMeans(n_clusters=args.k, **kw).fit(Xd))
        except Exception:  # report exactly what fails, keep the other figures
            print("dask-ml failed:\n" + traceback.format_exc())
    diff = np.abs(ours.cluster_centers_ - sk.cluster_centers_).max()
    print(f"max |centre difference| dask_emk vs sklearn: {diff:.3g}")
    print(f"ratio dask_emk / sklearn: {per_iter['dask_emk'] / per_iter['sklearn']:.2f}")
    if "dask-ml" in per_iter:
        print(f"speed-up over dask-ml: {per_iter['dask-ml'] / per_iter['dask_emk']:.1f}x")


if __name__ == "__main__":
    main()
