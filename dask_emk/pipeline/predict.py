"""``dask-emk predict``: a model file applied to a store, its outputs written on the store's grid.

The input is what a fit accepts: a 2-D zarr array (``store.zarr/X``), or an
xarray store whose variables are the model's features (on a grid, with gaps
under the model's ``nan_policy``), at a path or an object-store URL. The
outputs (:data:`OUTPUTS`) are lazy until they are written: ``to_zarr``
computes them chunk by chunk on the chosen scheduler, on the input's chunks.
They are written as ``run`` writes its results
(:func:`dask_emk.pipeline.results.write_results`: checked and locked by
:mod:`dask_emk.pipeline.outputs`, built aside and published whole, replacing
only a store dask-emk wrote), with consolidated metadata and CF attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from sklearn.pipeline import Pipeline

from dask_emk._version import __version__
from dask_emk.engine.locations import open_node, open_store
from dask_emk.engine.storage import checked_xarray, read_zarr
from dask_emk.models import export
from dask_emk.models.persist import load
from dask_emk.models.preprocess import StandardScaler
from dask_emk.pipeline.outputs import RESULTS, check_output, claim
from dask_emk.pipeline.results import portable_strings, write_results
from dask_emk.pipeline.scheduler import parse_scheduler, use_scheduler
from dask_emk.pipeline.sources import open_array

#: Output variable -> (the model's method that gives it, CF long_name, the CLI option).
OUTPUTS = {
    "label": ("predict", "most probable component (nearest centre for k-means)", None),
    "responsibility": (
        "predict_proba", "probability of each component given the sample", "--responsibility"
    ),
    "log_density": (
        "score_samples", "log probability density of the sample under the model", "--log-density"
    ),
    "imputed": (
        "impute", "input with each missing value replaced by its conditional mean", "--impute"
    ),
}  # fmt: skip
#: The label of a sample the model's ``nan_policy='omit'`` leaves out.
LABEL_FILL = -1


def predict_store(
    model_path: str | os.PathLike,
    store: str,
    out: str | os.PathLike,
    *,
    array: str | None = None,
    outputs: tuple[str, ...] = ("label",),
    variables: list[str] | None = None,
    missing_chunks: str = "raise",
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
        Names of :data:`OUTPUTS` to write.
    variables : list of str, optional
        The xarray store's variables to read (default: the model's).
    missing_chunks : {'raise', 'fill'}
        A missing chunk file of the input: an error, or read as the fill value.
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
    _check_outputs(model, outputs)
    X, description = open_input(store, array, model, variables, missing_chunks)
    per_sample = predictions(model, X, outputs)  # lazy: metadata checks only
    parse_scheduler(scheduler)
    root = xr.Dataset(
        attrs=export.schema_attrs(
            export.PREDICTED,
            model=_name(model),
            model_file=str(model_path),
            input=description,
            dask_emk_version=__version__,
        )
    )
    with claim(target, RESULTS, where="--out") as notes, use_scheduler(scheduler, echo):
        for note in notes:
            echo(f"predict: {note}")
        echo(f"input: {description}")
        written = write_results(target, root, {}, per_sample, consolidated=True)
    echo(f"predictions: {written} ({', '.join(map(str, per_sample.data_vars))})")
    return written


def _name(model) -> str:
    if isinstance(model, Pipeline):
        return " → ".join(type(step).__name__ for _, step in model.steps)
    return type(model).__name__


def _final(model):
    """The estimator that predicts: a Pipeline's last step, a model search's best."""
    final = model[-1] if isinstance(model, Pipeline) else model
    return getattr(final, "best_estimator_", final)


def _first(model):
    """The estimator that reads the input: a Pipeline's first step."""
    return model[0] if isinstance(model, Pipeline) else model


def _check_outputs(model, outputs: tuple[str, ...]) -> None:
    """A ValueError naming the output the model cannot give, before any work."""
    for name in outputs:
        method = OUTPUTS[name][0]
        owner = _final(model) if name == "imputed" else model
        if name == "imputed" and isinstance(model, Pipeline):
            owner = None
        if not hasattr(owner, method):
            raise ValueError(
                f"{_name(model)} gives no {name} (it has no {method}); drop "
                f"{OUTPUTS[name][2]}, or predict with a Gaussian mixture model."
            )


# ------------------------------------------------------------------ input
def open_input(store: str, array, model, variables, missing_chunks: str) -> tuple:
    """The input, lazily and with checked reads, as the model was fitted on it; and its description.

    A 2-D array (named, or the store itself) is rows × features; a group is
    an xarray store, of which the model's features are taken: ``variables``,
    else the variables its fitted feature names come from (a variable on
    levels gives ``z[level=850]``), else its only variable.
    """
    node = open_node(store)
    if array is not None or isinstance(node, zarr.Array):
        arr = open_array(store, array)
        X = xr.DataArray(read_zarr(arr, missing_chunks), dims=("sample", "feature"))
        return X, f"{store}/{arr.path} {arr.shape} {arr.dtype}"
    ds = xr.open_zarr(open_store(store), consolidated=False, chunks={})
    names = [str(v) for v in ds.data_vars]
    chosen = variables or _fitted_variables(_first(model), names)
    named_by_variables = getattr(_first(model), "feature_dim", None) is None and _feature_names(
        model
    )
    if chosen is None and len(names) == 1 and not named_by_variables:
        chosen = names  # the only variable: an N-D array, or unlabelled features
    if chosen is None:
        if not any(ds[v].ndim > 1 for v in names):  # rows × features arrays: name one
            open_array(store, None)
        raise ValueError(
            f"input store {store!r} holds {names}, which are not the variables of the "
            f"model's features {_feature_names(model)}; name the variables to read with "
            "--variables."
        )
    unknown = [v for v in chosen if v not in names]
    if unknown:
        raise ValueError(
            f"--variables {unknown} are not variables of {store!r}, which holds {names}; "
            "fix --variables."
        )
    X = checked_xarray(ds[chosen], missing_chunks)
    if getattr(_first(model), "feature_dim", None) is not None:
        X = X[chosen[0]]  # an N-D DataArray, features along feature_dim
    shape = ", ".join(f"{d}: {n}" for d, n in ds[chosen[0]].sizes.items())
    return X, f"{store} ({shape}), variables {chosen}"


def _feature_names(model) -> list[str] | None:
    names = getattr(_first(model), "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


def _fitted_variables(model, names: list[str]) -> list[str] | None:
    """The data variables the model's feature names come from, in their order (None if not all)."""
    chosen = []
    for label in _feature_names(model) or []:
        var = label.split("[", 1)[0] if label.endswith("]") else label
        if var not in names:
            return None
        if var not in chosen:
            chosen.append(var)
    return chosen or None


# ------------------------------------------------------------------ outputs
def predictions(model, X, outputs: tuple[str, ...]) -> xr.Dataset:
    """The lazy outputs on X's grid, named and described as :data:`export.SCHEMA` says."""
    K = _n_components(_final(model))
    values = {name: _output(model, X, name) for name in outputs}
    dims = next(iter(values.values())).dims
    sample_dims = tuple(str(d) for d in dims if d not in ("component", "feature"))
    features = _feature_names(model)
    coords = {"component": np.arange(K)} | ({"feature": features} if features else {})
    ds = portable_strings(export.schema_dataset(export.PREDICTED, values, coords, sample_dims))
    for name in outputs:
        ds[name].attrs = {"long_name": OUTPUTS[name][1], **_cf_attrs(name, K)}
    return ds


def _output(model, X, name: str) -> xr.DataArray:
    if name == "label":
        return model.predict(X).astype(np.int32)
    if name == "log_density":
        return _log_density(model, X)
    if name == "imputed":
        return _final(model).impute(X)
    return getattr(model, OUTPUTS[name][0])(X)


def _log_density(model, X):
    """``score_samples`` as a density in the data's units, also behind StandardScalers."""
    if not isinstance(model, Pipeline):
        return model.score_samples(X)
    density = model[-1].score_samples(model[:-1].transform(X))
    for _, step in reversed(model.steps[:-1]):
        if isinstance(step, StandardScaler):
            density = step.original_log_density(density)
    return density


def _n_components(final) -> int:
    for name in ("n_components_", "n_clusters_"):
        if hasattr(final, name):
            return int(getattr(final, name))
    centres: Any = getattr(final, "means_", getattr(final, "cluster_centers_", None))
    return int(np.shape(centres)[0])


def _cf_attrs(name: str, K: int) -> dict:
    """CF attributes: the labels' flags and fill value, the probabilities' units."""
    if name == "label":
        return {
            "flag_values": list(range(K)),
            "flag_meanings": " ".join(f"component_{k}" for k in range(K)),
            "_FillValue": LABEL_FILL,
        }
    if name == "responsibility":
        return {"units": "1"}
    return {}
