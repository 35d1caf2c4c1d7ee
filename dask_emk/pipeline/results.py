"""The results store of a run: one zarr 3 store written through xarray.

Layout (``xr.open_zarr(path)`` opens the root; groups with ``group=``):

- root: the final model's parameters (named dims), the per-iteration
  ``history_*`` of the pipeline's fit, per-sample outputs (``label``,
  ``responsibility``, ``log_density`` along ``sample`` or on the input's grid,
  chunked like the input, with the CF attributes of
  :func:`dask_emk.models.export.output_attrs`; earlier versions named them
  ``labels``, ``responsibilities``) and attributes: the pipeline config
  (JSON, and the TOML text when it came from a file), the package version,
  convergence;
- ``anneal``: the annealed model (``to_xarray()``), ``anneal_path``: its
  ``path_`` (when the pipeline anneals);
- ``truth``: the generator's true parameters (generated input only);
- ``model``: the fitted estimator (:func:`fitted_model`), so that the store
  is a model file (root attribute ``dask_emk_model_format``):
  ``dask_emk.load(path)`` gives the model (:mod:`dask_emk.models.persist`).

The root carries the attribute ``dask_emk_results = {"format": 1, "version": ...}``:
that marker, not the name, is what lets a later run replace the store
(:mod:`dask_emk.pipeline.outputs` holds the rule). How it is published
(:func:`dask_emk.pipeline.outputs.building_store`):

- on a local disk it is built under ``<name>.partial`` (marked from its first
  write) and renamed into place last, so a run killed at any moment leaves the
  previous results (or none) at the path; the next run removes the
  ``.partial`` and restores a store left at ``<name>.old`` by a kill between
  the two renames of a replace;
- on an object store (``s3://``, ``gs://``), which cannot rename, it is
  written in place with the root ``zarr.json`` (the marker, and what makes
  the store open at all) written last. A small object ``<name>.partial``
  is put first and removed last; a previous store is deleted, root
  ``zarr.json`` first, after that object is put. A run killed at any moment
  leaves the previous complete results, or a store that does not open (no
  root ``zarr.json``) and that the next run recognises by ``<name>.partial``
  and removes, or the new complete results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from sklearn.pipeline import Pipeline, make_pipeline
from zarr.codecs import BloscCodec

from dask_emk.engine.locations import is_url
from dask_emk.models import export, persist
from dask_emk.models.preprocess import StandardScaler
from dask_emk.pipeline.fits import FitOutcome
from dask_emk.pipeline.outputs import (
    RESULTS,
    building_store,
    check_output,
    claim,
    output_location,
    store_marker,
)

#: History variables the estimators' own exports hold (replaced by the pipeline's).
ESTIMATOR_HISTORY = ("lower_bound", "inertia")


def model_dataset(outcome: FitOutcome, scaler=None) -> xr.Dataset:
    """The final model's ``to_xarray()`` with the pipeline's full history.

    Stepping fits one iteration per call, so the estimator's own history
    covers one step; it is replaced by ``history_<objective>``,
    ``history_change`` and ``history_seconds`` along ``iteration`` (NaN
    seconds for an annealed model, whose Lloyd run is not timed per iteration),
    and ``history_n_clusters`` for a model that records it (dpmeans).
    With the ``scaler`` the model was fitted behind (``[preprocess]
    standardize``), parameters and lower bounds are in the data's units
    (:meth:`dask_emk.models.preprocess.StandardScaler.original_units`).
    """
    ds = outcome.model.to_xarray() if scaler is None else scaler.original_units(outcome.model)
    ds = ds.drop_vars([v for v in ESTIMATOR_HISTORY if v in ds.data_vars])
    ds = ds.drop_dims([d for d in ("iteration",) if d in ds.dims])
    hist = outcome.history
    values = np.array([h.value for h in hist])
    if scaler is not None and outcome.objective == "lower_bound":
        values = scaler.original_log_density(values)
    history = export.schema_dataset(
        export.RESULTS,
        {
            f"history_{outcome.objective}": values,
            "history_change": np.array([h.change for h in hist]),
            "history_seconds": np.array([h.seconds for h in hist]),
            **({"history_n_clusters": np.array(outcome.n_clusters)} if outcome.n_clusters else {}),
        },
        {"iteration": np.arange(1, len(hist) + 1)},
    )
    objective = f"history_{outcome.objective}"
    history[objective].attrs["long_name"] = (
        f"{outcome.objective.replace('_', ' ')}: "
        f"{export.objective_units(outcome.objective, scaler is not None)}"
    )
    ds = ds.merge(history, combine_attrs="override")
    ds.attrs.update(
        export.schema_attrs(
            export.RESULTS, n_iter=len(hist), converged=str(bool(outcome.converged))
        )
    )
    return ds


#: The [output] flag that asks a run for each per-sample output (:data:`export.OUTPUTS`).
OUTPUT_FLAGS = {"label": "labels", "responsibility": "responsibilities",
                "log_density": "log_density"}  # fmt: skip


def requested_outputs(output: dict) -> tuple[str, ...]:
    """The per-sample outputs an [output] section asks for, by their variable names."""
    return tuple(name for name, flag in OUTPUT_FLAGS.items() if output.get(flag))


def per_sample_dataset(
    model, X, outputs: tuple[str, ...], place: str = export.RESULTS
) -> xr.Dataset | None:
    """The lazy per-sample ``outputs`` of ``model`` for X, named and described as
    :data:`export.OUTPUTS` says (None if none are asked for).

    ``X`` is lazy xarray input, so each output is a dask-backed DataArray
    chunked like the input's sample axis, or on its grid (its sample dims and
    coordinates). ``model`` may be a scikit-learn Pipeline (a model fitted
    behind a StandardScaler: :func:`fitted_model`); its log densities are
    then in the data's units. Labels of samples that ``nan_policy='omit'``
    leaves out are −1, recorded as ``_FillValue`` (NaN when decoded).
    """
    if not outputs:
        return None
    K = n_components(final_estimator(model))
    values = {name: _output(model, X, name) for name in outputs}
    dims = next(iter(values.values())).dims
    sample_dims = tuple(str(d) for d in dims if d not in ("component", "feature"))
    features = feature_names(model)
    coords = {"component": np.arange(K)} | ({"feature": features} if features else {})
    ds = portable_strings(export.schema_dataset(place, values, coords, sample_dims))
    for name in outputs:
        ds[name].attrs = export.output_attrs(name, K)
    return ds


def _output(model, X, name: str) -> xr.DataArray:
    if name == "label":
        return model.predict(X).astype(np.int32)
    if name == "log_density":
        return _log_density(model, X)
    if name == "imputed":
        return final_estimator(model).impute(X)
    return getattr(model, export.OUTPUTS[name][0])(X)


def _log_density(model, X):
    """``score_samples`` as a density in the data's units, also behind StandardScalers."""
    if not isinstance(model, Pipeline):
        return model.score_samples(X)
    density = model[-1].score_samples(model[:-1].transform(X))
    for _, step in reversed(model.steps[:-1]):
        if isinstance(step, StandardScaler):
            density = step.original_log_density(density)
    return density


def final_estimator(model):
    """The estimator that predicts: a Pipeline's last step, a model search's best."""
    final = model[-1] if isinstance(model, Pipeline) else model
    return getattr(final, "best_estimator_", final)


def feature_names(model) -> list[str] | None:
    """The feature labels the model (a Pipeline's first step) was fitted on, if any."""
    first = model[0] if isinstance(model, Pipeline) else model
    names = getattr(first, "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


def n_components(final) -> int:
    """K of a fitted model: components, clusters or centres."""
    for name in ("n_components_", "n_clusters_"):
        if hasattr(final, name):
            return int(getattr(final, name))
    centres: Any = getattr(final, "means_", getattr(final, "cluster_centers_", None))
    return int(np.shape(centres)[0])


def truth_dataset(truth) -> xr.Dataset:
    """The generator's true parameters, named and labelled as the fitted ones."""
    K, d = truth.means.shape
    return export.schema_dataset(
        export.TRUTH,
        {name: getattr(truth, name) for name in ("weights", "means", "covariances")},
        export.parameter_coords(K, np.arange(d)),
    )


def fitted_model(outcome: FitOutcome, scaler=None) -> object:
    """The estimator a results store keeps as its model file.

    The fit's model (the model search of a gmm-ic run), behind the ``scaler``
    it was fitted behind as a scikit-learn Pipeline, so that it predicts from
    the data as the run's per-sample outputs did.
    """
    model = outcome.search if outcome.search is not None else outcome.model
    return model if scaler is None else make_pipeline(scaler, model)


def write_results(
    path: str | os.PathLike,
    root: xr.Dataset,
    groups: dict[str, xr.Dataset],
    per_sample: xr.Dataset | None,
    model: object | Pipeline = None,
) -> Path | str:
    """Write the results store so that it appears complete or not at all (see above).

    An existing store at ``path`` (a local path or an object-store URL) is
    replaced only if dask-emk wrote it. Per-sample outputs are lazy:
    ``to_zarr`` computes and writes them chunk by chunk on the active
    scheduler, never whole in memory. ``model`` (:func:`fitted_model`) is
    written as the group ``model``, which makes the store a model file.
    zarr's consolidated metadata is written last, so that a plain
    ``xarray.open_zarr(path)`` reads the store without a warning.
    """
    final = output_location(path)
    final = final if is_url(final) else final.absolute()
    group = None if model is None else persist.model_group(model)  # checked before writing
    with building_store(final, RESULTS) as store:
        root = portable_strings(root).assign_attrs(store_marker(RESULTS))
        if group is not None:
            root = root.assign_attrs(persist.format_attrs(export.RESULTS))
        # Every chunk gets its file, also one of only the fill value (an
        # all-land chunk of labels): a missing file is what the read checks refuse.
        every_chunk = {"consolidated": False, "write_empty_chunks": True}
        root.to_zarr(store, mode="a", zarr_format=3, **every_chunk)
        for name, ds in groups.items():
            portable_strings(ds).to_zarr(store, group=name, mode="w-", zarr_format=3, **every_chunk)
        if group is not None:
            persist.write_model(group, store)
        if per_sample is not None:
            # Appending rewrites the group's attributes: keep the root's.
            per_sample = per_sample.assign_attrs(root.attrs)
            encoding = {name: {"compressors": (_compressor(),)} for name in per_sample.data_vars}
            per_sample.to_zarr(store, mode="a", encoding=encoding, **every_chunk)
        persist.consolidate(store)
    return final


def save_model(model, path: str | os.PathLike, *, overwrite: bool = False) -> Path | str:
    """Write a model file of ``model`` at ``path`` through the output-safety rule.

    As :meth:`model.save <dask_emk.models.base.SavesModelFile.save>` (the same
    store), but a results-kind store: locked while written, built aside and
    published whole (:func:`dask_emk.pipeline.outputs.building_store`), and
    with ``overwrite`` it replaces a model file or results store dask-emk
    wrote this way (never anything else).

    Parameters
    ----------
    model : estimator
        A fitted dask_emk estimator, or a scikit-learn Pipeline of them.
    path : str or os.PathLike
        Local path or object-store URL.
    overwrite : bool, default=False
        Replace a model file or results store that dask-emk wrote at ``path``
        (anything else there is refused).

    Returns
    -------
    Path or str
        The path written (a URL as str).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from dask_emk import GaussianMixture, load, save
    >>> X = np.array([[0.0, 0.0], [0.1, 0.2], [5.0, 5.0], [5.1, 4.9], [0.2, 0.1], [4.9, 5.2]])
    >>> gm = GaussianMixture(2, random_state=0).fit(X)
    >>> path = save(gm, tempfile.mkdtemp() + "/gm.zarr")
    >>> path = save(gm, path, overwrite=True)  # replaces only a file dask-emk wrote
    >>> bool((load(path).predict(X) == gm.predict(X)).all())
    True
    """
    target = check_output(path, RESULTS, where="path", replace=overwrite,
                          replace_hint="overwrite=True")  # fmt: skip
    root = persist.model_root(model)  # raises if not fitted
    group = persist.model_group(model)  # raises on what cannot be saved, before writing
    with claim(target, RESULTS, where="path"), building_store(target, RESULTS) as store:
        root = root.assign_attrs(store_marker(RESULTS))
        root.to_zarr(store, mode="a", zarr_format=3, consolidated=False, write_empty_chunks=True)
        persist.write_model(group, store)
        persist.consolidate(store)
    return target


def portable_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode coordinates as object strings.

    zarr 3 stores numpy ``<U`` arrays with a data type that has no zarr v3
    specification yet (and warns); object strings become the specified
    variable-length UTF-8 type.
    """
    fixed = {name: c.astype(object) for name, c in ds.coords.items() if c.dtype.kind == "U"}
    return ds.assign_coords(fixed) if fixed else ds


def _compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
