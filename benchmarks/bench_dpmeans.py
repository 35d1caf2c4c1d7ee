"""Passes and wall time of DP-means against k-means with the K it finds.

Same float32 blobs, same dask array, same process, threaded scheduler:

    /work/venv/bin/python benchmarks/bench_dpmeans.py --n 1000000 --d 8 --k 10 --workers 2

Fits, in this order: ``DPMeans(penalty=λ)``; ``KMeans(K)`` with the K that
DP-means found, seeded by k-means|| then by k-means++ (default tol);
``DPMeans(n_clusters=k)`` (the λ search) with the true k. Passes = Dask
computes counted by a scheduler callback (labels are lazy and not computed).
Each fit is timed once, after a small warm-up fit that compiles the kernels.
"""

from __future__ import annotations

import argparse
import time

import dask
import dask.array as da
import numpy as np
from dask.callbacks import Callback

from dask_emk import DPMeans, KMeans


class CountComputes(Callback):
    """Counts graph executions (one ``start`` per dask compute)."""

    def __init__(self):
        super().__init__(start=self._start)
        self.count = 0

    def _start(self, dsk):
        self.count += 1


def make_blobs(n: int, d: int, k: int, scale: float, seed: int = 0) -> np.ndarray:
    """k unit-variance float32 blobs with centres drawn N(0, scale²)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=scale, size=(k, d)).astype(np.float32)
    X = rng.standard_normal((n, d), dtype=np.float32)
    X += centres[rng.integers(0, k, n)]
    return X


def measured(name: str, fit):
    counter = CountComputes()
    start = time.perf_counter()
    with counter:
        model = fit()
    seconds = time.perf_counter() - start
    K = getattr(model, "n_clusters_", getattr(model, "n_clusters", None))
    inertia = float(model.inertia_)
    print(
        f"{name:>24}: {counter.count:4d} passes, {seconds:7.2f} s, K={K}, "
        f"n_iter={model.n_iter_}, inertia={inertia:.6g}"
    )
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--scale", type=float, default=10.0, help="spread of the true centres")
    p.add_argument("--penalty", type=float, default=200.0, help="λ of the DP-means fit")
    p.add_argument("--chunk", type=int, default=125_000, help="rows per dask chunk")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    X = make_blobs(args.n, args.d, args.k, args.scale)
    Xd = da.from_array(X, chunks=(args.chunk, -1))
    print(
        f"n={args.n} d={args.d} true k={args.k} float32, centres N(0, {args.scale}²), "
        f"λ={args.penalty}, chunks of {args.chunk} rows, threaded scheduler with "
        f"{args.workers} workers"
    )
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        DPMeans(penalty=args.penalty).fit(Xd[:20_000])  # compile the kernels
        KMeans(2, random_state=0).fit(Xd[:20_000])
        dp = measured("DPMeans(penalty)", lambda: DPMeans(penalty=args.penalty).fit(Xd))
        for init in ("k-means||", "k-means++"):
            measured(
                f"KMeans({dp.n_clusters_}, {init})",
                lambda init=init: KMeans(dp.n_clusters_, init=init, random_state=0).fit(Xd),
            )
        search = measured(
            f"DPMeans(n_clusters={args.k})", lambda: DPMeans(n_clusters=args.k).fit(Xd)
        )
    print(f"DP-means objective per iteration: {[f'{v:.6g}' for v in dp.objective_history_]}")
    print(f"DP-means clusters per iteration: {dp.n_clusters_history_}")
    tried = [(f"{run['penalty']:.4g}", run["n_clusters"]) for run in search.penalty_search_]
    print(f"λ search (λ, K): {tried}")


if __name__ == "__main__":
    main()
