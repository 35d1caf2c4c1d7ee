"""What the estimators return: refused rows raise when a lazy output is
computed, weights are ratios, all-NaN blocks and features, label and float dtypes.

References: the same estimator on numpy input or on the rows kept, numpy
sums, and scikit-learn's own estimators for the dtypes.
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from sklearn.cluster import KMeans as SkKMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_emk import (
    AnnealedGaussianMixture,
    DPMeans,
    GaussianMixture,
    GaussianMixtureIC,
    KMeans,
)
from tests.helpers import assert_params_close, blobs, fit_quiet, init_params

X = blobs(600, d=3, K=3, seed=2)  # no thin component: rounding stays at 1e-14


def _estimators():
    return {
        "gmm": GaussianMixture(3, random_state=0),
        "kmeans": KMeans(3, n_init=1, random_state=0),
        "dpmeans": DPMeans(penalty=40.0),
        "anneal": AnnealedGaussianMixture(3, sample_size=300, random_state=0),
        "ic": GaussianMixtureIC(2, 3, random_state=0),
    }


#: The per-row outputs each estimator has.
OUTPUTS = {
    "gmm": ("predict", "predict_proba", "score_samples"),
    "kmeans": ("predict", "transform"),
    "dpmeans": ("predict",),
    "anneal": ("predict", "predict_proba", "transform"),
    "ic": ("predict", "predict_proba", "score_samples"),
}

LABELLED = ("kmeans", "dpmeans", "anneal")  # the estimators with labels_


@pytest.fixture(scope="module")
def fitted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return {name: model.fit(X) for name, model in _estimators().items()}


def _lazy(values, chunks=100):
    return da.from_array(values, chunks=(chunks, -1))


# ----------------------------------------------- refused rows, computed lazily
@pytest.mark.parametrize("name", list(OUTPUTS))
def test_lazy_outputs_raise_on_nan_when_computed(fitted, name):
    """nan_policy='raise': a NaN row makes every lazy output raise at compute
    (it was label 0 and made-up numbers); numpy input is refused at the call."""
    model = fitted[name]
    bad = X.copy()
    bad[250, 1] = np.nan
    for output in OUTPUTS[name]:
        with pytest.raises(ValueError, match="nan_policy='omit'"):
            getattr(model, output)(bad)
        lazy = getattr(model, output)(_lazy(bad))  # building the graph reads nothing
        with pytest.raises(ValueError, match=r"NaN or infinity in 1 row\(s\).*nan_policy='omit'"):
            lazy.compute()
        # The blocks without the NaN are still what numpy input gives (to the
        # sparse E-step's rounding, which depends on the block size).
        np.testing.assert_allclose(
            getattr(model, output)(_lazy(bad))[:200].compute(),
            getattr(model, output)(X)[:200],
            rtol=1e-12,
            atol=1e-15,
        )


def test_lazy_outputs_raise_on_a_distributed_cluster(fitted):
    """The error reaches the caller of compute() from a worker process."""
    from distributed import Client, LocalCluster

    bad = X.copy()
    bad[10] = np.nan
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        lazy = fitted["gmm"].predict(_lazy(bad))
        with pytest.raises(ValueError, match="nan_policy"):
            lazy.compute()


@pytest.mark.parametrize("policy", ["omit", "marginalize"])
def test_lazy_outputs_raise_on_infinity_under_every_policy(policy):
    """±inf is an error under every policy, in lazy outputs as in numpy input."""
    bad = X.copy()
    bad[5, 0] = np.inf
    for model in (GaussianMixture(3, nan_policy=policy, random_state=0),
                  KMeans(3, n_init=1, nan_policy=policy, random_state=0)):  # fmt: skip
        fit_quiet(model, X)
        with pytest.raises(ValueError, match="infinity"):
            model.predict(bad)
        with pytest.raises(ValueError, match="infinity"):
            model.predict(_lazy(bad)).compute()


def test_lazy_labels_of_a_fit_on_nan_data_never_exist():
    """A lazy fit with a NaN row under 'raise' raises (no labels_ of made-up rows)."""
    bad = X.copy()
    bad[123, 2] = np.nan
    for model in (KMeans(3, n_init=1, random_state=0), DPMeans(penalty=40.0)):
        with pytest.raises(ValueError, match="nan_policy"):
            model.fit(_lazy(bad))


def test_omit_still_fills_the_omitted_rows():
    bad = X.copy()
    bad[[3, 450]] = np.nan
    model = fit_quiet(GaussianMixture(3, nan_policy="omit", random_state=0), X)
    lazy = model.predict(_lazy(bad)).compute()
    expected = model.predict(X)
    expected[[3, 450]] = -1
    np.testing.assert_array_equal(lazy, expected)


# ----------------------------------------------------- weights are ratios
WEIGHTS = np.random.default_rng(7).uniform(0.2, 3.0, X.shape[0])


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("lazy", [False, True])
def test_mixture_weights_summing_to_1e_300_fit_as_their_ratios(covariance_type, lazy):
    """Weights scaled to sum 1e-300 gave covariances ~0 and means off by 4."""
    start = init_params(X, 3, covariance_type)
    tiny = WEIGHTS / WEIGHTS.sum() * 1e-300
    inputs = (_lazy(X), _lazy(WEIGHTS[:, None])[:, 0], _lazy(tiny[:, None])[:, 0]) if lazy else (
        X, WEIGHTS, tiny)  # fmt: skip
    data, w, w_tiny = inputs
    make = lambda: GaussianMixture(3, covariance_type=covariance_type, tol=1e-10, **start)  # noqa: E731
    plain = fit_quiet(make(), data, sample_weight=w)
    scaled = fit_quiet(make(), data, sample_weight=w_tiny)
    _assert_relatively_close(scaled, plain, 1e-10)
    assert scaled.n_iter_ == plain.n_iter_
    np.testing.assert_allclose(scaled.lower_bound_, plain.lower_bound_, rtol=1e-10)
    # The weights are used: the means are numpy's weighted averages of the
    # rows by responsibility (to the last EM step's change).
    resp = plain.predict_proba(X) * WEIGHTS[:, None]
    np.testing.assert_allclose(
        np.asarray(plain.means_), (resp.T @ X) / resp.sum(axis=0)[:, None], rtol=1e-4
    )


def _assert_relatively_close(a, b, rtol):
    """Every parameter equal to ``rtol`` relative to its largest entry (a
    precision of a thin component is ~1e4, and carries the rounding of the
    weights' scaling times its condition number)."""
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        expected = np.asarray(getattr(b, name), dtype=np.float64)
        np.testing.assert_allclose(np.asarray(getattr(a, name)), expected, rtol=rtol,
                                   atol=rtol * np.abs(expected).max(), err_msg=name)  # fmt: skip


def test_kmeans_weights_summing_to_1e_300_fit_as_their_ratios():
    tiny = WEIGHTS / WEIGHTS.sum() * 1e-300
    init = X[[0, 1, 2]]
    plain = KMeans(3, init=init, n_init=1, tol=0).fit(X, sample_weight=WEIGHTS)
    scaled = KMeans(3, init=init, n_init=1, tol=0).fit(X, sample_weight=tiny)
    np.testing.assert_allclose(scaled.cluster_centers_, plain.cluster_centers_, rtol=1e-10)
    np.testing.assert_array_equal(scaled.labels_, plain.labels_)
    # inertia_ and the cluster masses are in the weights passed (numpy sums).
    dist = ((X - scaled.cluster_centers_[scaled.labels_]) ** 2).sum(axis=1)
    np.testing.assert_allclose(scaled.inertia_, dist @ tiny, rtol=1e-10)
    np.testing.assert_allclose(
        scaled.cluster_weights_, np.bincount(scaled.labels_, tiny, minlength=3), rtol=1e-10
    )
    np.testing.assert_allclose(scaled.inertia_history_[-1] / 1e-300,
                               plain.inertia_history_[-1] / WEIGHTS.sum(), rtol=1e-10)  # fmt: skip


def test_annealing_weights_summing_to_1e_300_fit_as_their_ratios():
    tiny = WEIGHTS / WEIGHTS.sum() * 1e-300
    make = lambda: AnnealedGaussianMixture(3, sample_size=300, random_state=0)  # noqa: E731
    plain = fit_quiet(make(), X, sample_weight=WEIGHTS)
    scaled = fit_quiet(make(), X, sample_weight=tiny)
    np.testing.assert_allclose(scaled.means_, plain.means_, rtol=1e-10)
    np.testing.assert_allclose(scaled.weights_, plain.weights_, rtol=1e-10)
    np.testing.assert_array_equal(scaled.labels_, plain.labels_)
    dist = ((X - scaled.means_[scaled.labels_]) ** 2).sum(axis=1)
    np.testing.assert_allclose(scaled.inertia_, dist @ tiny, rtol=1e-10)
    np.testing.assert_allclose(scaled.kmeans_.inertia_, dist @ tiny, rtol=1e-10)
    np.testing.assert_allclose(
        scaled.kmeans_.cluster_weights_, np.bincount(scaled.labels_, tiny, minlength=3), rtol=1e-10
    )


def test_kmeans_inertia_with_weights_of_any_mean_is_scikit_learns():
    """Rescaled inside, given back exactly: scikit-learn's inertia_ and centres."""
    weights = np.array([3.0, 1.0, 1.0, 3.0])  # scikit-learn's test_kmeans_results
    data = np.array([[0, 0], [0.5, 0], [0.5, 1], [1, 1]])
    init = np.array([[0, 0], [1, 1]])
    ours = KMeans(2, init=init, n_init=1).fit(data, sample_weight=weights)
    theirs = SkKMeans(2, init=init, n_init=1).fit(data, sample_weight=weights)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-12) == 0.375
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-12)


def test_weights_of_mean_in_one_to_two_are_used_unchanged():
    """Ones are not rescaled: the fit is bit for bit the one with weights of 1."""
    start = init_params(X, 3, "full")
    with_ones = fit_quiet(GaussianMixture(3, **start), X, sample_weight=np.ones(X.shape[0]))
    with_twos = fit_quiet(GaussianMixture(3, **start), X, sample_weight=np.full(X.shape[0], 2.0))
    np.testing.assert_array_equal(with_ones.means_, with_twos.means_)  # 2 = 2**1 x 1: exact
    np.testing.assert_array_equal(with_ones.covariances_, with_twos.covariances_)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_weights_whose_total_overflows_are_refused():
    huge = np.full(X.shape[0], 1e306)
    with pytest.raises(ValueError, match="sample_weight sums to inf.*ratios"):
        GaussianMixture(3).fit(X, sample_weight=huge)


# ------------------------------------------------ an all-NaN block, marginalised
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_marginalize_with_an_all_nan_block(covariance_type):
    """A chunk of rows with no observed value (an all-land chunk) crashed the
    full and tied E-step with IndexError; its rows must count for nothing."""
    rng = np.random.default_rng(1)
    gappy = X.copy()
    gappy[rng.random(X.shape) < 0.1] = np.nan
    gappy[200:300] = np.nan  # chunk 2 of 6
    kept = np.r_[0:200, 300:600]
    start = init_params(X, 3, covariance_type)
    make = lambda: GaussianMixture(  # noqa: E731
        3, covariance_type=covariance_type, nan_policy="marginalize", tol=1e-8, **start
    )
    with_block = fit_quiet(make(), _lazy(gappy))
    without = fit_quiet(make(), _lazy(gappy[kept]))
    assert_params_close(with_block, without, rtol=1e-10, atol=1e-12)
    assert with_block.n_iter_ == without.n_iter_
    # Predict: the rows with no observed value get what the docstring says
    # (label -1, NaN scores), the others those of the fit without them.
    labels = with_block.predict(_lazy(gappy)).compute()
    np.testing.assert_array_equal(labels[200:300], -1)
    np.testing.assert_array_equal(labels[kept], without.predict(gappy[kept]))
    scores = with_block.score_samples(_lazy(gappy)).compute()
    assert np.isnan(scores[200:300]).all()
    np.testing.assert_allclose(scores[kept], without.score_samples(gappy[kept]), rtol=1e-10)
    proba = with_block.predict_proba(_lazy(gappy)).compute()
    assert np.isnan(proba[200:300]).all()
    imputed = with_block.impute(_lazy(gappy)).compute()
    np.testing.assert_allclose(imputed[200:300], np.broadcast_to(
        np.asarray(with_block.weights_) @ np.asarray(with_block.means_), (100, 3)))  # fmt: skip


def test_kmeans_marginalize_with_an_all_nan_block():
    gappy = X.copy()
    gappy[200:300] = np.nan
    kept = np.r_[0:200, 300:600]
    init = X[[0, 1, 2]]
    with_block = KMeans(3, init=init, n_init=1, nan_policy="marginalize").fit(_lazy(gappy))
    without = KMeans(3, init=init, n_init=1).fit(X[kept])
    np.testing.assert_allclose(with_block.cluster_centers_, without.cluster_centers_, rtol=1e-10)
    labels = with_block.labels_.compute()
    np.testing.assert_array_equal(labels[200:300], -1)
    np.testing.assert_array_equal(labels[kept], without.labels_)


# ------------------------------------------------ a feature with no value at all
@pytest.mark.parametrize("policy", ["omit", "marginalize"])
@pytest.mark.parametrize("kind", ["numpy", "dask", "xarray"])
@pytest.mark.parametrize("make", [lambda p: GaussianMixture(3, nan_policy=p),
                                  lambda p: KMeans(3, nan_policy=p)])  # fmt: skip
def test_a_feature_never_observed_is_named(policy, kind, make):
    """It said "lower the number of clusters", which cannot help."""
    bad = X.copy()
    bad[:, 1] = np.nan
    data = {
        "numpy": bad,
        "dask": _lazy(bad),
        "xarray": xr.Dataset({v: ("time", bad[:, j]) for j, v in enumerate("tuv")}).chunk(time=100),
    }[kind]
    name = r" \('u'\)" if kind == "xarray" else ""
    with pytest.raises(ValueError, match=rf"Feature\(s\) 1{name} of X hold only NaN: "
                                         rf"nan_policy='{policy}'.*drop them"):  # fmt: skip
        make(policy).fit(data)


# ------------------------------------------------------------- label dtypes
def _inputs(values):
    return {
        "numpy": values,
        "dask": _lazy(values),
        "xarray": xr.DataArray(values, dims=("time", "feature")).chunk(time=100),
    }


def _computed(values):
    return np.asarray(values.compute() if hasattr(values, "compute") else values)


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_labels_are_int32_everywhere(fitted, name):
    """GaussianMixture gave int64, KMeans int32; scikit-learn's KMeans gives int32."""
    assert SkKMeans(3, n_init=1).fit(X).labels_.dtype == np.int32
    model = fitted[name]
    for kind, data in _inputs(X).items():
        labels = model.predict(data)
        assert labels.dtype == np.int32, kind  # declared (dask, xarray) ...
        assert _computed(labels).dtype == np.int32, kind  # ... and computed
    if name in LABELLED:
        assert model.labels_.dtype == np.int32
    if name == "gmm":
        assert model.sample(5)[1].dtype == np.int32  # the components drawn
    if not hasattr(model, "fit_predict"):
        return
    for kind, data in _inputs(X).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = _estimators()[name].fit_predict(data)
        assert labels.dtype == _computed(labels).dtype == np.int32, kind


# ------------------------------------------------------------ float outputs
FLOAT_OUTPUTS = {
    "gmm": ("predict_proba", "score_samples"),
    "kmeans": ("transform",),
    "anneal": ("predict_proba", "transform"),
    "ic": ("predict_proba", "score_samples"),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(FLOAT_OUTPUTS))
def test_float_outputs_have_the_data_dtype(name, dtype):
    """As scikit-learn: float32 data give float32 parameters and outputs
    (score_samples and predict_proba were float64)."""
    data32 = X.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = _estimators()[name].fit(data32)
        sk_kmeans = SkKMeans(3, n_init=1).fit(data32)
        sk_mixture = SkGaussianMixture(3).fit(data32)
    for output in FLOAT_OUTPUTS[name]:
        sk = sk_kmeans if output == "transform" else sk_mixture
        expected = getattr(sk, output)(data32).dtype
        assert expected == dtype
        for kind, data in _inputs(data32).items():
            values = getattr(model, output)(data)
            assert values.dtype == expected, (output, kind)
            assert _computed(values).dtype == expected, (output, kind)
        # The values are the float64 computation rounded once.
        exact = getattr(model, output)(data32.astype(np.float64))
        np.testing.assert_array_equal(getattr(model, output)(data32), exact.astype(dtype))
    params = ("means_", "weights_", "covariances_") if name != "kmeans" else ("cluster_centers_",)
    for param in params:
        if hasattr(model, param):
            assert np.asarray(getattr(model, param)).dtype == dtype, param
