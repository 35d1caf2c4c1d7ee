"""The E-step options as a value (``GaussianMixture(estep=...)``): they travel
with the parameters to distributed workers, and the sparse and dense E-steps
give the same fits to rounding, bit for bit the same on threads and on a
LocalCluster, for every covariance type."""

from __future__ import annotations

import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from dask_emk import AnnealedGaussianMixture, GaussianMixture, GaussianMixtureIC
from dask_emk.core import estep, mixture, sparse
from dask_emk.core.covariance import COVARIANCE_TYPES

FIELDS = ("weights", "means", "covariances", "precisions_cholesky")


def separated(n=12_000, d=12, k=8, seed=2):
    """Separated clusters, so the sparse E-step evaluates few pairs per row;
    initial means one row of each cluster."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=8.0, size=(k, d))
    labels = rng.integers(0, k, n)
    X = centers[labels] + rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, d)
    means = np.stack([X[np.flatnonzero(labels == j)[0]] for j in range(k)])
    return X, means


def fit(X, means, ct, path):
    gm = GaussianMixture(means.shape[0], covariance_type=ct, max_iter=20, tol=0.0,
                         means_init=means, estep=path)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(da.from_array(X, chunks=(3000, -1)))
    assert gm.n_iter_ == 20
    return gm._state64


def relative_gap(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_options_travel_with_the_parameters():
    """The options are part of the parameters' value, pickled with them (what
    a worker unpickles), and the estimator's parameter sets them."""
    X, means = separated(n=600)
    gm = GaussianMixture(8, max_iter=1, means_init=means, estep="dense").fit(X)
    params = pickle.loads(pickle.dumps(gm._kernel_params(gm._state64)))
    assert params.estep == mixture.EStepOptions("dense")
    options = mixture.EStepOptions("sparse", screen_float32="never", sub_block_bytes=4096)
    gm.set_params(estep=options)
    assert gm._kernel_params(gm._state64).estep is options


def test_a_forced_path_is_taken_in_the_kernel():
    """'dense' never makes a sparse plan, 'sparse' always does on clean
    separated rows, and the per-pass record says so."""
    X, means = separated(n=4000)
    gm = GaussianMixture(8, max_iter=5, tol=0.0, means_init=means).fit(X)
    for path, verdicts in (("dense", (0, 0)), ("sparse", (0, 1))):
        params = gm._kernel_params(gm._state64)
        params = mixture.MixtureParams(params.means, params.log_weights,
                                       params.precisions_cholesky, params.covariance_type,
                                       params.origin, mixture.EStepOptions(path))  # fmt: skip
        estep.estep_stats(X, None, params)
        state = sparse.sparse_state(params)
        assert (state.dense, state.sparse) == verdicts


@pytest.mark.parametrize(
    "make", [lambda e: GaussianMixture(estep=e), lambda e: GaussianMixtureIC(estep=e),
             lambda e: AnnealedGaussianMixture(estep=e)],
)  # fmt: skip
def test_a_wrong_estep_is_named_before_any_work(make):
    with pytest.raises(ValueError, match="estep must be one of .*'auto'.*got 'fast'"):
        make("fast").fit(np.zeros((10, 2)))


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as lc:
        yield lc


@pytest.mark.slow
def test_estep_reaches_the_workers_and_fits_agree(cluster):
    """For every covariance type, 20 EM iterations with estep='sparse' and
    'dense' on the threaded scheduler and on a LocalCluster of two worker
    processes. On each scheduler the sparse fit equals the dense one to 1e-12
    relative but not to the bit, so each cluster fit shows which path its
    workers took: were the option lost on the way (a module global set on the
    client), the workers would run the same default E-step for both cluster
    fits and they would be equal. Threads and cluster agree to 1e-12 (not to
    the bit here: full covariance differs in the last bit, dense included)."""
    from distributed import Client

    X, means = separated()
    fits = {}
    with dask.config.set(scheduler="threads"):
        for ct in COVARIANCE_TYPES:
            for path in ("sparse", "dense"):
                fits["threads", ct, path] = fit(X, means, ct, path)
    with Client(cluster):
        for ct in COVARIANCE_TYPES:
            for path in ("sparse", "dense"):
                fits["cluster", ct, path] = fit(X, means, ct, path)
    for ct in COVARIANCE_TYPES:
        for where in ("threads", "cluster"):
            by_pairs, dense = fits[where, ct, "sparse"], fits[where, ct, "dense"]
            gaps = [relative_gap(getattr(by_pairs, f), getattr(dense, f)) for f in FIELDS]
            assert 0 < max(gaps) < 1e-12, (where, ct, gaps)
        for path in ("sparse", "dense"):
            here, there = fits["threads", ct, path], fits["cluster", ct, path]
            gaps = [relative_gap(getattr(here, f), getattr(there, f)) for f in FIELDS]
            assert max(gaps) < 1e-12, (ct, path, gaps)
