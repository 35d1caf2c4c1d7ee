"""What a Dask worker imports to run the package's tasks, and the lazy top-level exports.

A worker imports the module of every function it unpickles (and, first,
``dask_emk/__init__.py``). The block functions of every fit must not pull
scikit-learn into each worker process (~50 MiB RSS each).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import dask_emk

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
