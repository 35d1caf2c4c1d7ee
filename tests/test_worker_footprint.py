"""A Dask worker's footprint: what it imports to run the package's tasks, and the
memory a seeding kernel takes.

A worker imports the module of every function it unpickles (and, first,
``dask_emk/__init__.py``). The block functions of every fit must not pull
scikit-learn into each worker process (~50 MiB RSS each); the lazy top-level
exports keep ``from dask_emk import GaussianMixture`` working.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import dask_emk
from dask_emk.core import seeding

WORKER_SIDE = (
    "dask_emk.engine.batch",
    "dask_emk.engine.mixture_passes",
    "dask_emk.engine.passes",
    "dask_emk.engine.reduction",
)


def test_worker_side_modules_do_not_import_the_estimators_or_sklearn():
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in WORKER_SIDE)
        + "print(sorted(m for m in sys.modules\n"
        "             if m == 'sklearn' or m.startswith('dask_emk.models')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_lazy_exports_are_the_estimator_classes():
    from dask_emk.models.gmm import GaussianMixture
    from dask_emk.models.ic import GaussianMixtureIC

    namespace: dict = {}
    exec("from dask_emk import *", namespace)
    assert set(dask_emk.__all__) <= set(namespace)
    assert namespace["GaussianMixture"] is GaussianMixture
    assert dask_emk.GaussianMixtureIC is GaussianMixtureIC
    assert set(dask_emk.__all__) <= set(dir(dask_emk))


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'GaussianMixtures'"):
        dask_emk.GaussianMixtures  # noqa: B018


def test_seeding_distances_by_sub_blocks_match_the_whole_matrix_and_stay_small():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((100_000, 8))
    yy = np.einsum("ij,ij->i", Y, Y)
    M = rng.standard_normal((160, 8))  # k-means|| candidates after 5 rounds of 2K, K = 16
    whole = np.maximum((Y @ (-2.0 * M.T) + np.einsum("ij,ij->i", M, M)).min(axis=1) + yy, 0.0)
    tracemalloc.start()
    try:
        got = seeding.nearest_distance(Y, yy, M)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, whole)
    # The whole (n, c) matrix is 128 MB here; the sub-blocks need the output and ~2 MiB.
    assert peak < Y.shape[0] * 8 + 8 * 2**20, peak


@pytest.mark.slow
def test_workers_running_every_estimator_never_import_sklearn():
    """Fits, predictions and the annealing on worker processes: their tasks'
    functions come from the engine, so no worker imports scikit-learn or the
    estimators, and the results equal the same calls on the synchronous scheduler."""
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    from dask_emk import AnnealedGaussianMixture, GaussianMixture, KMeans

    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(c, 1.0, (2000, 2)) for c in (-6.0, 0.0, 6.0)])
    Xd = da.from_array(X, chunks=(1500, 2))
    makers = (AnnealedGaussianMixture, KMeans, GaussianMixture)

    def run_all():
        fitted = [make(3, random_state=0).fit(Xd) for make in makers]
        outputs = [model.predict(Xd).compute() for model in fitted]
        outputs.append(fitted[1].transform(Xd).compute())
        outputs.append(fitted[2].predict_proba(Xd).compute())
        return outputs

    with dask.config.set(scheduler="sync"):
        expected = run_all()
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        got = run_all()
        loaded = client.run(
            lambda: sorted(
                m for m in sys.modules if m == "sklearn" or m.startswith("dask_emk.models")
            )
        )
    assert list(loaded.values()) == [[]]
    for theirs, ours in zip(got, expected, strict=True):
        np.testing.assert_array_equal(theirs, ours)
