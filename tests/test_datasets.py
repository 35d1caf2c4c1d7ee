"""Generated mixture stores: distribution, determinism across schedulers."""

import dask
import numpy as np
import pytest
import zarr

from dask_emk.pipeline.generate import random_mixture, read_truth, sample_block, write_mixture_zarr


@pytest.fixture(scope="module")
def truth():
    return random_mixture(3, 4, seed=2)


def test_sample_block_matches_per_row_factor_reference(truth):
    X, labels = sample_block(truth, 2000, np.random.default_rng(0))
    # Same draws, transformed row by row with each row's own Cholesky factor.
    rng = np.random.default_rng(0)
    ref_labels = rng.choice(4, size=2000, p=truth.weights)
    noise = rng.standard_normal((2000, 3))
    chol = np.linalg.cholesky(truth.covariances)
    ref = truth.means[ref_labels] + np.einsum("nij,nj->ni", chol[ref_labels], noise)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(X, ref, rtol=1e-12, atol=1e-12)


def test_store_follows_the_truth_and_does_not_depend_on_the_scheduler(tmp_path, truth):
    with dask.config.set(scheduler="sync"):
        sync = write_mixture_zarr(tmp_path / "sync.zarr", 60_000, truth, chunk_rows=7_000)
    with dask.config.set(scheduler="threads"):
        threads = write_mixture_zarr(
            tmp_path / "threads.zarr", 60_000, truth, chunk_rows=7_000, dtype="float64"
        )
    a = zarr.open_group(store=zarr.storage.LocalStore(sync), mode="r")
    b = zarr.open_group(store=zarr.storage.LocalStore(threads), mode="r")
    np.testing.assert_array_equal(a["X"][...], b["X"][...].astype(np.float32))
    np.testing.assert_array_equal(a["labels"][...], b["labels"][...])
    X, labels = b["X"][...], b["labels"][...]
    stored = read_truth(threads)
    np.testing.assert_array_equal(stored.means, truth.means)
    counts = np.bincount(labels, minlength=4) / 60_000
    np.testing.assert_allclose(counts, truth.weights, atol=0.01)
    for k in range(4):
        rows = X[labels == k]
        scale = np.sqrt(np.diag(truth.covariances[k]))
        assert np.all(np.abs(rows.mean(0) - truth.means[k]) < 5 * scale / np.sqrt(len(rows)))
        np.testing.assert_allclose(np.cov(rows.T), truth.covariances[k], rtol=0.1, atol=0.05)
    assert not (tmp_path / "sync.zarr.partial").exists()
