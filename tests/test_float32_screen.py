"""The screen of the sparse E-step's exact candidates (candidates._screened_bounds)
in float32: its proven error bound holds pair by pair on adversarial data, no
pair it skips is within the margin, and fits through it equal dense fits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import test_sparse_estep as base
from test_sparse_estep import (
    DATASETS,
    adversarial_params,
    adversarial_rows,
    fit_both,
    fit_gaps,
    margin_violations,
)

from dask_emk.core import candidate_loops, candidates, mixture
from dask_emk.core.covariance import COVARIANCE_TYPES

# The fixtures of the sparse E-step's tests: the sync scheduler (autouse)
# and the count of sparse sub-blocks' rows and pairs.
sync_scheduler, pair_count = base.sync_scheduler, base.pair_count

#: The types screened by candidates._screened_bounds, with the d of the test parameters.
SCREENED = [("diag", 6), ("spherical", 6), ("shared", 6), ("full", 2)]


@pytest.fixture
def always_float32():
    """Every sub-block of the screen in float32, whatever its bound (valid,
    only looser: the margin tests below then test the float32 arithmetic)."""
    return mixture.EStepOptions("sparse", screen_float32="always", screen_slack=np.inf)


def offset_params(ct, d, rng, offset=1e4):
    """adversarial_params (precisions over 1e-3..1e3, means on three scales,
    log-weights down to e^-60) moved by ``offset``."""
    params = adversarial_params(ct, rng, d=d)
    U = params.precisions_cholesky
    return mixture.MixtureParams(params.means + offset, params.log_weights, U, ct,
                                 params.origin + offset)  # fmt: skip


def float32_log_densities(params, X):
    """(ℓ̃, e), both (n, K): the float32 log-densities of the screen
    (candidate_loops.screen_features, a float32 GEMM, the float64 bias) and the bound
    on |ℓ̃ − ℓ| that candidate_loops.select_exact allows with candidates._float32_scale."""
    A, bias = params.log_prob_coefficients
    A32, scale = candidates._float32_scale(params)
    assert A32.shape == A.shape  # the coefficients' range allows float32
    n = X.shape[0]
    phi, ny = np.empty((n, A.shape[0]), np.float32), np.empty(n)
    block = COVARIANCE_TYPES[params.covariance_type].block
    code = candidate_loops.BLOCK_CODES[block]
    candidate_loops.screen_features(X, params.origin, code, 0, phi, ny)
    v = np.minimum((phi @ A32).astype(np.float64) + bias, params.log_peak)
    rel = 4 * np.finfo(np.float64).eps
    e = scale[0] * (ny[:, None] + scale[1]) ** 2 + rel * scale[2] + rel * np.abs(v)
    return v, e


@pytest.mark.parametrize(("ct", "d"), SCREENED)
def test_float32_bound_holds_for_every_pair(ct, d):
    """Offset 1e4, float32 rows, precisions over 1e-3..1e3, rows near, between
    and far (1e4) from the means: |ℓ̃ − ℓ| ≤ e for every pair, ℓ the dense
    float64 log-densities (within their own float64 bound of the exact)."""
    rng = np.random.default_rng(11)
    for _ in range(3):
        params = offset_params(ct, d, rng)
        X = (adversarial_rows(params, rng) + params.origin).astype(np.float32)
        v, e = float32_log_densities(params, X)
        Y = np.subtract(X, params.origin, dtype=np.float64)
        exact = mixture.weighted_log_prob(Y, params)[0].T
        nm = np.sqrt((params.shifted_means**2).sum(axis=1))
        s64 = candidates._float64_scale(params, nm)
        e64 = s64[0] * (np.sqrt((Y**2).sum(axis=1))[:, None] + s64[1]) ** 2
        e64 = e64 + 4 * np.finfo(np.float64).eps * (s64[2] + np.abs(exact))
        gap = np.abs(v - exact)
        finite = np.isfinite(exact)
        assert np.array_equal(finite, np.isfinite(v))
        assert np.all(gap[finite] <= e[finite] + e64[finite])
        # the rows are far from float32-exact: the check has something to check
        assert np.max(gap[finite]) > 1e-3


@pytest.mark.parametrize(("ct", "d"), SCREENED)
def test_float32_screen_skips_no_pair_within_the_margin(ct, d, always_float32):
    rng = np.random.default_rng(7)
    for _ in range(3):
        params = dataclasses.replace(adversarial_params(ct, rng, d=d), estep=always_float32)
        Y = adversarial_rows(params, rng)
        bad, skipped = margin_violations(params, Y, exact=True)
        assert bad == 0 and skipped > 0.3 * Y.shape[0], (bad, skipped)


@pytest.mark.parametrize(("ct", "seed"), [("diag", 7), ("full", 7)])
def test_float32_margin_check_catches_a_cut_margin(ct, seed, always_float32):
    """The check above has teeth for the float32 screen too."""
    rng = np.random.default_rng(seed)
    params = adversarial_params(ct, rng, d=6 if ct == "diag" else 2)
    cut = dataclasses.replace(always_float32, prune_nats=20.0)
    params = dataclasses.replace(params, estep=cut)
    Y = adversarial_rows(params, rng)
    assert margin_violations(params, Y, exact=True)[0] > 0


def test_the_screen_takes_float32_only_where_its_bound_is_small():
    """A sub-block goes float32 by its own bound: near rows do, the same rows
    moved 1e4 away from the origin do not (their pairs' float64 log-densities
    are then kept, identical to the dense E-step's)."""
    rng = np.random.default_rng(0)
    params = adversarial_params("diag", rng, d=16)
    params = mixture.MixtureParams(params.means, np.log(np.full(12, 1 / 12)),
                                   np.ones((12, 16)), "diag", params.origin,
                                   mixture.EStepOptions(screen_float32="always"))  # fmt: skip
    Y = params.shifted_means[rng.integers(0, 12, 500)] + rng.normal(size=(500, 16))
    near = candidates.candidate_pairs(Y, params)
    far = candidates.candidate_pairs(Y + 1e4, params)
    assert near.pair_log_dens is None  # float32: recomputed later
    assert far.pair_log_dens is not None
    dense = mixture.weighted_log_prob(Y + 1e4, params)[0]
    k = np.repeat(np.arange(12), np.diff(far.offsets))
    np.testing.assert_allclose(far.pair_log_dens, dense[k, far.rows], rtol=1e-13)


FITS = [(name, ct) for name in ("grid", "offset_float32", "elongated")
        for ct in ("diag", "spherical", "shared")] + [("grid", "full")]  # fmt: skip


@pytest.mark.parametrize(("name", "ct"), FITS)
def test_fits_through_the_float32_screen_equal_dense_fits(name, ct, always_float32, pair_count):
    """Every sub-block screened in float32 (full: d = 2, the grid's)."""
    X, labels, var = DATASETS[name](np.random.default_rng(0))
    sparse_fit, dense_fit = fit_both(ct, X, labels, var, estep=always_float32)
    gaps = fit_gaps(sparse_fit, dense_fit)
    assert max(gaps.values()) < 1e-12, gaps
    assert pair_count["rows"] > 0
