"""The validated pipeline as typed, frozen sections made from the field tables.

A misspelt field is an AttributeError where it is read (not a KeyError on the
one run that reaches the line); each section's attributes are its table's
keys (the [model] ones the estimator's, per model type); and the checkpoint
key and the results' ``pipeline_json`` still see the same plain dict as
before the sections were typed (keys computed by the dict-returning code).
"""

from __future__ import annotations

import dataclasses

import pytest

from dask_emk.pipeline import config

PIPELINE = {"input": {"store": "x.zarr"}, "output": {"results": "r.zarr"}}
#: Pipelines and their config_key as the dict-returning config computed them
#: (commit 0704a97): resuming a checkpoint written before still matches.
KEYS = [
    ({**PIPELINE, "model": {"n_components": 3, "init": "anneal"},
      "anneal": {"max_split_factor": 1}}, "dae17516f26909f7"),
    ({"input": {"generate": {"path": "g.zarr", "n": 1000, "d": 2, "k": 3}, "nan_policy": "omit"},
      "output": {"results": "s3://b/r.zarr", "storage_options": {"anon": False}},
      "model": {"type": "kmeans", "n_components": 4}, "preprocess": {"standardize": True}},
     "e2a45f93970529af"),
]  # fmt: skip


def test_a_misspelt_field_is_an_attribute_error():
    cfg = config.validate({**PIPELINE, "model": {"n_components": 3}})
    assert cfg.output.plots is True and cfg.model.covariance_type == "full"
    with pytest.raises(AttributeError, match="plot"):
        cfg.output.plot  # noqa: B018
    with pytest.raises(AttributeError):
        cfg.model.n_cluster  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.output.plots = False


@pytest.mark.parametrize("kind", list(config.MODELS))
def test_sections_have_the_fields_of_their_tables(kind):
    raw = {**PIPELINE, "model": {"type": kind, "n_components": 3},
           "input": {"generate": {"path": "g.zarr", "n": 10, "d": 2, "k": 3}}}  # fmt: skip
    cfg = config.validate(raw)
    names = {section: [f.name for f in dataclasses.fields(getattr(cfg, section))]
             for section in ("input", "preprocess", "model", "scheduler", "output")}  # fmt: skip
    assert names["input"] == list(config.INPUT_FIELDS)
    assert names["output"] == list(config.OUTPUT_FIELDS)
    assert names["preprocess"] == list(config.PREPROCESS_FIELDS)
    assert names["scheduler"] == list(config.SCHEDULER_FIELDS)
    assert set(names["model"]) == set(config.COMMON_MODEL) | set(config.model_fields(kind))
    assert [f.name for f in dataclasses.fields(cfg.input.generate)] == list(config.GENERATE_FIELDS)
    # the estimator's defaults where the pipeline sets nothing
    estimator = config.MODELS[kind][0].load()()
    for field, param in config.MODELS[kind][1].items():
        if field not in ("n_components", "random_state", "init", "max_iter"):
            assert getattr(cfg.model, field) == getattr(estimator, param), field


@pytest.mark.parametrize(("raw", "key"), KEYS)
def test_the_checkpoint_key_is_unchanged(raw, key):
    assert config.config_key(config.validate(raw)) == key


def test_anneal_section_keeps_what_the_pipeline_set():
    cfg = config.validate({**PIPELINE, "model": {"n_components": 3, "init": "anneal"},
                           "anneal": {"cooling": 0.5}})  # fmt: skip
    assert cfg.anneal.cooling == 0.5 and cfg.anneal.sample_size is None
    assert cfg.anneal.given() == {"cooling": 0.5, "n_components": 3, "random_state": 0}
    assert cfg.as_dict()["anneal"] == cfg.anneal.given()
    assert config.validate({**PIPELINE, "model": {"n_components": 3}}).anneal is None
