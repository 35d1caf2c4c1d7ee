"""Numerically hard inputs: large offsets in float32, collapsing components, tiny σ²."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans
from sklearn.exceptions import ConvergenceWarning

from dask_emk import GaussianMixture
from dask_emk.core.mstep import CollapsedComponentWarning


@pytest.fixture(autouse=True)
def sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


def two_clusters(dtype, offset=1e4, n=20_000, seed=0):
    """Two clusters 10 sd apart around ``offset``, spread ~1, and their labels."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    centers = np.array([[0.0, 0.0], [10.0, -10.0]])
    scales = np.array([[1.0, 0.5], [0.7, 1.3]])
    X = offset + centers[labels] + rng.normal(size=(n, 2)) * scales[labels]
    return X.astype(dtype), labels


def test_float32_offset_1e4_keeps_1e4_relative_accuracy():
    X32, labels = two_clusters(np.float32)
    ref = X32.astype(np.float64)  # the float64 numpy reference on the same values
    start = dict(
        weights_init=[0.5, 0.5],
        means_init=ref[[np.argmax(labels == 0), np.argmax(labels == 1)]],
        precisions_init=np.ones((2, 2)),
    )
    gm = GaussianMixture(2, covariance_type="diag", tol=1e-10, max_iter=100, **start)
    gm.fit(da.from_array(X32, chunks=(3_000, -1)))
    assert gm.means_.dtype == np.float32 and gm.converged_
    for k in (0, 1):
        rows = ref[labels == k]  # clusters 10 sd apart: responsibilities are 0/1
        mean, var = rows.mean(axis=0), rows.var(axis=0)
        np.testing.assert_allclose(gm.means_[k], mean, rtol=1e-4)
        # Stricter (1e-4 of the offset would be 1.0, i.e. no test): the means are
        # the float64 means rounded to float32, within one float32 spacing (~1e-3).
        spacing = np.spacing(np.abs(mean).astype(np.float32))
        assert np.all(np.abs(gm.means_[k] - mean) <= spacing), (gm.means_[k], mean)
        np.testing.assert_allclose(gm.covariances_[k], var + gm.reg_covar, rtol=1e-4)
    np.testing.assert_allclose(gm.weights_, np.bincount(labels) / len(labels), rtol=1e-4)


def test_float32_offset_naive_variance_would_fail():
    """The test above is hard: float32 E[x²] − E[x]² loses the variance entirely."""
    X32, labels = two_clusters(np.float32)
    rows = X32[labels == 0]
    naive = (rows * rows).mean(axis=0, dtype=np.float32) - rows.mean(axis=0, dtype=np.float32) ** 2
    true = rows.astype(np.float64).var(axis=0)
    assert np.max(np.abs(naive - true) / true) > 1e-2


@pytest.mark.parametrize("ct", ["full", "diag", "spherical", "tied"])
def test_collapsing_component_warns_and_stays_finite(ct):
    # 600 spread rows and 300 copies of one point: a component lands on the copies.
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(600, 2)) * 2.0, np.tile([[8.0, 8.0]], (300, 1))])
    precisions = {
        "full": np.tile(np.eye(2), (2, 1, 1)),
        "diag": np.ones((2, 2)),
        "spherical": np.ones(2),
        "tied": np.eye(2),
    }[ct]
    gm = GaussianMixture(
        2,
        covariance_type=ct,
        reg_covar=1e-4,
        max_iter=50,
        weights_init=[0.5, 0.5],
        means_init=[[0.0, 0.0], [7.0, 7.0]],
        precisions_init=precisions,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if ct == "tied":  # the pooled covariance still has the spread rows: no collapse
            warnings.simplefilter("error", CollapsedComponentWarning)
            gm.fit(da.from_array(X, chunks=(200, -1)))
        else:
            with pytest.warns(CollapsedComponentWarning, match=r"component\(s\) \[1\]"):
                gm.fit(da.from_array(X, chunks=(200, -1)))
    for name in ("weights_", "means_", "covariances_", "precisions_"):
        assert np.all(np.isfinite(getattr(gm, name))), name
    assert np.isfinite(gm.lower_bound_)
    if ct != "tied":  # (a tied covariance is broad: the copies share rows with it)
        np.testing.assert_allclose(gm.means_[1], [8.0, 8.0], atol=1e-9)
        np.testing.assert_allclose(gm.weights_, [2 / 3, 1 / 3], atol=1e-6)
        # The collapsed component's covariance is exactly the floor.
        floor = {"full": 1e-4 * np.eye(2), "diag": [1e-4, 1e-4], "spherical": 1e-4}[ct]
        np.testing.assert_allclose(gm.covariances_[1], floor, rtol=1e-6, atol=1e-12)


def test_no_warning_on_healthy_data():
    X, _ = two_clusters(np.float64, offset=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedComponentWarning)
        GaussianMixture(2, random_state=0).fit(X)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_shared_variance_1e12_of_data_scale_is_finite_and_lloyd(offset):
    """Annealing's end: σ² = 1e-12 × data variance, EM is Lloyd's k-means."""
    X, _ = two_clusters(np.float64, offset=offset, n=6_000)
    X = np.vstack([X, X[:2000] + [[0.0, 25.0]]])
    sigma2 = 1e-12 * X.var(axis=0).mean()
    init = X[[0, 1, 2]]
    gm = GaussianMixture(
        3, covariance_type="shared", variance=sigma2, tol=0.0, max_iter=30, means_init=init
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(da.from_array(X, chunks=(1_000, -1)))
    assert np.all(np.isfinite(gm.means_)) and np.all(np.isfinite(gm.weights_))
    assert np.isfinite(gm.lower_bound_) and float(gm.covariances_) == sigma2
    km = SkKMeans(3, init=init, n_init=1, tol=0.0, max_iter=30).fit(X)
    order = [int(np.argmin(((km.cluster_centers_ - m) ** 2).sum(axis=1))) for m in gm.means_]
    np.testing.assert_allclose(gm.means_, km.cluster_centers_[order], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(gm.predict(X), np.argsort(order)[km.labels_])
