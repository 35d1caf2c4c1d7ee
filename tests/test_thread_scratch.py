"""Kernel work buffers kept per thread between calls (core.blocks.thread_scratch):
no result of one call may change when the next call reuses the buffers, and
threads never share them."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dask_emk.core import blocks, estep, mixture

TYPES = ("full", "tied", "diag", "spherical")


def block_and_params(covariance_type: str, seed: int, n: int = 3000, d: int = 12, k: int = 6):
    """Separated clusters (the sparse path) and parameters near their truth."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(k, d))
    X = centers[rng.integers(0, k, n)] + rng.standard_normal((n, d))
    shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
    eye = {"full": np.tile(np.eye(d), (k, 1, 1)), "tied": np.eye(d)}
    U = eye.get(covariance_type, np.ones(shape[covariance_type]))
    params = mixture.MixtureParams(
        centers + 0.1, np.log(np.full(k, 1.0 / k)), U, covariance_type, X.mean(axis=0)
    )
    return X, params


def snapshot(stats: dict) -> dict:
    return {name: np.array(value, copy=True) for name, value in stats.items()}


def fresh_kernel(X, params, kind=None):
    """The same call with buffers of its own (what every call had before)."""
    saved = dict(blocks._THREAD_SCRATCH.__dict__)
    blocks._THREAD_SCRATCH.__dict__.clear()
    try:
        if kind is None:
            return estep.estep_stats(X, None, params)
        return estep.mixture_rows(X, params, kind)
    finally:
        blocks._THREAD_SCRATCH.__dict__.clear()
        blocks._THREAD_SCRATCH.__dict__.update(saved)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_a_later_call_leaves_earlier_results_alone(covariance_type):
    X1, params1 = block_and_params(covariance_type, seed=1)
    X2, params2 = block_and_params(covariance_type, seed=2, n=5000)
    first = estep.estep_stats(X1, None, params1)
    kept = snapshot(first)
    resp = estep.mixture_rows(X1, params1, "resp")
    kept_resp = resp.copy()
    second = estep.estep_stats(X2, None, params2)
    estep.mixture_rows(X2, params2, "resp")
    for name in kept:
        np.testing.assert_array_equal(first[name], kept[name], err_msg=name)
    np.testing.assert_array_equal(resp, kept_resp)
    # and reused buffers give what fresh ones give
    reference = fresh_kernel(X2, params2)
    for name in reference:
        np.testing.assert_allclose(second[name], reference[name], rtol=1e-13, atol=0)


def test_each_thread_has_its_own_buffers():
    with ThreadPoolExecutor(2) as pool:
        barrier = threading.Barrier(2)

        def owned(_):
            barrier.wait(timeout=30)  # both threads alive at once
            return id(blocks.thread_scratch("kernel")), id(blocks.thread_scratch("sparse"))

        ids = list(pool.map(owned, range(2)))
    assert len({i for pair in ids for i in pair}) == 4


def test_concurrent_calls_equal_sequential_ones():
    cases = [block_and_params(ct, seed) for ct in ("full", "diag") for seed in (3, 4, 5)]
    expected = [fresh_kernel(X, params, "log_prob") for X, params in cases]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            got = list(pool.map(lambda case: estep.mixture_rows(*case, "log_prob"), cases))
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_allclose(g, e, rtol=1e-13, atol=0)


def seeding_reference(X, weight, rows, centers, trials, seed, scale):
    """Potentials and keys of core.seeding.seed_stats from plain numpy broadcasting."""
    d2 = lambda M: ((X[:, None, :] - M[None, :, :]) ** 2).sum(axis=2)  # noqa: E731
    D = d2(centers).min(axis=1) if centers.shape[0] else np.ones(X.shape[0])
    streams = np.minimum(D[None, :], d2(trials).T) if trials.shape[0] else D[None, :]
    mass = streams * (1.0 if weight is None else weight)
    u = blocks.row_uniforms(rows, seed, streams.shape[0])
    with np.errstate(divide="ignore"):
        keys = np.log(u) / mass if scale is None else scale * mass / u
    return mass.sum(axis=1), -np.sort(-keys, axis=1)


@pytest.mark.parametrize("with_trials", [False, True])
def test_seeding_reuses_its_buffers_without_touching_earlier_results(with_trials):
    from dask_emk.core import seeding

    rng = np.random.default_rng(7)
    calls = []
    for n in (3000, 5000):  # the second call reuses (and grows) the first's buffers
        X = rng.normal(size=(n, 5)).astype(np.float32)
        weight, rows = rng.random(n) + 0.5, np.arange(n) + 123
        centers, trials = rng.normal(size=(7, 5)), rng.normal(size=(3 if with_trials else 0, 5))
        scale = None if with_trials else 14.0
        got = seeding.seed_stats(X, weight, rows, centers, trials, X[0].astype(float), 20, 9, scale)
        reference_args = (X.astype(float), weight, rows, centers, trials, 9, scale)
        calls.append((got, snapshot(got), reference_args))
    for got, kept, args in calls:
        for name in kept:
            np.testing.assert_array_equal(got[name], kept[name], err_msg=name)
        potential, keys = seeding_reference(*args)
        np.testing.assert_allclose(got["potential"], potential, rtol=1e-9)
        np.testing.assert_allclose(got["key"], keys[:, :20], rtol=1e-9)


def test_a_seeding_block_allocates_less_than_its_rows():
    """The k-means|| round's n x d and n-long work arrays come from the thread's
    scratch: a second call on a block of the same size allocates little (under
    Dask's nanny each fresh array is mmapped and page-faulted in on every block)."""
    import tracemalloc

    from dask_emk.core import seeding

    rng = np.random.default_rng(3)
    n, d = 100_000, 8
    X = rng.normal(size=(n, d)).astype(np.float32)
    args = (X, None, np.arange(n), X[:40].astype(float), np.zeros((0, d)), np.zeros(d), 50, 1, 32.0)
    seeding.seed_stats(*args)
    tracemalloc.start()
    try:
        seeding.seed_stats(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Fresh arrays took the float64 rows (6.4 MB) and as much again; argpartition's ~1.6 MB remain.
    assert peak < n * d * 8 // 2, peak
