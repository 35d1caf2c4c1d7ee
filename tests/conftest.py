"""Suite-wide settings."""

import pytest

from dask_emk.engine import reduction


@pytest.fixture(autouse=True, scope="session")
def ungrouped_chunks():
    """Keep every test's row chunks as given (no grouping of small chunks).

    Most tests use small, awkward chunks on purpose, to exercise block
    boundaries and the tree reduction; the engine would otherwise merge them
    into one task. Session scope, so module-scoped reference fits see it too.
    tests/test_engine.py checks the grouping itself.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reduction, "MIN_TASK_BYTES", 0)
        yield
