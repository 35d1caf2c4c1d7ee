"""Engine invariants, property-based (hypothesis): what the data's layout must not change.

With a fixed start, GaussianMixture and KMeans results do not depend on the
order of the rows, the row chunks or the reduction fan-in (up to rounding);
scaling every sample weight by one constant changes nothing; integer weights
equal repeated rows.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

from dask_emk import GaussianMixture, KMeans

K, D = 3, 2
SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(autouse=True)
def sync_scheduler():
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fixed iteration counts
        yield


@st.composite
def datasets(draw, min_rows=60, max_rows=400):
    """Three Gaussian blobs of random size and position, with a fixed start."""
    n = draw(st.integers(min_rows, max_rows))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(K, D))
    X = centers[rng.integers(0, K, n)] + rng.normal(size=(n, D))
    start = centers + rng.normal(scale=0.5, size=(K, D))
    return X, start, rng


def gmm(start, **kw):
    # A full start (weights, means, precisions): 'kmeans' seeding would draw
    # per block, and blocks are what these tests change.
    return GaussianMixture(
        K,
        covariance_type="full",
        tol=0.0,
        max_iter=8,
        weights_init=np.full(K, 1 / K),
        means_init=start,
        precisions_init=np.tile(np.eye(D), (K, 1, 1)),
        **kw,
    )


def kmeans(start, **kw):
    return KMeans(K, init=start, n_init=1, max_iter=20, tol=0.0, **kw)


def chunked(X, rng):
    """X as a dask array with random row chunks."""
    n = X.shape[0]
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, rng.integers(1, 8)), replace=False))
    return da.from_array(X, chunks=(tuple(np.diff(np.r_[0, cuts, n])), -1))


def assert_gmm_close(a, b, rtol=1e-8):
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(a.lower_bound_, b.lower_bound_, rtol=rtol)


def assert_kmeans_close(a, b, rtol=1e-8):
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=rtol, atol=1e-10)
    np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=rtol)


@SETTINGS
@given(datasets(), st.sampled_from([None, 2, 3, 5]))
def test_gmm_invariant_to_row_order_chunks_and_split_every(data, split_every):
    X, start, rng = data
    base = gmm(start).fit(da.from_array(X, chunks=(X.shape[0], -1)))
    perm = rng.permutation(X.shape[0])
    other = gmm(start, split_every=split_every).fit(chunked(X[perm], rng))
    assert_gmm_close(other, base)


@SETTINGS
@given(datasets(), st.sampled_from([None, 2, 3, 5]))
def test_kmeans_invariant_to_row_order_chunks_and_split_every(data, split_every):
    X, start, rng = data
    base = kmeans(start).fit(da.from_array(X, chunks=(X.shape[0], -1)))
    perm = rng.permutation(X.shape[0])
    other = kmeans(start, split_every=split_every).fit(chunked(X[perm], rng))
    assert_kmeans_close(other, base)
    # Labels follow the rows they belong to.
    np.testing.assert_array_equal(np.asarray(other.labels_), np.asarray(base.labels_)[perm])


@SETTINGS
@given(datasets(), st.floats(1e-3, 1e3))
def test_scaling_all_weights_changes_nothing(data, scale):
    X, start, rng = data
    w = rng.uniform(0.1, 2.0, size=X.shape[0])
    assert_gmm_close(gmm(start).fit(X, sample_weight=w * scale), gmm(start).fit(X, sample_weight=w))
    a = kmeans(start).fit(X, sample_weight=w * scale)
    b = kmeans(start).fit(X, sample_weight=w)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a.inertia_, scale * b.inertia_, rtol=1e-8)  # inertia is Σ w d²


@SETTINGS
@given(datasets(max_rows=200))
def test_integer_weights_equal_repeated_rows(data):
    X, start, rng = data
    counts = rng.integers(0, 4, size=X.shape[0])
    counts[0] = max(counts[0], 1)
    repeated = np.repeat(X, counts, axis=0)
    lazy_w = da.from_array(counts.astype(float), chunks=37)
    assert_gmm_close(
        gmm(start).fit(da.from_array(X, chunks=(37, -1)), sample_weight=lazy_w),
        gmm(start).fit(repeated),
    )
    assert_kmeans_close(kmeans(start).fit(X, sample_weight=counts), kmeans(start).fit(repeated))
