"""Annealed EM vs k-means++ on hard synthetic sets: Centroid Index, inertia, cost.

Sets in the spirit of Fränti & Sieranoja's benchmark sets (all shuffled):
grid100 (10×10 overlapping Gaussians), rings (3 rings of 8/16/24 Gaussians),
unequal (30 clusters, sizes from 100 to 3000 rows), d8 (40 clusters in 8-D).
Quality: one annealed run vs scikit-learn k-means++ with n_init=1 and 10,
over ``--seeds`` data/algorithm seeds. Cost (seed 0, dask input): passes over
the full data and wall time of the annealed fit vs dask_emk KMeans (k-means||).

    python benchmarks/bench_anneal.py --seeds 5
"""

from __future__ import annotations

import os

# One BLAS thread: small GEMMs on a shared 2-core machine ran 5-30x slower
# with threads fighting (the same for every method compared here).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from dask.callbacks import Callback  # noqa: E402
from sklearn.cluster import KMeans as SkKMeans  # noqa: E402

from dask_emk import AnnealedGaussianMixture, KMeans  # noqa: E402


def gaussians(centers, sizes, spread, rng):
    X = np.concatenate(
        [c + spread * rng.standard_normal((m, len(c))) for c, m in zip(centers, sizes, strict=True)]
    )
    return X[rng.permutation(len(X))], np.asarray(centers, dtype=float)


def make_set(name: str, seed: int):
    """(X, true centres) of a named set."""
    rng = np.random.default_rng(seed)
    if name == "grid100":
        g = np.arange(10.0)
        centers = [(a, b) for a in g for b in g]
        return gaussians(centers, [250] * 100, 0.3, rng)
    if name == "rings":
        centers = [
            (r * np.cos(t), r * np.sin(t))
            for r, k in ((2.0, 8), (4.0, 16), (6.0, 24))
            for t in 2 * np.pi * (np.arange(k) + 0.5 * (r == 4.0)) / k
        ]
        return gaussians(centers, [500] * 48, 0.4, rng)
    if name == "unequal":
        centers = spread_points(30, 2, 2.5, 30.0, rng)
        sizes = np.round(np.geomspace(100, 3000, 30)).astype(int)
        return gaussians(centers, rng.permutation(sizes), 1.0, rng)
    if name == "d8":
        centers = spread_points(40, 8, 5.0, 8.0, rng)
        return gaussians(centers, [700] * 40, 1.0, rng)
    raise ValueError(name)


def spread_points(k, d, min_dist, box, rng):
    """k points uniform in [0, box]^d at least min_dist apart (rejection)."""
    points = []
    while len(points) < k:
        p = rng.uniform(0, box, d)
        if all(np.linalg.norm(p - q) >= min_dist for q in points):
            points.append(p)
    return np.array(points)


def centroid_index(fitted, truth) -> int:
    """Fränti (2014): max of the two directed counts of orphan centroids."""

    def orphans(a, b):
        nearest = ((a[:, None] - b[None]) ** 2).sum(-1).argmin(axis=1)
        return len(b) - len(np.unique(nearest))

    return max(orphans(fitted, truth), orphans(truth, fitted))


class ComputeCounter(Callback):
    """Counts dask computes (each pass of the engine is exactly one)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def _start(self, dsk):
        self.count += 1


def quality(name, seeds):
    rows = []
    for seed in range(seeds):
        X, truth = make_set(name, seed)
        K = len(truth)
        an = AnnealedGaussianMixture(K, random_state=seed).fit(X)
        sk1 = SkKMeans(K, n_init=1, random_state=seed).fit(X)
        sk10 = SkKMeans(K, n_init=10, random_state=seed).fit(X)
        rows.append(
            [(centroid_index(m.cluster_centers_, truth), m.inertia_) for m in (an, sk1, sk10)]
        )
    return np.array(rows)  # (seed, method, [CI, inertia])


def cost(name):
    X, truth = make_set(name, 0)
    K = len(truth)
    Xd = da.from_array(X, chunks=5000)
    out = {}
    for label, model in (
        ("anneal", AnnealedGaussianMixture(K, random_state=0)),
        ("kmeans||", KMeans(K, random_state=0)),
    ):
        counter = ComputeCounter()
        t = time.perf_counter()
        with counter:
            model.fit(Xd)
        out[label] = (
            counter.count,
            time.perf_counter() - t,
            getattr(model, "n_full_passes_", None),
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sets", default="grid100,rings,unequal,d8")
    args = parser.parse_args()
    print(
        "| set | n, d, K | CI anneal | CI k-means++ ×1 | CI k-means++ ×10 | inertia anneal / ×10 "
        "(median, worst) | anneal ≤ ×10 | computes anneal / k-means|| | time anneal / k-means|| |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        X, truth = make_set(name, 0)
        q = quality(name, args.seeds)
        ratio = q[:, 0, 1] / q[:, 2, 1]
        c = cost(name)
        ci = ["/".join(str(int(v)) for v in q[:, j, 0]) for j in range(3)]
        print(
            f"| {name} | {X.shape[0]}, {X.shape[1]}, {len(truth)} | {ci[0]} | {ci[1]} | {ci[2]} | "
            f"{np.median(ratio):.5f}, {ratio.max():.5f} | {int((ratio <= 1).sum())}/{len(ratio)} | "
            f"{c['anneal'][0]} (n_full_passes_ {c['anneal'][2]}) / {c['kmeans||'][0]} | "
            f"{c['anneal'][1]:.1f} s / {c['kmeans||'][1]:.1f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
