"""The sparse E-step (candidate pairs from a proven bound) against the forced
dense one: same fits to 1e-12 relative, and a cut margin visibly breaks that."""

from __future__ import annotations

import dataclasses
import math
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from dask_emk import GaussianMixture
from dask_emk.core import candidates, estep, mixture, pair_loops, sparse
from dask_emk.core.covariance import COVARIANCE_TYPES

TYPES = ("full", "tied", "diag", "spherical", "shared")


@pytest.fixture(autouse=True)
def sync_scheduler():
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.fixture
def pair_count(monkeypatch):
    """Counts (rows, candidate pairs) of the sub-blocks that took the sparse
    path. Fits with ``estep='sparse'`` (:func:`fit_both`) send every sub-block
    there that has no NaN (no dense fallback by cost: the comparisons test the
    sparse arithmetic, not the tuning)."""
    seen = {"rows": 0, "pairs": 0}
    real = sparse.sparse_plan

    def counting(X, params, *rest):
        plan = real(X, params, *rest)
        if plan is not None:
            seen["rows"] += X.shape[0]
            seen["pairs"] += plan.rows.shape[0]
        return plan

    monkeypatch.setattr(sparse, "sparse_plan", counting)
    return seen


def benchmark_like(rng, n=4000, d=16, k=8):
    """Well-separated clusters as benchmarks/bench_em.py (scaled down)."""
    centers = rng.normal(scale=4.0, size=(k, d))
    labels = rng.integers(0, k, n)
    return centers[labels] + rng.standard_normal((n, d)), labels, 1.0


def grid(rng, n=4000):
    """10 × 10 grid of 2-D Gaussians, spacing 10, std 2; K = 100."""
    centers = 10.0 * np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2)
    labels = rng.integers(0, 100, n)
    return centers[labels] + 2.0 * rng.standard_normal((n, 2)), labels, 4.0


def overlapping(rng, n=4000):
    """Four heavily overlapping 2-D components."""
    centers = np.array([[0.0, 0.0], [1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]])
    labels = rng.integers(0, 4, n)
    return centers[labels] + rng.standard_normal((n, 2)), labels, 1.0


def elongated(rng, n=4000, d=8, k=4):
    """Rotated components with covariance condition number 1e4."""
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    scales = np.logspace(0, 2, d)  # standard deviations 1..100: variances 1..1e4
    centers = rng.normal(scale=300.0, size=(k, d))
    Z = rng.standard_normal((n, d)) * scales @ Q.T
    labels = rng.integers(0, k, n)
    return centers[labels] + Z, labels, 100.0


def offset_float32(rng):
    X, labels, var = benchmark_like(rng, n=4000, d=8, k=6)
    return (X + 1e4).astype(np.float32), labels, var


def start(ct, X, labels, var, rng):
    """Same start for both runs: one random row of each cluster as its mean,
    isotropic precision 1/var."""
    k, d = labels.max() + 1, X.shape[1]
    precision = {
        "full": np.tile(np.eye(d), (k, 1, 1)),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
        "shared": np.asarray(1.0),
    }[ct] / var
    means = np.stack([X[rng.choice(np.flatnonzero(labels == j))] for j in range(k)])
    means = means.astype(np.float64)
    return dict(weights_init=np.full(k, 1.0 / k), means_init=means, precisions_init=precision)


def fit_both(ct, X, labels, var, weight=None, iters=20, seed=1, estep="sparse"):
    """Fits with the E-step ``estep`` (the estimator's parameter) and 'dense'."""
    init = start(ct, X, labels, var, np.random.default_rng(seed))
    k = len(init["weights_init"])
    Xd = da.from_array(X, chunks=(X.shape[0] // 3 + 1, -1))
    fits = []
    for path in (estep, "dense"):
        gm = GaussianMixture(k, covariance_type=ct, max_iter=iters, tol=0.0, estep=path, **init)
        fits.append(gm.fit(Xd, sample_weight=weight))
    return fits


def relative_gap(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def fit_gaps(sparse_fit, dense_fit) -> dict:
    s, t = sparse_fit._state64, dense_fit._state64
    gaps = {f: relative_gap(getattr(s, f), getattr(t, f)) for f in ("weights", "means")}
    gaps["covariances"] = relative_gap(s.covariances, t.covariances)
    gaps["lower_bound"] = relative_gap(sparse_fit.lower_bound_, dense_fit.lower_bound_)
    return gaps


DATASETS = {
    "benchmark_like": benchmark_like,
    "grid": grid,
    "overlapping": overlapping,
    "elongated": elongated,
    "offset_float32": offset_float32,
}


@pytest.mark.parametrize("ct", TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_sparse_fit_equals_dense_fit(name, ct, pair_count):
    X, labels, var = DATASETS[name](np.random.default_rng(0))
    sparse_fit, dense_fit = fit_both(ct, X, labels, var)
    assert sparse_fit.n_iter_ == dense_fit.n_iter_ == 20
    gaps = fit_gaps(sparse_fit, dense_fit)
    assert max(gaps.values()) < 1e-12, gaps
    if name in ("benchmark_like", "grid", "offset_float32"):
        # the sparse path really ran, on few pairs per row
        assert pair_count["rows"] > 0
        assert pair_count["pairs"] < 0.5 * (labels.max() + 1) * pair_count["rows"]


@pytest.mark.parametrize("ct", ["full", "diag", "shared"])
def test_sparse_fit_equals_dense_fit_with_sample_weights(ct, pair_count):
    rng = np.random.default_rng(3)
    X, labels, var = benchmark_like(rng)
    weight = rng.uniform(0.0, 3.0, X.shape[0])
    gaps = fit_gaps(*fit_both(ct, X, labels, var, weight=weight))
    assert max(gaps.values()) < 1e-12, gaps
    assert pair_count["rows"] > 0


@pytest.mark.parametrize("ct", TYPES)
def test_per_row_outputs_sparse_equal_dense(ct, pair_count):
    X, labels, var = grid(np.random.default_rng(5), n=3000)
    gm, _ = fit_both(ct, X, labels, var, iters=10)
    Xd = da.from_array(X, chunks=(1000, -1))
    by_pairs = [gm.score_samples(Xd), gm.predict_proba(Xd), gm.predict(Xd)]
    assert pair_count["rows"] > 0
    gm.set_params(estep="dense")
    dense = [gm.score_samples(Xd), gm.predict_proba(Xd), gm.predict(Xd)]
    assert relative_gap(by_pairs[0], dense[0]) < 1e-12
    assert np.max(np.abs(by_pairs[1] - dense[1])) < 1e-12
    assert np.mean(by_pairs[2] == dense[2]) > 0.999  # labels may differ only on rounding ties


def test_default_tuning_takes_the_sparse_path_on_separated_data():
    """With estep='auto', a pass at the fitted parameters goes sparse on
    separated data and dense on overlapping data (the probe's per-pass
    record, :func:`sparse.sparse_state`, counts the sub-blocks' verdicts)."""

    def verdicts(X, labels, var):
        init = start("full", X, labels, var, np.random.default_rng(1))
        gm = GaussianMixture(len(init["weights_init"]), max_iter=20, tol=0.0, **init).fit(X)
        params = gm._kernel_params(gm._state64)
        estep.estep_stats(X, None, params)
        state = sparse.sparse_state(params)
        return state.sparse, state.dense

    rng = np.random.default_rng(0)
    went_sparse, went_dense = verdicts(*benchmark_like(rng))
    assert went_sparse > 0 and went_dense == 0  # sparse once separated
    went_sparse, went_dense = verdicts(*overlapping(rng))  # four candidates per row: dense pays
    assert went_sparse == 0 and went_dense > 0


def test_parameters_that_keep_going_dense_probe_less(monkeypatch):
    X, labels, var = overlapping(np.random.default_rng(0))
    init = start("full", X, labels, var, np.random.default_rng(1))
    gm = GaussianMixture(4, max_iter=2, tol=0.0, **init).fit(X)
    params = gm._kernel_params(gm._state64)
    probes = []
    real = candidates.candidate_pairs
    counting = lambda *a, **k: probes.append(1) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(sparse, "candidate_pairs", counting)
    dense_params = dataclasses.replace(params, estep=mixture.EStepOptions("dense"))
    dense = estep.estep_stats(X, None, dense_params)
    for _ in range(20):
        stats = estep.estep_stats(X, None, params)
    state = sparse.sparse_state(params)
    assert (state.dense, state.sparse) == (20, 0)
    assert len(probes) == sparse.PROBE_TRUST + 1  # and once more at the PROBE_EVERY-th
    assert all(np.array_equal(stats[name], dense[name]) for name in dense)


def test_a_cut_margin_changes_the_fit():
    """With the margin cut to e^-5 the fits differ: the equality tests have teeth."""
    X, labels, var = grid(np.random.default_rng(0))
    cut = mixture.EStepOptions(prune_nats=4.0 - math.log(100))  # margin = 5 nats
    gaps = fit_gaps(*fit_both("full", X, labels, var, estep=cut))
    assert max(gaps.values()) > 1e-9, gaps


def test_full_from_exact_log_densities_equals_dense(pair_count):
    """Full covariance with d > 3 finds its candidates from the exact
    log-densities when its bounds leave too many (early iterations)."""
    exact = mixture.EStepOptions("sparse", exact_features=10**9)
    X, labels, var = benchmark_like(np.random.default_rng(4))
    gaps = fit_gaps(*fit_both("full", X, labels, var, estep=exact))
    assert max(gaps.values()) < 1e-12, gaps
    assert 0 < pair_count["pairs"] < 0.5 * 8 * pair_count["rows"]


def adversarial_params(ct, rng, K=12, d=6):
    """Means on very different scales, precisions with eigenvalues spread
    over 1e-3..1e3 in random directions, log-weights down to e^-60."""
    ctype = COVARIANCE_TYPES[ct]
    means = rng.normal(size=(K, d)) * rng.choice([0.3, 3.0, 30.0], size=(K, 1))
    if ctype.block == "matrix":
        def precision():
            Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
            return (Q * np.logspace(-3, 3, d)[rng.permutation(d)]) @ Q.T

        precisions = precision() if ct == "tied" else np.stack([precision() for _ in range(K)])
    else:
        shape = {"diag": (K, d), "spherical": (K,), "shared": ()}[ct]
        precisions = 10.0 ** rng.uniform(-3, 3, size=shape)
    chol = ctype.to_moment_shape(ctype.cholesky_from_precisions(np.asarray(precisions)), K, d)
    log_weights = np.log(rng.dirichlet(np.ones(K))) - rng.uniform(0, 60, K)
    origin = rng.normal(size=d) * 5
    return mixture.MixtureParams(means, log_weights, chol, ct, origin)


def adversarial_rows(params, rng, n=3000):
    """Rows near the means, between them, and far out (1e4)."""
    K, d = params.means.shape
    near = params.means[rng.integers(0, K, n)] + rng.normal(size=(n, d)) * rng.choice(
        [0.01, 1.0, 10.0], size=(n, 1)
    )
    near[: n // 10] = rng.normal(size=(n // 10, d)) * 1e4
    return near - params.origin


NATS = mixture.DEFAULT_ESTEP.prune_nats


def margin_violations(params, Y, exact: bool) -> tuple[int, int]:
    """(skipped pairs whose dense log-density is within the default
    prune_nats (37) + ln K of their row's best, skipped pairs)."""
    K = params.means.shape[0]
    found = candidates.candidate_pairs(Y, params, exact=exact)
    kept = np.zeros((K, Y.shape[0]), dtype=bool)
    for k in range(K):
        kept[k, found.rows[found.offsets[k] : found.offsets[k + 1]]] = True
    log_dens = mixture.weighted_log_prob(Y, params)[0]
    near = log_dens >= log_dens.max(axis=0) - (NATS + math.log(K))
    return int((near & ~kept).sum()), int((~kept).sum())


@pytest.mark.parametrize("ct", TYPES)
def test_no_skipped_pair_within_the_margin(ct):
    """Random adversarial parameters: every pair the bounds skip is truly
    negligible; both ways of finding candidates for full covariance."""
    rng = np.random.default_rng(7)
    for _ in range(4):
        params = adversarial_params(ct, rng)
        Y = adversarial_rows(params, rng)
        for exact in (True, False) if ct == "full" else (True,):
            bad, skipped = margin_violations(params, Y, exact)
            # the bounds are loose on such parameters, yet skip some pairs
            assert bad == 0 and skipped > (0.3 if exact else 0.05) * Y.shape[0], (bad, skipped)


@pytest.mark.parametrize(
    ("ct", "exact", "seed"), [("full", False, 8), ("full", True, 7), ("diag", True, 7)]
)
def test_the_margin_check_catches_a_cut_margin(ct, exact, seed):
    """The check above has teeth: with the margin cut from 37 to 20 nats
    (the check still asks 37) skipped pairs are found within it."""
    rng = np.random.default_rng(seed)
    params = adversarial_params(ct, rng)
    Y = adversarial_rows(params, rng)
    params = dataclasses.replace(params, estep=mixture.EStepOptions(prune_nats=20.0))
    assert margin_violations(params, Y, exact)[0] > 0


def early_params(max_directions=None):
    """Parameters after 2 EM iterations from random rows as means, as in
    benchmarks/bench_em.py: some components still cover several clusters
    (an eigenvalue or two of their precision near zero)."""
    rng = np.random.default_rng(0)
    X, _, _ = benchmark_like(rng, n=4000, d=16, k=8)
    init = dict(
        weights_init=np.full(8, 1 / 8),
        means_init=X[rng.choice(4000, 8, replace=False)],
        precisions_init=np.tile(np.eye(16), (8, 1, 1)),
    )
    gm = GaussianMixture(8, max_iter=2, tol=0.0, **init).fit(X)
    return X, gm._kernel_params(gm._state64)


def test_bounds_of_components_spread_over_several_clusters():
    """The bounds corrected along a component's directions of small
    eigenvalue keep close to the pairs really needed (the exact
    log-densities within the margin) and skip none of those; without the
    correction most rows keep every spread component."""
    X, params = early_params()
    K = params.means.shape[0]
    Y = X - params.origin
    log_dens = mixture.weighted_log_prob(Y, params)[0]
    needed = int((log_dens >= log_dens.max(axis=0) - (NATS + math.log(K))).sum())
    metric = candidates.bound_metric(params)
    assert np.any(np.diff(metric.starts) > 0)  # some components are spread
    found = candidates.candidate_pairs(Y, params, exact=False)
    assert needed <= found.offsets[-1] <= 1.1 * needed, (needed, found.offsets[-1])
    assert margin_violations(params, Y, exact=False)[0] == 0
    plain = dataclasses.replace(params, estep=mixture.EStepOptions(max_directions=0))
    assert candidates.candidate_pairs(Y, plain, exact=False).offsets[-1] > 1.5 * needed


def random_pairs(rng, n, K, per_row=1.5):
    """A candidate layout (offsets, rows) as :func:`candidate_loops.select_pairs` makes
    it: each component's rows ascending; one component left empty."""
    comp = rng.integers(1, K, int(per_row * n))  # component 0 gets no pair
    row = rng.integers(0, n, comp.size)
    order = np.lexsort((row, comp))
    offsets = np.searchsorted(comp[order], np.arange(K + 1))
    return offsets.astype(np.intp), row[order].astype(np.intp)


@pytest.mark.parametrize("d", [2, 3, 6, 8, 13, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matrix_pair_loops_equal_numpy(d, dtype):
    """The chunked pair loops of full covariance (vectorised along the pairs,
    in 4 × 4 blocks, the next rows prefetched) against plain numpy: d below,
    at and past the blocks' width, chunks of several sizes, an empty
    component, a factor with non-zeros below its diagonal."""

    rng = np.random.default_rng(d)
    n, K = 700, 4
    X = (rng.normal(size=(n, d)) * 3 + 1e3).astype(dtype)
    origin = X[:50].astype(np.float64).mean(axis=0)
    M = rng.normal(size=(K, d))
    U = np.triu(rng.normal(size=(K, d, d)))
    U[3] = rng.normal(size=(d, d))  # any factor, not only upper triangular
    peak = rng.normal(size=K)
    wr = rng.uniform(size=2 * n)
    offsets, rows = random_pairs(rng, n, K)
    wr = wr[: rows.size]
    Y = X.astype(np.float64) - origin
    out = np.empty(rows.size)
    for factors in (U, U[1:2]):  # per component, and pooled (tied)
        pair_loops.pair_log_densities_matrix(X, origin, offsets, rows, M, factors, peak, out)
        for k in range(K):
            pairs = slice(offsets[k], offsets[k + 1])
            z = (Y[rows[pairs]] - M[k]) @ factors[k % factors.shape[0]]
            maha = np.einsum("ij,ij->i", z, z)
            # to rounding of the terms (the peak cancels against the distance)
            bound = 1e-13 * (abs(peak[k]) + maha)
            assert np.all(np.abs(out[pairs] - (peak[k] - 0.5 * maha)) <= bound)
    upper = np.triu_indices(d)
    for columns in (upper[0].size, 0):  # with second moments, and without (tied)
        N, SY, second = np.zeros(K), np.zeros((K, d)), np.zeros((K, columns))
        pair_loops.pair_moments_matrix(X, origin, offsets, rows, wr, N, SY, second)
        for k in range(K):
            pairs = slice(offsets[k], offsets[k + 1])
            Yk, w = Y[rows[pairs]], wr[pairs]
            assert N[k] == pytest.approx(w.sum(), rel=1e-14)
            np.testing.assert_allclose(SY[k], w @ Yk, rtol=1e-12, atol=1e-9 * n)
            if columns:
                expected = ((Yk * w[:, None]).T @ Yk)[upper]
                np.testing.assert_allclose(second[k], expected, rtol=1e-12, atol=1e-6 * n)
    assert offsets[1] == 0 and N[0] == 0.0
