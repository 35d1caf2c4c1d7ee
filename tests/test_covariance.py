"""The covariance-type table against scikit-learn's own helpers ('shared': numpy)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import SK_TYPES, blobs, fit_quiet
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SKGM
from sklearn.mixture._gaussian_mixture import (
    _compute_log_det_cholesky,
    _compute_precision_cholesky,
    _compute_precision_cholesky_from_precisions,
    _estimate_gaussian_parameters,
    _estimate_log_gaussian_prob,
)

from dask_emk.core import mixture
from dask_emk.core.covariance import COVARIANCE_TYPES, check_covariance_type
from dask_emk.core.mstep import m_step

K, D = 3, 4


@pytest.fixture(scope="module")
def X():
    return blobs(n=600, d=D, K=K, seed=5, offset=3.0)


@pytest.fixture(scope="module")
def resp(X):
    r = np.random.default_rng(2).uniform(size=(X.shape[0], K))
    return r / r.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module", params=SK_TYPES)
def sk(request, X):
    """A fitted scikit-learn mixture of each of its covariance types."""
    return fit_quiet(SKGM(K, covariance_type=request.param, max_iter=5, random_state=0), X)


def test_table_lists_sklearn_types_then_shared():
    assert tuple(COVARIANCE_TYPES) == SK_TYPES + ("shared",)


def test_shapes_and_parameter_count_match_sklearn(sk):
    ctype = COVARIANCE_TYPES[sk.covariance_type]
    for name in ("covariances_", "precisions_", "precisions_cholesky_"):
        assert getattr(sk, name).shape == ctype.shape(K, D), name
    assert sk._n_parameters() == ctype.n_parameters(K, D) + K * D + K - 1
    assert len(ctype.dims) == len(ctype.shape(K, D))


def test_moment_shape_is_that_of_the_kernel_moments(X, resp):
    for name, ctype in COVARIANCE_TYPES.items():
        moments = mixture.moment_stats(X, resp.T, None, np.zeros((K, D)), name)
        assert moments["Q"].shape == ctype.moment_shape(K, D), name


def test_precision_cholesky_and_log_det_match_sklearn(sk):
    ct, ctype = sk.covariance_type, COVARIANCE_TYPES[sk.covariance_type]
    chol = ctype.precision_cholesky(sk.covariances_)
    np.testing.assert_allclose(chol, _compute_precision_cholesky(sk.covariances_, ct), rtol=1e-12)
    np.testing.assert_allclose(
        ctype.log_det_cholesky(chol, D), _compute_log_det_cholesky(chol, ct, D), rtol=1e-12
    )


def test_precision_conversions_match_sklearn(sk):
    ct, ctype = sk.covariance_type, COVARIANCE_TYPES[sk.covariance_type]
    # scikit-learn's precisions_ are made from precisions_cholesky_ in fit.
    np.testing.assert_allclose(
        ctype.precisions_from_cholesky(sk.precisions_cholesky_), sk.precisions_, rtol=1e-13
    )
    np.testing.assert_allclose(
        ctype.cholesky_from_precisions(sk.precisions_),
        _compute_precision_cholesky_from_precisions(sk.precisions_, ct, xp=np),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        ctype.covariances_from_precisions(sk.precisions_), sk.covariances_, rtol=1e-8
    )


def test_to_full_gives_sklearn_log_densities(sk, X):
    ct, ctype = sk.covariance_type, COVARIANCE_TYPES[sk.covariance_type]
    full = ctype.to_full(sk.covariances_, K, D)
    assert full.shape == (K, D, D)
    ours = np.stack(
        [multivariate_normal(sk.means_[k], full[k]).logpdf(X[:50]) for k in range(K)], axis=1
    )
    theirs = _estimate_log_gaussian_prob(X[:50], sk.means_, sk.precisions_cholesky_, ct)
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)  # eigh (scipy) against Cholesky


def test_estimate_matches_sklearn_m_step(X, resp, sk):
    ct = sk.covariance_type
    eps = 10 * np.finfo(np.float64).eps
    origin = X.mean(axis=0)
    centers = np.broadcast_to(origin, (K, D))
    moments = mixture.moment_stats(X - origin, resp.T, None, np.zeros((K, D)), ct)
    state = m_step(moments, centers, ct, 1e-6, eps=eps)
    nk, means, cov = _estimate_gaussian_parameters(X, resp, 1e-6, ct)
    np.testing.assert_allclose(state.weights, nk / nk.sum(), rtol=1e-13)
    np.testing.assert_allclose(state.means, means, rtol=1e-12)
    np.testing.assert_allclose(state.covariances, cov, rtol=1e-10)
    np.testing.assert_allclose(
        state.precisions_cholesky, _compute_precision_cholesky(cov, ct), rtol=1e-9
    )


def test_isotropic_is_a_valid_sklearn_init(X, sk):
    ct, ctype = sk.covariance_type, COVARIANCE_TYPES[sk.covariance_type]
    precisions = ctype.isotropic(2.5, K, D)
    expected = np.tile(2.5 * np.eye(D), (K, 1, 1))
    np.testing.assert_array_equal(ctype.to_full(precisions, K, D), expected)
    init = SKGM(K, covariance_type=ct, precisions_init=precisions, max_iter=1, random_state=0)
    fit_quiet(init, X)  # scikit-learn checks the shape and positivity
    assert init.precisions_.shape == precisions.shape


def test_draw_follows_sklearn_sample(sk):
    ctype = COVARIANCE_TYPES[sk.covariance_type]
    rng = np.random.RandomState(7)
    counts = rng.multinomial(40, sk.weights_)
    ours = [ctype.draw(rng, sk.means_[k], ctype.component(sk.covariances_, k), c)
            for k, c in enumerate(counts)]  # fmt: skip
    theirs, _ = copy.deepcopy(sk).set_params(random_state=7).sample(40)
    np.testing.assert_array_equal(np.vstack(ours), theirs)


# ------------------------------------------------------------------ shared
SHARED = COVARIANCE_TYPES["shared"]


def test_shared_shapes_count_and_dims():
    assert SHARED.shape(K, D) == () and SHARED.dims == ()
    assert SHARED.moment_shape(K, D) == (K,)
    assert SHARED.n_parameters(K, D) == 1
    assert SHARED.pooled and SHARED.one_variance
    assert not any(c.one_variance for name, c in COVARIANCE_TYPES.items() if name != "shared")


def test_shared_is_spherical_with_one_variance(X):
    sigma2 = np.asarray(0.7)
    chol = SHARED.precision_cholesky(sigma2)
    assert chol.shape == ()
    np.testing.assert_allclose(chol, 1.0 / np.sqrt(0.7), rtol=1e-15)
    np.testing.assert_allclose(SHARED.log_det_cholesky(chol, D), -0.5 * D * np.log(0.7), rtol=1e-14)
    np.testing.assert_allclose(SHARED.to_full(sigma2, K, D), np.tile(0.7 * np.eye(D), (K, 1, 1)))
    np.testing.assert_array_equal(SHARED.to_moment_shape(chol, K, D), np.full(K, chol))
    means = X[:K]
    theirs = _estimate_log_gaussian_prob(X, means, np.full(K, float(chol)), "spherical")
    ours = np.stack(
        [multivariate_normal(means[k], 0.7 * np.eye(D)).logpdf(X) for k in range(K)], axis=1
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    np.testing.assert_allclose(SHARED.precisions_from_cholesky(chol), 1 / 0.7, rtol=1e-15)
    np.testing.assert_allclose(SHARED.covariances_from_precisions(np.asarray(1 / 0.7)), 0.7)
    np.testing.assert_allclose(SHARED.cholesky_from_precisions(np.asarray(1 / 0.7)), chol)
    np.testing.assert_array_equal(SHARED.isotropic(0.7, K, D), np.asarray(0.7))


def test_shared_estimate_is_the_pooled_variance(X, resp):
    eps = 10 * np.finfo(np.float64).eps
    origin = X.mean(axis=0)
    moments = mixture.moment_stats(X - origin, resp.T, None, np.zeros((K, D)), "shared")
    state = m_step(moments, np.broadcast_to(origin, (K, D)), "shared", 0.0, eps=eps)
    nk = resp.sum(axis=0) + eps
    means = resp.T @ X / nk[:, None]
    sq = ((X[:, None, :] - means[None]) ** 2).sum(axis=2)
    expected = (resp * sq).sum() / (nk.sum() * D)
    assert state.covariances.shape == ()
    np.testing.assert_allclose(state.covariances, expected, rtol=1e-12)


# ------------------------------------------------------------------ errors
def test_unknown_type_names_the_choices():
    with pytest.raises(ValueError, match=r"covariance_type must be one of \('full'.*got 'ful'"):
        check_covariance_type("ful")
    with pytest.raises(ValueError, match="covariance_type must be one of"):
        check_covariance_type(["full"])


@pytest.mark.parametrize("ct", ["full", "tied"])
def test_non_positive_definite_is_refused(ct):
    ctype = COVARIANCE_TYPES[ct]
    bad = np.diag([1.0, -1.0, 1.0, 1.0])
    if ct == "full":
        bad = np.stack([np.eye(D), bad, np.eye(D)])
    with pytest.raises(np.linalg.LinAlgError):
        ctype.precision_cholesky(bad)
    with pytest.raises(ValueError, match=r"precisions_init\[\d\] is not positive definite"):
        ctype.cholesky_from_precisions(bad)


@pytest.mark.parametrize("ct", ["diag", "spherical", "shared"])
def test_non_positive_variance_is_refused(ct):
    ctype = COVARIANCE_TYPES[ct]
    bad = np.full(ctype.shape(K, D), -1.0)
    with pytest.raises(np.linalg.LinAlgError):
        ctype.precision_cholesky(bad)
    with pytest.raises(ValueError, match=f"covariance_type='{ct}' must be strictly positive"):
        ctype.cholesky_from_precisions(bad)
