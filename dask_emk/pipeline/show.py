"""A printed summary of a results store (``dask-emk show``)."""

from __future__ import annotations

import json
import os

import numpy as np
import xarray as xr
import zarr

from dask_emk.engine.locations import (
    check_reachable,
    is_url,
    location_exists,
    normalize_location,
    open_node,
    open_store,
)
from dask_emk.pipeline.config import PipelineError

GROUPS = ("anneal", "anneal_path", "truth")

#: The parameters shown, each with the names stores written before the common
#: export schema (dask_emk.models.export.SCHEMA) gave it: KMeans ``centers``
#: along ``cluster``, AnnealedGaussianMixture ``cluster_centers`` and
#: ``cluster_weights`` (whose root also held the path's ``means``/``weights``
#: along ``step``).
SHOWN = {"weights": ("cluster_weights",), "means": ("centers", "cluster_centers"), "sizes": ()}


#: The per-sample outputs a results store may hold.
PER_SAMPLE = ("labels", "responsibilities", "log_density")


def summary(results: str | os.PathLike) -> list[str]:
    """Lines describing a results store (path or URL): model, convergence, parameters, outputs."""
    results = normalize_location(results)
    check_results_store(results)
    ds = xr.open_zarr(open_store(results), consolidated=False)
    attrs = ds.attrs
    lines = [
        f"{results}: {attrs.get('model', '?')} (dask_emk {attrs.get('dask_emk_version', '?')})",
        f"input: {attrs.get('input', '?')}",
        f"iterations: {attrs.get('n_iter', '?')}, converged: {attrs.get('converged', '?')}, "
        f"fit {attrs.get('fit_seconds', float('nan')):.1f} s",
    ]
    for name in ("history_lower_bound", "history_inertia", "history_objective"):
        if name not in ds:
            continue
        values = ds[name].values
        if values.size:
            lines.append(f"{name[8:]}: first {values[0]:.8g}, last {values[-1]:.8g}")
    lines.extend(parameter_lines(ds))
    # Per-sample outputs lie along `sample`, or on the grid of xarray input.
    per_sample = [f"{v} {dict(ds[v].sizes)}" for v in PER_SAMPLE if v in ds.data_vars]
    lines.append(f"per-sample outputs: {', '.join(per_sample) or 'none'}")
    groups = [g for g in GROUPS if location_exists(f"{results}/{g}/zarr.json")]
    lines.append(f"groups: {', '.join(groups) or 'none'}")
    config = json.loads(attrs.get("pipeline_json", "{}"))
    lines.append(f"model config: {json.dumps(config.get('model', {}), sort_keys=True)}")
    return lines


def parameter_lines(ds: xr.Dataset) -> list[str]:
    """The final model's weights, means and sizes, under the names they are stored as."""
    lines, earlier = [], []
    for name, old_names in SHOWN.items():
        stored = next((n for n in (name, *old_names) if n in ds and "step" not in ds[n].dims), None)
        if stored is None:
            continue
        if stored != name:
            earlier.append(f"{stored} ({name})")
        text = np.array2string(ds[stored].values, precision=4, suppress_small=True)
        lines.append(f"{stored} {dict(ds[stored].sizes)}:")
        lines.extend("  " + line for line in text.splitlines())
    if earlier:
        lines.append(
            f"names of an earlier dask_emk: {', '.join(earlier)}; a new run writes the "
            "current export schema"
        )
    return lines


def check_results_store(path: str) -> None:
    """Raise unless ``path`` is a results store (a zarr group a run wrote)."""
    fix = "pass the output.results path of a run (the --out of dask-emk fit)."
    if is_url(path):
        check_reachable(path)
    if not location_exists(f"{path}/zarr.json"):
        raise PipelineError(f"{path} is not a dask-emk results store; {fix}")
    node = open_node(path)
    if isinstance(node, zarr.Array):
        raise PipelineError(f"{path} is a zarr array (input data?), not a results store; {fix}")
    if "dask_emk_version" not in node.attrs:
        arrays = sorted(name for name, _ in node.arrays())
        raise PipelineError(
            f"{path} is a zarr store (arrays {arrays}) that no dask-emk run wrote, not a "
            f"results store; {fix}"
        )
