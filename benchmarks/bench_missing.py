"""Missing values: what marginalising is worth, and what it costs per EM iteration.

Statistical value: mixture data with known means; 0/10/30/50% of the entries
missing at random where the missingness of features 1..d-1 depends on the
value of feature 0 (MAR: rows with a large x_0 lose more); the error of the
fitted means against the truth (root mean square over components and
features, components matched to the truth; median over data sets), for
``nan_policy='marginalize'`` against dropping the incomplete rows
(``nan_policy='omit'``). A table, and a plot written to ``--plot``.

Speed (same run): seconds per EM iteration with 20% of the entries missing
(completely at random) over a complete-data iteration on the same values,
diag and full covariance. The complete-data iteration runs as by default
(its sparse E-step may skip most pairs) and with the dense E-step forced
(the marginal path is always dense); an iteration's time is the median interval
between the callbacks of consecutive iterations of one fit (best of
``--repeat`` fits).

    python benchmarks/bench_missing.py                   # both parts
    python benchmarks/bench_missing.py --part speed --n 400000
"""

from __future__ import annotations

import argparse
import time
import warnings

import dask
import dask.array as da
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import expit
from sklearn.exceptions import ConvergenceWarning

from dask_emk import GaussianMixture

FRACTIONS = (0.0, 0.1, 0.3, 0.5)


def mixture_data(n: int, d: int, k: int, seed: int):
    """(X (n, d), true means (k, d)): k correlated Gaussians, separated means."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d))
    labels = rng.integers(0, k, n)
    mix = [np.linalg.cholesky(np.cov(rng.normal(size=(d, 2 * d)))) for _ in range(k)]
    noise = rng.standard_normal((n, d))
    X = means[labels] + np.einsum("nij,nj->ni", np.stack(mix)[labels], noise)
    return X, means


def mar_gaps(X: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """X with ``fraction`` of all entries missing, feature 0 always observed;
    an entry of feature j > 0 is missing with probability expit(2 z_0 + b)
    (z_0 the standardised x_0, b set so the overall fraction is ``fraction``)."""
    n, d = X.shape
    if fraction == 0:
        return X.copy()
    target = fraction * d / (d - 1)
    z = (X[:, 0] - X[:, 0].mean()) / X[:, 0].std()
    low, high = -30.0, 30.0
    for _ in range(60):  # bisection on the offset b
        b = 0.5 * (low + high)
        low, high = (b, high) if expit(2 * z + b).mean() < target else (low, b)
    p = expit(2 * z + b)
    out = X.copy()
    gaps = np.random.default_rng(seed).random((n, d - 1)) < p[:, None]
    out[:, 1:][gaps] = np.nan
    return out


def mean_error(fitted: np.ndarray, truth: np.ndarray) -> float:
    cost = ((fitted[:, None, :] - truth[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].sum() / truth.size))


def statistical_value(args) -> dict:
    errors = {policy: np.zeros((args.seeds, len(FRACTIONS))) for policy in ("marginalize", "omit")}
    for seed in range(args.seeds):
        X, truth = mixture_data(args.stat_n, args.stat_d, args.k_stat, seed)
        for i, fraction in enumerate(FRACTIONS):
            Xg = mar_gaps(X, fraction, seed)
            for policy in errors:
                gm = GaussianMixture(args.k_stat, nan_policy=policy, tol=1e-6, max_iter=500,
                                     random_state=seed, n_init=3)  # fmt: skip
                errors[policy][seed, i] = mean_error(gm.fit(Xg).means_, truth)
    # The median over data sets: one fit stuck in a poor local optimum does not set the row.
    errors = {policy: np.median(values, axis=0) for policy, values in errors.items()}
    complete = [
        np.mean(~np.isnan(mar_gaps(mixture_data(args.stat_n, args.stat_d, 1, 0)[0], f, 0)).any(1))
        for f in FRACTIONS
    ]
    print(f"\nStatistical value: n={args.stat_n}, d={args.stat_d}, K={args.k_stat}, full "
          "covariance, MAR gaps, RMS error of the fitted means "
          f"(median over {args.seeds} data sets)")  # fmt: skip
    print("missing  complete rows  marginalize  drop incomplete rows  ratio")
    for i, fraction in enumerate(FRACTIONS):
        m, o = errors["marginalize"][i], errors["omit"][i]
        print(f"{fraction:6.0%}  {complete[i]:13.1%}  {m:11.4f}  {o:20.4f}  {o / m:5.1f}x")
    return errors


def plot(errors: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    pct = 100 * np.array(FRACTIONS)
    ax.plot(pct, errors["marginalize"], "o-", label="nan_policy='marginalize'")
    ax.plot(pct, errors["omit"], "s--", label="drop incomplete rows ('omit')")
    ax.set_xlabel("entries missing (MAR), %")
    ax.set_ylabel("RMS error of fitted means")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Gaussian mixture with missing values")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def seconds_per_iteration(make_model, X, iters: int, repeat: int) -> float:
    """Median time between consecutive EM iterations of one fit (its callback
    marks each), the first interval left out; best of ``repeat`` fits."""
    best = np.inf
    for _ in range(repeat + 1):  # the first fit compiles the numba loops
        marks: list[float] = []
        make_model(iters + 2, lambda model, info, marks=marks: marks.append(time.perf_counter())
                   ).fit(X)  # fmt: skip
        best = min(best, float(np.median(np.diff(marks)[1:])))
    return best


def speed(args) -> None:
    X, truth = mixture_data(args.n, args.d, args.k, 0)
    rng = np.random.default_rng(1)
    gaps = X.copy()
    gaps[rng.random(X.shape) < 0.2] = np.nan
    print(f"\nSpeed: n={args.n}, d={args.d}, K={args.k}, float64, dask chunks of "
          f"{args.chunk_rows} rows, threads; 20% of the entries missing (MCAR)")  # fmt: skip
    print("type  complete s/iter  (dense)  20% missing s/iter  ratio  (vs dense)  (target)")
    for ct, target in (("diag", 1.5), ("full", 3.0)):
        times = {}
        for name, data, policy, dense in (("complete", X, "raise", False),
                                          ("dense", X, "raise", True),
                                          ("gaps", gaps, "marginalize", False)):  # fmt: skip
            lazy = da.from_array(data, chunks=(args.chunk_rows, -1))
            times[name] = seconds_per_iteration(
                lambda m, callback, p=policy, c=ct, e="dense" if dense else "auto": GaussianMixture(
                    args.k, covariance_type=c, max_iter=m, tol=0, nan_policy=p, estep=e,
                    means_init=truth + 0.5, weights_init=np.full(args.k, 1 / args.k),
                    callback=callback,
                ),
                lazy, args.iters, args.repeat,
            )  # fmt: skip
        ratio, dense = times["gaps"] / times["complete"], times["gaps"] / times["dense"]
        print(f"{ct:5s} {times['complete']:15.3f}  {times['dense']:7.3f}  {times['gaps']:18.3f}  "
              f"{ratio:5.2f}  {dense:10.2f}  (<= {target})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("value", "speed", "both"), default="both")
    parser.add_argument("--stat-n", type=int, default=4000)
    parser.add_argument("--stat-d", type=int, default=4)
    parser.add_argument("--k-stat", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--plot", default="bench_missing.png")
    parser.add_argument("--n", type=int, default=524_288)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--chunk-rows", type=int, default=131_072)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    with dask.config.set(scheduler="threads"):
        if args.part in ("value", "both"):
            plot(statistical_value(args), args.plot)
        if args.part in ("speed", "both"):
            speed(args)


if __name__ == "__main__":
    main()
