"""Accelerated EM (SQUAREM, accelerate=True): fewer passes, a lower bound that never decreases."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from helpers import CountComputes, fit_quiet

from dask_emk import GaussianMixture
from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.mstep import GaussianState, precision_cholesky
from dask_emk.core.squarem import extrapolate, from_vector, to_vector


def overlapping(n=2000, seed=0):
    """4 overlapping 2-D components: plain EM needs hundreds of iterations to tol 1e-8."""
    rng = np.random.default_rng(seed)
    means = np.array([[0, 0], [2, 0.5], [0.5, 2.2], [2.5, 2.5]])
    shape = np.array([[1, 0.3], [0, 0.8]])
    return rng.permutation(np.vstack([m + rng.normal(size=(n // 4, 2)) @ shape for m in means]))


def grid(per=30, seed=0):
    """The 10 × 10 grid of 2-D Gaussians, spacing 10, std 2."""
    rng = np.random.default_rng(seed)
    centers = np.array([[10.0 * i, 10.0 * j] for i in range(10) for j in range(10)])
    return rng.permutation(np.vstack([c + 2 * rng.normal(size=(per, 2)) for c in centers]))


def random_state(ct, K=3, d=2, seed=0) -> GaussianState:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(K, d, d))
    full = A @ A.transpose(0, 2, 1) + np.eye(d)
    cov = {"full": full, "tied": full[0], "diag": np.diagonal(full, axis1=1, axis2=2).copy(),
           "spherical": full[:, 0, 0].copy(), "shared": np.asarray(full[0, 0, 0])}[ct]  # fmt: skip
    weights = rng.dirichlet(np.ones(K))
    return GaussianState(weights, rng.normal(size=(K, d)), cov, precision_cholesky(cov, ct))


@pytest.mark.parametrize("ct", list(COVARIANCE_TYPES))
def test_coordinates_round_trip_and_any_vector_is_a_valid_mixture(ct):
    state = random_state(ct)
    back = from_vector(to_vector(state, ct), state, ct, 0.0)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_allclose(getattr(back, name), getattr(state, name), rtol=1e-10)
    # A long jump far outside: weights still on the simplex, covariances PD.
    rng = np.random.default_rng(1)
    p = to_vector(state, ct)
    r = 0.3 * rng.normal(size=p.size)
    jump, alpha = extrapolate(p, p + r, p + 1.9 * r, 64)  # v = -0.1 r: α = 10
    np.testing.assert_allclose(jump, p + 10 * r)
    assert alpha == pytest.approx(10)
    far = from_vector(jump, state, ct, 0.0)
    assert np.all(far.weights > 0) and far.weights.sum() == pytest.approx(1.0, rel=1e-12)
    full = COVARIANCE_TYPES[ct].to_full(far.covariances, 3, 2)
    assert np.all(np.linalg.eigvalsh(full) > 0)


def test_extrapolation_is_plain_em_at_steplength_one():
    p, fp, ffp = np.zeros(3), np.ones(3), np.array([1.5, 1.5, 1.5])
    # ‖r‖/‖v‖ = 2: the S3 jump p + 2α r + α² v with α = 2.
    np.testing.assert_allclose(extrapolate(p, fp, ffp, 8)[0], 4 * fp + 4 * (ffp - 2 * fp + p))
    assert extrapolate(p, fp, ffp, 1.0) == (ffp, 1.0)


@pytest.mark.parametrize(
    "X, K, ct, init",
    [
        pytest.param(overlapping(), 4, "full", "random_from_data", marks=pytest.mark.slow),
        (overlapping(), 4, "diag", "random_from_data"),
        (grid(), 100, "diag", "kmeans"),
    ],
    ids=["overlapping-full", "overlapping-diag", "grid-diag"],
)
def test_accelerated_em_reaches_the_plain_bound_in_fewer_passes(X, K, ct, init):
    kw = dict(covariance_type=ct, tol=1e-8, max_iter=3000, init_params=init, random_state=0)
    plain = fit_quiet(GaussianMixture(K, **kw), X)
    fast = fit_quiet(GaussianMixture(K, accelerate=True, **kw), X)
    assert plain.converged_ and fast.converged_
    assert fast.lower_bound_ >= plain.lower_bound_ - 1e-7
    # An iteration is a pass (one compute on dask input), for both.
    assert fast.n_iter_ <= 0.6 * plain.n_iter_, (fast.n_iter_, plain.n_iter_)
    for model in (plain, fast):
        assert np.diff(model.lower_bounds_).min() >= -1e-12
    assert np.isclose(fast.weights_.sum(), 1.0)


def test_accelerated_em_computes_on_dask_input():
    X = overlapping(800, seed=1)
    Xd = da.from_array(X, chunks=(200, -1))
    kw = dict(covariance_type="diag", tol=1e-8, max_iter=2000, init_params="k-means++",
              random_state=0)  # fmt: skip
    counts, fits = {}, {}
    with dask.config.set(scheduler="threads"):
        for accelerate in (False, True):
            with CountComputes() as counter:
                fits[accelerate] = fit_quiet(GaussianMixture(4, accelerate=accelerate, **kw), Xd)
            counts[accelerate] = counter.count
    assert counts[True] <= 0.6 * counts[False], counts
    assert fits[True].lower_bound_ >= fits[False].lower_bound_ - 1e-7
    # One compute per iteration, plus the same seeding passes for both.
    assert counts[False] - fits[False].n_iter_ == counts[True] - fits[True].n_iter_
