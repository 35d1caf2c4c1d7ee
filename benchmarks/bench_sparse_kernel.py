"""Time the sparse E-step kernel against the forced dense one, one BLAS thread.

For each data set and covariance type, parameters come from fits of
dask_emk's own GaussianMixture from random rows as means (identity
precisions): ``early`` after 2 EM iterations (components still broad: many
candidates per row), ``conv`` after 60. ``estep_stats`` then runs on the
same block with the sparse path and with ``estep='dense'``, interleaved, and
the dense/sparse ratio of the median and of the best times is printed with
the fraction of (row, component) pairs the sparse run evaluated (sub-blocks
that fell back to dense count all their pairs) and the share of rows that
went dense.

    python benchmarks/bench_sparse_kernel.py                  # all sets, all types
    python benchmarks/bench_sparse_kernel.py --data grid --types full --repeat 15
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings

import dask
import numpy as np
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from dask_emk import GaussianMixture
from dask_emk.core import estep, mixture, sparse

sys.path.insert(0, os.path.dirname(__file__))
from bench_em import make_data, make_grid, make_overlap  # noqa: E402


def make_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1797 x 64) tiled to n rows, K = 10 means from the rows."""
    rng = np.random.default_rng(seed)
    X = load_digits().data
    X = np.tile(X, (-(-n // X.shape[0]), 1))[:n]
    return X, X[rng.choice(n, 10, replace=False)].astype(np.float64)


DATA = {
    "blobs": lambda n: make_data(n, 32, 16),
    "grid": make_grid,
    "overlap": make_overlap,
    "digits": make_digits,
}


def fitted_params(X, means, covariance_type: str, iters: int) -> mixture.MixtureParams:
    k, d = means.shape
    precisions = {
        "full": np.tile(np.eye(d), (k, 1, 1)),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[covariance_type]
    gm = GaussianMixture(
        k,
        covariance_type=covariance_type,
        max_iter=iters,
        tol=0.0,
        weights_init=np.full(k, 1.0 / k),
        means_init=means,
        precisions_init=precisions,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence, collapsed pixels of digits
        gm.fit(X)
    return gm._kernel_params(gm._state64)


def counted_estep(X, params) -> tuple[float, float, float]:
    """(seconds, fraction of pairs evaluated, fraction of rows on the dense path)."""
    seen = {"rows": 0, "pairs": 0, "dense": 0}
    real = sparse.sparse_plan

    def counting(Xs, p, *rest):
        plan = real(Xs, p, *rest)
        seen["rows"] += Xs.shape[0]
        if plan is None:
            seen["pairs"] += p.means.shape[0] * Xs.shape[0]
            seen["dense"] += Xs.shape[0]
        else:
            seen["pairs"] += plan.rows.size
        return plan

    sparse.sparse_plan = counting
    try:
        start = time.thread_time()
        estep.estep_stats(X, None, params)
        seconds = time.thread_time() - start
    finally:
        sparse.sparse_plan = real
    K = params.means.shape[0]
    rows = max(seen["rows"], 1)
    return seconds, seen["pairs"] / (rows * K), seen["dense"] / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=65_536, help="rows of the timed block")
    parser.add_argument("--fit-rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--data", default=",".join(DATA))
    parser.add_argument("--types", default="full,diag,tied,spherical")
    parser.add_argument("--stages", default="early,conv")
    parser.add_argument(
        "--no-fallback", action="store_true", help="sparse path on every sub-block"
    )
    parser.add_argument(
        "--exact", action="store_true", help="candidates from exact log-densities also for full"
    )
    args = parser.parse_args()
    exact = {"exact_features": 10**9} if args.exact else {}
    sparse_path = "sparse" if args.no_fallback else "auto"
    with open("/proc/loadavg") as f:
        print(f"load {f.read().split()[:3]}, one BLAS thread, block of {args.n} rows")
    print(f"{'data':8s} {'type':9s} {'stage':5s} {'pairs':>6s} {'dense rows':>10s} "
          f"{'sparse ms':>9s} {'dense ms':>9s} {'median x':>8s} {'best x':>7s}")  # fmt: skip
    with dask.config.set(scheduler="sync"), threadpool_limits(1):
        for name in args.data.split(","):
            X, means = DATA[name](args.n)
            for ct in args.types.split(","):
                for stage in args.stages.split(","):
                    iters = {"early": 2, "conv": 60}[stage]
                    fitted = fitted_params(X[: args.fit_rows], means, ct, iters)
                    by_path = {
                        dense: dataclasses.replace(
                            fitted,
                            estep=mixture.EStepOptions("dense" if dense else sparse_path, **exact),
                        )
                        for dense in (False, True)
                    }
                    counted_estep(X, by_path[False])  # compile, warm the buffers
                    times = {False: [], True: []}
                    for _ in range(args.repeat):
                        for dense in (False, True):
                            seconds, pairs, went_dense = counted_estep(X, by_path[dense])
                            times[dense].append(seconds)
                            if not dense:
                                frac, dense_rows = pairs, went_dense
                    s, t = np.array(times[False]), np.array(times[True])
                    print(
                        f"{name:8s} {ct:9s} {stage:5s} {frac:6.1%} {dense_rows:10.0%} "
                        f"{1e3 * np.median(s):9.2f} {1e3 * np.median(t):9.2f} "
                        f"{np.median(t) / np.median(s):7.2f}x {t.min() / s.min():6.2f}x",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
