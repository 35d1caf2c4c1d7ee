"""`dask-emk fit`, a pipeline and the API give the same model for the same settings.

One table (the estimators' parameter tables and the pipeline's field tables)
makes the ``dask-emk fit`` options and the pipeline fields; these tests fit a
small gridded Dataset store with gaps for each option added to the command
line: the CLI run's model (read back from its results store) equals, bit for
bit, the API's fit on the same data written without dask_emk's config code,
and the pipeline of the same settings validates to the configuration the
CLI ran (the run is a function of it; the first case runs all three).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pipeline_helpers import assert_one_line_error, invoke, open_results, to_toml
from s3_helpers import s3_server
from sklearn.pipeline import Pipeline

import dask_emk
from dask_emk import (
    AnnealedGaussianMixture,
    DPMeans,
    GaussianMixture,
    GaussianMixtureIC,
    KMeans,
    StandardScaler,
)
from dask_emk.engine.locations import storage_options
from dask_emk.pipeline.config import RESULT_SECTIONS, load_pipeline

FITTED = ("weights_", "means_", "covariances_", "cluster_centers_", "mean_", "scale_")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two regimes on (time, lat, lon), land (NaN everywhere) and gaps (NaN in t), a
    cell area variable, and the same two fields as one variable along ``band``."""
    rng = np.random.default_rng(0)
    shape = (6, 10, 12)
    regime = np.broadcast_to(np.arange(shape[2]) >= 6, shape)
    centres = np.array([[0.0, 0.0], [4.0, 2.0]])
    values = centres[regime.astype(int)] + rng.normal(scale=0.7, size=(*shape, 2))
    values[:, rng.random(shape[1:]) < 0.2] = np.nan
    t, q = values[..., 0].copy(), values[..., 1]
    t[rng.random(shape) < 0.05] = np.nan
    lat = np.linspace(-67.5, 67.5, shape[1])
    ds = xr.Dataset(
        {"t": (("time", "lat", "lon"), t), "q": (("time", "lat", "lon"), q),
         "cell_area": (("lat", "lon"), rng.uniform(0.5, 1.5, shape[1:])),
         "field": (("time", "lat", "lon", "band"), np.stack([t, q], axis=-1))},
        coords={"time": pd.date_range("2000-01-01", periods=shape[0]),
                "lat": ("lat", lat, {"units": "degrees_north"}),
                "lon": ("lon", np.arange(shape[2]) * 30.0), "band": ["t", "q"]},
    )  # fmt: skip
    path = tmp_path_factory.mktemp("grid") / "grid.zarr"
    ds.chunk({"time": 2, "band": -1}).to_zarr(path, zarr_format=3, consolidated=False)
    return path


def coslat(ds: xr.Dataset) -> xr.DataArray:
    return np.cos(np.deg2rad(ds["lat"].astype(np.float64)))


#: option(s) -> (dask-emk fit arguments, the pipeline's sections, the API's fit:
#: estimator, its parameters, the variables fitted, the weights, standardized).
OMIT = {"nan_policy": "omit", "variables": ["q", "t"]}
CASES = {
    "nan-policy,variables,weights=coslat": (
        "--nan-policy omit --variables t,q --weights coslat",
        {"input": {"nan_policy": "omit", "variables": ["t", "q"], "weights": "coslat"}},
        GaussianMixture, {"nan_policy": "omit"}, ["t", "q"], coslat, False,
    ),
    "weights=variable": (
        "--nan-policy marginalize --variables q,t --weights cell_area",
        {"input": {"nan_policy": "marginalize", "variables": ["q", "t"],
                   "weights": "cell_area"}},
        GaussianMixture, {"nan_policy": "marginalize"}, ["q", "t"],
        lambda ds: ds["cell_area"], False,
    ),
    "standardize": (
        "--nan-policy omit --variables q,t --weights coslat --standardize",
        {"input": OMIT | {"weights": "coslat"}, "preprocess": {"standardize": True}},
        GaussianMixture, {"nan_policy": "omit"}, ["q", "t"], coslat, True,
    ),
    "n-init,covariance-type": (
        "--nan-policy omit --variables q,t --n-init 2 --covariance-type diag",
        {"input": OMIT, "model": {"n_init": 2, "covariance_type": "diag"}},
        GaussianMixture, {"nan_policy": "omit", "n_init": 2, "covariance_type": "diag"},
        ["q", "t"], None, False,
    ),
    "accelerate,estep,split-every": (
        "--nan-policy omit --variables q,t --accelerate --estep dense --split-every 2",
        {"input": OMIT, "model": {"accelerate": True, "estep": "dense", "split_every": 2}},
        GaussianMixture,
        {"nan_policy": "omit", "accelerate": True, "estep": "dense", "split_every": 2},
        ["q", "t"], None, False,
    ),
    "cache,variance": (
        "--nan-policy omit --variables q,t --cache false --covariance-type shared "
        "--variance 0.5",
        {"input": OMIT, "model": {"cache": False, "covariance_type": "shared",
                                  "variance": 0.5}},
        GaussianMixture, {"nan_policy": "omit", "cache": False, "covariance_type": "shared",
                          "variance": 0.5},
        ["q", "t"], None, False,
    ),
    "feature-dim,sample-dims": (
        "--nan-policy omit --variables field --feature-dim band --sample-dims time,lat,lon",
        {"input": {"nan_policy": "omit", "variables": ["field"], "feature_dim": "band",
                   "sample_dims": ["time", "lat", "lon"]}},
        GaussianMixture,
        {"nan_policy": "omit", "feature_dim": "band", "sample_dims": ["time", "lat", "lon"]},
        "field", None, False,
    ),
    "kmeans:n-init,init-max-iter,algorithm": (
        "--model kmeans --nan-policy omit --variables q,t --n-init 2 --init-max-iter 2 "
        "--algorithm elkan --weights coslat",
        {"input": OMIT | {"weights": "coslat"},
         "model": {"type": "kmeans", "n_init": 2, "init_max_iter": 2, "algorithm": "elkan"}},
        KMeans, {"nan_policy": "omit", "n_init": 2, "init_max_iter": 2, "algorithm": "elkan"},
        ["q", "t"], coslat, False,
    ),
    "anneal:anneal-cooling,anneal-sample-size": (
        "--model anneal --anneal-cooling 0.8 --anneal-sample-size 500 --nan-policy omit "
        "--variables q,t",
        {"input": OMIT, "model": {"type": "anneal"},
         "anneal": {"cooling": 0.8, "sample_size": 500}},
        AnnealedGaussianMixture, {"nan_policy": "omit", "cooling": 0.8, "sample_size": 500},
        ["q", "t"], None, False,
    ),
    "dpmeans:cache": (
        "--model dpmeans --penalty 8 --nan-policy omit --variables q,t --cache true",
        {"input": OMIT, "model": {"type": "dpmeans", "penalty": 8.0, "cache": True}},
        DPMeans, {"nan_policy": "omit", "penalty": 8.0, "cache": True, "n_clusters": None},
        ["q", "t"], None, False,
    ),
    "gmm-ic:init,criterion": (
        "--model gmm-ic --k 3 --criterion aic --init k-means++ --nan-policy omit "
        "--variables q,t",
        {"input": OMIT, "model": {"type": "gmm-ic", "criterion": "aic", "init": "k-means++"}},
        GaussianMixtureIC, {"nan_policy": "omit", "max_components": 3, "criterion": "aic",
                            "init_params": "k-means++"},
        ["q", "t"], None, False,
    ),
}  # fmt: skip


def fitted(model) -> dict[str, np.ndarray]:
    """The fitted parameters of a model, a model search (its best) or a Pipeline."""
    steps = [step for _, step in model.steps] if hasattr(model, "steps") else [model]
    steps = [getattr(step, "best_estimator_", step) for step in steps]
    return {f"{type(step).__name__}.{name}": np.asarray(getattr(step, name))
            for step in steps for name in FITTED if hasattr(step, name)}  # fmt: skip


def assert_same_model(a, b) -> None:
    a, b = fitted(a), fitted(b)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def api_fit(store: Path, case: tuple):
    """The case's fit through the API alone (no config, no CLI)."""
    _, _, cls, params, variables, weights, standardize = case
    ds = xr.open_zarr(store, consolidated=False)
    X = ds[variables]
    w = None if weights is None else weights(ds)
    k = {} if cls in (DPMeans, GaussianMixtureIC) else {"n_clusters" if cls is KMeans
                                                        else "n_components": 2}  # fmt: skip
    model = cls(random_state=0, **k, **params)
    if not standardize:
        return model.fit(X, sample_weight=w)
    layout = {key: params.get(key) for key in ("feature_dim", "sample_dims")}
    scaler = StandardScaler(**layout).fit(X, sample_weight=w)
    model.fit(scaler.transform(X), sample_weight=w)
    return Pipeline([("scaler", scaler), ("model", model)])  # as the results store keeps it


def cli_fit(store: Path, args: str, out: Path):
    k = [] if "--k" in args or "dpmeans" in args else ["--k", 2]
    # no labels written: the models are compared (the read-back test writes them)
    result = invoke("fit", store, *args.split(), *k, "--out", out, "--scheduler", "sync",
                    "--no-plots", "--no-labels", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    return dask_emk.load(out)


def pipeline_file(store: Path, sections: dict, tmp_path: Path, results: str) -> Path:
    cfg = {
        "input": {"store": str(store)},
        "model": {"n_components": 2},
        "output": {"results": results, "plots": False},
        "scheduler": {"address": "sync"},
    }
    for name, changes in sections.items():
        cfg.setdefault(name, {}).update(changes)
    if cfg["model"].get("type") == "dpmeans":
        del cfg["model"]["n_components"]
    if cfg["model"].get("type") == "gmm-ic":
        cfg["model"]["n_components"] = 3
    path = tmp_path / "pipeline.toml"
    path.write_text(to_toml(cfg))
    return path


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_cli_pipeline_and_api_give_the_same_model(store, tmp_path, case):
    args, sections, *_ = CASES[case]
    out = tmp_path / "cli.zarr"
    assert_same_model(cli_fit(store, args, out), api_fit(store, CASES[case]))
    # The pipeline of the same settings is the configuration the CLI ran.
    ran = json.loads(open_results(out).attrs["pipeline_json"])
    cfg, _ = load_pipeline(pipeline_file(store, sections, tmp_path, str(out)))
    assert {name: cfg.as_dict()[name] for name in RESULT_SECTIONS} == {
        name: ran[name] for name in RESULT_SECTIONS
    }


def test_gridded_store_with_gaps_three_ways_read_back(store, tmp_path):
    """The headline case run as CLI, pipeline (`run --out`) and API: one model, and
    labels on the grid (-1 on land and gaps) equal to the API's predictions."""
    case = CASES["nan-policy,variables,weights=coslat"]
    cli = cli_fit(store, case[0], tmp_path / "cli.zarr")
    toml = pipeline_file(store, case[1], tmp_path, "results/run.zarr")
    result = invoke("run", toml, "--out", tmp_path / "placed", "-q")
    assert result.exit_code == 0, result.output
    placed = tmp_path / "placed" / "results" / "run.zarr"
    api = api_fit(store, case)
    assert_same_model(cli, api)
    assert_same_model(dask_emk.load(placed), api)
    labels = open_results(placed)["label"]  # its fill value -1 read as NaN
    assert labels.dims == ("time", "lat", "lon")
    expected = api.predict(xr.open_zarr(store, consolidated=False)[["t", "q"]]).values
    assert (expected == -1).any() and set(np.unique(expected)) == {-1, 0, 1}
    np.testing.assert_array_equal(labels.values, np.where(expected == -1, np.nan, expected))


def test_missing_chunks_fill_is_an_estimator_parameter(store, tmp_path):
    """A store missing a chunk file of t: an error by default; with 'fill' its
    points read as NaN (omitted), the same through the CLI and the API."""
    holed = tmp_path / "holed.zarr"
    shutil.copytree(store, holed)
    (holed / "t" / "c" / "1" / "0" / "0").unlink()
    args = "--nan-policy omit --variables q,t"
    failed = invoke("fit", holed, *args.split(), "--k", 2, "--out", tmp_path / "r.zarr",
                    "--scheduler", "sync", "--no-plots", "-q")  # fmt: skip
    assert_one_line_error(failed, "missing")
    case = (None, None, GaussianMixture, {"nan_policy": "omit", "missing_chunks": "fill"},
            ["q", "t"], None, False)  # fmt: skip
    api = api_fit(holed, case)
    cli = cli_fit(holed, args + " --missing-chunks fill", tmp_path / "filled.zarr")
    assert_same_model(cli, api)
    assert dask_emk.load(tmp_path / "filled.zarr").missing_chunks == "fill"
    # the filled chunk's points are omitted: fewer rows than the whole store's fit
    whole = api_fit(store, case)
    assert not np.array_equal(api.means_, whole.means_)


def test_an_xarray_dataset_store_fits_its_variables(store, tmp_path):
    """`dask-emk fit STORE` on a Dataset store (no array path, no --variables): its
    data variables are the features, sorted by name, as the API fits them."""
    plain = tmp_path / "plain.zarr"
    xr.open_zarr(store, consolidated=False)[["t", "q"]].to_zarr(plain, consolidated=False)
    case = (None, None, GaussianMixture, {"nan_policy": "omit"}, ["q", "t"], None, False)
    cli = cli_fit(plain, "--nan-policy omit", tmp_path / "r.zarr")
    assert_same_model(cli, api_fit(plain, case))
    assert list(cli.feature_names_in_) == ["q", "t"]


def test_missing_chunks_fill_reads_a_store_path_as_the_fill_value(tmp_path):
    """The estimator parameter on a 2-D zarr array named by its path: the rows of a
    missing chunk read as NaN (the fill value) and are omitted."""
    import dask.array as da
    import zarr

    X = np.random.default_rng(1).normal(size=(40, 2))
    array = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(10, 2), dtype="f8",
                              fill_value=np.nan)  # fmt: skip
    array[:] = X
    (tmp_path / "x.zarr" / "c" / "1" / "0").unlink()
    with pytest.raises(ValueError, match="missing"):
        KMeans(2, random_state=0, nan_policy="omit").fit(str(tmp_path / "x.zarr"))
    filled = KMeans(2, random_state=0, nan_policy="omit", missing_chunks="fill")
    holed = X.copy()
    holed[10:20] = np.nan
    expected = KMeans(2, random_state=0, nan_policy="omit").fit(da.from_array(holed, (10, 2)))
    np.testing.assert_array_equal(
        filled.fit(str(tmp_path / "x.zarr")).cluster_centers_, expected.cluster_centers_
    )


def test_option_errors_name_the_option(store, tmp_path):
    base = ("fit", store, "--k", 2, "--out", tmp_path / "r.zarr", "--scheduler", "sync")
    assert_one_line_error(invoke(*base, "--cache", "maybe"),
                          "--cache must be 'auto' or True or False, got 'maybe'")  # fmt: skip
    assert_one_line_error(invoke(*base, "--weights", "nope", "--nan-policy", "omit"),
                          "--weights 'nope' is not a data variable", "'cell_area'")  # fmt: skip
    assert_one_line_error(invoke(*base, "--model", "dpmeans", "--n-init", 2),
                          "--n-init does not apply to --model dpmeans")  # fmt: skip
    assert_one_line_error(invoke(*base, "--anneal-cooling", 0.5),
                          "--anneal-cooling sets the annealing", "--init anneal")  # fmt: skip
    assert not (tmp_path / "r.zarr").exists()


def test_every_option_has_help_and_every_model_field_an_option():
    import click

    from dask_emk.pipeline.cli import fit
    from dask_emk.pipeline.config import INPUT_FIELDS, MODELS, PREPROCESS_FIELDS, model_fields

    assert invoke("fit", "--help").exit_code == 0
    ctx = click.Context(fit)
    helps = {param.name: param.get_help_record(ctx)[1] for param in fit.params
             if isinstance(param, click.Option)}  # fmt: skip
    assert all(len(text.split()) > 3 for text in helps.values()), helps  # a sentence each
    fields = {key for kind in MODELS for key in model_fields(kind, defaults=False)}
    fields |= set(PREPROCESS_FIELDS) | set(INPUT_FIELDS) - {"store", "array", "csv", "generate",
                                                             "photo"}  # fmt: skip
    assert fields <= set(helps)
    assert {"n_init", "accelerate", "cache", "nan_policy", "weights", "missing_chunks"} <= fields
    from dask_emk.pipeline.cli import main

    for name, command in main.commands.items():  # every option of every command
        context = click.Context(command)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.get_help_record(context)[1].strip(), (name, param.name)
    version = invoke("--version")
    assert version.exit_code == 0 and dask_emk.__version__ in version.output


@pytest.mark.slow  # an S3 server and four passes over it: ~7 s
def test_storage_options_reach_an_object_store(store, tmp_path):
    """--storage-options (JSON) names the endpoint of an S3 input and output: the
    environment does not; the model is the API's on the local copy."""
    case = CASES["nan-policy,variables,weights=coslat"]
    with s3_server() as env, pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        table = {"endpoint_url": env["AWS_ENDPOINT_URL"]}
        # moto's servers in one process share their buckets: a name of this test's own
        bucket = f"grid-{uuid.uuid4().hex[:8]}"
        fsspec.filesystem("s3").mkdir(bucket)
        xr.open_zarr(store, consolidated=False).to_zarr(
            f"s3://{bucket}/grid.zarr", zarr_format=3, consolidated=False, storage_options=table
        )
        patch.delenv("AWS_ENDPOINT_URL")
        out = f"s3://{bucket}/results.zarr"
        args = [*case[0].split(), "--k", 2, "--storage-options", json.dumps(table)]
        result = invoke("fit", f"s3://{bucket}/grid.zarr", *args, "--out", out, "--scheduler",
                        "sync", "--no-plots", "-q")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "AWS_ENDPOINT_URL" not in os.environ
        with storage_options({f"s3://{bucket}": table}):
            model = dask_emk.load(out)
    assert_same_model(model, api_fit(store, case))


def test_weights_are_part_of_the_checkpoint_key(store):
    """A run resumed with other weights is another fit: its checkpoint does not match."""
    from dask_emk.pipeline.config import config_key, validate

    raw = {"input": {"store": str(store), "nan_policy": "omit"}, "model": {"n_components": 2},
           "output": {"results": "r.zarr"}}  # fmt: skip
    keys = {
        config_key(validate({**raw, "input": raw["input"] | extra}))
        for extra in ({}, {"weights": "coslat"}, {"weights": "cell_area"})
    }
    assert len(keys) == 3


def test_run_out_places_relative_results_and_refuses_absolute_ones(store, tmp_path):
    toml = pipeline_file(
        store, CASES["n-init,covariance-type"][1], tmp_path, str(tmp_path / "a.zarr")
    )
    failed = invoke("run", toml, "--out", tmp_path / "placed")
    assert_one_line_error(failed, "--out", "names its own place", "make results relative")
    assert not (tmp_path / "placed").exists() and not (tmp_path / "a.zarr").exists()
