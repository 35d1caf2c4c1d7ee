"""Pipeline definitions: read a TOML file, check every key and type, fill defaults.

A validated pipeline is a frozen :class:`Pipeline` of frozen sections
``input``, ``preprocess``, ``anneal`` (optional), ``model``, ``scheduler`` and
``output``, whose attributes are the section's fields (a misspelt field is an
AttributeError where it is read, whatever the pipeline holds); see
``pipelines/README.md`` for the fields. Each section's class is made from the
same field table that checks it (``INPUT_FIELDS``, ..., the estimators' tables
for ``[model]`` and ``[anneal]``), so a field is named in one place; the same
tables make the ``dask-emk fit`` options (:mod:`dask_emk.pipeline.fit_options`), so the command
line, a pipeline and the estimators take the same settings.
Validation happens before anything runs or is written, and every error names
the file, the section and the key, and says what to do.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import importlib
import json
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from dask_emk.engine.options import MISSING_CHUNKS, NAN_POLICIES
from dask_emk.models import params
from dask_emk.models.params import Boolean, Either, Integer, Options, RandomState, Real, Spec

#: What a field may hold: a type name, or a tuple of allowed strings.
INT, FLOAT, STR, BOOL, STR_LIST, TABLE = "integer", "number", "string", "boolean", "list", "table"
TABLES = "array of tables"
#: A field's kind: one of the names above, its named options, or None (any scalar).
Kind = str | tuple[str, ...] | None

GENERATE_FIELDS = {
    "path": (STR, None),
    "n": (INT, None),
    "d": (INT, None),
    "k": (INT, None),
    "chunk_rows": (INT, 100_000),
    "seed": (INT, 0),
    "dtype": (("float32", "float64"), "float32"),
    "separation": (FLOAT, 6.0),
    # gridded data instead of rows (n unused): `dask-emk generate --grid`
    "grid": (STR, None),
    "grid_chunks": (STR, None),
    "land": (FLOAT, 0.3),
    "gaps": (FLOAT, 0.03),
}
#: [input.photo]: scikit-learn's sample photograph as a (y, x, band) store with clouds.
PHOTO_FIELDS = {
    "path": (STR, None),
    "image": (("china.jpg", "flower.jpg"), "china.jpg"),
    "clouds": (FLOAT, 0.05),
    "seed": (INT, 0),
}
INPUT_FIELDS = {
    "store": (STR, None),
    "array": (STR, None),
    "csv": (STR, None),
    "columns": (STR_LIST, None),
    "generate": (TABLE, None),
    "photo": (TABLE, None),
    "storage_options": (TABLE, None),
    # xarray (gridded) stores; nan_policy and missing_chunks apply to every store
    "variables": (STR_LIST, None),
    "feature_dim": (STR, None),
    "sample_dims": (STR_LIST, None),
    "nan_policy": (NAN_POLICIES, "raise"),
    "missing_chunks": (MISSING_CHUNKS, "raise"),
    # xarray stores: sample weights, a variable of the store or cos(latitude) (COSLAT)
    "weights": (STR, None),
}
#: ``[input] weights`` that asks for area weights cos(latitude) of gridded data.
COSLAT = "coslat"
#: Keys that make [input] store an xarray store (a Dataset, or an N-D DataArray).
XARRAY_KEYS = ("variables", "feature_dim", "sample_dims")


class LazyEstimator:
    """An estimator class, imported when first called; its parameter table without it.

    Checking a pipeline needs the tables (:mod:`dask_emk.models.params`), not the
    estimators, whose import loads scikit-learn, numba and Dask (about 2 s and
    200 MB): a pipeline error is reported before that. ``_parameter_specs`` is
    the class's own table (tests/test_params.py checks it).
    """

    def __init__(self, name: str, specs: dict[str, Spec], module: str):
        self.__name__ = name
        self._parameter_specs = specs
        self.module = module  # dask_emk.models.<module>, whose docstring describes them

    def load(self) -> type:
        """The estimator class itself (``dask_emk.<name>``)."""
        return getattr(importlib.import_module("dask_emk"), self.__name__)

    def __call__(self, **kwargs: Any) -> Any:
        return self.load()(**kwargs)


GaussianMixture = LazyEstimator("GaussianMixture", params.GAUSSIAN_MIXTURE, "gmm")
KMeans = LazyEstimator("KMeans", params.KMEANS, "kmeans")
AnnealedGaussianMixture = LazyEstimator(
    "AnnealedGaussianMixture", params.ANNEALED_GAUSSIAN_MIXTURE, "anneal"
)
DPMeans = LazyEstimator("DPMeans", params.DPMEANS, "dpmeans")
GaussianMixtureIC = LazyEstimator("GaussianMixtureIC", params.GAUSSIAN_MIXTURE_IC, "ic")

#: The estimator of each model type and the parameter each [model] field sets.
#: A field's kind, allowed values, range and default are the estimator's
#: (its parameter table and constructor), see :func:`model_fields`. Every
#: parameter a pipeline can spell is a field, but those the run sets itself
#: (callback, verbose, warm_start, initial arrays, copy_x), those of the input
#: layout ([input] feature_dim, sample_dims, missing_chunks: the run passes them
#: on) and AnnealedGaussianMixture's ([anneal]).
MODELS = {
    "gmm": (GaussianMixture, {
        "n_components": "n_components", "random_state": "random_state",
        "covariance_type": "covariance_type", "init": "init_params", "tol": "tol",
        "reg_covar": "reg_covar", "max_iter": "max_iter", "n_init": "n_init",
        "accelerate": "accelerate", "variance": "variance", "estep": "estep", "cache": "cache",
        "split_every": "split_every", "nan_policy": "nan_policy",
    }),
    "kmeans": (KMeans, {
        "n_components": "n_clusters", "random_state": "random_state", "init": "init",
        "n_init": "n_init", "tol": "tol", "max_iter": "max_iter",
        "oversampling_factor": "oversampling_factor", "init_max_iter": "init_max_iter",
        "algorithm": "algorithm", "cache": "cache", "split_every": "split_every",
        "nan_policy": "nan_policy",
    }),
    "anneal": (AnnealedGaussianMixture, {
        "n_components": "n_components", "random_state": "random_state",
        "nan_policy": "nan_policy",
    }),
    "dpmeans": (DPMeans, {
        "n_components": "n_clusters", "random_state": "random_state", "penalty": "penalty",
        "tol": "tol", "max_iter": "max_iter", "cache": "cache", "split_every": "split_every",
        "nan_policy": "nan_policy",
    }),
    # A search: n_components is the largest K tried.
    "gmm-ic": (GaussianMixtureIC, {
        "n_components": "max_components", "min_components": "min_components",
        "random_state": "random_state", "covariance_type": "covariance_type",
        "criterion": "criterion", "init": "init_params", "tol": "tol", "reg_covar": "reg_covar",
        "max_iter": "max_iter", "n_init": "n_init", "accelerate": "accelerate", "estep": "estep",
        "cache": "cache", "split_every": "split_every", "nan_policy": "nan_policy",
    }),
}  # fmt: skip
#: Fields of every model type; a pipeline names n_components (dpmeans: it or
#: penalty) and seeds with 0.
COMMON_MODEL: dict[str, tuple[Kind, Any]] = {
    "type": (tuple(MODELS), "gmm"),
    "n_components": (INT, None),
    "random_state": (INT, 0),
}
#: The pipeline's own rules on top of the estimators': init from the [anneal]
#: stage, and at least one iteration (a run's history and checkpoints count them).
PIPELINE_INIT = "anneal"
#: The model types whose init may be PIPELINE_INIT (run.fit_model starts them from it).
ANNEAL_INIT_MODELS = ("gmm", "kmeans")
PIPELINE_SPECS = {"max_iter": Integer(1)}
#: [anneal] takes every AnnealedGaussianMixture parameter, under its own name.
ANNEAL_PARAMETERS = {name: name for name in AnnealedGaussianMixture._parameter_specs}


def anneal_fields(defaults: bool = True) -> dict:
    """Allowed [anneal] keys: AnnealedGaussianMixture's parameters, kinds and defaults
    (None without ``defaults``: the estimator is not imported)."""
    return _estimator_fields(AnnealedGaussianMixture, ANNEAL_PARAMETERS, defaults)


@functools.cache
def model_fields(kind: str, defaults: bool = True) -> dict:
    """[model] fields of a model type beyond :data:`COMMON_MODEL`, from its estimator
    (defaults None without ``defaults``: the estimator is not imported)."""
    estimator, names = MODELS[kind]
    fields = _estimator_fields(estimator, names, defaults)
    if "init" in fields and kind in ANNEAL_INIT_MODELS:
        options, default = fields["init"]
        fields["init"] = ((PIPELINE_INIT, *options), default)
    return {key: value for key, value in fields.items() if key not in COMMON_MODEL}


def field_specs(estimator: Any, names: dict) -> dict[str, Spec]:
    """What each field may hold: the estimator's spec of its parameter (or the pipeline's)."""
    return {
        field: PIPELINE_SPECS.get(field, estimator._parameter_specs[param])
        for field, param in names.items()
    }


def estimator_params(model: Section) -> dict:
    """The estimator parameters a validated [model] section sets (init as given)."""
    return {param: getattr(model, field) for field, param in MODELS[model.type][1].items()}


def _estimator_fields(estimator: Any, names: dict, defaults: bool = True) -> dict:
    """Fields named after ``names`` (field -> parameter) with the estimator's kinds
    and defaults (numbers as TOML floats where the parameter is a real number;
    None without ``defaults``, which only the estimator's constructor knows)."""
    given = estimator().get_params(deep=False) if defaults else dict.fromkeys(names.values())
    fields = {}
    for field, spec in field_specs(estimator, names).items():
        kind = _toml_kind(spec)
        default = given[names[field]]
        fields[field] = (kind, float(default) if kind == FLOAT and default is not None else default)
    return fields


def _toml_kind(spec: Spec) -> Kind:
    """The TOML kind of a parameter: its named options, integer, number or boolean
    (None, any scalar, for a parameter TOML cannot spell or that mixes kinds, as
    cache = "auto" | true: :func:`_check_ranges` checks it against the spec)."""
    if isinstance(spec, Either):  # e.g. KMeans init: names or an array (not in TOML)
        kinds = {_toml_kind(choice) for choice in spec.choices} - {None}
        return kinds.pop() if len(kinds) == 1 else None
    if isinstance(spec, Options):
        return spec.values
    if isinstance(spec, params.InputOption) and spec.name == "nan_policy":
        return NAN_POLICIES
    return {Integer: INT, RandomState: INT, Real: FLOAT, Boolean: BOOL}.get(type(spec))




def __getattr__(name: str) -> dict[str, dict]:
    # MODEL_FIELDS holds the estimators' defaults: computed (imported) on first use
    if name == "MODEL_FIELDS":
        return {kind: model_fields(kind) for kind in MODELS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SCHEDULER_FIELDS = {"address": (STR, "local")}
OUTPUT_FIELDS = {
    "results": (STR, None),
    "labels": (BOOL, True),
    "responsibilities": (BOOL, False),
    "log_density": (BOOL, False),
    "plots": (BOOL, True),
    "checkpoint": (BOOL, True),
    "storage_options": (TABLE, None),
    "map_slice": (TABLE, None),
}
#: [preprocess]: standardize fits a StandardScaler on the input and the model on its
#: output; results are reported in the data's units.
PREPROCESS_FIELDS = {"standardize": (BOOL, False)}
#: [[predict]]: apply the fitted model (or a model file) to another store after the
#: fit, writing ``out`` as ``dask-emk predict`` does; a pipeline without [model]
#: only predicts (every entry names its model file). feature_dim and sample_dims
#: default to the model's; storage_options open the entry's store.
PREDICT_FIELDS = {
    "store": (STR, None),
    "array": (STR, None),
    "variables": (STR_LIST, None),
    "out": (STR, None),
    "outputs": (STR_LIST, ["label"]),
    "model": (STR, None),
    "missing_chunks": (MISSING_CHUNKS, "raise"),
    **{key: INPUT_FIELDS[key] for key in ("feature_dim", "sample_dims", "storage_options")},
}
#: Sections a predict-only pipeline (no [model]) cannot have: they describe a fit.
FIT_SECTIONS = ("input", "preprocess", "anneal", "output")
TOP_FIELDS = {"description": STR, "input": TABLE, "anneal": TABLE, "model": TABLE}
TOP_FIELDS |= {"scheduler": TABLE, "output": TABLE, "preprocess": TABLE, "predict": TABLES}
#: Sections whose content decides the fitted result (the checkpoint key).
RESULT_SECTIONS = ("input", "preprocess", "anneal", "model")


class Section:
    """A validated pipeline section: its fields are attributes (frozen)."""

    if TYPE_CHECKING:  # the fields are made from the tables at import: any name, to mypy

        def __getattr__(self, name: str) -> Any: ...

    def as_dict(self) -> dict:
        """The section as the plain dict it was validated as (nested sections too)."""
        fields = dataclasses.fields(cast(Any, self))  # a dataclass made by section_class
        return {f.name: _plain(getattr(self, f.name)) for f in fields}

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (field: value)."""
        return dataclasses.replace(cast(Any, self), **changes)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):  # [[predict]]
        return [_plain(v) for v in value]
    return value.as_dict() if isinstance(value, Section) else value


def section_class(
    name: str, fields: Iterable[str], default: Any = dataclasses.MISSING, base: type = Section
) -> type[Section]:
    """A frozen dataclass with one attribute per key of the field table ``fields``."""
    spec = [(key, Any, dataclasses.field(default=default)) for key in fields]
    return cast(type[Section], dataclasses.make_dataclass(name, spec, bases=(base,), frozen=True))


InputSection = section_class("InputSection", INPUT_FIELDS)
GenerateSection = section_class("GenerateSection", GENERATE_FIELDS)
PhotoSection = section_class("PhotoSection", PHOTO_FIELDS)
PreprocessSection = section_class("PreprocessSection", PREPROCESS_FIELDS)
SchedulerSection = section_class("SchedulerSection", SCHEDULER_FIELDS)
OutputSection = section_class("OutputSection", OUTPUT_FIELDS)
PredictSection = section_class("PredictSection", PREDICT_FIELDS)


class _Given(Section):
    def as_dict(self) -> dict:
        """The fields the pipeline set (the others are the estimator's defaults)."""
        return {key: value for key, value in super().as_dict().items() if value is not None}

    def given(self) -> dict:
        """The estimator parameters the section sets: AnnealedGaussianMixture(**given())."""
        return self.as_dict()


#: [anneal]: every AnnealedGaussianMixture parameter, None where the pipeline
#: leaves the estimator's default (TOML has no null, so None means not given).
AnnealSection = section_class("AnnealSection", ANNEAL_PARAMETERS, default=None, base=_Given)


@functools.cache
def model_section(kind: str) -> type[Section]:
    """The [model] section class of a model type: its fields and the common ones."""
    name = "".join(part.capitalize() for part in kind.split("-")) + "ModelSection"
    return section_class(name, COMMON_MODEL | model_fields(kind, defaults=False))


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: one attribute per section (:data:`TOP_FIELDS`).

    A predict-only pipeline (no [model]) has ``input``, ``preprocess``,
    ``model`` and ``output`` None and its ``predict`` entries name their model.
    """

    description: str
    input: Section | None
    preprocess: Section | None
    model: Section | None  # of model_section(type)
    anneal: Section | None
    scheduler: Section
    output: Section | None
    predict: tuple[Section, ...] = ()

    def as_dict(self) -> dict:
        """The pipeline as the nested dict it was validated as (for hashing and JSON)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> Pipeline:
        """A copy with ``changes`` (section: new section)."""
        return dataclasses.replace(self, **changes)


def _typed(cfg: dict) -> Pipeline:
    """The validated dict as a :class:`Pipeline`."""
    predict = tuple(PredictSection(**entry) for entry in cfg["predict"])
    if cfg["model"] is None:
        return Pipeline(cfg["description"], None, None, None, None,
                        SchedulerSection(**cfg["scheduler"]), None, predict)  # fmt: skip
    inputs = dict(cfg["input"])
    for key, section in (("generate", GenerateSection), ("photo", PhotoSection)):
        if inputs[key] is not None:
            inputs[key] = section(**inputs[key])
    anneal = cfg["anneal"]
    return Pipeline(
        description=cfg["description"],
        input=InputSection(**inputs),
        preprocess=PreprocessSection(**cfg["preprocess"]),
        model=model_section(cfg["model"]["type"])(**cfg["model"]),
        anneal=None if anneal is None else AnnealSection(**anneal),
        scheduler=SchedulerSection(**cfg["scheduler"]),
        output=OutputSection(**cfg["output"]),
        predict=predict,
    )


#: Folder of the example pipelines inside the package (``dask-emk run quickstart``).
PACKAGED_PIPELINES = "pipelines"


class PipelineError(ValueError):
    """A pipeline definition that cannot run; the message says what to fix."""


def load_pipeline(path: str | Path) -> tuple[Pipeline, str]:
    """Read and validate a pipeline TOML file, or a packaged pipeline by name.

    ``path`` may name a pipeline shipped with dask-emk (``quickstart``,
    :func:`packaged_pipelines`) when no such file exists: its input files are
    read from the package, its outputs go where its (relative) paths say,
    under the current directory.

    Parameters
    ----------
    path : str or Path
        A TOML file, or the name of a packaged pipeline (``quickstart``).

    Returns
    -------
    config : Pipeline
        Validated, with defaults filled in.
    text : str
        The file's text, kept verbatim in the results' attributes.
    """
    path = Path(path)
    packaged = packaged_pipelines().get(str(path)) if not path.exists() else None
    try:
        text = (packaged or path).read_text(encoding="utf-8-sig")  # a BOM is dropped
    except OSError as exc:
        names = ", ".join(packaged_pipelines())
        raise PipelineError(
            f"cannot read pipeline {path}: {exc.strerror}; check the path "
            f"(or name a packaged pipeline: {names})."
        ) from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 by definition
        raise not_utf8(f"pipeline {path}", exc) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: invalid TOML: {exc}; fix the syntax.") from None
    if packaged is not None:
        _packaged_inputs(raw.get("input"))
    return validate(raw, source=str(path)), text


def packaged_pipelines() -> dict[str, Path]:
    """The example pipelines shipped in the package: name (``quickstart``) -> file.

    In a clone these files are links to the repository's ``pipelines/``, the
    one source of both.

    Returns
    -------
    dict of str to Path
        The files, by name, sorted.
    """
    folder = resources.files("dask_emk") / PACKAGED_PIPELINES
    if not folder.is_dir():
        return {}
    files = (Path(str(f)) for f in folder.iterdir() if f.name.endswith(".toml"))
    return {f.stem: f for f in sorted(files)}


def _packaged_inputs(inputs: object) -> None:
    """Point a packaged pipeline's relative input files at the package's copies
    (``data/faithful.csv``); outputs stay relative to the current directory."""
    if not isinstance(inputs, dict):
        return  # validate() reports it
    root = Path(str(resources.files("dask_emk")))
    for key in ("csv", "store"):
        value = inputs.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and (root / value).exists():
            inputs[key] = str(root / value)


def not_utf8(what: str, exc: UnicodeDecodeError) -> PipelineError:
    """The error for a text file (``what``) that is not UTF-8."""
    byte = exc.object[exc.start]
    return PipelineError(
        f"{what} is not UTF-8 text (byte {byte:#04x} at position {exc.start}); save it as UTF-8."
    )


def validate(raw: dict, source: str = "pipeline") -> Pipeline:
    """Check a pipeline dict and return a copy with defaults filled in.

    Parameters
    ----------
    raw : dict
        The pipeline's sections, as read from TOML.
    source : str
        The pipeline's name in error messages (its file, or ``dask-emk fit``).

    Returns
    -------
    Pipeline
        Every section and field, defaults filled in.

    Raises
    ------
    PipelineError
        Unknown key, wrong type, missing required field or inconsistent sections.
    """
    cfg = {}
    _check_keys(raw, TOP_FIELDS, "top level", source)
    for key, kind in TOP_FIELDS.items():
        if key in raw:
            _check_value(raw[key], kind, f"{key}", source)
    if "model" not in raw and "predict" in raw:
        return _typed(_validate_predict_only(raw, source))
    for name in ("input", "model", "output"):
        if name not in raw:
            raise PipelineError(
                f"{source}: missing section [{name}]; add it (see pipelines/README.md)."
            )
    cfg["description"] = raw.get("description", "")
    cfg["input"] = _validate_input(raw["input"], source)
    cfg["preprocess"] = _fill(raw.get("preprocess", {}), PREPROCESS_FIELDS, "preprocess", source)
    cfg["model"] = _validate_model(raw["model"], source)
    cfg["anneal"] = _validate_anneal(raw.get("anneal"), cfg["model"], source)
    cfg["scheduler"] = _fill(raw.get("scheduler", {}), SCHEDULER_FIELDS, "scheduler", source)
    cfg["output"] = _fill(raw["output"], OUTPUT_FIELDS, "output", source)
    _require(cfg["output"], "results", "output", source)
    for dim, index in (cfg["output"]["map_slice"] or {}).items():
        _check_value(index, INT, f"output.map_slice.{dim}", source)
    policy = _one_nan_policy(raw, source)
    for name in NAN_POLICY_SECTIONS:
        if cfg.get(name) is not None and "nan_policy" in cfg[name]:
            cfg[name]["nan_policy"] = policy
    if cfg["model"]["type"] == "dpmeans" and cfg["input"]["nan_policy"] == "marginalize":
        raise PipelineError(
            f"{source}: model.type = 'dpmeans' has no [input] nan_policy = 'marginalize'; "
            "set nan_policy = 'omit' or model.type = 'kmeans'."
        )
    unsupported = {"kmeans": ("responsibilities", "log_density"), "anneal": ("log_density",)}
    unsupported["dpmeans"] = unsupported["kmeans"]
    for key in unsupported.get(cfg["model"]["type"], ()):
        if cfg["output"][key]:
            raise PipelineError(
                f"{source}: [output] {key} is not available for model.type = "
                f"{cfg['model']['type']!r}; set {key} = false or model.type = 'gmm'."
            )
    cfg["predict"] = _validate_predict(raw.get("predict", []), source, cfg)
    # last, as they import the estimator (and so scikit-learn): every cheaper check first
    _check_ranges(cfg["model"], field_specs(*MODELS[cfg["model"]["type"]]), "model", source)
    _fill_model_defaults(cfg["model"], raw["model"])
    return _typed(cfg)


def _fill_model_defaults(model: dict, raw: dict) -> None:
    """Put the estimator's defaults in the [model] fields neither the pipeline
    nor :func:`validate` (the run's nan_policy) set."""
    for key, (_, default) in model_fields(model["type"]).items():
        if key not in raw and model[key] is None:
            model[key] = copy.deepcopy(default)


#: Fields added since checkpoints were first keyed, by section (and model type):
#: :func:`config_key` leaves them out at their defaults, so that a checkpoint
#: written before them still matches its pipeline.
ADDED_FIELDS = {
    ("input", None): ("weights",),
    ("model", None): ("n_init", "accelerate", "variance", "estep", "cache", "split_every",
                      "init_max_iter", "algorithm"),
    ("model", "gmm-ic"): ("init",),
}  # fmt: skip


def config_key(cfg: Pipeline) -> str:
    """Hash of the sections that decide the fitted result (checkpoints match on it)."""
    plain = cfg.as_dict()
    decisive = {name: plain[name] for name in RESULT_SECTIONS}
    kind = decisive["model"]["type"]
    for (section, only), keys in ADDED_FIELDS.items():
        fields = INPUT_FIELDS if section == "input" else model_fields(kind)
        for key in keys if only in (None, kind) else ():
            if key in decisive[section] and decisive[section][key] == fields[key][1]:
                del decisive[section][key]
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def _validate_input(raw: dict, source: str) -> dict:
    cfg = _fill(raw, INPUT_FIELDS, "input", source)
    given = [key for key in ("store", "csv", "generate", "photo") if cfg[key] is not None]
    if len(given) != 1:
        raise PipelineError(
            f"{source}: [input] needs exactly one of store, csv, [input.generate] or "
            f"[input.photo], got {given or 'none'}."
        )
    if cfg["generate"] is not None:
        gen = _fill(cfg["generate"], GENERATE_FIELDS, "input.generate", source)
        for key in ("path", "d", "k") if gen["grid"] else ("path", "n", "d", "k"):
            _require(gen, key, "input.generate", source)
        _validate_generated_grid(gen, source)
        for key in ("n", "d", "k", "chunk_rows"):
            if gen[key] is not None and gen[key] < 1:
                raise PipelineError(
                    f"{source}: [input.generate] {key} must be >= 1, got {gen[key]}."
                )
        cfg["generate"] = gen
    if cfg["columns"] is not None and cfg["csv"] is None:
        raise PipelineError(f"{source}: [input] columns applies to csv input only; remove it.")
    _validate_gridded_input(cfg, source)
    return cfg


def _validate_generated_grid(gen: dict, source: str) -> None:
    """[input.generate] grid keys: sizes TxLATxLON, fractions in [0, 1)."""
    if gen["grid"] is None:
        return
    from dask_emk.pipeline.generate import parse_grid  # imports Dask and zarr

    try:
        for key in ("grid", "grid_chunks"):
            if gen[key] is not None:
                parse_grid(gen[key], f"input.generate.{key}")
    except ValueError as exc:
        raise PipelineError(f"{source}: {exc}") from None
    for key in ("land", "gaps"):
        if not 0 <= gen[key] < 1:
            raise PipelineError(
                f"{source}: [input.generate] {key} must be a fraction in [0, 1), got {gen[key]}."
            )


#: Sections that may set nan_policy. [input] reads the store with it and every
#: estimator of the run takes it from there, so where several set it they agree.
NAN_POLICY_SECTIONS = ("input", "model", "anneal")


def _one_nan_policy(raw: dict, source: str) -> str:
    """The run's nan_policy: as set in [input], [model] or [anneal] (default 'raise')."""
    given = {
        name: raw[name]["nan_policy"]
        for name in NAN_POLICY_SECTIONS
        if isinstance(raw.get(name), dict) and "nan_policy" in raw[name]
    }
    if len(set(given.values())) > 1:
        listed = ", ".join(f"[{name}] {value!r}" for name, value in given.items())
        raise PipelineError(
            f"{source}: nan_policy differs between sections ({listed}); set it once, in [input]."
        )
    return next(iter(given.values()), "raise")


def _validate_gridded_input(cfg: dict, source: str) -> None:
    """[input] keys of xarray stores, and [input.photo]."""
    for key in XARRAY_KEYS:
        if cfg[key] is not None and (cfg["store"] is None or cfg["array"] is not None):
            raise PipelineError(
                f"{source}: [input] {key} applies to an xarray store (input.store without "
                "input.array); remove it, or drop input.array."
            )
        if cfg[key] == []:
            raise PipelineError(
                f"{source}: [input] {key} is empty; name at least one, or remove it."
            )
    if cfg["photo"] is not None:
        photo = _fill(cfg["photo"], PHOTO_FIELDS, "input.photo", source)
        _require(photo, "path", "input.photo", source)
        if not 0 <= photo["clouds"] < 1:
            raise PipelineError(
                f"{source}: [input.photo] clouds must be a fraction in [0, 1), "
                f"got {photo['clouds']}."
            )
        cfg["photo"] = photo


def _validate_model(raw: dict, source: str) -> dict:
    kind = raw.get("type", "gmm")
    _check_value(kind, COMMON_MODEL["type"][0], "model.type", source)
    # defaults None: the estimator's are filled in at the end of validate()
    fields = COMMON_MODEL | model_fields(kind, defaults=False)
    cfg = _fill(raw, fields, "model", source)
    if kind != "dpmeans":
        _require(cfg, "n_components", "model", source)
    elif (cfg["n_components"] is None) == (cfg["penalty"] is None):
        raise PipelineError(
            f"{source}: [model] type = 'dpmeans' needs exactly one of penalty (λ, the price "
            "of a cluster in squared data units) or n_components (a target K); give one."
        )
    return cfg


def _validate_anneal(raw: dict | None, model: dict, source: str) -> dict | None:
    wanted = model["type"] == "anneal" or model.get("init") == "anneal"
    if raw is not None and not wanted:
        raise PipelineError(
            f"{source}: [anneal] is given but unused; set model.init = 'anneal' "
            "(or model.type = 'anneal'), or remove [anneal]."
        )
    if not wanted:
        return None
    fields = anneal_fields(defaults=False)  # only the keys given are kept
    cfg = _fill(raw or {}, fields, "anneal", source)
    cfg = {key: value for key, value in cfg.items() if key in (raw or {})}
    _check_ranges(cfg, field_specs(AnnealedGaussianMixture, ANNEAL_PARAMETERS), "anneal", source)
    for key in ("n_components", "random_state"):
        if key in fields:
            cfg.setdefault(key, model[key])
    return cfg


#: Per-sample outputs each model type's fitted model cannot give (their names:
#: dask_emk.models.export.OUTPUTS); ``imputed`` is a GaussianMixture's alone.
NOT_GIVEN = {"kmeans": ("responsibility", "log_density", "imputed"),
             "dpmeans": ("responsibility", "log_density", "imputed"),
             "anneal": ("log_density", "imputed"), "gmm-ic": ("imputed",)}  # fmt: skip


def _validate_predict(entries: list, source: str, cfg: dict | None) -> list[dict]:
    """[[predict]] entries: store and out given, outs distinct, outputs the model gives
    (the fitted model's type decides for an entry without a model file); ``cfg`` is
    the validated pipeline, None for a predict-only one."""
    from dask_emk.models.export import OUTPUTS  # imports xarray: after the cheap checks

    checked: list[dict] = []
    for i, raw in enumerate(entries, 1):
        where = f"predict #{i}"
        entry = _fill(raw, PREDICT_FIELDS, where, source)
        for key in ("store", "out"):
            _require(entry, key, where, source)
        if entry["model"] is None and cfg is None:
            raise PipelineError(
                f"{source}: [{where}] needs model (a model file or results store): a "
                "pipeline without [model] fits none to predict with; add it, or add [model]."
            )
        unknown = [name for name in entry["outputs"] if name not in OUTPUTS]
        if unknown or not entry["outputs"]:
            raise PipelineError(
                f"{source}: [{where}] outputs {entry['outputs']} must name at least one of "
                f"{', '.join(OUTPUTS)}; fix outputs."
            )
        for key in XARRAY_KEYS:
            if entry[key] is not None and entry["array"] is not None:
                raise PipelineError(
                    f"{source}: [{where}] {key} applies to an xarray store (store without "
                    "array); remove it, or drop array."
                )
        if entry["out"] in [e["out"] for e in checked]:
            raise PipelineError(
                f"{source}: [{where}] out {entry['out']!r} is the out of an earlier "
                "[[predict]]; give each its own."
            )
        if entry["model"] is None and cfg is not None:
            _check_fitted_outputs(entry["outputs"], cfg, where, source)
        checked.append(entry)
    return checked


def _check_fitted_outputs(outputs: list[str], cfg: dict, where: str, source: str) -> None:
    """The outputs the pipeline's fitted model gives (behind a StandardScaler: no imputed)."""
    kind = cfg["model"]["type"]
    cannot = NOT_GIVEN.get(kind, ()) + (("imputed",) if cfg["preprocess"]["standardize"] else ())
    for name in outputs:
        if name in cannot:
            raise PipelineError(
                f"{source}: [{where}] outputs {name!r} is not available for model.type = "
                f"{kind!r}{' with standardize' if kind == 'gmm' else ''}; remove it."
            )


def _validate_predict_only(raw: dict, source: str) -> dict:
    """A pipeline of [[predict]] entries only (no [model]): every entry names its model."""
    unused = [f"[{name}]" for name in FIT_SECTIONS if name in raw]
    if unused:
        raise PipelineError(
            f"{source}: {', '.join(unused)} without [model]: a pipeline without [model] only "
            "predicts; add [model] to fit, or remove them."
        )
    if not raw["predict"]:
        raise PipelineError(f"{source}: missing section [model]; add it (see pipelines/README.md).")
    return {
        "description": raw.get("description", ""),
        "model": None,
        "scheduler": _fill(raw.get("scheduler", {}), SCHEDULER_FIELDS, "scheduler", source),
        "predict": _validate_predict(raw["predict"], source, None),
    }


def _check_ranges(cfg: dict, specs: dict[str, Spec], section: str, source: str) -> None:
    """Numbers inside the estimator's range, values of mixed kinds (cache = "auto" |
    true) allowed by the spec; named options are checked by kind."""
    for key, spec in specs.items():
        value = cfg.get(key)
        mixed = isinstance(spec, Either) and _toml_kind(spec) is None
        bounds = getattr(spec, "bounds", None)
        if value is None or not (bounds or mixed) or spec.accepts(value):
            continue
        if mixed or bounds is None:
            allowed, got = spec.describe(), repr(value)
        else:
            allowed, got = bounds(), value
        raise PipelineError(f"{source}: [{section}] {key} must be {allowed}, got {got}.")


def _fill(raw: dict, fields: dict, section: str, source: str) -> dict:
    """Check keys and types of one section; return it with defaults filled in."""
    _check_keys(raw, fields, f"[{section}]", source)
    out = {}
    for key, (kind, default) in fields.items():
        if key in raw:
            _check_value(raw[key], kind, f"{section}.{key}", source)
            out[key] = float(raw[key]) if kind == FLOAT else copy.deepcopy(raw[key])
        else:
            out[key] = copy.deepcopy(default)
    return out


def _check_keys(raw: dict, fields: dict, where: str, source: str) -> None:
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise PipelineError(
                f"{source}: unknown key {key!r} in {where}; {hint}allowed: {', '.join(fields)}."
            )


def _check_value(value: object, kind: Kind, name: str, source: str) -> None:
    if kind is None:
        ok = isinstance(value, (bool, int, float, str))
        expected = "a string, number or boolean"
    elif isinstance(kind, tuple):
        ok = isinstance(value, str) and value in kind
        expected = "one of " + ", ".join(repr(k) for k in kind)
    else:
        ok = {
            INT: isinstance(value, int) and not isinstance(value, bool),
            FLOAT: isinstance(value, (int, float)) and not isinstance(value, bool),
            STR: isinstance(value, str),
            BOOL: isinstance(value, bool),
            STR_LIST: isinstance(value, list) and all(isinstance(v, str) for v in value),
            TABLE: isinstance(value, dict),
            TABLES: isinstance(value, list) and all(isinstance(v, dict) for v in value),
        }[kind]
        expected = {STR_LIST: "a list of strings", TABLE: "a table", INT: "an integer",
                    TABLES: "an array of tables ([[predict]])"}.get(kind, f"a {kind}")  # fmt: skip
    if not ok:
        raise PipelineError(
            f"{source}: {name} must be {expected}, got {value!r} ({_toml_type(value)})."
        )


def _require(cfg: dict, key: str, section: str, source: str) -> None:
    if cfg.get(key) is None:
        raise PipelineError(f"{source}: [{section}] needs {key}; add it.")


def _toml_type(value: object) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string")):
        if isinstance(value, kind):
            return name
    kinds: dict[type, str] = {list: "array", dict: "table"}
    return kinds.get(type(value), type(value).__name__)
