"""The same parameters bit for bit after 20 EM iterations, for all five
covariance types, with the E-step forced dense or sparse, on the threaded
scheduler and on a LocalCluster of two worker processes; the sparse and the
automatic E-steps equal the dense one to rounding (docs/NUMERICS.md, "Which
path, and the last bits").

The start is fixed (weights, means and precisions given, so nothing is
drawn): a start left to the k-means|| seeding with ``random_state=None``
draws fresh numbers in every fit, and two fits of the same data then differ
in the last bits whatever the scheduler.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from test_sparse_estep import start

from dask_emk import GaussianMixture
from dask_emk.core.covariance import COVARIANCE_TYPES

FIELDS = ("weights", "means", "covariances", "precisions_cholesky")

#: E-step paths fitted on each scheduler ('auto' on the cluster only: on
#: threads test_sparse_estep compares it with the dense fits).
PATHS = {"threads": ("dense", "sparse"), "cluster": ("dense", "sparse", "auto")}


@pytest.fixture(scope="module")
def data():
    """Separated clusters (n = 3000, d = 12, K = 6, features on different
    scales), so the sparse E-step evaluates few pairs per row; four chunks,
    two blocks per worker."""
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=8.0, size=(6, 12))
    labels = rng.integers(0, 6, 3000)
    X = centers[labels] + rng.normal(size=(3000, 12)) * rng.uniform(0.5, 1.5, 12)
    return da.from_array(X, chunks=(750, -1)), X, labels


def fit(data, ct: str, path: str):
    Xd, X, labels = data
    init = start(ct, X, labels, 1.0, np.random.default_rng(1))
    gm = GaussianMixture(6, covariance_type=ct, max_iter=20, tol=0.0, estep=path, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(Xd)
    assert gm.n_iter_ == 20
    return gm._state64


def gap(a, b) -> float:
    """Largest relative difference over the fitted parameters."""

    def rel(x, y):
        x, y = np.asarray(x), np.asarray(y)
        return float(np.max(np.abs(x - y)) / np.max(np.abs(y)))

    return max(rel(getattr(a, f), getattr(b, f)) for f in FIELDS)


@pytest.mark.slow
def test_parameters_after_20_iterations_bit_for_bit(local_cluster, data):
    """Threads and cluster give the same parameters to the bit for the forced
    paths: each block's statistics do not depend on the process that
    computes them, the tree adds the blocks in block order, and the M-step
    runs on the client with one BLAS thread. The sparse fits differ from the
    dense ones (so each cluster fit shows the path its workers took) by less
    than 1e-12. 'auto' decides per sub-block from a per-process record of the
    probes (core/sparse.sparse_state), so only its agreement to rounding is
    by design."""
    from distributed import Client

    fits = {}
    with dask.config.set(scheduler="threads"):
        for ct in COVARIANCE_TYPES:
            for path in PATHS["threads"]:
                fits["threads", ct, path] = fit(data, ct, path)
    with Client(local_cluster):
        for ct in COVARIANCE_TYPES:
            for path in PATHS["cluster"]:
                fits["cluster", ct, path] = fit(data, ct, path)
    for ct in COVARIANCE_TYPES:
        for path in ("dense", "sparse"):
            here, there = fits["threads", ct, path], fits["cluster", ct, path]
            for f in FIELDS:
                np.testing.assert_array_equal(getattr(here, f), getattr(there, f), (ct, path, f))
        for where in ("threads", "cluster"):
            dense = fits[where, ct, "dense"]
            assert 0 < gap(fits[where, ct, "sparse"], dense) < 1e-12, (where, ct)
        assert gap(fits["cluster", ct, "auto"], fits["cluster", ct, "dense"]) < 1e-12, ct
