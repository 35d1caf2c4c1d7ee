"""One random_state, one model: draws keyed by row (issue 23 §1).

Every random draw about a row comes from a generator keyed by a seed drawn
from ``random_state`` and the row's global index, so the fit must not depend
on the chunking, the scheduler, the input type or float32 storage of the same
values (to 1e-10 relative, identical labels), and no weights must be weights
of 1 bit for bit. References are fits of the same data in one chunk.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from helpers import blobs, fit_quiet

from dask_emk import AnnealedGaussianMixture, DPMeans, GaussianMixture, KMeans
from dask_emk.core.blocks import ROW_GROUP, row_uniforms
from dask_emk.engine import reduction
from dask_emk.models.seeding import kmeans_plusplus, random_rows

K = 4
N = 3000
#: float32-representable values, so float32 storage holds exactly these.
X = blobs(N, 3, K=K, seed=4).astype(np.float32).astype(np.float64)

MODELS = {
    "kmeans||": lambda: KMeans(K, n_init=1, random_state=42),
    "kmeans++": lambda: KMeans(K, init="k-means++", n_init=1, random_state=42),
    "kmeans-random": lambda: KMeans(K, init="random", n_init=2, random_state=42),
    "gmm": lambda: GaussianMixture(K, random_state=42, tol=1e-6),
    "gmm-random": lambda: GaussianMixture(K, init_params="random", random_state=42, tol=1e-6),
    "gmm-random_from_data": lambda: GaussianMixture(
        K, init_params="random_from_data", random_state=42, tol=1e-6
    ),
    "anneal": lambda: AnnealedGaussianMixture(K, random_state=42, sample_size=1000),
    "dpmeans": lambda: DPMeans(20.0),
}
PARAMS = ("cluster_centers_", "means_", "weights_", "covariances_", "inertia_", "lower_bound_")


def fit(name, data, sample_weight=None, scheduler="sync"):
    with dask.config.set(scheduler=scheduler):
        return fit_quiet(MODELS[name](), data, sample_weight=sample_weight)


def chunked(A, rows):
    return da.from_array(A, chunks=(rows, -1))


def outputs(model, data) -> dict:
    """Fitted parameters (float64) and labels of a model fitted on ``data``."""
    out = {p: np.asarray(getattr(model, p), np.float64) for p in PARAMS if hasattr(model, p)}
    out["labels"] = np.asarray(model.predict(data))
    if hasattr(model, "labels_"):
        out["labels_"] = np.asarray(model.labels_)
    if hasattr(model, "n_iter_"):
        out["n_iter_"] = np.asarray(model.n_iter_)
    return out


def assert_same_model(got: dict, ref: dict, exact=False) -> None:
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        if exact or key in ("labels", "labels_", "n_iter_"):
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-13, err_msg=key)


@pytest.fixture(scope="module")
def reference():
    """Each model fitted on the data in one chunk, sync scheduler."""
    return {name: outputs(fit(name, chunked(X, N)), X) for name in MODELS}


# ------------------------------------------------------------------ the draws
def test_row_uniforms_are_a_function_of_seed_stream_and_row():
    full = row_uniforms(np.arange(3 * ROW_GROUP), 7, 3)
    assert full.shape == (3, 3 * ROW_GROUP) and 0 < full.min() and full.max() <= 1
    # Any slice, across row groups or with rows left out, draws the same values.
    for rows in (np.arange(4000, 9000), np.array([1, 5, ROW_GROUP - 1, ROW_GROUP, 11000])):
        np.testing.assert_array_equal(row_uniforms(rows, 7, 3), full[:, rows])
    assert row_uniforms(rows[:0], 7, 3).shape == (3, 0)
    # Streams and seeds are independent draws.
    assert abs(np.corrcoef(full[0], full[1])[0, 1]) < 0.05
    assert not np.array_equal(row_uniforms(np.arange(100), 8, 1)[0], full[0, :100])


def _indexed_sum(x, w, rows):
    """Rows seen (count, Σ global index, Σ draw) of one block: a RowKeyed block function."""
    return np.array([[rows.size, rows.sum(), row_uniforms(rows, 3, 1).sum()]])


@pytest.mark.parametrize("chunks", [100, 777, N])
def test_blocks_get_their_global_rows_also_grouped_and_with_rows_left_out(chunks):
    A = X.copy()
    A[[0, 5, 101, 2999]] = np.nan  # left out under nan_policy='omit'
    kept = np.flatnonzero(~np.isnan(A).any(axis=1))
    expect = [kept.size, kept.sum(), row_uniforms(kept, 3, 1).sum()]
    keyed = reduction.RowKeyed(_indexed_sum)
    with dask.config.set(GROUPED):  # small chunks grouped into 3 tasks
        for data in (A, chunked(A, chunks)):
            got = reduction.reduce_pass(data, None, keyed, 3, drop_nan_rows=True)
            np.testing.assert_allclose(got, expect, rtol=1e-12)
        assert reduction.group_small_chunks(chunked(A, 100), None)[0].numblocks[0] == 3


#: Dask config that groups the 100-row chunks of X into 3 tasks.
GROUPED = {reduction.MIN_TASK_BYTES_KEY: 4 * 2**20, reduction.MIN_TASKS_KEY: 3}


# ------------------------------------------------------------- the same model
@pytest.mark.parametrize("chunks", ["100", "777", "100-grouped"])
@pytest.mark.parametrize("name", MODELS)
def test_same_model_whatever_the_chunking(reference, name, chunks):
    grouped = GROUPED if chunks.endswith("grouped") else {}  # 30 chunks of 100 rows: 3 tasks
    data = chunked(X, int(chunks.split("-")[0]))
    with dask.config.set(grouped):
        assert_same_model(outputs(fit(name, data), X), reference[name])


@pytest.mark.parametrize("kind", ["numpy", "zarr", "xarray"])
@pytest.mark.parametrize("name", MODELS)
def test_same_model_whatever_the_input_type(reference, name, kind, tmp_path):
    if kind == "numpy":
        data = X
    elif kind == "zarr":
        path = tmp_path / "X.zarr"
        store = zarr.create_array(store=str(path), shape=X.shape, chunks=(500, 3), dtype=X.dtype)
        store[:] = X
        data = str(path)
    else:
        data = xr.DataArray(chunked(X, 640), dims=("time", "band"), coords={"band": list("abc")})
    model = fit(name, data)
    assert_same_model(outputs(model, X), reference[name])


@pytest.mark.parametrize("name", MODELS)
def test_float32_storage_gives_the_float64_model(reference, name):
    # The float32 fit's parameters are the float64 fit's, rounded to float32.
    for data in (X.astype(np.float32), chunked(X.astype(np.float32), 777)):
        assert_same_model(_rounded(outputs(fit(name, data), data)), _rounded(reference[name]))


def _rounded(out: dict) -> dict:
    return {
        k: v.astype(np.float32).astype(np.float64) if v.dtype.kind == "f" else v
        for k, v in out.items()
    }


@pytest.mark.parametrize("name", MODELS)
def test_no_weights_is_weights_of_one_bit_for_bit(name):
    for data in (X, chunked(X, 100)):
        none = outputs(fit(name, data), X)
        ones = outputs(fit(name, data, sample_weight=np.ones(N)), X)
        assert_same_model(ones, none, exact=True)


@pytest.mark.parametrize("name", MODELS)
def test_same_model_with_threads(reference, name):
    got = fit(name, chunked(X, 100), scheduler="threads")
    assert_same_model(outputs(got, X), reference[name])


@pytest.mark.slow
@pytest.mark.parametrize("n_workers", [1, 3])
def test_same_model_on_a_local_cluster(reference, n_workers):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=None) as lc,
        Client(lc) as client,
    ):
        assert len(client.scheduler_info()["workers"]) == n_workers
        for name in MODELS:
            got = fit(name, chunked(X, 100), scheduler=client)
            assert_same_model(outputs(got, X), reference[name])


def test_omitted_rows_keep_their_draws():
    # nan_policy='omit': rows holding NaN are left out where the blocks are
    # read; the others keep their global index, so the chunking still does
    # not matter.
    A = X.copy()
    A[np.arange(0, N, 7), 1] = np.nan
    for name in ("kmeans||", "kmeans++", "gmm-random"):
        make = MODELS[name]
        ref = fit_quiet(make().set_params(nan_policy="omit"), chunked(A, N))
        for data in (A, chunked(A, 100), chunked(A, 777)):
            got = fit_quiet(make().set_params(nan_policy="omit"), data)
            for p in PARAMS:
                if hasattr(ref, p):
                    np.testing.assert_allclose(getattr(got, p), getattr(ref, p), rtol=1e-10)


# ------------------------------------------------------------ zero weights
def test_zero_weight_rows_are_never_drawn():
    w = np.zeros(N)
    w[::60] = 1.0  # 50 rows of positive weight
    positive = X[w > 0]
    for data, weight in ((X, w), (chunked(X, 100), da.from_array(w, chunks=100))):
        # Asked for more rows than weigh anything: exactly those rows come back.
        rows = random_rows(data, 80, 0, sample_weight=weight)
        assert sorted(map(tuple, rows)) == sorted(map(tuple, positive))
        seeds = kmeans_plusplus(data, K, 0, sample_weight=weight)
        assert all((positive == s).all(axis=1).any() for s in seeds)


@pytest.mark.parametrize("make", [
    lambda start: KMeans(K, init=start, n_init=1, tol=0.0),
    lambda start: GaussianMixture(K, tol=0.0, max_iter=30, weights_init=np.full(K, 1 / K),
                                  means_init=start, precisions_init=np.stack([np.eye(3)] * K)),
])  # fmt: skip
def test_zero_weight_rows_count_for_nothing_from_a_given_start(make):
    rng = np.random.default_rng(1)
    w = rng.uniform(0.5, 2.0, N)
    w[rng.choice(N, 700, replace=False)] = 0.0
    start = X[np.flatnonzero(w)[:K]]
    with_zeros = fit_quiet(make(start), X, sample_weight=w)
    without = fit_quiet(make(start), X[w > 0], sample_weight=w[w > 0])
    for p in PARAMS:
        if hasattr(without, p):
            np.testing.assert_allclose(getattr(with_zeros, p), getattr(without, p), rtol=1e-10)
