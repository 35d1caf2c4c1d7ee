"""The public API is annotated, so the type check in the test command covers it.

mypy checks the bodies of every module; these are the signatures it cannot ask
for module by module without annotating each private helper too.
"""

import inspect

import pytest

import dask_emk


def _public_methods(cls):
    """The public methods that cls defines or inherits from this package."""
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if not name.startswith("_") and member.__module__.startswith("dask_emk."):
            yield name, member


@pytest.mark.parametrize("name", [name for name in dask_emk.__all__ if name[0].isupper()])
def test_public_methods_are_annotated(name):
    cls = getattr(dask_emk, name)
    missing = []
    for method_name, method in _public_methods(cls):
        params = list(inspect.signature(method).parameters.values())[1:]  # past self
        unannotated = [p.name for p in params if p.annotation is inspect.Parameter.empty]
        if unannotated or "return" not in method.__annotations__:
            missing.append(f"{method_name}({', '.join(unannotated)})")
    assert not missing, f"{name}: annotate {', '.join(missing)}"
