"""Dask orchestration: compute counts, graph shape, rechunking, schedulers."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from helpers import SK_TYPES, CountComputes, assert_params_close, blobs, fit_quiet, init_params
from sklearn.mixture import GaussianMixture as SKGM

from dask_emk import GaussianMixture
from dask_emk.core import estep, mixture
from dask_emk.core.layout import StatsLayout
from dask_emk.engine import reduction
from dask_emk.engine.inputs import as_input
from dask_emk.models.anneal import draw_sample
from dask_emk.models.gmm import mixture_block
from dask_emk.models.seeding import random_rows

K = 3


@pytest.fixture(scope="module")
def X():
    return blobs(n=1000, d=3, K=K, seed=0)


def test_one_compute_per_em_iteration(X):
    dX = da.from_array(X, chunks=(97, -1))
    gm = GaussianMixture(K, max_iter=5, tol=0.0, **init_params(X, K, "full"))
    with dask.config.set(scheduler="sync"), CountComputes() as counter:
        fit_quiet(gm, dX)
    assert gm.n_iter_ == 5
    assert counter.count == 5


def test_sample_weight_costs_two_small_computes(X):
    # Dask sample weights are checked (min, sum, finite) in one small compute up
    # front, so a bad weight fails before the first EM pass, and their total
    # read once more for the rescale to ratios (models/base.ratio_weights):
    # 2 + max_iter computes.
    dX = da.from_array(X, chunks=(97, -1))
    w = da.ones(len(X), chunks=200)
    gm = GaussianMixture(K, max_iter=5, tol=0.0, **init_params(X, K, "diag"))
    gm.set_params(covariance_type="diag")
    with dask.config.set(scheduler="sync"), CountComputes() as counter:
        fit_quiet(gm, dX, sample_weight=w)
    assert counter.count == 7


def test_predict_is_lazy_until_computed(X):
    dX = da.from_array(X, chunks=(97, -1))
    gm = fit_quiet(GaussianMixture(K, max_iter=3, tol=0.0, **init_params(X, K, "full")), dX)
    with dask.config.set(scheduler="sync"), CountComputes() as counter:
        outs = [gm.predict(dX), gm.predict_proba(dX), gm.score_samples(dX)]
        assert counter.count == 0
        dask.compute(*outs)
    assert counter.count == 1


def test_large_precision_enters_graph_once():
    rng = np.random.default_rng(0)
    K_, d, n_blocks = 16, 100, 200
    Xb = da.from_array(rng.normal(size=(n_blocks * 5, d)), chunks=(5, d))
    A = rng.normal(size=(K_, d, d)) / d + np.eye(d)
    params = mixture.MixtureParams(
        means=rng.normal(size=(K_, d)),
        log_weights=np.log(np.full(K_, 1.0 / K_)),
        precisions_cholesky=np.triu(A),
        covariance_type="full",
        origin=np.zeros(d),
    )
    big = params.precisions_cholesky.nbytes
    assert big > 2**20  # over 1 MB: where one delayed key instead of a copy per task matters
    layout = StatsLayout.mixture(K_, d, "full")
    arr = reduction.block_stats_array(Xb, None, mixture_block, layout.size, params, layout)
    graph = dict(arr.__dask_graph__())
    assert len(graph) >= n_blocks
    sizes = {key: len(pickle.dumps(task)) for key, task in graph.items()}
    heavy = [key for key, size in sizes.items() if size >= big]
    assert len(heavy) == 1, f"{len(heavy)} tasks carry the precision"
    # every block task depends on that one key
    (param_key,) = heavy
    deps = arr.__dask_graph__().get_all_dependencies()
    blocks = [k for k in graph if k[0] == arr.name]
    assert len(blocks) == n_blocks
    for key in blocks:
        assert param_key in deps[key]
    assert sum(sizes.values()) < 2 * big
    # and the pass still computes the right numbers
    total = reduction.reduce_pass(Xb[:50], None, mixture_block, layout.size, params, layout)
    want = layout.pack(estep.estep_stats(np.asarray(Xb[:50]), None, params))[0]
    np.testing.assert_allclose(total, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


def test_feature_chunked_input_is_rechunked(X):
    dX = da.from_array(X, chunks=(97, 1))
    assert len(dX.chunks[1]) == 3
    gm = fit_quiet(GaussianMixture(K, max_iter=10, tol=0.0, **init_params(X, K, "full")), dX)
    ref = fit_quiet(GaussianMixture(K, max_iter=10, tol=0.0, **init_params(X, K, "full")), X)
    assert_params_close(gm, ref, rtol=1e-10)
    labels = gm.predict(dX)
    np.testing.assert_array_equal(labels.compute(), ref.predict(X))


@pytest.mark.parametrize("split_every", [2, 4, None])
def test_reduce_pass_dask_equals_numpy(X, split_every):
    init = init_params(X, K, "tied")
    gm = fit_quiet(GaussianMixture(K, covariance_type="tied", max_iter=1, **init), X)
    params = gm._kernel_params(gm._state_from_attributes())
    layout = StatsLayout.mixture(K, 3, "tied")
    w = np.random.default_rng(1).uniform(size=len(X))
    a = reduction.reduce_pass(X, w, mixture_block, layout.size, params, layout)
    b = reduction.reduce_pass(
        da.from_array(X, chunks=(97, -1)),
        da.from_array(w, chunks=97),
        mixture_block,
        layout.size,
        params,
        layout,
        split_every=split_every,
    )
    np.testing.assert_allclose(b, a, rtol=1e-11)


# ------------------------------------------------------------- grouped small chunks
def test_group_small_chunks_merges_runs_up_to_the_target():
    X = da.zeros((3210, 3), chunks=((30,) * 107, 3))
    w = da.ones(3210, chunks=((30,) * 107,))
    with dask.config.set({reduction.MIN_TASK_BYTES_KEY: 100 * 3 * 8}):  # 100 rows of 3 float64
        gX, gw = reduction.group_small_chunks(X, w)
        # Never fewer than 16 tasks: 600 rows stay in runs of 2 (60 >= 600 / 16).
        small = reduction.group_small_chunks(da.zeros((600, 3), chunks=(30, 3)), None)[0]
        big = da.zeros((1000, 3), chunks=(500, 3))
        assert reduction.group_small_chunks(big, None)[0] is big  # large chunks untouched
    assert gX.chunks[0] == (120,) * 26 + (90,)  # runs of 4 chunks, the rest last
    assert gw.chunks == (gX.chunks[0],)
    assert small.chunks[0] == (60,) * 10


@pytest.mark.parametrize("model", ["gmm-full", "kmeans"])
def test_grouped_chunks_give_the_ungrouped_result(X, model):
    """Grouping (97-row chunks merged into two tasks) vs none, with weights."""
    from dask_emk import KMeans

    dX = da.from_array(X, chunks=(97, -1))
    w = np.random.default_rng(3).uniform(0.5, 2.0, len(X))
    dw = da.from_array(w, chunks=97)

    def fit():
        if model == "kmeans":
            return KMeans(K, init=X[:K], max_iter=20, tol=0.0).fit(dX, sample_weight=dw)
        est = GaussianMixture(K, max_iter=10, tol=0.0, **init_params(X, K, "full"))
        return fit_quiet(est, dX, sample_weight=dw)

    ungrouped = fit()
    # 11 chunks of 97 rows -> 2 tasks
    with dask.config.set({reduction.MIN_TASK_BYTES_KEY: 4 * 2**20, reduction.MIN_TASKS_KEY: 2}):
        assert reduction.group_small_chunks(dX, dw)[0].numblocks[0] == 2
        grouped = fit()
    if model == "kmeans":
        np.testing.assert_allclose(grouped.cluster_centers_, ungrouped.cluster_centers_, rtol=1e-12)
        assert grouped.inertia_ == pytest.approx(ungrouped.inertia_, rel=1e-12)
        assert grouped.n_iter_ == ungrouped.n_iter_
    else:
        assert_params_close(grouped, ungrouped, rtol=1e-10)


# ----------------------------------------------------------------------- schedulers
def _scheduler_fit(X, ct):
    init = init_params(X, K, ct)
    gm = GaussianMixture(K, covariance_type=ct, max_iter=20, tol=0.0, **init)
    fit_quiet(gm, da.from_array(X, chunks=(97, -1)))
    sk = fit_quiet(SKGM(K, covariance_type=ct, max_iter=20, tol=0.0, **init), X)
    assert_params_close(gm, sk, rtol=1e-6)
    assert gm.n_iter_ == sk.n_iter_
    np.testing.assert_allclose(gm.lower_bounds_, sk.lower_bounds_, rtol=1e-9)
    return gm


@pytest.fixture(scope="module")
def reference_fits(X):
    with dask.config.set(scheduler="sync"):
        return {ct: _scheduler_fit(X, ct) for ct in SK_TYPES}


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
@pytest.mark.parametrize("ct", SK_TYPES)
def test_schedulers_agree(X, reference_fits, scheduler, ct):
    with dask.config.set(scheduler=scheduler):
        gm = _scheduler_fit(X, ct)
    assert_params_close(gm, reference_fits[ct], rtol=1e-10)


@pytest.fixture(scope="module")
def process_pool():
    # Without a pool the processes scheduler spawns (and re-imports everything in)
    # fresh worker processes on every compute, i.e. every EM iteration.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.mark.slow
@pytest.mark.parametrize("ct", SK_TYPES)
def test_process_scheduler_agrees(X, reference_fits, process_pool, ct):
    with dask.config.set(scheduler="processes", pool=process_pool):
        gm = _scheduler_fit(X, ct)
    assert_params_close(gm, reference_fits[ct], rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("ct", SK_TYPES)
def test_distributed_cluster_agrees(X, reference_fits, local_cluster, ct):
    from distributed import Client

    with Client(local_cluster) as client:
        gm = _scheduler_fit(X, ct)
        # the work really ran on the cluster's workers
        assert len(client.scheduler_info()["workers"]) == 2
        labels = gm.predict(da.from_array(X, chunks=(97, -1))).compute()
    assert_params_close(gm, reference_fits[ct], rtol=1e-10)
    np.testing.assert_array_equal(labels, reference_fits[ct].predict(X))


@pytest.mark.slow
def test_grouped_chunks_on_distributed_cluster(X, reference_fits, local_cluster):
    from distributed import Client

    # ~170-row tasks of 97-row chunks
    with dask.config.set({reduction.MIN_TASK_BYTES_KEY: 4096, reduction.MIN_TASKS_KEY: 1}):
        grouped = reduction.group_small_chunks(da.from_array(X, chunks=(97, -1)), None)[0]
        assert grouped.numblocks[0] == 6
        with Client(local_cluster):
            gm = _scheduler_fit(X, "full")
    assert_params_close(gm, reference_fits["full"], rtol=1e-10)


def corrupted_store(tmp_path, X):
    """X in a zarr store of 100-row chunks, rows 300-399 replaced by garbage bytes."""
    path = tmp_path / "X.zarr"
    z = zarr.create_array(store=str(path), shape=X.shape, chunks=(100, X.shape[1]), dtype=X.dtype)
    z[:] = X
    (path / "c" / "3" / "0").write_bytes(b"\x00garbage" * 40)
    return path


@pytest.mark.parametrize("what", ["anneal-sample", "random-rows", "gmm-score"])
def test_computes_outside_passes_name_a_broken_store(tmp_path, X, what):
    # These go through reduction.compute_one like the passes, which turns a
    # failing chunk read into a ValueError naming the store.
    dX = da.from_zarr(str(corrupted_store(tmp_path, X)))
    with pytest.raises(ValueError, match=r"reading zarr array .*X\.zarr failed: a chunk file"):
        if what == "anneal-sample":
            draw_sample(as_input(dX), None, 500, np.random.RandomState(0), None)
        elif what == "random-rows":
            random_rows(dX, X.shape[0], np.random.RandomState(0))  # every row: every chunk
        else:
            fit_quiet(GaussianMixture(K, max_iter=2), X).score(dX)
