"""GaussianMixture against scikit-learn and plain numpy references."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from helpers import SK_TYPES, assert_params_close, blobs, fit_quiet, init_params
from sklearn.cluster import KMeans as SKKMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SKGM

import dask_emk
from dask_emk import GaussianMixture
from dask_emk.core.mixture import EStepOptions

K = 3


@pytest.fixture(scope="module")
def X():
    return blobs(n=1000, d=3, K=K, seed=0)


def both(ct, X, max_iter=20, tol=0.0, **kw):
    init = init_params(X if isinstance(X, np.ndarray) else np.asarray(X), K, ct)
    ours = GaussianMixture(K, covariance_type=ct, max_iter=max_iter, tol=tol, **init, **kw)
    sk_kw = {k: v for k, v in kw.items() if k in SKGM().get_params()}
    theirs = SKGM(K, covariance_type=ct, max_iter=max_iter, tol=tol, **init, **sk_kw)
    return ours, theirs


def copy_params_to_sklearn(ours, sk):
    """Give a fitted scikit-learn model exactly our fitted parameters."""
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        setattr(sk, name, np.asarray(getattr(ours, name), dtype=np.float64))
    return sk


# ------------------------------------------------------------------ EM vs sklearn
@pytest.mark.parametrize("ct", SK_TYPES)
@pytest.mark.parametrize("kind", ["numpy", "dask97", "numpy-64-row-sub-blocks"])
def test_em_matches_sklearn(X, ct, kind):
    ours, sk = both(ct, X)
    if kind == "numpy-64-row-sub-blocks":  # statistics added up over many sub-blocks
        ours.set_params(estep=EStepOptions("dense", sub_block_bytes=64))
    data = da.from_array(X, chunks=(97, -1)) if kind == "dask97" else X
    with pytest.warns(ConvergenceWarning):
        ours.fit(data)
    with pytest.warns(ConvergenceWarning):
        sk.fit(X)
    assert_params_close(ours, sk, rtol=1e-6)
    assert ours.n_iter_ == sk.n_iter_ == 20
    assert ours.converged_ is False and sk.converged_ is False
    np.testing.assert_allclose(ours.lower_bound_, sk.lower_bound_, rtol=1e-9)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-9)
    assert len(ours.lower_bounds_) == 20
    # EM never decreases the likelihood
    assert np.all(np.diff(ours.lower_bounds_) > -1e-9)


@pytest.mark.parametrize("ct", SK_TYPES)
def test_converged_run_matches_sklearn(X, ct):
    ours, sk = both(ct, X, max_iter=500, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ours.fit(X)
        sk.fit(X)
    assert ours.converged_ and sk.converged_
    assert ours.n_iter_ == sk.n_iter_ < 500
    assert_params_close(ours, sk, rtol=1e-6)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-9)


@pytest.mark.parametrize("ct", [*SK_TYPES, "shared"])
def test_split_every_does_not_change_results(X, ct):
    dX = da.from_array(X, chunks=(97, -1))
    fits = []
    for split_every in (2, 3, None):
        ours, _ = both(ct, X, split_every=split_every)
        fits.append(fit_quiet(ours, dX))
    for other in fits[1:]:
        assert_params_close(other, fits[0], rtol=1e-10)
        np.testing.assert_allclose(other.lower_bounds_, fits[0].lower_bounds_, rtol=1e-12)


def test_convergence_warning_only_when_not_converged(X):
    ours, _ = both("diag", X, max_iter=2, tol=0.0)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        ours.fit(X)
    assert not ours.converged_ and ours.n_iter_ == 2
    ours, _ = both("diag", X, max_iter=300, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.fit(X)
    assert ours.converged_


def test_n_init_picks_the_best(X):
    kw = dict(covariance_type="full", init_params="random", max_iter=15, tol=0.0)
    multi = fit_quiet(GaussianMixture(5, n_init=4, random_state=0, **kw), X)
    # n_init=1 fits drawing from the same RandomState in sequence see the same 4 inits.
    rng = np.random.RandomState(0)
    singles = [fit_quiet(GaussianMixture(5, n_init=1, random_state=rng, **kw), X) for _ in range(4)]
    bounds = np.array([s.lower_bound_ for s in singles])
    assert np.ptp(bounds) > 1e-6, "inits should reach different optima for this test to bite"
    best = singles[int(np.argmax(bounds))]
    assert multi.lower_bound_ == pytest.approx(bounds.max(), rel=1e-12)
    assert_params_close(multi, best, rtol=1e-10)
    np.testing.assert_allclose(multi.lower_bounds_, best.lower_bounds_, rtol=1e-12)


@pytest.mark.parametrize("ct", SK_TYPES)
def test_warm_start_matches_sklearn(X, ct):
    ours, sk = both(ct, X, max_iter=4, warm_start=True)
    for _ in range(3):
        fit_quiet(ours, X)
        fit_quiet(sk, X)
        assert_params_close(ours, sk, rtol=1e-6)
        assert ours.n_iter_ == sk.n_iter_ == 4
        np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-9)
    # 12 warm iterations equal 12 cold ones
    cold, _ = both(ct, X, max_iter=12)
    fit_quiet(cold, X)
    assert_params_close(ours, cold, rtol=1e-9)


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_fit_predict_equals_fit_then_predict(X, kind):
    data = X if kind == "numpy" else da.from_array(X, chunks=(97, -1))
    ours, sk = both("full", X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = np.asarray(ours.fit_predict(data))
        again = np.asarray(GaussianMixture(**ours.get_params()).fit(data).predict(data))
        sk_labels = sk.fit_predict(X)
    np.testing.assert_array_equal(labels, again)
    np.testing.assert_array_equal(labels, sk_labels)


@pytest.mark.parametrize("ct", SK_TYPES)
@pytest.mark.parametrize("kind", ["numpy", "dask", "numpy-64-row-sub-blocks"])
def test_predictions_match_sklearn_for_same_parameters(X, ct, kind):
    ours, sk = both(ct, X, max_iter=5)
    if kind == "numpy-64-row-sub-blocks":  # per-row outputs assembled from 5 sub-blocks
        ours.set_params(estep=EStepOptions("dense", sub_block_bytes=64))
    fit_quiet(ours, X)
    fit_quiet(sk, X)
    copy_params_to_sklearn(ours, sk)
    rng = np.random.default_rng(9)
    Xt = X[rng.choice(len(X), 300)] + 0.3 * rng.normal(size=(300, X.shape[1]))
    data = da.from_array(Xt, chunks=(97, -1)) if kind == "dask" else Xt
    np.testing.assert_array_equal(np.asarray(ours.predict(data)), sk.predict(Xt))
    np.testing.assert_allclose(
        np.asarray(ours.predict_proba(data)), sk.predict_proba(Xt), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(ours.score_samples(data)), sk.score_samples(Xt), rtol=1e-10
    )
    assert ours.score(data) == pytest.approx(sk.score(Xt), rel=1e-10)
    assert ours.bic(data) == pytest.approx(sk.bic(Xt), rel=1e-10)
    assert ours.aic(data) == pytest.approx(sk.aic(Xt), rel=1e-10)


@pytest.mark.parametrize("ct", SK_TYPES)
def test_sample_matches_sklearn(X, ct):
    ours, sk = both(ct, X, max_iter=5, random_state=3)
    fit_quiet(ours, X)
    sk.set_params(random_state=3)
    fit_quiet(sk, X)
    copy_params_to_sklearn(ours, sk)
    Xs, ys = ours.sample(257)
    Xr, yr = sk.sample(257)
    assert Xs.shape == (257, X.shape[1]) and ys.shape == (257,)
    np.testing.assert_allclose(Xs, Xr, rtol=1e-10)
    np.testing.assert_array_equal(ys, yr)


def test_sample_shared(X):
    ours = fit_quiet(
        GaussianMixture(
            K, covariance_type="shared", max_iter=30, random_state=0, **init_params(X, K, "shared")
        ),
        X,
    )
    Xs, ys = ours.sample(4000)
    assert Xs.shape == (4000, 3) and ys.shape == (4000,)
    assert set(np.unique(ys)) <= set(range(K))
    # within-component spread is the shared variance
    resid = Xs - ours.means_[ys]
    assert resid.var() == pytest.approx(float(ours.covariances_), rel=0.1)


# ----------------------------------------------------------------- shared / k-means
@pytest.mark.parametrize("max_iter", [1, 3, 50])
@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_shared_tiny_variance_is_lloyd(max_iter, kind):
    Xk = blobs(n=1500, d=2, K=4, seed=11, spread=1.5)
    scale = Xk.std()
    rng = np.random.default_rng(2)
    start = Xk[rng.choice(len(Xk), 4, replace=False)]
    variance = 1e-8 * scale**2
    km = SKKMeans(4, algorithm="lloyd", init=start, n_init=1, max_iter=max_iter, tol=0.0).fit(Xk)
    gm = GaussianMixture(
        4,
        covariance_type="shared",
        variance=variance,
        weights_init=np.full(4, 0.25),
        means_init=start,
        precisions_init=1.0 / variance,
        max_iter=max_iter,
        tol=0.0,
    )
    data = Xk if kind == "numpy" else da.from_array(Xk, chunks=(97, -1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm.fit(data)
        labels = np.asarray(gm.predict(data))
    others = [w for w in caught if not issubclass(w.category, ConvergenceWarning)]
    assert not others, [str(w.message) for w in others]
    assert np.all(np.isfinite(gm.means_)) and np.isfinite(gm.lower_bound_)
    assert float(gm.covariances_) == variance and gm.covariances_.shape == ()
    np.testing.assert_allclose(gm.means_, km.cluster_centers_, rtol=1e-6, atol=1e-9 * scale)
    np.testing.assert_array_equal(labels, km.labels_)


def _responsibilities(X, weights, means, var):
    logp = np.log(weights) - 0.5 * ((X[:, None, :] - means[None]) ** 2).sum(-1) / var
    logp -= logp.max(axis=1, keepdims=True)
    r = np.exp(logp)
    return r / r.sum(axis=1, keepdims=True)


def test_shared_learned_variance_matches_numpy(X):
    init = init_params(X, K, "shared")
    gm = fit_quiet(GaussianMixture(K, covariance_type="shared", max_iter=1, tol=0.0, **init), X)
    r = _responsibilities(
        X, init["weights_init"], init["means_init"], 1.0 / init["precisions_init"]
    )
    N = r.sum(axis=0)
    means = r.T @ X / N[:, None]
    pooled = sum((r[:, k] * ((X - means[k]) ** 2).sum(axis=1)).sum() for k in range(K))
    sigma2 = pooled / (len(X) * X.shape[1]) + gm.reg_covar
    assert gm.covariances_.shape == ()
    np.testing.assert_allclose(gm.weights_, N / len(X), rtol=1e-9)
    np.testing.assert_allclose(gm.means_, means, rtol=1e-9)
    np.testing.assert_allclose(gm.covariances_, sigma2, rtol=1e-9)
    np.testing.assert_allclose(gm.precisions_, 1.0 / sigma2, rtol=1e-9)
    # many iterations: the fixed point satisfies the pooled-variance M-step
    gm = fit_quiet(GaussianMixture(K, covariance_type="shared", max_iter=200, tol=1e-10, **init), X)
    var = float(gm.covariances_) - gm.reg_covar
    r = _responsibilities(X, gm.weights_, gm.means_, float(gm.covariances_))
    pooled = sum((r[:, k] * ((X - gm.means_[k]) ** 2).sum(axis=1)).sum() for k in range(K))
    np.testing.assert_allclose(var, pooled / X.size, rtol=1e-6)


# ------------------------------------------------------------------ sample weights
@pytest.mark.parametrize("ct", [*SK_TYPES, "shared"])
@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_integer_weights_equal_repeated_rows(X, ct, kind):
    reps = np.random.default_rng(4).integers(0, 4, size=len(X))
    Xr = np.repeat(X, reps, axis=0)
    a, _ = both(ct, X, max_iter=10)
    b, _ = both(ct, X, max_iter=10)
    if kind == "numpy":
        fit_quiet(a, X, sample_weight=reps)
    else:
        fit_quiet(
            a, da.from_array(X, chunks=(97, -1)), sample_weight=da.from_array(reps, chunks=200)
        )
    fit_quiet(b, Xr)
    assert_params_close(a, b, rtol=1e-8)
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=1e-10)


# ------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("ct", [*SK_TYPES, "shared"])
def test_float32_data_gives_float32_parameters(X, ct):
    X32 = X.astype(np.float32)
    gm, _ = both(ct, X, max_iter=10)  # float64 init arrays
    fit_quiet(gm, X32)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(gm, name).dtype == np.float32, name
    ref, _ = both(ct, X, max_iter=10)
    fit_quiet(ref, X32.astype(np.float64))
    assert_params_close(gm, ref, rtol=1e-4, atol=1e-6)
    assert gm.predict_proba(X32).shape == (len(X), K)
    lazy = gm.predict_proba(da.from_array(X32, chunks=(97, -1)))
    assert isinstance(lazy, da.Array)


# ------------------------------------------------------------------------- inputs
def test_dask_input_gives_dask_outputs(X):
    dX = da.from_array(X, chunks=(97, -1))
    gm_np, _ = both("full", X)
    gm_da, _ = both("full", X)
    fit_quiet(gm_np, X)
    fit_quiet(gm_da, dX)
    assert_params_close(gm_da, gm_np, rtol=1e-10)
    for method in ("predict", "predict_proba", "score_samples"):
        lazy = getattr(gm_da, method)(dX)
        assert isinstance(lazy, da.Array), method
        assert lazy.chunks[0] == dX.chunks[0]
        eager = getattr(gm_np, method)(X)
        assert isinstance(eager, np.ndarray), method
        np.testing.assert_allclose(lazy.compute(), eager, rtol=1e-10, atol=1e-14)
    assert isinstance(gm_da.score(dX), float)


def test_xarray_input(X):
    names = ["temp", "salt", "depth"]
    arr = xr.DataArray(
        X,
        dims=("time", "var"),
        coords={"time": np.arange(len(X)) * 10, "var": names},
    ).chunk({"time": 97})
    gm, _ = both("diag", X)
    fit_quiet(gm, arr)
    ref, _ = both("diag", X)
    fit_quiet(ref, X)
    assert_params_close(gm, ref, rtol=1e-10)
    assert list(gm.feature_names_in_) == names
    labels = gm.predict(arr)
    proba = gm.predict_proba(arr)
    scores = gm.score_samples(arr)
    for out in (labels, proba, scores):
        assert isinstance(out, xr.DataArray)
        assert isinstance(out.data, da.Array)
        np.testing.assert_array_equal(out["time"].values, arr["time"].values)
    assert labels.dims == ("time",) and proba.dims == ("time", "component")
    np.testing.assert_array_equal(labels.values, ref.predict(X))
    np.testing.assert_allclose(proba.values, ref.predict_proba(X), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(scores.values, ref.score_samples(X), rtol=1e-10)
    ds = gm.to_xarray()
    assert list(ds["feature"].values) == names
    np.testing.assert_allclose(ds["means"].sel(feature="salt").values, ref.means_[:, 1])


def test_xarray_numpy_backed_input_is_lazy(X):
    arr = xr.DataArray(X, dims=("sample", "feature"))
    gm, _ = both("spherical", X, max_iter=3)
    fit_quiet(gm, arr)
    out = gm.predict(arr)
    assert isinstance(out, xr.DataArray) and isinstance(out.data, da.Array)
    assert not hasattr(gm, "feature_names_in_")


def _write_zarr(path, X, chunks=(97, 3)):
    store = zarr.storage.LocalStore(str(path))
    z = zarr.create_array(store=store, shape=X.shape, chunks=chunks, dtype=X.dtype)
    z[...] = X
    return z


@pytest.mark.parametrize("how", ["array", "path"])
def test_zarr_input(tmp_path, X, how):
    z = _write_zarr(tmp_path / "x.zarr", X)
    data = z if how == "array" else str(tmp_path / "x.zarr")
    gm, _ = both("tied", X)
    fit_quiet(gm, data)
    ref, _ = both("tied", X)
    fit_quiet(ref, X)
    assert_params_close(gm, ref, rtol=1e-10)
    labels = gm.predict(data)
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), ref.predict(X))


def test_zarr_float32_input(tmp_path, X):
    X32 = X.astype(np.float32)
    _write_zarr(tmp_path / "x32.zarr", X32)
    gm, _ = both("full", X, max_iter=5)
    fit_quiet(gm, str(tmp_path / "x32.zarr"))
    ref, _ = both("full", X, max_iter=5)
    fit_quiet(ref, X32)
    assert gm.means_.dtype == np.float32
    assert_params_close(gm, ref, rtol=1e-6)


# -------------------------------------------------------------------------- export
@pytest.mark.parametrize("ct", [*SK_TYPES, "shared"])
def test_to_xarray_round_trip(tmp_path, X, ct):
    gm, _ = both(ct, X, max_iter=7)
    fit_quiet(gm, X)
    ds = gm.to_xarray()
    np.testing.assert_array_equal(ds["weights"].values, gm.weights_)
    np.testing.assert_array_equal(ds["means"].values, gm.means_)
    np.testing.assert_array_equal(ds["covariances"].values, gm.covariances_)
    np.testing.assert_array_equal(ds["lower_bound"].values, gm.lower_bounds_)
    assert ds.attrs["dask_emk_version"] == dask_emk.__version__
    for name in gm.get_params():
        assert name in ds.attrs, name
    assert ds.attrs["covariance_type"] == ct and ds.attrs["max_iter"] == 7
    ds.to_zarr(tmp_path / "model.zarr", consolidated=False)
    ds.to_netcdf(tmp_path / "model.nc", engine="h5netcdf")
    for back in (
        xr.open_zarr(tmp_path / "model.zarr", consolidated=False),
        xr.open_dataset(tmp_path / "model.nc", engine="h5netcdf"),
    ):
        with back:
            xr.testing.assert_identical(back.load(), ds)


def test_callback_sees_every_iteration_and_a_saved_copy_resumes_exactly(X):
    """A copy saved by the callback after iteration 4, refitted with warm_start,
    ends bit-for-bit where an uninterrupted 10-iteration float32 fit ends."""
    import copy

    X32 = X.astype(np.float32)
    kw = dict(init_params(X, 3, "full"), tol=0.0)
    seen, saved = [], {}

    def callback(model, info):
        seen.append((info["iteration"], info["lower_bound"], model.lower_bound_))
        if info["iteration"] == 4:
            saved["model"] = copy.deepcopy(model.set_params(callback=None))
            model.set_params(callback=callback)

    full = fit_quiet(GaussianMixture(3, max_iter=10, callback=callback, **kw), X32)
    assert [s[0] for s in seen] == list(range(1, 11))
    assert [s[1] for s in seen] == full.lower_bounds_ == [s[2] for s in seen]
    resumed = saved["model"].set_params(warm_start=True, max_iter=6)
    fit_quiet(resumed, X32)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name))
    assert resumed.lower_bound_ == full.lower_bound_
