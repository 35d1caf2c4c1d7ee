"""nan_policy='marginalize': EM and k-means with the features each row has.

References are plain numpy written here: the marginal density of the
observed sub-vector, an independent row-by-row missing-data EM (Ghahramani &
Jordan), k-means on observed coordinates.
"""

from __future__ import annotations

import itertools
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy.stats import multivariate_normal

from dask_emk import GaussianMixture, KMeans
from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.kernels import WITH_GAPS
from dask_emk.core.nan_policy import NanPolicy
from tests.helpers import blobs, init_params

TYPES = tuple(COVARIANCE_TYPES)


def every_pattern(X: np.ndarray, seed=0) -> np.ndarray:
    """X with each row given one of the 2^d missingness patterns in turn
    (all-missing included), in shuffled order."""
    n, d = X.shape
    patterns = np.array(list(itertools.product([True, False], repeat=d)))  # True = missing
    missing = patterns[np.random.default_rng(seed).permutation(n) % len(patterns)]
    out = X.copy()
    out[missing] = np.nan
    return out


def with_gaps(X, fraction, seed=0):
    out = X.copy()
    out[np.random.default_rng(seed).random(X.shape) < fraction] = np.nan
    return out


def fitted(ct, X, max_iter=5, K=3, **kw):
    """A marginalising fit from the start of ``init_params`` (tol=0: all iterations)."""
    gm = GaussianMixture(K, covariance_type=ct, nan_policy="marginalize", max_iter=max_iter,
                         tol=0, reg_covar=0.0, **init_params(blobs(300, X.shape[1], K), K, ct),
                         **kw)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gm.fit(X)


def brute_force(gm, X):
    """(log p(x_o) (n,), responsibilities (n, K), E[x | x_o] (n, d)) row by row."""
    K, d = gm.means_.shape
    cov = COVARIANCE_TYPES[gm.covariance_type].to_full(gm.covariances_, K, d)
    log_p, resp, imputed = np.full(len(X), np.nan), np.full((len(X), K), np.nan), X.copy()
    for i, x in enumerate(X):
        o, m = ~np.isnan(x), np.isnan(x)
        if not o.any():
            imputed[i] = gm.weights_ @ gm.means_
            continue
        logs = np.array([np.log(gm.weights_[k]) + multivariate_normal(
            gm.means_[k][o], cov[k][np.ix_(o, o)]).logpdf(x[o]) for k in range(K)])  # fmt: skip
        log_p[i] = np.logaddexp.reduce(logs)
        resp[i] = np.exp(logs - log_p[i])
        cond = [gm.means_[k][m] + cov[k][np.ix_(m, o)] @ np.linalg.solve(
            cov[k][np.ix_(o, o)], x[o] - gm.means_[k][o]) for k in range(K)]  # fmt: skip
        imputed[i, m] = resp[i] @ np.array(cond)
    return log_p, resp, imputed


@pytest.mark.parametrize("ct", TYPES)
def test_outputs_equal_brute_force_marginal_density(ct):
    """score_samples, predict_proba, predict and impute against the observed
    sub-vector's density, every pattern of 4 features, numpy and dask input."""
    X = every_pattern(blobs(320, 4, 3, seed=2))
    gm = fitted(ct, X)
    log_p, resp, imputed = brute_force(gm, X)
    lazy = da.from_array(X, chunks=70)
    for data in (X, lazy):
        np.testing.assert_allclose(np.asarray(gm.score_samples(data)), log_p, rtol=1e-9,
                                   atol=1e-9)  # fmt: skip
        np.testing.assert_allclose(np.asarray(gm.predict_proba(data)), resp, atol=1e-9)
        np.testing.assert_allclose(np.asarray(gm.impute(data)), imputed, rtol=1e-9, atol=1e-9)
    labels = gm.predict(lazy)
    assert isinstance(labels, da.Array)
    empty = np.isnan(X).all(axis=1)
    np.testing.assert_array_equal(labels.compute()[empty], -1)
    np.testing.assert_array_equal(labels.compute()[~empty], resp[~empty].argmax(axis=1))


@pytest.mark.parametrize("ct", TYPES)
def test_lower_bound_never_decreases(ct):
    X = with_gaps(blobs(600, 4, 3), 0.3, seed=3)
    gm = fitted(ct, X, max_iter=60)
    bounds = np.array(gm.lower_bounds_)
    assert len(bounds) == 60
    assert np.diff(bounds).min() > -1e-12 * np.abs(bounds).max()
    # The lower bound is the observed-data log-likelihood of the parameters it was computed at.
    assert np.isfinite(bounds).all() and bounds[-1] > bounds[0]


def log_normal(x, mean, cov):
    diff = x - mean
    return -0.5 * (len(x) * np.log(2 * np.pi) + np.linalg.slogdet(cov)[1]
                   + diff @ np.linalg.solve(cov, diff))  # fmt: skip


def reference_em(X, weights, means, covs, diagonal: bool, n_iter: int):
    """Exact missing-data EM (Ghahramani & Jordan 1994), plain numpy, row by row."""
    K, d = means.shape
    for _ in range(n_iter):
        N, S, Q = np.zeros(K), np.zeros((K, d)), np.zeros((K, d, d))
        stats = []
        for x in X:
            o, m = ~np.isnan(x), np.isnan(x)
            logs = np.array([np.log(weights[k]) + log_normal(
                x[o], means[k][o], covs[k][np.ix_(o, o)]) for k in range(K)])  # fmt: skip
            r = np.exp(logs - np.logaddexp.reduce(logs))
            for k in range(K):
                gain = covs[k][np.ix_(m, o)] @ np.linalg.inv(covs[k][np.ix_(o, o)])
                xhat = x.copy()
                xhat[m] = means[k][m] + gain @ (x[o] - means[k][o])
                cond = np.zeros((d, d))
                cond[np.ix_(m, m)] = covs[k][np.ix_(m, m)] - gain @ covs[k][np.ix_(o, m)]
                stats.append((k, r[k], xhat, cond))
        for k, rk, xhat, _ in stats:
            N[k] += rk
            S[k] += rk * xhat
        new_means = S / N[:, None]
        for k, rk, xhat, cond in stats:
            diff = xhat - new_means[k]
            Q[k] += rk * (np.outer(diff, diff) + cond)
        covs = Q / N[:, None, None]
        if diagonal:
            covs = np.einsum("kii->ki", covs)[:, :, None] * np.eye(d)
        weights, means = N / N.sum(), new_means
    return weights, means, covs


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_converged_parameters_equal_reference_em(ct):
    X = with_gaps(blobs(150, 3, 2, seed=4, spread=0.6), 0.2, seed=4)
    X = X[~np.isnan(X).all(axis=1)]
    gm = fitted(ct, X, max_iter=100, K=2)
    init = init_params(blobs(300, 3, 2), 2, ct)
    covs = COVARIANCE_TYPES[ct].to_full(
        COVARIANCE_TYPES[ct].covariances_from_precisions(init["precisions_init"]), 2, 3
    )
    weights, means, covs = reference_em(X, init["weights_init"], init["means_init"], covs.copy(),
                                        ct == "diag", 40)  # fmt: skip
    np.testing.assert_allclose(gm.weights_, weights, atol=1e-4)
    np.testing.assert_allclose(gm.means_, means, atol=1e-4)
    ours = COVARIANCE_TYPES[ct].to_full(gm.covariances_, 2, 3)
    np.testing.assert_allclose(ours, covs, atol=1e-4)


def numpy_kmeans(X, centers, n_iter=100):
    """Lloyd on observed coordinates, plain numpy: (centres, labels, inertia)."""
    seen = ~np.isnan(X)
    Y = np.where(seen, X, 0.0)
    for _ in range(n_iter):
        dist = np.stack([((Y - c) ** 2 * seen).sum(axis=1) for c in centers], axis=1)
        labels = dist.argmin(axis=1)
        new = centers.copy()
        for k in range(len(centers)):
            mine = labels == k
            count = seen[mine].sum(axis=0)
            new[k, count > 0] = (Y[mine].sum(axis=0) / np.maximum(count, 1))[count > 0]
        if np.array_equal(new, centers):
            break
        centers = new
    dist = np.stack([((Y - c) ** 2 * seen).sum(axis=1) for c in centers], axis=1)
    return centers, dist.argmin(axis=1), dist.min(axis=1).sum()


def kmeans_data():
    X = with_gaps(blobs(600, 4, 3, seed=5, spread=0.5), 0.3, seed=5)
    X = X[~np.isnan(X).all(axis=1)]
    start = X[np.flatnonzero(~np.isnan(X).any(axis=1))[:3]]
    return X, start


@pytest.mark.parametrize("lazy", [False, True])
def test_kmeans_with_gaps_equals_numpy_kmeans_on_observed_coordinates(lazy):
    X, start = kmeans_data()
    centers, labels, inertia = numpy_kmeans(X, start)
    data = da.from_array(X, chunks=150) if lazy else X
    km = KMeans(3, init=start, n_init=1, tol=0, nan_policy="marginalize").fit(data)
    np.testing.assert_allclose(km.cluster_centers_, centers, rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(km.labels_), labels)
    np.testing.assert_allclose(km.inertia_, inertia, rtol=1e-10)
    assert -km.score(data) == pytest.approx(inertia, rel=1e-10)


def test_shared_em_with_tiny_fixed_variance_equals_kmeans():
    """k-means is the σ² → 0 limit of shared-σ² EM, with gaps too."""
    X, start = kmeans_data()
    centers, labels, _ = numpy_kmeans(X, start)
    gm = GaussianMixture(3, covariance_type="shared", variance=1e-4, means_init=start,
                         weights_init=np.full(3, 1 / 3), precisions_init=1e4, tol=0,
                         max_iter=40, nan_policy="marginalize")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)
    np.testing.assert_allclose(gm.means_, centers, rtol=1e-10)
    np.testing.assert_array_equal(gm.predict(X), labels)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_rows_with_every_feature_missing_change_nothing(ct):
    X = with_gaps(blobs(300, 4, 3), 0.2, seed=6)
    X = X[~np.isnan(X).all(axis=1)]
    padded = np.insert(X, [0, 50, 50, 300], np.nan, axis=0)
    a, b = fitted(ct, X, max_iter=10), fitted(ct, padded, max_iter=10)
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-12)
    np.testing.assert_allclose(b.covariances_, a.covariances_, rtol=1e-12)
    np.testing.assert_allclose(b.lower_bounds_, a.lower_bounds_, rtol=1e-12)
    km = KMeans(3, init=blobs(3, 4, 3, seed=7), n_init=1, nan_policy="marginalize")
    np.testing.assert_array_equal(km.fit(padded).cluster_centers_,
                                  km.fit(X).cluster_centers_)  # fmt: skip
    assert km.predict(padded)[0] == -1 and np.isnan(km.transform(padded)[0]).all()


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_infinity_is_an_error_not_a_gap(ct):
    X = with_gaps(blobs(200, 3, 2), 0.2)
    X[7, 1] = np.inf
    X[8, :2] = [np.nan, -np.inf]
    gm = GaussianMixture(2, covariance_type=ct, nan_policy="marginalize")
    with pytest.raises(ValueError, match="never infinity"):
        gm.fit(X)
    with pytest.raises(ValueError, match="2 row.*never infinity"):
        gm.fit(da.from_array(X, chunks=50))


@pytest.mark.slow
@pytest.mark.parametrize("section", ["input", "model"])
def test_pipeline_nan_policy_marginalize(tmp_path, section):
    """`dask-emk run` with nan_policy = "marginalize" in [input] or [model] equals the
    estimator."""
    from click.testing import CliRunner
    from pipeline_helpers import open_results, to_toml

    from dask_emk.pipeline.cli import main

    X = with_gaps(blobs(900, 3, 2, seed=8), 0.2, seed=8)
    X[5] = np.nan
    zarr.create_array(str(tmp_path / "gaps.zarr"), data=X, chunks=(300, 3))
    model = {"type": "gmm", "n_components": 2, "covariance_type": "full", "tol": 1e-8,
             "max_iter": 300, "random_state": 0}  # fmt: skip
    cfg = {"input": {"store": str(tmp_path / "gaps.zarr")}, "model": dict(model)}
    cfg[section]["nan_policy"] = "marginalize"
    cfg |= {
           "scheduler": {"address": "sync"},
           "output": {"results": str(tmp_path / "run.zarr"), "plots": False, "checkpoint": False,
                      "log_density": True}}  # fmt: skip
    (tmp_path / "run.toml").write_text(to_toml(cfg))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "run.toml"), "-q"])
    assert result.exit_code == 0, result.output
    ds = open_results(tmp_path / "run.zarr")
    params = {k: v for k, v in model.items() if k != "type"}
    gm = GaussianMixture(**params, nan_policy="marginalize").fit(da.from_array(X, chunks=300))
    np.testing.assert_allclose(ds["means"].values, gm.means_, rtol=1e-8)
    labels = gm.predict(X)
    assert labels[5] == -1  # stored with _FillValue -1: read back as NaN
    np.testing.assert_array_equal(ds["label"].values, np.where(labels < 0, np.nan, labels))
    np.testing.assert_allclose(ds["log_density"].values, gm.score_samples(X), rtol=1e-8)


def test_pipeline_nan_policy_is_one_for_the_run():
    """[model] or [anneal] may set nan_policy instead of [input]; sections that disagree
    are refused before anything runs."""
    from dask_emk.pipeline.config import PipelineError, validate

    base = {"input": {"store": "x.zarr"}, "output": {"results": "r.zarr"}}
    cfg = validate(base | {"model": {"n_components": 2, "nan_policy": "marginalize"}})
    assert cfg.input.nan_policy == cfg.model.nan_policy == "marginalize"
    cfg = validate(base | {"model": {"n_components": 2, "init": "anneal"},
                           "anneal": {"nan_policy": "omit"}})
    assert cfg.input.nan_policy == cfg.model.nan_policy == "omit"
    assert cfg.anneal.nan_policy == "omit"
    assert validate(base | {"model": {"n_components": 2}}).model.nan_policy == "raise"
    bad = base | {"model": {"n_components": 2, "nan_policy": "omit"}}
    bad["input"] = {"store": "x.zarr", "nan_policy": "marginalize"}
    with pytest.raises(PipelineError, match=r"nan_policy differs between sections .*\[input\] "
                       r"'marginalize', \[model\] 'omit'.*set it once, in \[input\]"):
        validate(bad)


@pytest.mark.parametrize("init", ["k-means++", "random_from_data"])
def test_seeds_are_complete_rows(init):
    X, _ = kmeans_data()
    gm = GaussianMixture(3, init_params=init, max_iter=0, nan_policy="marginalize",
                         random_state=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(da.from_array(X, chunks=100))
    complete = X[~np.isnan(X).any(axis=1)]
    for mean in gm.means_:
        assert np.any(np.all(complete == mean, axis=1))


def test_annealing_with_gaps_ends_at_kmeans_fixed_point():
    from dask_emk import AnnealedGaussianMixture

    X, _ = kmeans_data()
    X = np.vstack([X, np.full((1, 4), np.nan)])
    an = AnnealedGaussianMixture(3, nan_policy="marginalize", random_state=0)
    an.fit(da.from_array(X, chunks=200))
    centers, labels, inertia = numpy_kmeans(X, an.means_.astype(np.float64))
    np.testing.assert_allclose(an.means_, centers, rtol=1e-10)
    assert an.inertia_ == pytest.approx(inertia, rel=1e-10)
    np.testing.assert_array_equal(np.asarray(an.labels_)[:-1], labels[:-1])
    proba = an.predict_proba(X)
    assert an.labels_[-1].compute() == -1 and np.isnan(proba[-1]).all()
    np.testing.assert_allclose(proba[:-1].sum(axis=1), 1.0)


def test_gridded_dataset_with_gaps_equals_stacked_rows():
    import xarray as xr

    rows = with_gaps(blobs(6 * 8 * 10, 3, 2, seed=9), 0.15, seed=9)
    rows[::7] = np.nan  # "land": every variable missing
    cube = rows.reshape(6, 8, 10, 3)
    dims = ("time", "lat", "lon")
    ds = xr.Dataset({name: (dims, cube[..., i]) for i, name in enumerate("abc")},
                    coords={"lat": np.arange(8.0)}).chunk({"time": 2})  # fmt: skip
    complete = rows[~np.isnan(rows).any(axis=1)]
    kw = dict(covariance_type="full", nan_policy="marginalize", tol=1e-8,
              means_init=complete[:2], weights_init=[0.5, 0.5],
              precisions_init=np.stack([np.eye(3) * 0.1] * 2))  # fmt: skip
    grid, flat = GaussianMixture(2, **kw).fit(ds), GaussianMixture(2, **kw).fit(rows)
    np.testing.assert_allclose(grid.means_, flat.means_, rtol=1e-8)
    labels, filled = grid.predict(ds), grid.impute(ds)
    assert labels.dims == dims and filled.dims == dims + ("feature",)
    assert isinstance(filled.data, da.Array)
    np.testing.assert_array_equal(labels.values.reshape(-1), flat.predict(rows))
    np.testing.assert_allclose(filled.values.reshape(-1, 3), flat.impute(rows), rtol=1e-8)
    assert list(filled["feature"].values) == ["a", "b", "c"]


def test_ic_with_gaps_picks_the_fit_alone():
    """GaussianMixtureIC with gaps: every candidate is the marginalising fit
    alone (on one RandomState, in order); k-means++ seeding on dask input puts
    complete-row seeding passes and EM passes over the gaps in one batch pass."""
    from dask_emk import GaussianMixtureIC
    from tests.helpers import fit_quiet

    X = with_gaps(blobs(600, 3, 3, seed=4), 0.15, seed=4)
    Xd = da.from_array(X, chunks=150)
    kw = dict(init_params="k-means++", nan_policy="marginalize", max_iter=30)
    ic = fit_quiet(GaussianMixtureIC(2, 4, covariance_type=["full", "diag"], random_state=0,
                                     **kw), Xd)  # fmt: skip
    rng = np.random.RandomState(0)
    for ct in ("full", "diag"):
        for k in (2, 3, 4):
            alone = fit_quiet(GaussianMixture(k, covariance_type=ct, random_state=rng, **kw), Xd)
            crit = float(ic.criteria_.sel(n_components=k, covariance_type=ct))
            assert crit == pytest.approx(alone.bic(Xd), rel=1e-12)
            if (k, ct) == (ic.n_components_, ic.covariance_type_):
                best = ic.best_estimator_
                for name in ("weights_", "means_", "covariances_"):
                    np.testing.assert_array_equal(getattr(best, name), getattr(alone, name))
    assert (ic.n_components_, ic.covariance_type_) == (3, "full")  # correlated blobs


def test_accelerated_em_with_gaps_reaches_plain_em_bound():
    """accelerate=True with gaps: the same start, a lower bound that never
    decreases and, after as many passes, at least plain EM's."""
    from tests.helpers import fit_quiet

    rng = np.random.default_rng(3)
    means = np.array([[0, 0, 0], [2, 0.5, 1], [0.5, 2.2, 0], [2.5, 2.5, 2]])
    X = with_gaps(np.vstack([m + rng.normal(size=(400, 3)) for m in means]), 0.2, seed=3)
    Xd = da.from_array(X, chunks=400)
    kw = dict(covariance_type="full", nan_policy="marginalize", tol=0, max_iter=25,
              random_state=0)  # fmt: skip
    plain = fit_quiet(GaussianMixture(4, **kw), Xd)
    fast = fit_quiet(GaussianMixture(4, accelerate=True, **kw), Xd)
    assert fast.n_iter_ == plain.n_iter_ == 25
    assert fast.lower_bounds_[0] == plain.lower_bounds_[0]  # one start
    assert np.all(np.diff(fast.lower_bounds_) >= -1e-12)
    assert fast.lower_bound_ >= plain.lower_bound_


def test_dpmeans_refuses_marginalize():
    from dask_emk import DPMeans
    from dask_emk.pipeline import config

    X = with_gaps(blobs(100, 2, 2), 0.1)
    with pytest.raises(ValueError, match=r"DPMeans has no nan_policy='marginalize'.*'omit'"):
        DPMeans(penalty=1.0, nan_policy="marginalize").fit(X)
    raw = {"input": {"store": "x.zarr", "nan_policy": "marginalize"},
           "model": {"type": "dpmeans", "penalty": 1.0}, "output": {"results": "r.zarr"}}
    with pytest.raises(config.PipelineError, match=r"'dpmeans' has no \[input\] nan_policy"):
        config.validate(raw)


def test_one_batch_pass_serves_complete_row_and_gap_requests():
    """A complete-rows request and a gaps request in one pass: each equals its own pass."""
    from dask_emk.engine.batch import batch_pass
    from dask_emk.engine.passes import assign_pass, assign_request

    X = with_gaps(blobs(500, 3, 3, seed=5), 0.2, seed=5)
    Xd = da.from_array(X, chunks=100)
    centers = blobs(3, 3, 3, seed=6)
    origin = centers.mean(axis=0)
    requests = [assign_request(centers, origin, 2, complete_rows=True),
                assign_request(centers, origin, 2, kernels=WITH_GAPS)]  # fmt: skip
    complete, gaps = batch_pass(Xd, None, requests, nan_policy=NanPolicy.MARGINALIZE)
    assert complete["count"] == np.count_nonzero(~np.isnan(X).any(axis=1))
    for got, policy in ((complete, NanPolicy.OMIT), (gaps, NanPolicy.MARGINALIZE)):
        alone = assign_pass(Xd, None, centers, origin, 2, nan_policy=policy)
        assert got.keys() == alone.keys()
        for name in got:
            np.testing.assert_array_equal(got[name], alone[name])
