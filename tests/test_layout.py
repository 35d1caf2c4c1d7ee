"""The package's layers, checked from its source: what each subpackage may import.

- ``dask_emk.core`` is the numeric core: numpy, scipy and numba only, and
  nothing from the layers above it (no dask, distributed, xarray or zarr);
- no import cycle between the package's modules (imports inside functions
  count too: a lazy import that closes a cycle is still a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dask_emk"
FORBIDDEN_IN_CORE = ("dask", "distributed", "xarray", "zarr", "fsspec", "s3fs", "pandas")
#: Which layers each layer may import (its own included).
ALLOWED_LAYERS = {
    "core": {"core"},
    "engine": {"core", "engine"},
    "models": {"core", "engine", "models"},
    "pipeline": {"core", "engine", "models", "pipeline"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:``: imports
    for annotations only never run, so they close no cycle at run time."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in _runtime_nodes_of(child))
            continue
        yield from _runtime_nodes_of(node)


def _runtime_nodes_of(node: ast.AST):
    yield node
    yield from _runtime_nodes(node)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (module level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from package import module` imports the module
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {
    name: {m for m in imports_of(path) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED_LAYERS else None


def test_every_module_is_in_a_layer():
    top = {"dask_emk", "dask_emk.__main__", "dask_emk._version", "dask_emk._logging"}
    strays = [n for n in MODULES if layer(n) is None and n not in top and n.count(".") > 0]
    strays = [n for n in strays if n.split(".")[1] not in ALLOWED_LAYERS]
    assert not strays, f"modules outside core/engine/models/pipeline: {strays}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) == "core"))
def test_numeric_core_imports_no_dask_xarray_or_zarr(name):
    roots = {m.split(".")[0] for m in imports_of(MODULES[name])}
    assert not roots & set(FORBIDDEN_IN_CORE), (name, sorted(roots & set(FORBIDDEN_IN_CORE)))


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n)))
def test_layers_import_only_downwards(name):
    used = {layer(m) for m in GRAPH[name] if layer(m)}
    assert used <= ALLOWED_LAYERS[layer(name)], (name, sorted(used))


def test_no_import_cycle():
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    # the package __init__ re-exports the estimators; importing it from a
    # submodule is the only way to form a cycle through it
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_the_package():
    # a scan that found nothing would pass every check above
    assert sum(layer(n) == "core" for n in MODULES) >= 5
    assert "dask_emk.engine.reduction" in GRAPH["dask_emk.engine.passes"]
