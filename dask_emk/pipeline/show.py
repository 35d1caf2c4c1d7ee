"""A summary of a results store (``dask-emk show``): text tables, or JSON (``--json``)."""

from __future__ import annotations

import json
import os
from typing import Any

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
from dask_emk.models import export
from dask_emk.pipeline.config import PipelineError

GROUPS = ("anneal", "anneal_path", "truth")

#: The parameters shown, each with the names stores written before the common
#: export schema (dask_emk.models.export.SCHEMA) gave it: KMeans ``centers``
#: along ``cluster``, AnnealedGaussianMixture ``cluster_centers`` and
#: ``cluster_weights`` (whose root also held the path's ``means``/``weights``
#: along ``step``).
SHOWN = {"weights": ("cluster_weights",), "means": ("centers", "cluster_centers"), "sizes": ()}


#: The per-sample outputs a results store may hold (dask_emk.models.export.OUTPUTS), and
#: the names stores of earlier versions gave them.
PER_SAMPLE = {"label": ("labels",), "responsibility": ("responsibilities",),
              "log_density": (), "imputed": ()}  # fmt: skip


def describe(results: str | os.PathLike) -> dict:
    """What a results store (path or URL) holds, as plain JSON values: model,
    convergence, objective (first, last, units), parameters per component,
    per-sample outputs, groups, model config."""
    results = normalize_location(results)
    check_results_store(results)
    ds = xr.open_zarr(open_store(results), consolidated=False)
    attrs = ds.attrs
    config = json.loads(attrs.get("pipeline_json", "{}"))
    info = {
        "results": str(results),
        "model": attrs.get("model"),
        "dask_emk_version": attrs.get("dask_emk_version"),
        "input": attrs.get("input"),
        "n_iter": _plain(attrs.get("n_iter")),
        "converged": _plain(attrs.get("converged")),
        "fit_seconds": _plain(attrs.get("fit_seconds")),
        "objective": None,
    }
    for name in ("history_lower_bound", "history_inertia", "history_objective"):
        values = ds[name].values if name in ds else np.array([])
        if values.size:
            standardized = bool(config.get("preprocess", {}).get("standardize"))
            info["objective"] = {
                "name": name[8:], "first": float(values[0]), "last": float(values[-1]),
                "units": export.objective_units(name[8:], standardized),
            }  # fmt: skip
    info.update(parameters(ds))
    # Per-sample outputs lie along `sample`, or on the grid of xarray input.
    info["per_sample"] = {}
    for name, old_names in PER_SAMPLE.items():
        stored = next((n for n in (name, *old_names) if n in ds.data_vars), None)
        if stored is not None:
            info["per_sample"][name] = dict(ds[stored].sizes)
            if stored != name:
                info["earlier_names"].append(f"{stored} ({name})")
    info["groups"] = [g for g in GROUPS if location_exists(f"{results}/{g}/zarr.json")]
    info["model_config"] = config.get("model", {})
    return info


def summary(results: str | os.PathLike) -> list[str]:
    """Lines describing a results store (path or URL): :func:`describe` as text tables."""
    info = describe(results)
    lines = [
        f"{info['results']}: {info['model'] or '?'} (dask_emk {info['dask_emk_version'] or '?'})",
        f"input: {info['input'] or '?'}",
        f"iterations: {info['n_iter']}, converged: {info['converged']}, "
        f"fit {info['fit_seconds'] if info['fit_seconds'] is not None else float('nan'):.1f} s",
    ]
    objective = info["objective"]
    if objective:
        lines.append(f"{objective['name'].replace('_', ' ')}: first {objective['first']:.8g}, "
                     f"last {objective['last']:.8g} ({objective['units']})")  # fmt: skip
    lines.extend(component_table(info))
    if info["earlier_names"]:
        lines.append(
            f"names of an earlier dask_emk: {', '.join(info['earlier_names'])}; a new run "
            "writes the current export schema"
        )
    outputs = [f"{name} ({' × '.join(f'{d} {n}' for d, n in sizes.items())})"
               for name, sizes in info["per_sample"].items()]  # fmt: skip
    lines.append(f"per-sample outputs: {', '.join(outputs) or 'none'}")
    lines.append(f"groups: {', '.join(info['groups']) or 'none'}")
    lines.append("model config:")
    lines.extend(
        f"  {key} = {json.dumps(value)}" for key, value in sorted(info["model_config"].items())
    )
    return lines


def component_table(info: dict) -> list[str]:
    """The parameters as a table: one row per component, a column per weight, size and
    mean coordinate (named by feature)."""
    rows = info["components"]
    if not rows:
        return []
    columns = [c for c in ("weight", "size") if c in rows[0]]
    features = info["features"]
    header = ["component", *columns, *(f"mean {f}" for f in features)]
    body = [[str(r["component"]), *(_cell(r[c]) for c in columns), *(_cell(m) for m in r["mean"])]
            for r in rows]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
            for row in [header, *body]]  # fmt: skip


def _cell(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:.6g}"


def _plain(value):
    """An attribute as a JSON value (numpy scalars to Python's)."""
    return value.item() if isinstance(value, np.generic) else value


def parameters(ds: xr.Dataset) -> dict:
    """The final model's weights, sizes and means per component, the feature names,
    and the names an earlier dask_emk stored them under."""
    found, earlier = {}, []
    for name, old_names in SHOWN.items():
        stored = next((n for n in (name, *old_names) if n in ds and "step" not in ds[n].dims), None)
        if stored is None:
            continue
        if stored != name:
            earlier.append(f"{stored} ({name})")
        found[name] = ds[stored]
    means = found.get("means")
    if means is None:
        return {"components": [], "features": [], "earlier_names": earlier}
    feature_dim = means.dims[1]
    features = [str(f) for f in (ds[feature_dim].values if feature_dim in ds.coords
                                 else range(means.shape[1]))]  # fmt: skip
    rows = []
    for k in range(means.shape[0]):
        row: dict[str, Any] = {"component": k}
        for name, key in (("weights", "weight"), ("sizes", "size")):
            if name in found:
                row[key] = float(found[name].values[k])
        row["mean"] = [float(v) for v in means.values[k]]
        rows.append(row)
    return {"components": rows, "features": features, "earlier_names": earlier}


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
