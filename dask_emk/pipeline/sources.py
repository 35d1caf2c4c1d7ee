"""Pipeline inputs: a zarr store array, a small CSV file, or a generated mixture.

Every input becomes a lazy ``xarray.DataArray`` with dims (sample, feature),
chunked along samples only, plus the generator's true parameters when the
store holds them. Checks are metadata-only and raise
:class:`dask_emk.pipeline.config.PipelineError` naming the fix.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from dask_emk.engine.inputs import as_input
from dask_emk.engine.locations import is_url, normalize_location, open_node
from dask_emk.pipeline.config import PipelineError, not_utf8
from dask_emk.pipeline.generate import (
    MixtureTruth,
    random_mixture,
    truth_of,
    write_mixture_zarr,
)
from dask_emk.pipeline.outputs import GENERATED, claim, written_by_dask_emk

TRUTH_ARRAYS = ("weights", "means", "covariances")


@dataclass
class Source:
    """A pipeline's input data.

    Attributes
    ----------
    X : xarray.DataArray (sample, feature), dask-backed
    truth : MixtureTruth or None
    description : str
    """

    X: xr.DataArray
    truth: MixtureTruth | None
    description: str


def check_input(cfg: dict) -> None:
    """Fail early (before a scheduler starts or anything is written) on bad input."""
    if cfg["store"] is not None:
        open_source(cfg)
    elif cfg["csv"] is not None:
        read_csv(cfg["csv"], cfg["columns"])


def open_source(cfg: dict, echo=print) -> Source:
    """The pipeline's input as a :class:`Source`; generates the data if asked to."""
    if cfg["generate"] is not None:
        store, array = ensure_generated(cfg["generate"], echo), "X"
    elif cfg["csv"] is not None:
        values, names = read_csv(cfg["csv"], cfg["columns"])
        X = xr.DataArray(da.from_array(values, chunks=(-1, -1)), dims=("sample", "feature"))
        X = X.assign_coords(feature=np.asarray(names, dtype=str))
        return Source(X, None, f"{cfg['csv']} ({values.shape[0]} rows, columns {names})")
    else:
        store, array = cfg["store"], cfg["array"]
    arr = open_array(store, array)
    try:
        as_input(arr, name=f"input {store}/{arr.path}")
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    X = xr.DataArray(da.from_zarr(arr), dims=("sample", "feature"))
    description = f"{store}/{arr.path} {arr.shape} {arr.dtype}, chunks {arr.chunks}"
    return Source(X, store_truth(store), description)


def open_array(store: str, array: str | None) -> zarr.Array:
    """The input array of a zarr store (local path or URL), with errors that name the fix."""
    if not is_url(store) and not os.path.exists(normalize_location(store)):
        raise PipelineError(
            f"input store {store!r} does not exist; check input.store (or create one "
            f"with `dask-emk generate {store} --n ... --d ... --k ...`)."
        )
    try:
        node = open_node(store)
    except ValueError as exc:
        raise PipelineError(f"input: {exc}") from None
    prefix = ""
    if array is not None:
        if isinstance(node, zarr.Array):
            raise PipelineError(
                f"store {store!r} is itself an array, with no array {array!r} in it; "
                f"name the store alone (`dask-emk fit {store}`; in a pipeline: drop input.array)."
            )
        found = node.get(array)
        if found is None:
            paths = _array_paths(node)
            raise PipelineError(
                f"array {array!r} not found in store {store!r}, which holds {paths}; "
                f"{_name_one(store, paths)}"
            )
        node, prefix = found, f"{array}/"
    if isinstance(node, zarr.Array):
        return node
    paths = _array_paths(node)
    if len(paths) == 1:
        return node[paths[0]]
    where = f"{store}/{prefix}".rstrip("/")
    if not paths:
        raise PipelineError(f"store {where!r} holds no arrays; pass the store that holds the data.")
    paths = [prefix + p for p in paths]
    raise PipelineError(f"store {where!r} holds several arrays, {paths}; {_name_one(store, paths)}")


def _array_paths(group: zarr.Group) -> list[str]:
    """Paths of all arrays in a zarr group (nested groups included)."""
    return sorted(path for path, member in group.members(max_depth=None)
                  if isinstance(member, zarr.Array))  # fmt: skip


def _name_one(store: str, paths: list[str]) -> str:
    """How to name one of ``paths``, in the CLI's and a pipeline's terms."""
    if not paths:
        return "pass the store that holds the data."
    return (
        f"name the array to fit, e.g. `dask-emk fit {store}/{paths[0]}` "
        f"(in a pipeline: input.array = {paths[0]!r})."
    )


def store_truth(store: str) -> MixtureTruth | None:
    """True parameters when the store was made by the generator, else None."""
    group = open_node(store)
    if isinstance(group, zarr.Group) and all(name in group for name in TRUTH_ARRAYS):
        return truth_of(group)
    return None


def ensure_generated(gen: dict, echo=print) -> str:
    """Write the generated mixture store unless an identical one exists; its path.

    A different store at the path is replaced only if ``generate`` wrote it
    (:mod:`dask_emk.pipeline.outputs`); the path is locked while it is checked and written.
    """
    path = gen["path"]
    with claim(path, GENERATED, where="input.generate.path") as notes:
        for note in notes:
            echo(f"input: {note}")
        if _generated_matches(path, gen):
            echo(f"input: reusing generated {path}")
            return path
        start = time.perf_counter()
        write_mixture_zarr(
            path, gen["n"], _generated_truth(gen), chunk_rows=gen["chunk_rows"],
            dtype=gen["dtype"], seed=gen["seed"], overwrite=True,
        )  # fmt: skip
    echo(f"input: generated {gen['n']:,} rows to {path} in {time.perf_counter() - start:.1f} s")
    return path


def _generated_truth(gen: dict) -> MixtureTruth:
    return random_mixture(gen["d"], gen["k"], separation=gen["separation"], seed=gen["seed"])


def _generated_matches(path: str, gen: dict) -> bool:
    """True if ``path`` is a store ``generate`` wrote with exactly these settings."""
    if not written_by_dask_emk(path, GENERATED):
        return False
    try:
        group = open_node(path)
        X, attrs, stored = group["X"], dict(group.attrs), truth_of(group)
    except Exception:  # arrays missing or unreadable: regenerate
        return False
    truth = _generated_truth(gen)
    return (
        attrs.get("n_samples") == gen["n"]
        and attrs.get("seed") == gen["seed"]
        and X.chunks[0] == gen["chunk_rows"]
        and str(X.dtype) == gen["dtype"]
        # The truth follows from d, k, separation and seed: compare it, not settings.
        and all(
            np.array_equal(getattr(stored, name), getattr(truth, name)) for name in TRUTH_ARRAYS
        )
    )


def read_csv(path: str, columns: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """A small numeric CSV file with a header row, in memory: (values, column names)."""
    if not os.path.exists(path):
        raise PipelineError(f"input csv {path!r} does not exist; check input.csv.")
    if os.path.getsize(path) == 0:
        raise PipelineError(f"input csv {path} is empty; write a header row and the data.")
    try:
        table = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8(f"input csv {path}", exc) from None
    except ValueError as exc:  # numpy: rows with a different number of columns
        raise PipelineError(
            f"input csv {path} is not a table: {' '.join(str(exc).split())}; fix the file."
        ) from None
    names = [n.strip('"') for n in table.dtype.names]
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise PipelineError(
                f"columns {missing} not in {path} (it has {names}); fix input.columns."
            )
    chosen = columns or names
    values = np.column_stack([table[table.dtype.names[names.index(c)]] for c in chosen])
    if not np.isfinite(values).all():
        raise PipelineError(f"{path} has empty or non-numeric values; clean the file.")
    return values, chosen
