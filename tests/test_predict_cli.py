"""`dask-emk predict MODEL INPUT --out OUT`: a model file applied to a store, outputs on its grid.

The input: a ``generate --grid`` store (3 regimes, land, scattered gaps) and
a generated row store (``store.zarr/X``). The outputs are read back with a
plain ``xarray.open_zarr`` (consolidated metadata: no warning) and compared
with the loaded model's own ``predict``/``predict_proba``/``score_samples``/
``impute`` on the same data: equal bit for bit, NaN where the model omits a
sample, on the input's dims, coordinates and chunks, with CF attributes.
The output path follows ``run``'s rules; a predict killed while it writes
leaves nothing that opens, and its rerun writes the same store.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
import uuid
import warnings

import fsspec
import numpy as np
import pytest
import xarray as xr
from pipeline_helpers import VENV_BIN, assert_one_line_error, invoke, wait_for
from s3_helpers import s3_server

import dask_emk
from dask_emk import GaussianMixture, KMeans
from dask_emk.pipeline.generate import random_mixture, write_grid_zarr, write_mixture_zarr
from dask_emk.pipeline.outputs import lock_path, partial_path

K, D = 3, 3
SHAPE, CHUNKS = (4, 16, 24), (2, 8, 12)
VARIABLES = ["x0", "x1", "x2"]


def grid(path, shape=SHAPE, chunks=CHUNKS):
    write_grid_zarr(path, shape, random_mixture(D, K, separation=8.0, seed=3), chunks=chunks,
                    land=0.3, gaps=0.05, seed=3)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    return grid(tmp_path_factory.mktemp("grid") / "grid.zarr")


@pytest.fixture(scope="module")
def gmm_file(grid_store, tmp_path_factory):
    """A GaussianMixture fitted on the grid (gaps omitted), saved."""
    path = tmp_path_factory.mktemp("model") / "gmm.zarr"
    data = xr.open_zarr(grid_store, consolidated=False)[VARIABLES]
    GaussianMixture(K, nan_policy="omit", max_iter=20, random_state=0).fit(data).save(path)
    return path


def read(path) -> xr.Dataset:
    """The outputs as a user opens them: plain open_zarr, any warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path)


def inputs(store) -> xr.Dataset:
    return xr.open_zarr(store, consolidated=False)[VARIABLES]


def assert_on_the_grid(out: xr.DataArray, data: xr.Dataset) -> None:
    assert out.dims[:3] == ("time", "lat", "lon")
    for dim in ("time", "lat", "lon"):
        np.testing.assert_array_equal(out[dim].values, data[dim].values)
    assert out.encoding["chunks"][:3] == CHUNKS


def test_predict_writes_labels_and_outputs_on_the_input_grid(tmp_path, grid_store, gmm_file):
    out = tmp_path / "p.zarr"
    result = invoke("predict", gmm_file, grid_store, "--out", out, "--responsibility",
                    "--log-density", "--scheduler", "sync")  # fmt: skip
    assert result.exit_code == 0, result.output
    got, data = read(out), inputs(grid_store)
    model = dask_emk.load(gmm_file)
    labels = model.predict(data)
    omitted = ~np.isfinite(data.to_dataarray().values).all(axis=0)
    assert omitted.any() and not omitted.all()
    want = {"label": labels.where(labels >= 0), "responsibility": model.predict_proba(data),
            "log_density": model.score_samples(data)}  # fmt: skip
    assert set(got.data_vars) == set(want)
    for name, value in want.items():
        assert_on_the_grid(got[name], data)
        np.testing.assert_array_equal(got[name].values, value.values, name)
        assert np.isnan(got[name].values[omitted]).all() and got[name].attrs["long_name"]
    assert set(np.unique(got["label"].values[~omitted])) <= set(range(K))
    assert got["label"].attrs["flag_values"] == [0, 1, 2]
    assert got["label"].attrs["flag_meanings"] == "component_0 component_1 component_2"
    assert got["label"].encoding["_FillValue"] == -1 and got["label"].encoding["dtype"] == "int32"
    assert got["responsibility"].attrs["units"] == "1"
    np.testing.assert_array_equal(got["component"].values, np.arange(K))
    assert got.attrs["model"] == "GaussianMixture" and got.attrs["model_file"] == str(gmm_file)


def test_predict_imputes_under_marginalize(tmp_path, grid_store):
    data = inputs(grid_store)
    model = GaussianMixture(K, nan_policy="marginalize", max_iter=10, random_state=0).fit(data)
    model.save(tmp_path / "m.zarr")
    result = invoke("predict", tmp_path / "m.zarr", grid_store, "--out", tmp_path / "p.zarr",
                    "--impute", "--scheduler", "sync")  # fmt: skip
    assert result.exit_code == 0, result.output
    got = read(tmp_path / "p.zarr")
    want = model.impute(data)
    assert got["imputed"].dims == ("time", "lat", "lon", "feature")
    assert list(got["feature"].values) == VARIABLES
    np.testing.assert_array_equal(got["imputed"].values, want.values)
    land = np.isnan(data.to_dataarray().values).all(axis=0)
    gaps = np.isnan(data.to_dataarray().values).any(axis=0) & ~land
    assert np.isfinite(got["imputed"].values[gaps]).all()  # a gap is filled
    labels = model.predict(data)  # -1 where no feature is observed (land)
    np.testing.assert_array_equal(got["label"].values, labels.where(labels >= 0).values)


def test_predict_on_a_store_of_one_nd_variable(tmp_path, grid_store):
    """A model fitted on an N-D DataArray (features along feature_dim) reads it back so."""
    cube = inputs(grid_store).to_dataarray("var").transpose("time", "lat", "lon", "var")
    cube = cube.rename("fields").chunk({"time": 2, "lat": 8, "lon": 12, "var": -1})
    cube.to_dataset().to_zarr(tmp_path / "cube.zarr", zarr_format=3, consolidated=False)
    stored = xr.open_zarr(tmp_path / "cube.zarr", consolidated=False)["fields"]
    model = KMeans(K, nan_policy="omit", feature_dim="var", random_state=0).fit(stored)
    model.save(tmp_path / "km.zarr")
    loaded = dask_emk.load(tmp_path / "km.zarr")  # labels read from zarr: numpy's StringDType
    assert loaded._feature_labels.dtype == model._feature_labels.dtype
    np.testing.assert_array_equal(loaded._feature_labels, model._feature_labels)
    result = invoke("predict", tmp_path / "km.zarr", tmp_path / "cube.zarr", "--out",
                    tmp_path / "p.zarr", "--scheduler", "sync")  # fmt: skip
    assert result.exit_code == 0, result.output
    labels = model.predict(stored)
    got = read(tmp_path / "p.zarr")["label"]
    assert got.dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(got.values, labels.where(labels >= 0).values)


def renamed(data: xr.Dataset | xr.DataArray, path, **names):
    """``data`` written to a new store at ``path`` with its dims renamed (``old=new``)."""
    data = data.rename(names)
    data = data.to_dataset() if isinstance(data, xr.DataArray) else data
    for variable in data.variables.values():
        variable.encoding = {}  # the source's chunk encoding names the old dims' sizes
    data.to_zarr(path, zarr_format=3, consolidated=False)
    return path


def cube(store) -> xr.DataArray:
    """The grid's variables as one N-D variable ``fields`` on (time, lat, lon, var)."""
    fields = inputs(store).to_dataarray("var").transpose("time", "lat", "lon", "var")
    return fields.rename("fields").chunk({"time": 2, "lat": 8, "lon": 12, "var": -1})


@pytest.mark.parametrize(
    ("layout", "entry_point"),
    [("sample_dims", "cli"), ("feature_dim", "cli"), ("sample_dims", "pipeline")],
)
def test_predict_reads_a_store_whose_dims_are_named_otherwise(
    tmp_path, grid_store, layout, entry_point
):
    """--sample-dims / --feature-dim ([[predict]] sample_dims / feature_dim) name the
    store's dims where they differ from the model's recorded layout: the labels are the
    model's on the store it was fitted on."""
    if layout == "sample_dims":
        data = inputs(grid_store)
        model = GaussianMixture(K, nan_policy="omit", max_iter=5, random_state=0,
                                sample_dims=["time", "lat", "lon"]).fit(data)  # fmt: skip
        store = renamed(data, tmp_path / "renamed.zarr", lat="latitude", lon="longitude")
        options = ["--sample-dims", "time,latitude,longitude"]
    else:
        data = cube(grid_store)
        model = KMeans(K, nan_policy="omit", feature_dim="var", random_state=0).fit(data)
        store = renamed(data, tmp_path / "renamed.zarr", var="band", lat="latitude",
                        lon="longitude")  # fmt: skip
        options = ["--feature-dim", "band"]
    model.save(tmp_path / "m.zarr")
    args = ("predict", tmp_path / "m.zarr", store, "--out", tmp_path / "p.zarr")
    if entry_point == "cli":
        assert_one_line_error(invoke(*args), f"fitted with {layout}", options[0])  # as recorded
        result = invoke(*args, *options, "--scheduler", "sync")
    else:
        entry = {"model": str(tmp_path / "m.zarr"), "store": str(store),
                 "out": str(tmp_path / "p.zarr"), layout: options[1].split(",")}  # fmt: skip
        (tmp_path / "p.toml").write_text(predict_toml([entry]))
        result = invoke("run", tmp_path / "p.toml", "-q")
    assert result.exit_code == 0, result.output
    got = read(tmp_path / "p.zarr")["label"]
    labels = model.predict(data)
    assert got.dims == ("time", "latitude", "longitude")
    assert (labels >= 0).any() and (labels < 0).any()  # land is omitted
    np.testing.assert_array_equal(got.values, labels.where(labels >= 0).values)


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--sample-dims", "time,lat"], ("--sample-dims", "names ['lat']",
                                         "has dims ['time', 'latitude', 'longitude']")),
        (["--feature-dim", "band"], ("--feature-dim", "names ['band']", "has dims")),
        (["--feature-dim", "band", "ROWS"], ("apply to an xarray store",)),
        (["--feature-dim", "time"], ("applies to one N-D variable", "['x0', 'x1', 'x2']")),
    ],
)  # fmt: skip
def test_layout_options_naming_no_dim_of_the_store_fail_before_anything_is_written(
    tmp_path, grid_store, gmm_file, options, fragments
):
    store = renamed(inputs(grid_store), tmp_path / "renamed.zarr", lat="latitude", lon="longitude")
    if options[-1] == "ROWS":
        write_mixture_zarr(tmp_path / "rows.zarr", 100, random_mixture(D, K, seed=1), seed=1)
        store, options = tmp_path / "rows.zarr/X", options[:-1]
    out = tmp_path / "p.zarr"
    assert_one_line_error(invoke("predict", gmm_file, store, "--out", out, *options), *fragments)
    assert not out.exists() and not lock_path(out).exists()


def test_predict_with_a_results_store_on_a_row_array(tmp_path):
    """A run's results are the model; a 2-D array in, outputs along ``sample``."""
    rows = tmp_path / "rows.zarr"
    write_mixture_zarr(rows, 3_000, random_mixture(D, K, seed=1), chunk_rows=700, seed=1)
    result = invoke("fit", f"{rows}/X", "--model", "kmeans", "--k", K, "--out",
                    tmp_path / "r.zarr", "--scheduler", "sync", "-q", "--no-plots")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke("predict", tmp_path / "r.zarr", f"{rows}/X", "--out", tmp_path / "p.zarr",
                    "--scheduler", "sync")  # fmt: skip
    assert result.exit_code == 0, result.output
    got = read(tmp_path / "p.zarr")
    X = xr.open_zarr(rows, consolidated=False)["X"].values
    model = dask_emk.load(tmp_path / "r.zarr")
    assert isinstance(model, KMeans)
    np.testing.assert_array_equal(got["label"].values, model.predict(X))
    stored = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)["label"].values
    np.testing.assert_array_equal(got["label"].values, stored)
    assert got["label"].dims == ("sample",) and got["label"].encoding["chunks"] == (700,)


# ------------------------------------------------------------------ [[predict]] in pipelines
def predict_toml(entries: list[dict], fit: str = "") -> str:
    """A pipeline's text: ``fit`` (its [input], [model], ... sections) and one
    [[predict]] table per entry."""
    def value(v):
        return "[" + ", ".join(f'"{x}"' for x in v) + "]" if isinstance(v, list) else f'"{v}"'

    tables = ["[[predict]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in e.items())
              for e in entries]  # fmt: skip
    return fit + '[scheduler]\naddress = "sync"\n' + "".join(tables)


def test_a_pipeline_predicts_on_another_store_with_the_model_it_fitted(tmp_path, grid_store):
    """[[predict]] after the fit: the second store's outputs equal the results store's
    model applied to it, named and described as dask-emk predict writes them."""
    other = grid(tmp_path / "other.zarr", shape=(2, 16, 24))
    fit = (f'[input]\nstore = "{grid_store}"\nnan_policy = "omit"\n'
           f'[model]\ntype = "gmm"\nn_components = {K}\nmax_iter = 5\n'
           f'[output]\nresults = "{tmp_path / "r.zarr"}"\nplots = false\n')  # fmt: skip
    entry = {"store": str(other), "out": str(tmp_path / "p.zarr"),
             "outputs": ["label", "responsibility"]}  # fmt: skip
    (tmp_path / "p.toml").write_text(predict_toml([entry], fit))
    for _ in range(2):  # the rerun replaces both stores: dask-emk wrote them
        result = invoke("run", tmp_path / "p.toml", "-q")
        assert result.exit_code == 0, result.output
    got, data = read(tmp_path / "p.zarr"), inputs(other)
    model = dask_emk.load(tmp_path / "r.zarr")
    labels, proba = model.predict(data), model.predict_proba(data)
    np.testing.assert_array_equal(got["label"].values, labels.where(labels >= 0).values)
    np.testing.assert_array_equal(got["responsibility"].values, proba.values)
    assert_on_the_grid(got["label"], data)
    assert got["label"].attrs["flag_values"] == [0, 1, 2] and got["label"].attrs["long_name"]
    assert got.attrs["model_file"] == str(tmp_path / "r.zarr")
    # The results store: the same names and attributes for its own per-sample outputs.
    results, fitted = read(tmp_path / "r.zarr"), model.predict(inputs(grid_store))
    np.testing.assert_array_equal(results["label"].values, fitted.where(fitted >= 0).values)
    for name in ("flag_values", "flag_meanings", "long_name"):
        assert results["label"].attrs[name] == got["label"].attrs[name]


def test_a_predict_only_pipeline_applies_a_model_file(tmp_path, grid_store, gmm_file):
    entry = {"model": str(gmm_file), "store": str(grid_store), "out": str(tmp_path / "p.zarr")}
    (tmp_path / "p.toml").write_text(predict_toml([entry]))
    result = invoke("run", tmp_path / "p.toml", "-q", "--no-plots")
    assert result.exit_code == 0, result.output
    labels = dask_emk.load(gmm_file).predict(inputs(grid_store))
    got = read(tmp_path / "p.zarr")
    assert list(got.data_vars) == ["label"]
    np.testing.assert_array_equal(got["label"].values, labels.where(labels >= 0).values)


@pytest.mark.parametrize(
    ("entry", "fit", "fragments"),
    [
        ({}, False, ("[predict #1] needs model", "add [model]")),
        ({"model": "MODEL", "outputs": ["labels"]}, False,
         ("must name at least one of label, responsibility",)),
        ({"outputs": ["responsibility"]}, True,
         ("outputs 'responsibility' is not available for model.type = 'kmeans'",)),
        ({"model": "MODEL", "out": "GRID/p.zarr"}, False, ("[[predict]] out",)),
    ],
)  # fmt: skip
def test_a_predict_step_that_cannot_run_fails_before_anything_is_written(
    entry, fit, fragments, tmp_path, grid_store, gmm_file
):
    def place(value):
        return value.replace("MODEL", str(gmm_file)).replace("GRID", str(grid_store))

    entry = {"store": str(grid_store), "out": str(tmp_path / "p.zarr")} | {
        key: place(value) if isinstance(value, str) else value for key, value in entry.items()
    }
    text = (f'[input]\nstore = "{grid_store}"\nnan_policy = "omit"\n[model]\ntype = "kmeans"\n'
            f'n_components = {K}\n[output]\nresults = "{tmp_path / "r.zarr"}"\n') if fit else ""
    (tmp_path / "p.toml").write_text(predict_toml([entry], text))
    assert_one_line_error(invoke("run", tmp_path / "p.toml", "-q"), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.toml"]


# ------------------------------------------------------------------ rules and errors
def test_the_output_follows_runs_rules(tmp_path, grid_store, gmm_file):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    args = ("--scheduler", "sync")
    result = invoke("predict", gmm_file, grid_store, "--out", foreign, *args)
    assert_one_line_error(result, "is not a dask-emk results store")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    result = invoke("predict", gmm_file, grid_store, "--out", grid_store / "p.zarr", *args)
    assert result.exit_code == 1 and "Error:" in result.output
    out = tmp_path / "p.zarr"
    for _ in range(2):  # the second replaces the first: dask-emk wrote it
        assert invoke("predict", gmm_file, grid_store, "--out", out, *args).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "p.zarr"]


@pytest.mark.parametrize(
    ("model", "option", "fragments"),
    [
        ("kmeans", "--responsibility", ("KMeans gives no responsibility", "drop --responsibility")),
        ("kmeans", "--impute", ("KMeans gives no imputed", "drop --impute")),
        ("data", "--log-density", ("not a dask-emk model file",)),
    ],
)
def test_what_cannot_be_predicted_fails_before_anything_is_written(
    model, option, fragments, tmp_path, grid_store
):
    path = grid_store
    if model == "kmeans":
        path = tmp_path / "km.zarr"
        KMeans(K, nan_policy="omit", random_state=0).fit(inputs(grid_store)).save(path)
    out = tmp_path / "p.zarr"
    result = invoke("predict", path, grid_store, "--out", out, option, "--scheduler", "sync")
    assert_one_line_error(result, *fragments)
    assert not out.exists() and not lock_path(out).exists()


def test_a_store_of_other_variables_is_refused_naming_the_fix(tmp_path, gmm_file):
    other = xr.Dataset({"sst": (("time", "lat"), np.zeros((2, 3)))})
    other.to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    result = invoke("predict", gmm_file, tmp_path / "other.zarr", "--out", tmp_path / "p.zarr")
    assert_one_line_error(result, "--variables")
    result = invoke("predict", gmm_file, tmp_path / "other.zarr", "--out", tmp_path / "p.zarr",
                    "--variables", "sst", "--scheduler", "sync")  # fmt: skip
    assert_one_line_error(result, "other feature labels", "['x0', 'x1', 'x2'] missing")


# ------------------------------------------------------------------ kill and rerun
def _begun_since(path, start_ns: int) -> bool:
    """``path`` exists and was made or changed since ``start_ns`` (not a leftover)."""
    try:
        return path.stat().st_mtime_ns >= start_ns
    except FileNotFoundError:
        return False


def kill_while_building(args, out, sig) -> None:
    """Start ``args``, signal it once it has begun a new ``<out>.partial``, wait for its end."""
    start = time.time_ns()  # a leftover of the previous kill is older; this run removes it
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: _begun_since(partial_path(out), start), 120, "a store being built")
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + sig if sig != signal.SIGKILL else proc.returncode == -sig


@pytest.mark.slow
def test_a_killed_predict_leaves_the_previous_outputs_and_reruns(tmp_path):
    store = grid(tmp_path / "big.zarr", shape=(64, 48, 64), chunks=(2, 48, 64))
    data = inputs(store)
    model = GaussianMixture(K, nan_policy="omit", max_iter=3, random_state=0).fit(data)
    model.save(tmp_path / "m.zarr")
    labels = model.predict(data)
    out = tmp_path / "p.zarr"
    args = [str(VENV_BIN / "dask-emk"), "predict", str(tmp_path / "m.zarr"), str(store), "--out",
            str(out), "--responsibility", "--log-density", "--scheduler", "sync"]  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGKILL):
        kill_while_building(args, out, sig)
        assert not out.exists()  # nothing half-written at the path
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not partial_path(out).exists() and not lock_path(out).exists()
    np.testing.assert_array_equal(read(out)["label"].values, labels.where(labels >= 0).values)
    kill_while_building(args, out, signal.SIGKILL)  # over complete outputs: they stay
    np.testing.assert_array_equal(read(out)["label"].values, labels.where(labels >= 0).values)


# ------------------------------------------------------------------ object storage
@pytest.fixture(scope="module")
def s3():
    """The moto server's environment, set for this process (and its subprocesses)."""
    # fsspec caches S3 file systems by their arguments, not by the endpoint of the
    # environment: none made for another module's server is reused, nor this one later.
    s3fs = fsspec.get_filesystem_class("s3")
    s3fs.clear_instance_cache()
    with s3_server() as env, pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env
    s3fs.clear_instance_cache()


@pytest.mark.slow
def test_predict_on_s3_on_a_local_cluster(s3, tmp_path, gmm_file, grid_store):
    """Model, input and output on the S3 server; the workers of a LocalCluster read and write."""
    bucket = "s3://pr-" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]
    fs = fsspec.filesystem("s3")
    fs.mkdir(bucket.removeprefix("s3://"))
    grid(f"{bucket}/grid.zarr")
    dask_emk.save(dask_emk.load(gmm_file), f"{bucket}/m.zarr")
    result = invoke("predict", f"{bucket}/m.zarr", f"{bucket}/grid.zarr", "--out",
                    f"{bucket}/p.zarr", "--log-density", "--scheduler", "local:2")  # fmt: skip
    assert result.exit_code == 0, result.output
    got, data = read(f"{bucket}/p.zarr"), inputs(grid_store)
    model = dask_emk.load(gmm_file)
    labels = model.predict(data)
    np.testing.assert_array_equal(got["label"].values, labels.where(labels >= 0).values)
    np.testing.assert_array_equal(got["log_density"].values, model.score_samples(data).values)
    assert_on_the_grid(got["label"], data)


def test_a_predict_entry_reads_s3_with_its_own_storage_options(s3, tmp_path, grid_store):
    """Only the [[predict]] entry's storage_options name the S3 endpoint (and a key and
    secret): its store is read from there, predicted as its local copy; the results'
    pipeline attributes hold no secret of it."""
    bucket = f"pr-{uuid.uuid4().hex[:12]}"  # moto's servers in one process share buckets
    table = {"endpoint_url": s3["AWS_ENDPOINT_URL"], "key": "AKIAPREDICTONLY",
             "secret": "predict-s3cr3t"}  # fmt: skip
    fsspec.filesystem("s3").mkdir(bucket)
    inputs(grid_store).to_zarr(f"s3://{bucket}/grid.zarr", zarr_format=3, consolidated=False,
                               storage_options=table)  # fmt: skip
    fit = (f'[input]\nstore = "{grid_store}"\nnan_policy = "omit"\n'
           f'[model]\ntype = "kmeans"\nn_components = {K}\nmax_iter = 5\n'
           f'[output]\nresults = "{tmp_path / "r.zarr"}"\nplots = false\n')  # fmt: skip
    entry = {"store": f"s3://{bucket}/grid.zarr", "out": str(tmp_path / "p.zarr")}
    text = predict_toml([entry], fit) + "[predict.storage_options]\n" + "".join(
        f'{key} = "{value}"\n' for key, value in table.items()
    )
    (tmp_path / "p.toml").write_text(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_ENDPOINT_URL")  # the entry's table alone reaches the server
        result = invoke("run", tmp_path / "p.toml", "-q")
    assert result.exit_code == 0, result.output
    labels = dask_emk.load(tmp_path / "r.zarr").predict(inputs(grid_store))
    got = read(tmp_path / "p.zarr")["label"]
    assert (labels < 0).any() and set(np.unique(labels)) == {-1, 0, 1, 2}
    np.testing.assert_array_equal(got.values, labels.where(labels >= 0).values)
    attrs = read(tmp_path / "r.zarr").attrs
    for secret in ("AKIAPREDICTONLY", "predict-s3cr3t"):
        assert secret not in attrs["pipeline_json"] + attrs["pipeline_toml"]
    assert json.loads(attrs["pipeline_json"])["predict"][0]["storage_options"]["key"] == (
        "<redacted>"
    )
