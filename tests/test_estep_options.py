"""The E-step options as a value (``GaussianMixture(estep=...)``): they travel
with the parameters (pickled, as a worker receives them) and force the path
in the kernel. The fits on threads and on a LocalCluster, for every
covariance type and path: tests/test_estep_identity.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from dask_emk import AnnealedGaussianMixture, GaussianMixture, GaussianMixtureIC
from dask_emk.core import estep, mixture, sparse


def separated(n=12_000, d=12, k=8, seed=2):
    """Separated clusters, so the sparse E-step evaluates few pairs per row;
    initial means one row of each cluster."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=8.0, size=(k, d))
    labels = rng.integers(0, k, n)
    X = centers[labels] + rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, d)
    means = np.stack([X[np.flatnonzero(labels == j)[0]] for j in range(k)])
    return X, means


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


@pytest.mark.parametrize(
    ("field", "value"),
    [("prune_nats", float("nan")), ("screen_slack", -1.0), ("max_directions", 1.5),
     ("exact_features", -1), ("wide_features", True)],
)  # fmt: skip
def test_a_wrong_option_is_named(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        mixture.EStepOptions(**{field: value})
