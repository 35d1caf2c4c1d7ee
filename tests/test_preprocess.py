"""StandardScaler: one-pass NaN-aware statistics, structure-keeping transforms, original units.

References: numpy's nanmean/nanvar on the same values, scikit-learn's
StandardScaler on NaN-free data, scikit-learn's GaussianMixture fitted on the
scaled data with the parameters converted by plain numpy.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import sklearn
import xarray as xr
from helpers import CountComputes, blobs, fit_quiet, init_params
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler as SkStandardScaler

from dask_emk import AnnealedGaussianMixture, GaussianMixture, KMeans, StandardScaler

RTOL = 1e-12
#: Features in very different units and far from zero (a naive Σx² − n·mean² loses them).
UNITS = np.array([1.0, 50.0, 0.01, 3.0])
OFFSET = np.array([15.0, 1.0e4, -3.0, 1.0e6])


def make_data(n=2000, seed=0, nan=0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = blobs(n=n, d=4, K=3, seed=seed) * UNITS + OFFSET
    X[rng.random(X.shape) < nan] = np.nan
    return X


X = make_data()
DIMS = ("time", "lat", "lon")
GRID = (20, 10, 10)  # 2000 points
#: X's columns as make_dataset's features: its variables by name (o2 at two depths, sal, sst).
BY_NAME = [2, 3, 1, 0]


def make_dataset(values=X, chunks=None) -> xr.Dataset:
    """``values`` on (time, lat, lon): sst, sal, and o2 with two depth levels."""
    cube = values.reshape(*GRID, 4)
    coords = {"time": np.arange(GRID[0]), "lat": np.linspace(-60, 60, GRID[1]),
              "lon": np.arange(GRID[2]) * 2.0, "depth": [10.0, 50.0]}  # fmt: skip
    ds = xr.Dataset(
        {
            "sst": (DIMS, cube[..., 0]),
            "sal": (DIMS, cube[..., 1]),
            "o2": ((*DIMS, "depth"), cube[..., 2:]),
        },
        coords=coords,
    )
    return ds.chunk(chunks or {"time": 6, "lat": 5})


def standardized(values) -> np.ndarray:
    """numpy's reference, column by column (numpy sums a 1-D column pairwise, an
    axis=0 reduction of a 2-D array row after row: 1e-9 off at 1e6)."""
    mean = np.array([np.nanmean(c) for c in values.T])
    std = np.array([np.nanstd(c) for c in values.T])
    return (values - mean) / std


def assert_stats(scaler, values, weights=None):
    """mean_, var_, scale_, n_samples_seen_ against numpy, NaN left out per feature."""
    if weights is None:
        mean = np.array([np.nanmean(c) for c in values.T])
        var = np.array([np.nanvar(c) for c in values.T])
        seen = (~np.isnan(values)).sum(axis=0)
    else:
        w = np.where(np.isnan(values), 0.0, weights[:, None])
        v = np.nan_to_num(values)
        seen = w.sum(axis=0)
        mean = (w * v).sum(axis=0) / seen
        var = (w * (v - mean) ** 2).sum(axis=0) / seen
    np.testing.assert_allclose(scaler.mean_, mean, rtol=RTOL)
    np.testing.assert_allclose(scaler.var_, var, rtol=RTOL)
    np.testing.assert_allclose(scaler.scale_, np.sqrt(var), rtol=RTOL)
    np.testing.assert_allclose(scaler.n_samples_seen_, seen, rtol=RTOL)


# ------------------------------------------------------------- statistics
def test_stats_numpy_equal_numpy_nan_functions():
    assert_stats(StandardScaler().fit(X), X)


def test_stats_dask_uneven_chunks_one_compute():
    Xd = da.from_array(X, chunks=((7, 600, 93, 1, 1299), (2, 2)))
    with CountComputes() as counter:
        scaler = StandardScaler(split_every=2).fit(Xd)
    assert counter.count == 1
    assert_stats(scaler, X)


def test_stats_gridded_dataset_one_compute_with_feature_names():
    ds = make_dataset()
    with CountComputes() as counter:
        scaler = StandardScaler().fit(ds)
    assert counter.count == 1
    assert list(scaler.feature_names_in_) == ["o2[depth=10.0]", "o2[depth=50.0]", "sal", "sst"]
    assert scaler.n_features_in_ == 4
    assert_stats(scaler, X[:, BY_NAME])


def test_stats_stable_far_from_zero():
    """Values 1e9 + O(1): the variance survives (a sum of squares would give garbage)."""
    rng = np.random.default_rng(1)
    values = 1e9 + rng.normal(size=(5000, 2))
    scaler = StandardScaler().fit(da.from_array(values, chunks=(333, 2)))
    np.testing.assert_allclose(scaler.var_, values.var(axis=0), rtol=1e-9)


def test_sample_weight_with_nan():
    w = np.random.default_rng(2).uniform(0.0, 3.0, size=X.shape[0])
    scaler = StandardScaler().fit(da.from_array(X, chunks=(300, 4)), sample_weight=w)
    assert_stats(scaler, X, weights=w)


def test_equal_to_scikit_learn_without_nan():
    values = make_data(nan=0.0)
    values[:, 2] = 7.25  # constant: scale 1, as scikit-learn
    w = np.random.default_rng(3).uniform(0.5, 2.0, size=values.shape[0])
    for kwargs in ({}, {"with_mean": False}, {"with_std": False}):
        ours = StandardScaler(**kwargs).fit(values, sample_weight=w)
        ref = SkStandardScaler(**kwargs).fit(values, sample_weight=w)
        for name in ("mean_", "var_", "scale_"):
            if getattr(ref, name) is None:
                assert getattr(ours, name) is None
            else:
                # atol: scikit-learn leaves -7e-43 as the constant feature's variance, ours is 0.
                np.testing.assert_allclose(
                    getattr(ours, name), getattr(ref, name), rtol=RTOL, atol=1e-30
                )
        # atol: the means agree to 1e-12 relative, 1e-9 absolute at 1e6 (scaled, 1e-10).
        np.testing.assert_allclose(ours.transform(values), ref.transform(values), atol=1e-9)
    assert ours.scale_ is None and StandardScaler().fit(values).scale_[2] == 1.0


# ------------------------------------------------------------- transforms
def test_transform_numpy_and_dask_keep_their_kind():
    scaler = StandardScaler().fit(X)
    expected = standardized(X)
    out = scaler.transform(X)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, expected, rtol=1e-10, equal_nan=True)
    Xd = da.from_array(X, chunks=(500, 4))
    with CountComputes() as counter:
        lazy = scaler.transform(Xd)
        back = scaler.inverse_transform(lazy)
    assert counter.count == 0 and isinstance(back, da.Array)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(back.compute(), X, rtol=1e-12, equal_nan=True)


def test_transform_dataset_keeps_grid_and_scales_each_variable():
    ds = make_dataset()
    scaler = StandardScaler().fit(ds)
    with CountComputes() as counter:
        out = scaler.transform(ds[["o2", "sst", "sal"]])  # any variable order
    assert counter.count == 0
    assert isinstance(out, xr.Dataset) and list(out.data_vars) == ["o2", "sst", "sal"]
    for name in out.data_vars:
        assert out[name].dims == ds[name].dims and out[name].chunks == ds[name].chunks
        xr.testing.assert_identical(out[name].coords.to_dataset(), ds[name].coords.to_dataset())
    z = standardized(X)
    cube = z.reshape(*GRID, 4)
    np.testing.assert_allclose(out["sal"].values, cube[..., 1], rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(out["o2"].values, cube[..., 2:], rtol=1e-10, equal_nan=True)
    back = scaler.inverse_transform(out)
    np.testing.assert_allclose(back["o2"].values, ds["o2"].values, rtol=1e-12, equal_nan=True)
    with sklearn.config_context(transform_output="pandas"):  # no wrapping: still a Dataset
        assert isinstance(scaler.transform(ds), xr.Dataset)


def test_transform_nd_dataarray_along_its_feature_dim():
    cube = X.reshape(*GRID, 4)
    arr = xr.DataArray(np.moveaxis(cube, -1, 0), dims=("var", *DIMS)).chunk({"time": 5})
    scaler = StandardScaler(feature_dim="var").fit(arr)
    assert_stats(scaler, X)
    out = scaler.transform(arr)
    assert out.dims == arr.dims and out.chunks == arr.chunks
    expected = standardized(X)
    np.testing.assert_allclose(
        out.values, np.moveaxis(expected.reshape(*GRID, 4), -1, 0), rtol=1e-10, equal_nan=True
    )


# ------------------------------------------------------ pipelines and units
def test_pipeline_gaussian_mixture_on_dataset_equals_manual_scale_and_fit():
    ds = make_dataset()
    z = StandardScaler().fit(ds).transform(ds)
    rows = StandardScaler().fit(X).transform(X)[:, BY_NAME]
    start = init_params(rows[~np.isnan(rows).any(axis=1)], 3, "full")
    params = dict(n_components=3, nan_policy="omit", tol=0.0, max_iter=5, **start)
    manual = fit_quiet(GaussianMixture(**params), z)
    pipe = fit_quiet(
        Pipeline([("scale", StandardScaler()), ("gmm", GaussianMixture(**params))]), ds
    )
    np.testing.assert_allclose(pipe["gmm"].means_, manual.means_, rtol=1e-12)
    np.testing.assert_allclose(pipe["gmm"].covariances_, manual.covariances_, rtol=1e-12)
    labels = pipe.predict(ds)
    assert isinstance(labels, xr.DataArray) and labels.dims == DIMS
    np.testing.assert_array_equal(labels["lat"].values, ds["lat"].values)
    np.testing.assert_array_equal(labels.values, manual.predict(z).values)


def full_matrices(cov, ct, K=3, d=4):
    """(K, d, d) covariance matrices from scikit-learn's shapes (plain numpy reference)."""
    if ct in ("full", "tied"):
        return np.broadcast_to(cov, (K, d, d))
    if ct == "diag":
        return cov[:, :, None] * np.eye(d)
    return np.broadcast_to(cov, (K,))[:, None, None] * np.eye(d)  # spherical, shared


@pytest.mark.parametrize(
    "model",
    [
        lambda: KMeans(3, nan_policy="omit", random_state=0),
        lambda: AnnealedGaussianMixture(3, nan_policy="omit", random_state=0, sample_size=500),
    ],
    ids=["kmeans", "anneal"],
)
def test_pipeline_kmeans_and_anneal_on_dataset_equal_manual(model):
    ds = make_dataset()
    z = StandardScaler().fit(ds).transform(ds)
    manual = model().fit(z)
    pipe = Pipeline([("scale", StandardScaler()), ("model", model())]).fit(ds)
    np.testing.assert_allclose(pipe["model"].cluster_centers_, manual.cluster_centers_, rtol=1e-12)
    labels = pipe.predict(ds)
    assert isinstance(labels, xr.DataArray) and labels.dims == DIMS
    np.testing.assert_array_equal(labels.values, manual.predict(z).values)
    assert (labels.values.ravel() == -1).sum() == np.isnan(X).any(axis=1).sum()


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical", "shared"])
def test_original_units_of_gaussian_mixture(ct):
    values = make_data(n=1500, nan=0.0)
    scaler = StandardScaler().fit(values)
    z = scaler.transform(values)
    start = init_params(z, 3, ct)
    model = fit_quiet(GaussianMixture(3, covariance_type=ct, max_iter=4, tol=0.0, **start), z)
    ds = scaler.original_units(model)
    m, s = scaler.mean_, scaler.scale_
    full = full_matrices(model.covariances_, ct)
    cov_orig = full * np.outer(s, s)  # S Σ S
    np.testing.assert_allclose(ds["means"].values, model.means_ * s + m, rtol=1e-12)
    kind = ds["covariances"].attrs["covariance_type"]
    assert kind == {"spherical": "diag", "shared": "tied"}.get(ct, ct)
    np.testing.assert_allclose(full_matrices(ds["covariances"].values, kind), cov_orig, rtol=1e-12)
    # The lower bound is the mean log density of the original data under those parameters.
    dens = [
        multivariate_normal(ds["means"].values[k], cov_orig[k]).logpdf(values) for k in range(3)
    ]
    loglik = logsumexp(np.log(model.weights_)[:, None] + np.array(dens), axis=0).mean()
    np.testing.assert_allclose(model.score(z) - np.log(s).sum(), loglik, rtol=1e-10)
    np.testing.assert_allclose(ds.attrs["final_lower_bound"], model.lower_bound_ - np.log(s).sum())
    np.testing.assert_allclose(ds["scaler_mean"].values, m, rtol=RTOL)
    np.testing.assert_allclose(ds["scaler_scale"].values, s, rtol=RTOL)


def test_original_units_equal_scikit_learn_fit_on_scaled_data():
    values = make_data(n=1500, nan=0.0)
    scaler = StandardScaler().fit(values)
    z = scaler.transform(values)
    start = init_params(z, 3, "full")
    ours = fit_quiet(GaussianMixture(3, max_iter=6, tol=0.0, **start), z)
    ref = fit_quiet(SkGaussianMixture(3, max_iter=6, tol=0.0, **start), z)
    s, m = values.std(axis=0), values.mean(axis=0)
    ds = scaler.original_units(ours)
    np.testing.assert_allclose(ds["means"].values, ref.means_ * s + m, rtol=1e-6)
    np.testing.assert_allclose(
        ds["covariances"].values, ref.covariances_ * np.outer(s, s), rtol=1e-6
    )


def test_original_units_of_kmeans_are_cluster_means_of_the_data():
    values = make_data(n=1500, nan=0.05)
    w = np.random.default_rng(4).uniform(0.5, 2.0, size=values.shape[0])
    # tol=0: Lloyd runs to its fixed point, where the centres are the means of
    # the rows that predict() assigns to them (with tol > 0 a few rows may move).
    km = KMeans(3, nan_policy="omit", random_state=0, tol=0.0)
    pipe = Pipeline([("scale", StandardScaler()), ("km", km)])
    pipe.fit(values, km__sample_weight=w)
    labels = pipe.predict(values)
    ds = pipe["scale"].original_units(pipe["km"])
    valid = ~np.isnan(values).any(axis=1)
    for k in range(3):
        rows = valid & (labels == k)
        expected = np.average(values[rows], axis=0, weights=w[rows])
        np.testing.assert_allclose(ds["means"].values[k], expected, rtol=1e-12)


# ------------------------------------------------------------------ errors
def test_errors_name_problem_and_fix():
    bad = X.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="infinity.*remove or clip"):
        StandardScaler().fit(da.from_array(bad, chunks=(400, 4)))
    empty = X.copy()
    empty[:, 2] = np.nan
    with pytest.raises(ValueError, match=r"Feature\(s\) \[2\] .* no value that is not NaN"):
        StandardScaler().fit(empty)
    scaler = StandardScaler().fit(make_dataset())
    with pytest.raises(ValueError, match="other feature labels.*'salinity'.*'sal'"):
        scaler.transform(make_dataset().rename_vars(sal="salinity"))
    with pytest.raises(ValueError, match="with_mean"):
        StandardScaler(with_mean="yes").fit(X)


# --------------------------------------------------------------- pipelines
def test_pipeline_standardize_reports_original_units(tmp_path):
    """`[preprocess] standardize`: the run equals a manual scale + fit, reported in data units."""
    from click.testing import CliRunner
    from pipeline_helpers import open_results, to_toml

    from dask_emk.pipeline.cli import main
    from dask_emk.pipeline.config import PipelineError, load_pipeline
    from dask_emk.pipeline.sources import open_source

    cfg = {
        "input": {"generate": {"path": str(tmp_path / "data.zarr"), "n": 6000, "d": 2, "k": 3,
                               "chunk_rows": 1500, "seed": 2}},
        "preprocess": {"standardize": True},
        "model": {"type": "gmm", "n_components": 3, "covariance_type": "spherical",
                  "init": "kmeans", "max_iter": 8, "tol": 0.0},
        "scheduler": {"address": "threads"},
        "output": {"results": str(tmp_path / "r.zarr"), "log_density": True, "plots": True},
    }  # fmt: skip
    path = tmp_path / "p.toml"
    path.write_text(to_toml(cfg))
    result = CliRunner().invoke(main, ["run", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "standardize: mean ± scale per feature" in result.output
    ds = open_results(tmp_path / "r.zarr")
    X = open_source(load_pipeline(path)[0].input).X
    scaler = StandardScaler().fit(X)
    z = scaler.transform(X)
    gm = GaussianMixture(3, covariance_type="spherical", init_params="k-means||",
                         random_state=0, max_iter=8, tol=0.0)  # fmt: skip
    expected = scaler.original_units(fit_quiet(gm, z))
    np.testing.assert_allclose(ds["scaler_mean"].values, scaler.mean_, rtol=RTOL)
    np.testing.assert_allclose(ds["scaler_scale"].values, scaler.scale_, rtol=RTOL)
    for name in ("means", "covariances", "weights"):
        np.testing.assert_allclose(ds[name].values, expected[name].values, rtol=1e-10)
    assert ds["covariances"].dims == ("component", "feature")  # spherical → diag
    np.testing.assert_allclose(
        ds["history_lower_bound"].values[-1], expected.attrs["final_lower_bound"], rtol=1e-10
    )
    np.testing.assert_array_equal(ds["label"].values, gm.predict(z).values)
    density = gm.score_samples(z).values - np.log(scaler.scale_).sum()
    # The stored data are float32, so are their scores (as scikit-learn's): one rounding.
    assert ds["log_density"].dtype == np.float32
    np.testing.assert_allclose(ds["log_density"].values, density, rtol=2 * np.finfo(np.float32).eps)
    # A misspelt key is one clear error.
    cfg["preprocess"] = {"standardise": True}
    path.write_text(to_toml(cfg))
    with pytest.raises(PipelineError, match=r"'standardise' in \[preprocess\]; did you mean"):
        load_pipeline(path)
