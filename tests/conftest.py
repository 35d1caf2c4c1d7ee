"""Suite-wide settings."""

import dask
import pytest

from dask_emk.engine import reduction


@pytest.fixture(autouse=True, scope="session")
def ungrouped_chunks():
    """Keep every test's row chunks as given (no grouping of small chunks).

    Most tests use small, awkward chunks on purpose, to exercise block
    boundaries and the tree reduction; the engine would otherwise merge them
    into one task. Through the engine's own Dask config key, as a user would;
    session scope, so module-scoped reference fits see it too.
    tests/test_engine.py checks the grouping itself.
    """
    with dask.config.set({reduction.MIN_TASK_BYTES_KEY: 0}):
        yield


@pytest.fixture(scope="module")
def local_cluster():
    """A LocalCluster of 2 single-threaded worker processes, one per test module."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as lc:
        yield lc
