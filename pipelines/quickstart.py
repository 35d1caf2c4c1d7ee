"""Quickstart: generate a mixture to zarr, fit a GaussianMixture from the store.

    python pipelines/quickstart.py [--n 1000000] [--out out/quickstart.zarr]

Writes a 1,000,000-row, 3-feature, 4-component mixture to a compressed zarr
store chunk by chunk, fits ``dask_emk.GaussianMixture`` on a distributed
LocalCluster reading straight from the store (never the whole array in the
client), prints the fitted parameters beside the truth, and writes the fitted
model with ``to_xarray().to_zarr``. Exits non-zero if the fit is off.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import xarray as xr
from dask.distributed import Client, LocalCluster
from scipy.optimize import linear_sum_assignment

from dask_emk import GaussianMixture
from dask_emk.datasets import random_mixture, read_truth, write_mixture_zarr


def match_components(fitted_means: np.ndarray, true_means: np.ndarray) -> np.ndarray:
    """Index of the fitted component matching each true one (Hungarian on distances)."""
    cost = ((true_means[:, None, :] - fitted_means[None, :, :]) ** 2).sum(axis=2)
    _, cols = linear_sum_assignment(cost)
    return cols


def report(model: GaussianMixture, store: Path) -> float:
    """Print fitted vs true parameters; return the largest mean error in std units."""
    truth = read_truth(store)
    order = match_components(model.means_, truth.means)
    worst = 0.0
    print(f"{'k':>2} {'weight':>15} {'mean (fitted / true)':>44} {'max |cov err|':>14}")
    for k, j in enumerate(order):
        scale = np.sqrt(np.diag(truth.covariances[k]))
        worst = max(worst, float(np.max(np.abs(model.means_[j] - truth.means[k]) / scale)))
        cov_err = np.max(np.abs(model.covariances_[j] - truth.covariances[k]))
        fitted = np.array2string(model.means_[j], precision=2, floatmode="fixed")
        true = np.array2string(truth.means[k], precision=2, floatmode="fixed")
        print(
            f"{k:>2} {model.weights_[j]:.3f} / {truth.weights[k]:.3f} "
            f"{fitted:>21} / {true:<21} {cov_err:14.4f}"
        )
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description="dask_emk quickstart")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "quickstart.zarr"

    start = time.perf_counter()
    truth = random_mixture(n_features=3, n_components=4, seed=1)
    write_mixture_zarr(store, args.n, truth, chunk_rows=100_000, seed=1, overwrite=True)
    print(f"wrote {args.n:,} rows to {store} in {time.perf_counter() - start:.1f} s")

    with LocalCluster(n_workers=args.workers, threads_per_worker=1) as cluster, Client(cluster):
        print(f"LocalCluster with {args.workers} workers, dashboard {cluster.dashboard_link}")
        start = time.perf_counter()
        model = GaussianMixture(4, covariance_type="full", random_state=0, tol=1e-4)
        model.fit(f"{store}/X")
        print(
            f"fitted in {time.perf_counter() - start:.1f} s: {model.n_iter_} EM iterations, "
            f"converged={model.converged_}, lower bound {model.lower_bound_:.4f}"
        )
    worst = report(model, store)
    results = args.out / "quickstart-model.zarr"
    model.to_xarray().to_zarr(results, mode="w", consolidated=False)
    print(f"model written to {results}: {list(xr.open_zarr(results, consolidated=False).data_vars)}")
    if worst > 0.05:
        raise SystemExit(f"fitted means are off by {worst:.3f} standard deviations")
    print(f"largest mean error {worst:.4f} standard deviations: OK")


if __name__ == "__main__":
    main()
