"""``dask-emk predict``: a model file applied to a store, its outputs written on the store's grid.

The input is what a fit accepts: a 2-D zarr array (``store.zarr/X``), or an
xarray store whose variables are the model's features (on a grid, with gaps
under the model's ``nan_policy``), at a path or an object-store URL. The
outputs (:data:`dask_emk.models.export.OUTPUTS`) are lazy until they are written: ``to_zarr``
computes them chunk by chunk on the chosen scheduler, on the input's chunks.
They are written as ``run`` writes its results
(:func:`dask_emk.pipeline.results.write_results`: checked and locked by
:mod:`dask_emk.pipeline.outputs`, built aside and published whole, replacing
only a store dask-emk wrote), with consolidated metadata and CF attributes.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import xarray as xr
import zarr
from sklearn.pipeline import Pipeline

from dask_emk._version import __version__
from dask_emk.engine.locations import open_node, open_store
from dask_emk.engine.storage import checked_xarray, read_zarr
from dask_emk.engine.stored import feature_variables
from dask_emk.models import export
from dask_emk.models.persist import load
from dask_emk.pipeline.outputs import RESULTS, check_output, claim
from dask_emk.pipeline.results import (
    feature_names,
    final_estimator,
    per_sample_dataset,
    write_results,
)
from dask_emk.pipeline.scheduler import parse_scheduler, use_scheduler
from dask_emk.pipeline.sources import open_array

#: The ``dask-emk predict`` option that asks for each output beyond the labels
#: (names, methods and attributes: :data:`dask_emk.models.export.OUTPUTS`).
OPTIONS = {"label": None, "responsibility": "--responsibility", "log_density": "--log-density",
           "imputed": "--impute"}  # fmt: skip


@dataclass(frozen=True)
class Planned:
    """One predict output store, checked and lazy: what :func:`write_planned` writes.

    Attributes
    ----------
    root : xarray.Dataset
        The root's attributes (model, model file, input, version).
    per_sample : xarray.Dataset
        The lazy outputs on the input's grid
        (:func:`~dask_emk.pipeline.results.per_sample_dataset`).
    description : str
        The input, for the progress line.
    """

    root: xr.Dataset
    per_sample: xr.Dataset
    description: str


def predict_store(
    model_path: str | os.PathLike,
    store: str,
    out: str | os.PathLike,
    *,
    array: str | None = None,
    outputs: tuple[str, ...] = ("label",),
    variables: list[str] | None = None,
    missing_chunks: str = "raise",
    layout: dict | None = None,
    scheduler: str = "local",
    echo=print,
) -> Path | str:
    """Write the model's ``outputs`` for the input at ``store`` (``array``) to ``out``.

    Everything is checked before the scheduler starts or anything is
    written: the output path (:func:`dask_emk.pipeline.outputs.check_output`),
    the model file, that the model gives each output, the input's features.

    Parameters
    ----------
    model_path : str or os.PathLike
        A model file, or a results store of ``dask-emk fit``/``run``.
    store : str
        The input store (path or URL).
    out : str or os.PathLike
        Where the outputs go (replaced only if dask-emk wrote it).
    array : str, optional
        The 2-D array of ``store`` to read (rows × features).
    outputs : tuple of str
        Names of :data:`dask_emk.models.export.OUTPUTS` to write.
    variables : list of str, optional
        The xarray store's variables to read (default: the model's).
    missing_chunks : {'raise', 'fill'}
        A missing chunk file of the input: an error, or read as the fill value.
    layout : dict, optional
        ``feature_dim`` and/or ``sample_dims`` of the xarray store, where its
        dims are named otherwise than the model's (:func:`with_layout`;
        default: the layout the model was fitted with).
    scheduler : str
        As ``dask-emk run --scheduler``.
    echo : callable
        Prints a progress line.

    Returns
    -------
    The output location (a Path, or a URL).
    """
    inputs = [str(model_path), store if array is None else f"{store}/{array}"]
    target = check_output(out, RESULTS, where="--out", inputs=inputs)
    model = load(model_path)
    planned = plan(model, str(model_path), store, array=array, outputs=outputs,
                   variables=variables, missing_chunks=missing_chunks, layout=layout)  # fmt: skip
    parse_scheduler(scheduler)
    # Locked before the scheduler starts, as run does (write_planned's claim shares this one).
    with claim(target, RESULTS, where="--out") as notes, use_scheduler(scheduler, echo):
        for note in notes:
            echo(f"predict: {note}")
        return write_planned(target, "--out", planned, echo)


def plan(
    model,
    model_file: str,
    store: str,
    *,
    array: str | None = None,
    outputs: tuple[str, ...] = ("label",),
    variables: list[str] | None = None,
    missing_chunks: str = "raise",
    layout: dict | None = None,
) -> Planned:
    """The lazy outputs of a fitted ``model`` for the input at ``store``: metadata checks only
    (the outputs the model gives, the input's features and dims), nothing computed or written.

    ``model_file`` is recorded in the root's attributes (the results store
    of a pipeline that predicts with the model it fitted); ``layout`` is as
    :func:`predict_store`'s.
    """
    check_outputs(model, outputs)
    layout = {key: value for key, value in (layout or {}).items() if value is not None}
    model = with_layout(model, layout)
    X, description = open_input(store, array, model, variables, missing_chunks, layout)
    per_sample = per_sample_dataset(model, X, outputs, export.PREDICTED)
    if per_sample is None:
        raise ValueError("no output asked for; name at least one (label, ...).")
    root = xr.Dataset(
        attrs=export.schema_attrs(
            export.PREDICTED,
            model=_name(model),
            model_file=model_file,
            input=description,
            dask_emk_version=__version__,
        )
    )
    return Planned(root, per_sample, description)


def write_planned(target: Path | str, where: str, planned: Planned, echo=print) -> Path | str:
    """Write a :class:`Planned` store at the checked ``target`` as ``run`` writes its results:
    locked, built aside and published whole, on the active scheduler.

    ``where`` names the path in messages (``--out``, ``[[predict]] out``).
    """
    with claim(target, RESULTS, where=where) as notes:
        for note in notes:
            echo(f"predict: {note}")
        echo(f"input: {planned.description}")
        written = write_results(target, planned.root, {}, planned.per_sample)
    echo(f"predictions: {written} ({', '.join(map(str, planned.per_sample.data_vars))})")
    return written


def _name(model) -> str:
    if isinstance(model, Pipeline):
        return " → ".join(type(step).__name__ for _, step in model.steps)
    return type(model).__name__


def _first(model):
    """The estimator that reads the input: a Pipeline's first step."""
    return model[0] if isinstance(model, Pipeline) else model


def check_outputs(model, outputs: tuple[str, ...]) -> None:
    """A ValueError naming the output the model cannot give, before any work."""
    for name in outputs:
        if name not in export.OUTPUTS:
            raise ValueError(
                f"{name!r} is not a per-sample output; choose from {', '.join(export.OUTPUTS)}."
            )
        method = export.OUTPUTS[name][0]
        owner = final_estimator(model) if name == "imputed" else model
        if name == "imputed" and isinstance(model, Pipeline):
            owner = None
        if not hasattr(owner, method):
            drop = OPTIONS[name] or name
            raise ValueError(
                f"{_name(model)} gives no {name} (it has no {method}); drop "
                f"{drop}, or predict with a Gaussian mixture model."
            )


# ------------------------------------------------------------------ input
def open_input(store: str, array, model, variables, missing_chunks: str, layout=None) -> tuple:
    """The input, lazily and with checked reads, as the model was fitted on it; and its description.

    A 2-D array (named, or the store itself) is rows × features; a group is
    an xarray store, of which the model's features are taken: ``variables``,
    else the variables its fitted feature names come from (a variable on
    levels gives ``z[level=850]``), else its only variable. Its dims must
    hold the model's layout (``layout``: the dims the user named for it,
    already set on the model by :func:`with_layout`).
    """
    node = open_node(store)
    if array is not None or isinstance(node, zarr.Array):
        return _open_rows(store, array, missing_chunks, layout)
    ds = xr.open_zarr(open_store(store), consolidated=False, chunks={})
    names = [str(v) for v in feature_variables(ds)]
    chosen = variables or _fitted_variables(_first(model), names)
    named_by_variables = getattr(_first(model), "feature_dim", None) is None and feature_names(
        model
    )
    if chosen is None and len(names) == 1 and not named_by_variables:
        chosen = names  # the only variable: an N-D array, or unlabelled features
    if chosen is None:
        if not any(ds[v].ndim > 1 for v in names):  # rows × features arrays: name one
            open_array(store, None)
        lacking = _lacking_variables(_first(model), names) if named_by_variables else []
        raise ValueError(
            f"input store {store!r} holds {names}, which are not the variables of the "
            f"model's features {feature_names(model)}"
            + (f" (it lacks {lacking})" if lacking else "")
            + "; predict on a store holding them, or name the variables to read with "
            "--variables."
        )
    unknown = [v for v in chosen if v not in names]
    if unknown:
        raise ValueError(
            f"--variables {unknown} are not variables of {store!r}, which holds {names}; "
            "fix --variables."
        )
    check_layout(model, ds[chosen], store, layout or {})
    X = checked_xarray(ds[chosen], missing_chunks)
    if getattr(_first(model), "feature_dim", None) is not None:
        X = X[chosen[0]]  # an N-D DataArray, features along feature_dim
    shape = ", ".join(f"{d}: {n}" for d, n in ds[chosen[0]].sizes.items())
    return X, f"{store} ({shape}), variables {chosen}"


def _open_rows(store: str, array, missing_chunks: str, layout) -> tuple:
    """A 2-D array of ``store`` as rows × features, and its description."""
    if layout:
        raise ValueError(
            f"{_spell(*layout)} apply to an xarray store, but {store!r} is read as a "
            "2-D array (rows × features); drop them, or give the store's group."
        )
    arr = open_array(store, array)
    X = xr.DataArray(read_zarr(arr, missing_chunks), dims=("sample", "feature"))
    return X, f"{store}/{arr.path} {arr.shape} {arr.dtype}"


def _fitted_variables(model, names: list[str]) -> list[str] | None:
    """The data variables the model's feature names come from, in their order (None if not all)."""
    chosen = _model_variables(model)
    return chosen if chosen and not set(chosen) - set(names) else None


def _lacking_variables(model, names: list[str]) -> list[str]:
    """The variables of the model's features that are not among ``names``."""
    return [var for var in _model_variables(model) if var not in names]


def _model_variables(model) -> list[str]:
    """The data variables the model's feature names come from (``z`` of ``z[level=850]``)."""
    chosen = []
    for label in feature_names(model) or []:
        var = label.split("[", 1)[0] if label.endswith("]") else label
        if var not in chosen:
            chosen.append(var)
    return chosen


# ------------------------------------------------------------------ layout
#: The estimators' parameters that say how xarray input is laid out.
LAYOUT_KEYS = ("feature_dim", "sample_dims")


def with_layout(model, layout: dict):
    """A copy of ``model`` reading xarray input with ``layout`` (``feature_dim``,
    ``sample_dims``: those given; the others as fitted), or ``model`` itself if none is.

    Every estimator that reads the input is told: a Pipeline's steps (each
    was fitted with the layout) and the best candidate a model search
    delegates to.
    """
    if not layout:
        return model
    model = copy.deepcopy(model)  # the caller's model (a pipeline's fitted one) stays as it is
    steps = [step for _, step in model.steps] if isinstance(model, Pipeline) else [model]
    for step in steps + [s.best_estimator_ for s in steps if hasattr(s, "best_estimator_")]:
        step.set_params(**layout)
    return model


def check_layout(model, data: xr.Dataset, store: str, layout: dict) -> None:
    """A ValueError naming ``store``'s dims when the model's layout names others, or when
    a feature_dim (an N-D variable's) is given for several variables."""
    first = _first(model)
    dims = [str(d) for d in data.dims]
    for key in LAYOUT_KEYS:
        value = getattr(first, key, None)
        names = [value] if isinstance(value, str) else list(value or [])
        missing = [d for d in names if d not in dims]
        if not missing:
            continue
        if key in layout:
            raise ValueError(f"{_spell(key)} names {missing}, not dims of {store!r}, which "
                             f"has dims {dims}; give dims it has.")  # fmt: skip
        raise ValueError(
            f"the model was fitted with {key} {value!r}, but {store!r} has dims {dims} "
            f"(no {missing}); give the store's with {_spell(key)}."
        )
    if "feature_dim" in layout and len(data.data_vars) != 1:
        raise ValueError(
            f"{_spell('feature_dim')} applies to one N-D variable, but {store!r} is read as "
            f"the variables {list(map(str, data.data_vars))}; drop it, or name one variable."
        )


def _spell(*keys: str) -> str:
    """The options that set ``keys``, as the command line and a [[predict]] entry spell them."""
    flags = " and ".join("--" + key.replace("_", "-") for key in keys)
    return f"{flags} ([[predict]] {' and '.join(keys)})"
