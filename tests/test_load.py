"""Load: several fits at once against one LocalCluster give the one-at-a-time results."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr
from helpers import blobs
from sklearn.exceptions import ConvergenceWarning

from dask_emk import GaussianMixture, KMeans

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("load")
    paths = []
    for seed in range(4):
        X = blobs(n=20_000, d=3, K=3, seed=seed)
        path = str(root / f"X{seed}.zarr")
        zarr.create_array(store=path, shape=X.shape, chunks=(2_000, 3), dtype="f8")[:] = X
        paths.append(path)
    return paths


def job(i: int, path: str) -> dict:
    """Fit i: GaussianMixture (even) or KMeans (odd) on store i, all seeded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if i % 2 == 0:
            gm = GaussianMixture(3, tol=0.0, max_iter=10, random_state=i).fit(path)
            return {"means": gm.means_, "covariances": gm.covariances_, "bound": gm.lower_bound_}
        km = KMeans(3, random_state=i, max_iter=20).fit(path)
        return {"means": km.cluster_centers_, "inertia": km.inertia_}


def test_four_concurrent_fits_equal_sequential(client, stores):
    sequential = [job(i, path) for i, path in enumerate(stores)]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(job, range(4), stores))
    for one, many in zip(sequential, concurrent, strict=True):
        assert one.keys() == many.keys()
        for name in one:
            np.testing.assert_allclose(many[name], one[name], rtol=1e-10, err_msg=name)
    # The fits differ from each other (each used its own store and seed).
    assert not np.allclose(sequential[0]["means"], sequential[2]["means"])


def test_corrupted_chunk_on_cluster_names_the_store(client, tmp_path):
    """A worker's decode error comes back as the ValueError that names the store."""
    X = blobs(n=4_000, d=2, K=2, seed=1)
    path = tmp_path / "bad.zarr"
    zarr.create_array(store=str(path), shape=X.shape, chunks=(500, 2), dtype="f8")[:] = X
    (path / "c" / "6" / "0").write_bytes(b"not a zstd frame" * 8)
    with pytest.raises(ValueError, match=r"reading zarr array .*bad\.zarr failed: a chunk file"):
        GaussianMixture(2, random_state=0).fit(str(path))
