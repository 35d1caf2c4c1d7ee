"""The export schema, and fitted models as labelled ``xarray.Dataset``s.

:data:`SCHEMA` is the one table of every name dask_emk writes: the
``to_xarray()`` of each model, the annealing path, a pipeline's results store
and the generator's truth. The export functions take their dims from it and
refuse a name it does not list; ``docs/SCHEMA.md`` is
:func:`schema_markdown` and a test checks that the two agree. scikit-learn's
attribute names stay as they are in Python (``cluster_centers_``,
``means_``, ...); the table says which one each exported variable holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from dask_emk._version import __version__
from dask_emk.core.blocks import LABEL_FILL
from dask_emk.core.covariance import COVARIANCE_TYPES, MATRIX_DIMS

# ----------------------------------------------------------------- places
GMM, KMEANS, ANNEAL = "GaussianMixture", "KMeans", "AnnealedGaussianMixture"
DPMEANS = "DPMeans"
MODELS = (GMM, KMEANS, ANNEAL, DPMEANS)
PATH, RESULTS, TRUTH, GENERATED = "path", "results", "truth", "generated"
MODEL_FILE = "model file"
PREDICTED = "predicted"
GRID = "grid"

#: Where names occur: the short label used in the table, and what it is.
PLACES = {
    GMM: ("GM", "`GaussianMixture.to_xarray()`; the results root of a `gmm` run"),
    KMEANS: ("KM", "`KMeans.to_xarray()`; the results root of a `kmeans` run"),
    ANNEAL: (
        "AGM",
        "`AnnealedGaussianMixture.to_xarray()`; the results group `anneal`, and the "
        "results root of an `anneal` run",
    ),
    DPMEANS: ("DP", "`DPMeans.to_xarray()`; the results root of a `dpmeans` run"),
    PATH: ("path", "`AnnealedGaussianMixture.path_`; the results group `anneal_path`"),
    RESULTS: (
        "results",
        "added to the results root by a pipeline run (the model's own history, "
        "`lower_bound` or `inertia`, is replaced by `history_*`)",
    ),
    TRUTH: ("truth", "the results group `truth` (generated input only)"),
    MODEL_FILE: ("file", "a model file (`model.save(path)`, read by `dask_emk.load`): the "
                 "model's export at the root, its parameters and fitted state in the group "
                 "`model` (`dask_emk.models.persist`); a results store is one too"),
    PREDICTED: ("predicted", "a store written by `dask-emk predict`: per-sample outputs on the "
                "input's grid, with CF attributes"),
    GENERATED: ("generated", "a store written by `dask-emk generate` (or `[input.generate]`)"),
    GRID: ("grid", "a gridded store written by `dask-emk generate --grid` (the variables and "
           "the truth on time, lat, lon) or by a pipeline's `[input.photo]` (`image`)"),
}

DIMENSION, VARIABLE, ATTRIBUTE = "dimension", "variable", "attribute"
KIND_TITLES = {DIMENSION: "Dimensions", VARIABLE: "Variables", ATTRIBUTE: "Attributes"}
#: Dims that depend on the model's settings (``covariances``: on ``covariance_type``).
BY_COVARIANCE_TYPE = None


@dataclass(frozen=True)
class Name:
    """One exported name: a dimension, a data variable or an attribute."""

    name: str
    kind: str
    where: tuple[str, ...]
    meaning: str
    dims: tuple[str, ...] | None = ()


_COMPONENT_FEATURE = ("component", "feature")
_FULL_MATRICES = ("component", *MATRIX_DIMS)
_MODELS_TRUTH = (*MODELS, TRUTH, GENERATED, GRID)
_GRID = ("time", "lat", "lon")


def _covariance_dims_text() -> str:
    return "; ".join(
        f"{name} ({', '.join(ct.dims) or 'no dims'})" for name, ct in COVARIANCE_TYPES.items()
    )


#: Every name dask_emk writes: one row per name and meaning.
SCHEMA: tuple[Name, ...] = (
    # dimensions
    Name("component", DIMENSION, (*MODELS, PATH, RESULTS, PREDICTED, TRUTH, GENERATED, GRID),
         "mixture components and k-means clusters alike, 0 … K−1; in `path` a slot per "
         "mean the anneal ever made (a split opens one, a merge closes one)"),
    Name("feature", DIMENSION, (*MODELS, PATH, RESULTS, PREDICTED, TRUTH, GENERATED, GRID),
         "the input's feature labels (xarray or pandas input), else 0 … d−1"),
    Name("feature_row", DIMENSION, (GMM, TRUTH, GENERATED, GRID),
         "the feature labels again, for the rows of covariance matrices"),
    Name("feature_col", DIMENSION, (GMM, TRUTH, GENERATED, GRID),
         "the feature labels again, for the columns of covariance matrices"),
    Name("iteration", DIMENSION, (GMM, KMEANS, DPMEANS, RESULTS),
         "iterations of the fit, 1 … n_iter"),
    Name("step", DIMENSION, (PATH,), "annealing steps, σ² decreasing, 0 … n_steps−1"),
    Name("event", DIMENSION, (PATH,), "split and merge events in order (no coordinate)"),
    Name("sample", DIMENSION, (RESULTS, PREDICTED, GENERATED),
         "rows of the input, in its chunks; per-sample results of gridded (xarray) input "
         "have the input's sample dims (e.g. time, lat, lon) and coordinates instead"),
    Name("time", DIMENSION, (GRID,), "time steps, 0 … T−1"),
    Name("lat", DIMENSION, (GRID,), "latitude, degrees"),
    Name("lon", DIMENSION, (GRID,), "longitude, degrees"),
    Name("y", DIMENSION, (GRID,), "image rows, top to bottom"),
    Name("x", DIMENSION, (GRID,), "image columns"),
    Name("band", DIMENSION, (GRID,), "colour bands: red, green, blue"),
    # model parameters
    Name("weights", VARIABLE, _MODELS_TRUTH,
         "mixing weights, summing to 1: `weights_` (GM, AGM); for KM and DP the fraction of "
         "the (weighted) data in each cluster, `cluster_weights_ / cluster_weights_.sum()`",
         ("component",)),
    Name("means", VARIABLE, _MODELS_TRUTH,
         "component means and cluster centres alike: `means_` (GM, AGM), "
         "`cluster_centers_` (KM, AGM, DP)", _COMPONENT_FEATURE),
    Name("sizes", VARIABLE, (KMEANS, ANNEAL, DPMEANS),
         "total sample weight of each cluster (its row count without sample weights): "
         "`cluster_weights_` (KM, DP), `kmeans_.cluster_weights_` (AGM); not normalised, "
         "`weights` = `sizes / sizes.sum()`", ("component",)),
    Name("covariances", VARIABLE, (GMM,),
         "`covariances_`; dims by `covariance_type`: " + _covariance_dims_text(),
         BY_COVARIANCE_TYPE),
    Name("covariances", VARIABLE, (TRUTH, GENERATED, GRID), "full covariance of each component",
         _FULL_MATRICES),
    Name("lower_bound", VARIABLE, (GMM,),
         "`lower_bounds_`: mean log-likelihood per sample after each EM iteration",
         ("iteration",)),
    Name("inertia", VARIABLE, (KMEANS,),
         "`inertia_history_`: Σ w‖x − c‖² at the start of each Lloyd iteration",
         ("iteration",)),
    Name("objective", VARIABLE, (DPMEANS,),
         "`objective_history_`: Σ w‖x − c‖² + λK at the start of each iteration",
         ("iteration",)),
    Name("n_distinct", VARIABLE, (DPMEANS,),
         "`n_clusters_history_`: clusters at the start of each iteration", ("iteration",)),
    # the annealing path
    Name("sigma2", VARIABLE, (PATH,), "shared variance σ² of each step, strictly decreasing",
         ("step",)),
    Name("means", VARIABLE, (PATH,), "means at each step; NaN where a slot is not open",
         ("step", "component", "feature")),
    Name("weights", VARIABLE, (PATH,), "mixing weights at each step; NaN where a slot is "
         "not open", ("step", "component")),
    Name("lower_bound", VARIABLE, (PATH,), "mean log-likelihood on the sample at each step",
         ("step",)),
    Name("n_distinct", VARIABLE, (PATH,), "open slots at each step", ("step",)),
    Name("softness", VARIABLE, (PATH,), "mean of 1 − max responsibility at each step",
         ("step",)),
    Name("n_iter", VARIABLE, (PATH,), "EM iterations of each step", ("step",)),
    Name("event_step", VARIABLE, (PATH,), "step after which the event happened", ("event",)),
    Name("event_kind", VARIABLE, (PATH,), "1 split, −1 merge", ("event",)),
    Name("event_component", VARIABLE, (PATH,),
         "slot that split, or that absorbed its partner", ("event",)),
    Name("event_partner", VARIABLE, (PATH,),
         "slot opened by the split, or absorbed by the merge", ("event",)),
    Name("event_sigma2", VARIABLE, (PATH,), "σ² of the event", ("event",)),
    Name("data_mean", VARIABLE, (PATH,), "mean of the annealing sample", ("feature",)),
    # added by a pipeline run
    Name("history_lower_bound", VARIABLE, (RESULTS,),
         "lower bound after each iteration of the run (gmm)", ("iteration",)),
    Name("history_inertia", VARIABLE, (RESULTS,),
         "inertia at the start of each Lloyd iteration of the run (kmeans, anneal)",
         ("iteration",)),
    Name("history_objective", VARIABLE, (RESULTS,),
         "Σ w‖x − c‖² + λK at the start of each iteration of the run (dpmeans)",
         ("iteration",)),
    Name("history_n_clusters", VARIABLE, (RESULTS,),
         "clusters at the start of each iteration of the run (dpmeans)", ("iteration",)),
    Name("history_change", VARIABLE, (RESULTS,),
         "change of the objective in each iteration", ("iteration",)),
    Name("history_seconds", VARIABLE, (RESULTS,),
         "wall time of each iteration (NaN in an anneal run)", ("iteration",)),
    Name("scaler_mean", VARIABLE, (RESULTS,),
         "`StandardScaler.mean_` (0 with `with_mean=False`) when the model was fitted on "
         "standardised features (`[preprocess] standardize`, "
         "`StandardScaler.original_units`): means and covariances are then in the data's "
         "units, `lower_bound` a density in them, `inertia` in standardised units; a "
         "`spherical` or `shared` fit's covariances become `diag` or `tied` ones "
         "(the variable's `covariance_type` attribute)", ("feature",)),
    Name("scaler_scale", VARIABLE, (RESULTS,),
         "`StandardScaler.scale_` (1 with `with_std=False`), beside `scaler_mean`",
         ("feature",)),
    # per-sample outputs (OUTPUTS): a results store's, dask-emk predict's, the xarray API's
    Name("label", VARIABLE, (RESULTS, PREDICTED),
         "`predict`: most probable component, or nearest centre (`output.labels`); −1 "
         "(`_FillValue`, NaN when decoded) where a sample is omitted; `flag_values`/"
         "`flag_meanings` name the components", ("sample",)),
    Name("responsibility", VARIABLE, (RESULTS, PREDICTED),
         "`predict_proba`: probability of each component given the sample "
         "(`output.responsibilities`, `--responsibility`; gmm, anneal)", ("sample", "component")),
    Name("log_density", VARIABLE, (RESULTS, PREDICTED),
         "`score_samples`: log p(x), in the data's units also behind a StandardScaler "
         "(`output.log_density`, `--log-density`; gmm)", ("sample",)),
    Name("imputed", VARIABLE, (PREDICTED,),
         "`GaussianMixture.impute`: the input with each NaN replaced by its conditional "
         "expectation (`--impute`)", ("sample", "feature")),
    # the generator
    Name("X", VARIABLE, (GENERATED,), "the data", ("sample", "feature")),
    Name("labels", VARIABLE, (GENERATED,), "true component of each row", ("sample",)),
    Name("x0 … x{d−1}", VARIABLE, (GRID,),
         "the generated variables (the features): NaN on land and at the gaps", _GRID),
    Name("labels", VARIABLE, (GRID,),
         "true regime (component) of each point; −1 (`_FillValue`, NaN when decoded) on land",
         _GRID),
    Name("land", VARIABLE, (GRID,), "the land mask: True where every variable is NaN",
         ("lat", "lon")),
    Name("image", VARIABLE, (GRID,),
         "the photograph, 0 … 255 as float32; NaN at the clouds", ("y", "x", "band")),
    # attributes
    Name("model", ATTRIBUTE, (*MODELS, MODEL_FILE, PREDICTED), "the estimator's class name"),
    Name("dask_emk_version", ATTRIBUTE, (*MODELS, MODEL_FILE, PREDICTED),
         "the version that wrote it"),
    Name("model_file", ATTRIBUTE, (PREDICTED,), "the model file the outputs come from"),
    Name("dask_emk_model_format", ATTRIBUTE, (MODEL_FILE, RESULTS),
         "format version of the model file (1); `dask_emk.load` reads every version up to "
         "its own"),
    Name("<each constructor parameter>", ATTRIBUTE, MODELS,
         "`get_params()` under its own name: numbers and strings as they are, None as "
         "'None', booleans as 'True'/'False', arrays as JSON, other objects as repr"),
    Name("n_iter", ATTRIBUTE, (*MODELS, RESULTS),
         "`n_iter_`; in results, the iterations of the run (the size of `iteration`)"),
    Name("converged", ATTRIBUTE, (GMM, RESULTS), "`converged_`, 'True' or 'False'"),
    Name("final_lower_bound", ATTRIBUTE, (GMM,), "`lower_bound_`"),
    Name("final_inertia", ATTRIBUTE, (KMEANS, ANNEAL, DPMEANS), "`inertia_`, over the full data"),
    Name("final_objective", ATTRIBUTE, (DPMEANS,), "`objective_`: Σ w‖x − c‖² + λK"),
    Name("fitted_penalty", ATTRIBUTE, (DPMEANS,),
         "`penalty_`: λ of the fit (the attribute `penalty` is the parameter, 'None' "
         "when n_clusters chose λ)"),
    Name("sigma2", ATTRIBUTE, (ANNEAL,), "`sigma2_`: σ² of the last annealing step"),
    Name("n_full_passes", ATTRIBUTE, (ANNEAL,), "`n_full_passes_`"),
    Name("stop_reason", ATTRIBUTE, (ANNEAL,), "`stop_reason_`: 'budget' or 'sigma2_stop'"),
    Name("description", ATTRIBUTE, (PATH,), "what the dataset is"),
    Name("event_kind", ATTRIBUTE, (PATH,), "what the values of `event_kind` mean"),
    Name("pipeline_json", ATTRIBUTE, (RESULTS,), "the validated pipeline config as JSON"),
    Name("pipeline_toml", ATTRIBUTE, (RESULTS,), "the pipeline file's text ('' without one)"),
    Name("input", ATTRIBUTE, (RESULTS, PREDICTED), "description of the input"),
    Name("n_samples", ATTRIBUTE, (RESULTS, GENERATED), "rows of the input"),
    Name("fit_seconds", ATTRIBUTE, (RESULTS,), "wall time of the fit"),
    Name("dask_emk_results", ATTRIBUTE, (RESULTS, PREDICTED),
         "marker {format, version}: the store may be replaced by a later run"),
    Name("dask_emk_generated", ATTRIBUTE, (GENERATED,),
         "marker {format, version}: the store may be replaced by a later generate"),
    Name("n_features", ATTRIBUTE, (GENERATED, GRID), "d"),
    Name("n_components", ATTRIBUTE, (GENERATED, GRID), "K of the true mixture"),
    Name("seed", ATTRIBUTE, (GENERATED, GRID), "seed of the data and the truth (or the clouds)"),
    Name("land_fraction", ATTRIBUTE, (GRID,), "fraction of the (lat, lon) grid that is land"),
    Name("gap_fraction", ATTRIBUTE, (GRID,),
         "fraction of the other points where one variable is NaN (scattered gaps)"),
    Name("image", ATTRIBUTE, (GRID,), "`[input.photo]`: scikit-learn's sample image used"),
    Name("clouds", ATTRIBUTE, (GRID,), "`[input.photo]`: fraction of pixels set to NaN"),
)  # fmt: skip


def schema_names(place: str, kind: str) -> dict[str, Name]:
    """The table's names of one kind in ``place``, by name."""
    return {n.name: n for n in SCHEMA if n.kind == kind and place in n.where}


def schema_dims(place: str, name: str) -> tuple[str, ...] | None:
    """Dims of variable ``name`` in ``place`` (None: they depend on the model's settings)."""
    return _lookup(place, VARIABLE, name).dims


def _lookup(place: str, kind: str, name: str) -> Name:
    try:
        return schema_names(place, kind)[name]
    except KeyError:
        raise RuntimeError(
            f"{kind} {name!r} is not in the export schema for {place}: add it to "
            "dask_emk.models.export.SCHEMA (and regenerate docs/SCHEMA.md)."
        ) from None


def schema_dataset(
    place: str, variables: dict, coords: dict, sample_dims: tuple[str, ...] = ("sample",)
) -> xr.Dataset:
    """``variables`` as a Dataset with the dims :data:`SCHEMA` gives them in ``place``.

    Parameters
    ----------
    variables : dict
        ``{name: values}``: arrays, or DataArrays with the table's dims; a
        name whose dims depend on the model's settings (``covariances``)
        takes ``(dims, values)``.
    coords : dict
        ``{dim: labels}``; coordinates of dims no variable uses are left out.
    sample_dims : tuple of str
        What the table's ``sample`` stands for: the sample dims of gridded input.

    Raises
    ------
    RuntimeError
        A name the table does not list in ``place``: nothing is exported
        undocumented.
    """
    data = {}
    for name, values in variables.items():
        dims = schema_dims(place, name)
        if dims is not None and "sample" in dims:
            at = dims.index("sample")
            dims = dims[:at] + tuple(sample_dims) + dims[at + 1 :]
        if isinstance(values, xr.DataArray) and values.dims != dims:
            raise RuntimeError(f"{name} has dims {values.dims}; the export schema says {dims}.")
        data[name] = values if dims is None or isinstance(values, xr.DataArray) else (dims, values)
    ds = xr.Dataset(data)
    return ds.assign_coords({dim: c for dim, c in coords.items() if dim in ds.dims})


def schema_attrs(place: str, **attrs: Any) -> dict:
    """``attrs`` after checking that :data:`SCHEMA` lists each in ``place``."""
    for name in attrs:
        _lookup(place, ATTRIBUTE, name)
    return attrs


#: What the values of each objective's history are (the lower bound of a model fitted
#: behind a StandardScaler is given in the data's units too): the console, ``show``, the
#: plots and the results' ``history_*`` attribute ``long_name`` say it so.
OBJECTIVE_UNITS = {"lower_bound": "mean log density per row, data units",
                   "inertia": "sum of squared distances", "objective": "DP-means cost"}  # fmt: skip


def objective_units(objective: str, standardized: bool = False) -> str:
    """:data:`OBJECTIVE_UNITS` of ``objective``; other than the lower bound, a fit on
    standardised data (``standardized``) has its values in the standardised units."""
    units = OBJECTIVE_UNITS.get(objective, "")
    return units + (", fitted on standardised data" if standardized and
                    objective != "lower_bound" else "")  # fmt: skip


# -------------------------------------------------------- per-sample outputs
#: Per-sample outputs: variable name -> (the estimator method that gives it, CF
#: ``long_name``, CF ``units`` or None where there are none). The one spelling
#: used by the estimators' xarray outputs, a results store and ``dask-emk predict``.
OUTPUTS = {
    "label": ("predict", "most probable component (nearest centre for k-means)", None),
    "responsibility": ("predict_proba", "probability of each component given the sample", "1"),
    "log_density": ("score_samples", "log probability density of the sample under the model",
                    None),
    "imputed": ("impute", "input with each missing value replaced by its conditional mean",
                None),
}  # fmt: skip


def output_attrs(name: str, n_components: int) -> dict:
    """CF attributes of the per-sample output ``name`` (:data:`OUTPUTS`) of a K-component model.

    Labels get ``flag_values``/``flag_meanings`` (one per component) and
    ``_FillValue`` (−1, so omitted samples read back as NaN). No output takes
    the data's ``units``: a density or a standardised value is not in them.
    """
    _lookup(PREDICTED, VARIABLE, name)
    _, long_name, units = OUTPUTS[name]
    attrs: dict[str, Any] = {"long_name": long_name}
    if units is not None:
        attrs["units"] = units
    if name == "label":
        attrs["flag_values"] = np.arange(n_components, dtype=np.int32)
        attrs["flag_meanings"] = " ".join(f"component_{k}" for k in range(n_components))
        attrs["_FillValue"] = LABEL_FILL
    return attrs


def named_output(values: Any, name: str, n_components: int) -> Any:
    """A per-sample output as the estimators return it: an xarray result named
    ``name`` with :func:`output_attrs` (so ``to_netcdf``/``to_zarr`` write it so);
    numpy and dask results as they are.

    Parameters
    ----------
    values : ndarray, dask array or DataArray of shape (n_samples, ...) or on a grid
    name : str
        A key of :data:`OUTPUTS`.
    n_components : int
        K of the model (the labels' flag values).
    """
    if not isinstance(values, xr.DataArray):
        return values
    attrs = {k: v for k, v in values.attrs.items() if k != "units"} | output_attrs(
        name, n_components
    )
    return values.rename(name).assign_attrs(attrs)


# ---------------------------------------------------------------- exports
def fit_attributes(estimator: Any) -> dict:
    """``model``, ``dask_emk_version`` and every constructor parameter, netCDF/zarr-safe.

    Scalars stay scalars; arrays and other objects are stored as JSON text so
    the attributes survive both to_zarr and to_netcdf.
    """
    model = type(estimator).__name__
    attrs = schema_attrs(model, dask_emk_version=__version__, model=model)
    for name, value in estimator.get_params(deep=False).items():
        if value is None:
            attrs[name] = "None"
        elif isinstance(value, (bool, np.bool_)):
            attrs[name] = str(bool(value))
        elif isinstance(value, (int, float, str, np.integer, np.floating)):
            attrs[name] = value.item() if isinstance(value, np.generic) else value
        elif isinstance(value, np.ndarray):
            attrs[name] = json.dumps(value.tolist())
        else:
            attrs[name] = repr(value)
    return attrs


def feature_coords(estimator: Any) -> np.ndarray:
    """Feature labels seen in fit (xarray input) or 0..d-1.

    Labels are object strings: zarr 3 writes those as its specified string
    type, numpy's fixed-width ``<U`` with an "unstable specification" warning.
    """
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return np.arange(estimator.n_features_in_)
    return np.array([str(n) for n in names], dtype=object)


def parameter_coords(n_components: int, features: np.ndarray, n_iterations: int = 0) -> dict:
    """Coordinates of ``component``, ``feature`` (also as rows and columns) and ``iteration``."""
    return {
        "component": np.arange(n_components),
        "feature": features,
        **dict.fromkeys(MATRIX_DIMS, features),
        "iteration": np.arange(1, n_iterations + 1),
    }


def mixture_dataset(gm: Any) -> xr.Dataset:
    """Dataset of a fitted GaussianMixture (the GM names of :data:`SCHEMA`)."""
    cov_dims = COVARIANCE_TYPES[gm.covariance_type].dims
    lower_bounds = np.asarray(gm.lower_bounds_, dtype=np.float64)
    ds = schema_dataset(
        GMM,
        {
            "weights": gm.weights_,
            "means": gm.means_,
            "covariances": (cov_dims, gm.covariances_),
            "lower_bound": lower_bounds,
        },
        parameter_coords(gm.n_components, feature_coords(gm), lower_bounds.size),
    )
    ds.attrs.update(fit_attributes(gm))
    ds.attrs.update(
        schema_attrs(
            GMM,
            converged=str(bool(gm.converged_)),
            n_iter=int(gm.n_iter_),
            final_lower_bound=float(gm.lower_bound_),
        )
    )
    return ds


def _clusters_dataset(model: Any, place: str, n_clusters: int, history: dict) -> xr.Dataset:
    """Weights, centres and sizes of a fitted k-means-like model, with its ``history``.

    ``history`` maps one or more per-iteration names of :data:`SCHEMA` to their
    values; the first one sets the length of the ``iteration`` coordinate.
    """
    sizes = np.asarray(model.cluster_weights_, dtype=np.float64)
    n_iterations = np.asarray(next(iter(history.values()))).size
    ds = schema_dataset(
        place,
        {
            "weights": sizes / sizes.sum(),
            "means": model.cluster_centers_,
            "sizes": sizes,
            **history,
        },
        parameter_coords(n_clusters, feature_coords(model), n_iterations),
    )
    ds.attrs.update(fit_attributes(model))
    return ds


def kmeans_dataset(km: Any) -> xr.Dataset:
    """Dataset of a fitted KMeans (the KM names of :data:`SCHEMA`)."""
    inertia = np.asarray(km.inertia_history_, dtype=np.float64)
    ds = _clusters_dataset(km, KMEANS, km.n_clusters, {"inertia": inertia})
    ds.attrs.update(schema_attrs(KMEANS, n_iter=int(km.n_iter_), final_inertia=float(km.inertia_)))
    return ds


def dpmeans_dataset(dp: Any) -> xr.Dataset:
    """Dataset of a fitted DPMeans (the DP names of :data:`SCHEMA`: KMeans's, plus λ)."""
    history = {
        "objective": np.asarray(dp.objective_history_, dtype=np.float64),
        "n_distinct": np.asarray(dp.n_clusters_history_, dtype=np.int64),
    }
    ds = _clusters_dataset(dp, DPMEANS, dp.n_clusters_, history)
    ds.attrs.update(
        schema_attrs(
            DPMEANS,
            n_iter=int(dp.n_iter_),
            final_inertia=float(dp.inertia_),
            final_objective=float(dp.objective_),
            fitted_penalty=float(dp.penalty_),
        )
    )
    return ds


def anneal_dataset(model: Any) -> xr.Dataset:
    """Dataset of a fitted AnnealedGaussianMixture (the AGM names of :data:`SCHEMA`).

    The final model only: its annealing path is ``model.path_``, a Dataset of
    its own (dims ``step``, ``event``; written beside it, e.g. as a group).
    """
    ds = schema_dataset(
        ANNEAL,
        {
            "weights": np.asarray(model.weights_, dtype=np.float64),
            "means": model.means_,
            "sizes": np.asarray(model.kmeans_.cluster_weights_, dtype=np.float64),
        },
        parameter_coords(model.n_components, feature_coords(model)),
    )
    ds.attrs.update(fit_attributes(model))
    ds.attrs.update(
        schema_attrs(
            ANNEAL,
            n_iter=int(model.n_iter_),
            final_inertia=float(model.inertia_),
            sigma2=float(model.sigma2_),
            n_full_passes=int(model.n_full_passes_),
            stop_reason=str(model.stop_reason_),
        )
    )
    return ds


# ---------------------------------------------------------------- the doc
SCHEMA_INTRO = """\
# Export schema

<!-- Generated from SCHEMA in dask_emk/models/export.py by
python -c 'import dask_emk.models.export as e; print(e.schema_markdown(), end="")' >docs/SCHEMA.md
-->

Every model's `to_xarray()`, the annealing path, a pipeline's results store
and the generator's truth use the same names for the same things: one dim
`component` for mixture components and k-means clusters alike, `means` for
means and centres, `weights` for mixing weights and cluster fractions (both
sum to 1; `sizes` holds the unnormalised cluster weights where a model has
them), `feature`, `feature_row`/`feature_col` for covariance matrices,
`iteration` for histories; per-sample outputs are `label`, `responsibility`,
`log_density`, `imputed` wherever they are written (a results store, `dask-emk
predict`, the estimators' xarray results), with CF attributes. scikit-learn's
attribute names stay as they are in Python (`cluster_centers_`, `means_`,
...); the meanings say which one each variable holds. Open a results store
with `xarray.open_zarr(path)` (its metadata is consolidated), its groups with
`group=`.

Where a name occurs (column *in*):
"""


def path_dataset(path: Any, features: np.ndarray, data_mean: np.ndarray) -> xr.Dataset:
    """The annealing path (:class:`dask_emk.models.anneal.AnnealPath`) as an
    ``xarray.Dataset`` (see AnnealedGaussianMixture.path_)."""
    S, C, d = len(path.steps), path.n_slots, features.shape[0]
    means = np.full((S, C, d), np.nan)
    weights = np.full((S, C), np.nan)
    for s, step in enumerate(path.steps):
        means[s, step["slots"]] = step["means"]
        weights[s, step["slots"]] = step["weights"]
    scalars = ("sigma2", "lower_bound", "softness", "n_iter")
    col = {name: np.array([step[name] for step in path.steps]) for name in scalars}
    ev = np.array(path.events, dtype=np.float64).reshape(-1, 5)
    ds = schema_dataset(
        PATH,
        {
            "sigma2": col["sigma2"].astype(np.float64),
            "means": means,
            "weights": weights,
            "lower_bound": col["lower_bound"].astype(np.float64),
            "n_distinct": np.array([len(s["slots"]) for s in path.steps]),
            "softness": col["softness"].astype(np.float64),
            "n_iter": col["n_iter"].astype(np.int64),
            "event_step": ev[:, 0].astype(np.int64),
            "event_kind": ev[:, 1].astype(np.int64),
            "event_component": ev[:, 2].astype(np.int64),
            "event_partner": ev[:, 3].astype(np.int64),
            "event_sigma2": ev[:, 4],
            "data_mean": data_mean,
        },
        {"step": np.arange(S), "component": np.arange(C), "feature": features},
    )
    return ds.assign_attrs(
        schema_attrs(
            PATH,
            description="Deterministic annealing path of a shared-variance mixture",
            event_kind="1 = split (component -> component + partner), "
            "-1 = merge (partner absorbed into component)",
        )
    )


def schema_markdown() -> str:
    """docs/SCHEMA.md: the intro, the places and one table per kind of name."""
    lines = [SCHEMA_INTRO]
    lines += [f"- **{label}**: {text}" for label, text in PLACES.values()]
    for kind, title in KIND_TITLES.items():
        with_dims = kind == VARIABLE
        head = ["name", "dims", "meaning", "in"] if with_dims else ["name", "meaning", "in"]
        lines += ["", f"## {title}", "", _row(head), _row(["---"] * len(head))]
        for n in (n for n in SCHEMA if n.kind == kind):
            cells = [f"`{n.name}`", n.meaning, ", ".join(PLACES[p][0] for p in n.where)]
            if with_dims:
                cells.insert(1, "by covariance type" if n.dims is None else ", ".join(n.dims))
            lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
