"""The parameter tables (dask_emk.models.params) against the estimators and the pipeline."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

from dask_emk import (
    AnnealedGaussianMixture,
    DPMeans,
    GaussianMixture,
    GaussianMixtureIC,
    KMeans,
)
from dask_emk.models.params import GMM_INITS, Integer, Real, validate_params
from dask_emk.pipeline import config
from dask_emk.pipeline.config import PipelineError

ESTIMATORS = [GaussianMixture, KMeans, AnnealedGaussianMixture, DPMeans, GaussianMixtureIC]
X = np.random.default_rng(0).normal(size=(40, 2))
#: The parameters that take a bool (cache also takes 'auto').
BOOLEAN = {"warm_start", "accelerate", "copy_x", "cache"}


def constructor_params(cls) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def documented(cls) -> dict[str, str]:
    """Parameter name -> its type line in the class docstring's Parameters section."""
    section = cls.__doc__.split("Parameters\n    ----------\n")[1].split("\n    Attributes")[0]
    types = {}
    for names, kind in re.findall(r"^    (\w+(?:, \w+)*) : (.*)$", section, flags=re.M):
        types.update(dict.fromkeys(names.split(", "), kind))
    return types


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_every_parameter_has_one_entry_and_a_doc(cls):
    assert list(cls._parameter_specs) == constructor_params(cls)
    assert set(documented(cls)) == set(constructor_params(cls))


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_defaults_pass(cls):
    validate_params(cls())


@pytest.mark.parametrize(
    "cls, name",
    [(cls, name) for cls in ESTIMATORS for name in constructor_params(cls) if name not in BOOLEAN],
)
@pytest.mark.parametrize("flag", [True, False, np.True_])
def test_bools_are_refused_everywhere_but_booleans(cls, name, flag):
    with pytest.raises(ValueError, match=rf"^{name} must be .*, got {flag!r}\.$"):
        cls(**{name: flag}).fit(X)


@pytest.mark.parametrize("cls, name", [(cls, name) for cls in ESTIMATORS for name in sorted(BOOLEAN)
                                       if name in constructor_params(cls)])  # fmt: skip
def test_booleans_refuse_numbers(cls, name):
    validate_params(cls(**{name: np.True_}))
    with pytest.raises(ValueError, match=rf"{name} must be (.* or )?True or False, got 1\."):
        cls(**{name: 1}).fit(X)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_none_is_accepted_exactly_where_documented(cls):
    for name, kind in documented(cls).items():
        says_none = "optional" in kind or "None" in kind
        model = cls(**{name: None})
        if says_none:
            validate_params(model)
        else:
            with pytest.raises(ValueError, match=rf"^{name} must be .*, got None\.$"):
                validate_params(model)


@pytest.mark.parametrize(
    "cls, name, value, allowed",
    [
        (GaussianMixture, "variance", True, "a positive finite number or None"),
        (GaussianMixture, "n_init", 1.0, "an integer >= 1"),
        (GaussianMixture, "reg_covar", np.nan, "a non-negative number"),
        (GaussianMixture, "init_params", "kmeans++", f"one of {GMM_INITS}"),
        (GaussianMixture, "means_init", "abc", r"an array of shape \(n_components, n_fea"),
        (GaussianMixture, "callback", 3, "a callable or None"),
        (KMeans, "n_init", "many", r"'auto' or an integer >= 1"),
        (KMeans, "init", True, r"one of \('k-means\|\|', 'k-means\+\+', 'random'\) or an array"),
        (KMeans, "oversampling_factor", -1, "a non-negative number"),
        (KMeans, "random_state", 1.5, r"None, an integer in \[0, 2\*\*32 - 1\] or a numpy"),
        (AnnealedGaussianMixture, "cooling", True, "a number strictly between 0 and 1"),
        (AnnealedGaussianMixture, "max_split_factor", 0.5, "a number >= 1"),
        (AnnealedGaussianMixture, "sigma2_stop", np.inf, "a positive finite number or None"),
        (AnnealedGaussianMixture, "verbose", -1, "an integer >= 0"),
    ],
)
def test_message_names_parameter_value_and_what_is_allowed(cls, name, value, allowed):
    got = re.escape(repr(value))
    with pytest.raises(ValueError, match=rf"^{name} must be {allowed}.*, got {got}"):
        cls(**{name: value}).fit(X)


def test_numpy_scalars_are_numbers():
    validate_params(GaussianMixture(np.int64(2), tol=np.float32(0.5), max_iter=np.uint8(3)))
    assert not Integer(0).accepts(np.True_) and not Real(ge=0).accepts(np.False_)
    assert Real(gt=0, lt=np.inf).bounds() == "> 0 and finite"


# ------------------------------------------------------------- the pipeline
PIPELINE = {"input": {"store": "x.zarr"}, "output": {"results": "r.zarr"}}


@pytest.mark.parametrize("kind", list(config.MODELS))
def test_pipeline_fields_are_the_estimators(kind):
    estimator, names = config.MODELS[kind]
    defaults = estimator().get_params()
    for field, (toml_kind, default) in config.MODEL_FIELDS[kind].items():
        assert default == defaults[names[field]], field
        spec = estimator._parameter_specs[names[field]]
        if field == "init":  # the estimator's options and the pipeline's own 'anneal'
            options = spec.values if hasattr(spec, "values") else spec.choices[0].values
            anneal = ("anneal",) if kind in config.ANNEAL_INIT_MODELS else ()
            assert toml_kind == (*anneal, *options)
    assert config.MODEL_FIELDS["gmm"]["init"][0][1:] == GMM_INITS  # random_from_data too


def test_anneal_fields_are_the_estimators():
    fields = config.anneal_fields()
    defaults = AnnealedGaussianMixture().get_params()
    assert list(fields) == constructor_params(AnnealedGaussianMixture)
    assert {key: default for key, (_, default) in fields.items()} == defaults
    kinds = {key: kind for key, (kind, _) in fields.items()}
    # a real parameter with an integer default is still a number (1.5 allowed)
    assert kinds["max_split_factor"] == kinds["sigma2_start"] == config.FLOAT
    assert kinds["random_state"] == kinds["sample_size"] == config.INT


@pytest.mark.parametrize(
    "model, anneal, match",
    [
        ({"max_iter": 0}, None, r"\[model\] max_iter must be >= 1, got 0\."),
        ({"tol": -1.0}, None, r"\[model\] tol must be >= 0, got -1\.0\."),
        ({"random_state": -1}, None, r"\[model\] random_state must be in \[0, 2\*\*32 - 1\]"),
        ({"type": "kmeans", "oversampling_factor": -2}, None, r"\[model\] oversampling_fac"),
        ({"cache": "yes"}, None, r"\[model\] cache must be 'auto' or True or False, got 'yes'"),
        ({"type": "kmeans", "n_init": 0}, None, r"\[model\] n_init must be 'auto' or an int"),
        ({"type": "gmm-ic", "init": "anneal"}, None, r"model\.init must be one of 'kmeans'"),
        ({"init": "anneal"}, {"cooling": 1.5}, r"\[anneal\] cooling must be > 0 and < 1, got 1\.5"),
        ({"init": "anneal"}, {"sigma2_stop": 0}, r"\[anneal\] sigma2_stop must be > 0 and finite"),
        ({"init": "anneal"}, {"cooling": True}, r"anneal\.cooling must be a number, got True"),
    ],
)
def test_pipeline_ranges_come_from_the_tables(model, anneal, match):
    raw = dict(PIPELINE, model={"n_components": 2, **model})
    if anneal is not None:
        raw["anneal"] = anneal
    with pytest.raises(PipelineError, match=rf"^pipeline: {match}"):
        config.validate(raw)


def test_pipeline_fields_build_valid_estimators():
    model, anneal = {"n_components": 3, "init": "anneal"}, {"max_split_factor": 1}
    raw = dict(PIPELINE, model=model, anneal=anneal)
    cfg = config.validate(raw)
    assert cfg.anneal.given() == {"max_split_factor": 1.0, "n_components": 3, "random_state": 0}
    validate_params(AnnealedGaussianMixture(**cfg.anneal.given()))
    cfg = config.validate(dict(PIPELINE, model={"n_components": 3, "init": "random_from_data"}))
    assert config.estimator_params(cfg.model)["init_params"] == "random_from_data"
    for kind in config.MODELS:
        cfg = config.validate(dict(PIPELINE, model={"type": kind, "n_components": 3}))
        estimator = config.MODELS[kind][0](**config.estimator_params(cfg.model))
        validate_params(estimator)
        assert estimator.get_params()["random_state"] == 0
