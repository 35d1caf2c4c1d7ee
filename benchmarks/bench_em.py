"""Time one EM iteration: dask_emk vs scikit-learn, same data, same init, same run.

Per-iteration time is measured with the public ``fit`` only: the time of a fit
with ``max_iter = 1 + m`` minus a fit with ``max_iter = 1``, divided by m, so
set-up and scikit-learn's final E-step cancel out. Median of ``--repeat`` runs.
dask_emk runs twice: with its sparse E-step (candidate pairs only) and with
the dense one forced; ``pairs`` is the fraction of (row, component) pairs
whose density the sparse run evaluated (a sub-block on the dense path counts
all of its pairs).

    python benchmarks/bench_em.py --repeat 5      # n=1e6, d=32, K=16, float32
    python benchmarks/bench_em.py --n 200000      # quicker
    python benchmarks/bench_em.py --data grid --types full         # 10x10 grid, K=100
    python benchmarks/bench_em.py --data overlap --types full,diag  # 4 overlapping, K=4
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import dask
import dask.array as da
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_emk import GaussianMixture
from dask_emk.core import sparse


def make_data(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float32 mixture data (n, d) and K initial means taken from it."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    labels = rng.integers(0, k, n)
    X = (centers[labels] + rng.standard_normal((n, d))).astype(np.float32)
    return X, X[rng.choice(n, k, replace=False)].astype(np.float64)


def make_grid(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """10 × 10 grid of 2-D Gaussians (spacing 10, std 2), K = 100 means from the rows."""
    rng = np.random.default_rng(seed)
    centers = 10.0 * np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2)
    X = (centers[rng.integers(0, 100, n)] + 2.0 * rng.standard_normal((n, 2))).astype(np.float32)
    return X, X[rng.choice(n, 100, replace=False)].astype(np.float64)


def make_overlap(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four heavily overlapping 2-D Gaussians, 4 means from the rows."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]])
    X = (centers[rng.integers(0, 4, n)] + rng.standard_normal((n, 2))).astype(np.float32)
    return X, X[rng.choice(n, 4, replace=False)].astype(np.float64)


@contextlib.contextmanager
def pair_counter():
    """Yields {rows, pairs} the E-step evaluated (all pairs of a dense sub-block)."""
    seen = {"rows": 0, "pairs": 0}
    real = sparse.sparse_plan

    def counting(X, params, *rest):
        plan = real(X, params, *rest)
        seen["rows"] += X.shape[0]
        seen["pairs"] += params.means.shape[0] * X.shape[0] if plan is None else plan.rows.size
        return plan

    sparse.sparse_plan = counting
    try:
        yield seen
    finally:
        sparse.sparse_plan = real


def init_kwargs(covariance_type: str, means: np.ndarray) -> dict:
    k, d = means.shape
    precisions = np.tile(np.eye(d), (k, 1, 1)) if covariance_type == "full" else np.ones((k, d))
    return dict(
        covariance_type=covariance_type,
        weights_init=np.full(k, 1.0 / k),
        means_init=means,
        precisions_init=precisions,
        tol=0.0,
    )


def seconds_per_iteration(make_model, X, extra_iters: int, repeat: int, skip: int = 0) -> float:
    """(fit with s + 1 + m iterations − fit with s + 1) / m, median of ``repeat``.

    ``skip`` = s iterations are left out of the timing (later iterations of
    the same run, where the components have separated). A first untimed fit
    compiles the numba loops.
    """

    def timed(max_iter: int) -> float:
        model = make_model(max_iter)
        start = time.perf_counter()
        model.fit(X)
        return time.perf_counter() - start

    timed(1)
    runs = [(timed(skip + 1 + extra_iters) - timed(skip + 1)) / extra_iters for _ in range(repeat)]
    return float(np.median(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--iters", type=int, default=2, help="extra iterations timed")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip", type=int, default=0, help="iterations run before the timed ones")
    parser.add_argument("--types", default="diag,full")
    parser.add_argument("--data", choices=("blobs", "grid", "overlap"), default="blobs")
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)

    if args.data == "blobs":
        X, means = make_data(args.n, args.d, args.k)
    else:
        X, means = (make_grid if args.data == "grid" else make_overlap)(args.n)
    k, d = means.shape
    Xd = da.from_array(X, chunks=(args.chunk_rows, -1))
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(
        f"{args.data}: n={args.n} d={d} K={k} float32, chunks of {args.chunk_rows} rows, "
        f"threads, {args.skip} iterations before the timed ones, load {load}"
    )
    types = args.types.split(",")
    ours, pairs = {}, {}
    # All of ours first, then scikit-learn's: measured right after
    # scikit-learn's fits (hundreds of MB allocated and freed), our next
    # type's iterations ran 5-40% slower than in a run of their own.
    with dask.config.set(scheduler="threads"):
        for ct in types:
            kw = init_kwargs(ct, means)
            for dense in (False, True):
                path = "dense" if dense else "auto"
                with pair_counter() as seen:
                    ours[ct, dense] = seconds_per_iteration(
                        lambda m, kw=kw, path=path: GaussianMixture(
                            k, max_iter=m, estep=path, **kw
                        ),
                        Xd,
                        args.iters,
                        args.repeat,
                        args.skip,
                    )
                if not dense:
                    pairs[ct] = seen["pairs"] / (seen["rows"] * k)
    for ct in types:
        kw = init_kwargs(ct, means)
        theirs = seconds_per_iteration(
            lambda m, kw=kw: SkGaussianMixture(k, max_iter=m, **kw),
            X,
            args.iters,
            args.repeat,
            args.skip,
        )
        sparse, dense = ours[ct, False], ours[ct, True]
        print(
            f"{ct:5s} sparse {sparse:7.3f} s/iter (pairs {pairs[ct]:6.1%})  dense {dense:7.3f}  "
            f"scikit-learn {theirs:7.3f}  sklearn/sparse x{theirs / sparse:5.1f}  "
            f"sklearn/dense x{theirs / dense:5.1f}  dense/sparse x{dense / sparse:5.2f}"
        )


if __name__ == "__main__":
    main()
