"""Many models per pass (engine/batch.py): n_init in shared passes, batches of mixed fits."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from helpers import CountComputes, fit_quiet
from sklearn.datasets import make_blobs

from dask_emk import GaussianMixture, KMeans
from dask_emk.core.layout import StatsLayout
from dask_emk.engine import batch
from dask_emk.engine.passes import assign_pass, assign_request
from dask_emk.models.gmm import mixture_block

K = 5


@pytest.fixture(scope="module")
def X():
    X, _ = make_blobs(1200, n_features=2, centers=K, cluster_std=2.0, random_state=1)
    return X


@pytest.fixture(scope="module")
def Xd(X):
    return da.from_array(X, chunks=(200, -1))


@pytest.fixture(autouse=True)
def threads():
    with dask.config.set(scheduler="threads"):
        yield


def sequential(make, data, n):
    """n single fits one after the other drawing from one RandomState (as n_init
    does), and the computes each took."""
    rng = np.random.RandomState(0)
    fits, counts = [], []
    for _ in range(n):
        with CountComputes() as counter:
            fits.append(fit_quiet(make(1, rng), data))
        counts.append(counter.count)
    return fits, counts


def computes(make, data, n_init) -> tuple[int, object]:
    with CountComputes() as counter:
        model = fit_quiet(make(n_init, 0), data)
    return counter.count, model


@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_gmm_n_init_is_the_best_sequential_fit_and_costs_no_more_passes(Xd, init):
    def make(n, rs):
        return GaussianMixture(K, n_init=n, random_state=rs, init_params=init, max_iter=30)

    singles, counts = sequential(make, Xd, 4)
    bounds = np.array([s.lower_bound_ for s in singles])
    assert np.ptp(bounds) > 1e-6, "inits should reach different optima for this test to bite"
    best = singles[int(np.argmax(bounds))]
    nn, multi = computes(make, Xd, 4)
    assert multi.lower_bound_ == best.lower_bound_
    assert multi.lower_bounds_ == best.lower_bounds_
    np.testing.assert_array_equal(multi.means_, best.means_)
    np.testing.assert_array_equal(multi.covariances_, best.covariances_)
    # All inits advance in lockstep: the batch costs the passes of its longest run.
    assert nn == max(counts)


@pytest.mark.parametrize("init", ["k-means||", "k-means++"])
def test_kmeans_n_init_is_the_best_sequential_fit_in_few_passes(Xd, init):
    def make(n, rs):
        return KMeans(K, n_init=n, random_state=rs, init=init, max_iter=100)

    singles, counts = sequential(make, Xd, 4)
    inertias = np.array([s.inertia_ for s in singles])
    best = singles[int(np.argmin(inertias))]
    nn, multi = computes(make, Xd, 4)
    assert multi.inertia_ == best.inertia_
    np.testing.assert_array_equal(multi.cluster_centers_, best.cluster_centers_)
    assert multi.inertia_history_ == best.inertia_history_
    assert nn == max(counts)


def test_n_init_ten_at_most_1_3x_the_computes_of_one_same_max_iter(Xd):
    # tol=0: every run makes max_iter iterations, so the ten runs in lockstep
    # cost the passes of one (with a tol they cost those of the longest run).
    for make in (
        lambda n, rs: GaussianMixture(
            K, n_init=n, random_state=rs, max_iter=20, tol=0, init_params="k-means++"
        ),
        lambda n, rs: KMeans(K, n_init=n, random_state=rs, max_iter=20, tol=0),
    ):
        n1, _ = computes(make, Xd, 1)
        n10, _ = computes(make, Xd, 10)
        assert n10 <= 1.3 * n1, (n1, n10)


def test_batch_pass_equals_passes_alone(X, Xd):
    """Mixed requests (Lloyd with top-m lists, E-step) share a pass and give each its own sums."""
    centers = X[:K].copy()
    origin = centers.mean(axis=0)
    gm = fit_quiet(GaussianMixture(3, max_iter=2, random_state=0), X)
    params = gm._kernel_params(gm._state_from_attributes())
    layout = StatsLayout.mixture(3, 2, "full")
    em = batch.Pass(layout, mixture_block, (params, layout))
    lloyd = assign_request(centers, origin, n_far=K - 1)
    for data in (X, Xd):
        with CountComputes() as counter:
            got = batch.batch_pass(data, None, [lloyd, em, lloyd])
        assert counter.count == (1 if data is Xd else 0)
        alone = assign_pass(data, None, centers, origin, n_far=K - 1)
        em_alone = batch.batch_pass(data, None, [em])[0]
        for key, value in alone.items():
            np.testing.assert_array_equal(got[0][key], value)
            np.testing.assert_array_equal(got[2][key], value)
        # numpy reference for the E-step: log-likelihood of the data at gm.
        np.testing.assert_allclose(got[1]["loglik"], gm.score(X) * len(X), rtol=1e-10)
        for key, value in em_alone.items():
            np.testing.assert_array_equal(got[1][key], value)


def test_batch_reads_requested_rows_once_and_raises_on_nan(X, Xd):
    def wants(index):
        rows = yield batch.Rows(np.asarray(index))
        return rows

    with CountComputes() as counter:
        got = batch.Batch(Xd).run([wants([5, 1100]), wants([7]), wants([1100, 1])])
    assert counter.count == 1
    for rows, index in zip(got, ([5, 1100], [7], [1100, 1]), strict=True):
        np.testing.assert_array_equal(rows, X[index])
    bad = X.copy()
    bad[234] = np.nan
    layout = StatsLayout.mixture(1, 2, "full")
    gm = fit_quiet(GaussianMixture(1, max_iter=1), X)
    em = batch.Pass(layout, mixture_block, (gm._kernel_params(gm._state_from_attributes()), layout))
    with pytest.raises(ValueError, match=r"NaN or infinity in 1 row"):
        batch.batch_pass(da.from_array(bad, chunks=(200, -1)), None, [em, em])


def test_converged_fits_leave_the_batch_and_progress_says_which_run(Xd, capsys):
    seen = []
    model = GaussianMixture(
        K, n_init=4, random_state=0, max_iter=60, tol=1e-4, verbose=1, verbose_interval=1,
        callback=lambda m, info: seen.append((info["init"], info["iteration"], info["running"])),
    )  # fmt: skip
    fit_quiet(model, Xd)
    for init, _, running in seen:
        assert init in running
    sets = [set(running) for _, _, running in seen]
    assert all(later <= earlier for earlier, later in zip(sets, sets[1:], strict=False))
    assert sets[0] == {0, 1, 2, 3} and len(sets[-1]) < 4, "runs should stop at different times"
    for init in {0, 1, 2, 3} - sets[-1]:
        # Out of the batch only after its last iteration.
        last = max(i for i, (j, _, _) in enumerate(seen) if j == init)
        first_without = min(i for i, s in enumerate(sets) if init not in s)
        assert last < first_without
    out = capsys.readouterr().out
    assert "init 0; running: 0, 1, 2, 3" in out


def test_m_steps_between_passes_run_with_one_blas_thread(Xd):
    """A second OpenBLAS thread woken by the client's M-step spins on a core
    while the next pass runs; the limit holds for the whole batch and is
    lifted after it."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    seen = []
    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        model = GaussianMixture(
            K, max_iter=3, tol=0.0, random_state=0, callback=lambda *_: seen.append(blas_threads())
        )
        with dask.config.set(scheduler="sync"):
            fit_quiet(model, Xd)
        after = blas_threads()
    assert len(seen) == 3 and all(threads == {1} for threads in seen), seen
    assert after == before  # {2} where OpenBLAS may run two threads
