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
