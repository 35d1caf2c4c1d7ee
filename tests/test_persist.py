"""Model files: save, load, predict bit for bit, on local disk and the S3 test server.

Every estimator (and a scikit-learn Pipeline of ours) is fitted on numpy, on
dask and on a gridded Dataset with land, scattered gaps and a variable on
levels (``nan_policy='omit'``), saved, loaded back, and its predictions
compared with ``np.testing.assert_array_equal`` (NaN where omitted included).
The committed file ``tests/data/model_v1.zarr`` (format 1, written by
:func:`write_fixture`) is read by today's code, predicting what a freshly
fitted model of the same settings predicts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from helpers import blobs
from pipeline_helpers import invoke, to_toml
from s3_helpers import s3_server
from sklearn.pipeline import make_pipeline

import dask_emk
from dask_emk import (
    AnnealedGaussianMixture,
    DPMeans,
    GaussianMixture,
    GaussianMixtureIC,
    KMeans,
    StandardScaler,
)
from dask_emk.models.persist import FORMAT_ATTR, MODEL_GROUP
from dask_emk.pipeline.generate import random_mixture, write_grid_zarr
from dask_emk.pipeline.outputs import UnsafeOutputError

FIXTURE = Path(__file__).parent / "data" / "model_v1.zarr"
K = 3
SHAPE = (6, 8, 10)  # time, lat, lon
LEVELS = [850, 500]


def gridded() -> xr.Dataset:
    """Two surface variables and one on two levels: 4 features on (time, lat, lon), chunked.

    Land (the first two latitudes, NaN in every variable) and 3% scattered NaN.
    """
    n = int(np.prod(SHAPE))
    values = blobs(n=n, d=4, K=K, seed=5).reshape(*SHAPE, 4)
    values[:, :2] = np.nan
    values[np.random.default_rng(1).random(values.shape) < 0.03] = np.nan
    dims = ("time", "lat", "lon")
    coords = {"time": np.arange(SHAPE[0]), "lat": np.linspace(-60, 60, SHAPE[1]),
              "lon": np.arange(SHAPE[2]) * 5.0, "level": LEVELS}  # fmt: skip
    ds = xr.Dataset(
        {
            "temp": (dims, values[..., 0]),
            "salt": (dims, values[..., 1]),
            "z": (("time", "level", "lat", "lon"), np.moveaxis(values[..., 2:], -1, 1)),
        },
        coords=coords,
    )
    ds.level.attrs["positive"] = "down"
    return ds.chunk({"time": 3, "lat": 4})


ROWS = blobs(n=600, d=3, K=K, seed=2)
INPUTS = {
    "numpy": lambda: ROWS,
    "dask": lambda: da.from_array(ROWS, chunks=(150, 3)),
    "gridded": gridded,
}
#: Each estimator with quick settings; ``nan_policy`` is added for the gridded input.
ESTIMATORS = {
    "GaussianMixture": lambda **kw: GaussianMixture(K, max_iter=20, random_state=0, **kw),
    "GaussianMixture-float32": lambda **kw: GaussianMixture(
        K, covariance_type="diag", max_iter=20, random_state=0, **kw
    ),
    "GaussianMixtureIC": lambda **kw: GaussianMixtureIC(
        1, K, covariance_type=["full", "spherical"], max_iter=10, random_state=0, **kw
    ),
    "KMeans": lambda **kw: KMeans(K, n_init=2, random_state=0, **kw),
    "AnnealedGaussianMixture": lambda **kw: AnnealedGaussianMixture(
        K, sample_size=500, random_state=0, **kw
    ),
    "DPMeans": lambda **kw: DPMeans(n_clusters=K, random_state=0, **kw),
    "StandardScaler": lambda **kw: StandardScaler(),
    "Pipeline": lambda **kw: make_pipeline(
        StandardScaler(), GaussianMixture(K, max_iter=20, random_state=0, **kw)
    ),
}
#: The per-sample outputs compared, by estimator.
METHODS = {
    "StandardScaler": ("transform",),
    "KMeans": ("predict", "transform"),
    "DPMeans": ("predict", "transform"),
    "AnnealedGaussianMixture": ("predict", "predict_proba"),
}
MIXTURE_METHODS = ("predict", "predict_proba", "score_samples")


@pytest.fixture(autouse=True)
def sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


def fitted(name: str, kind: str):
    X = INPUTS[kind]()
    if name.endswith("float32"):
        X = X.astype(np.float32)
    options = {"nan_policy": "omit"} if kind == "gridded" and name != "StandardScaler" else {}
    return ESTIMATORS[name](**options).fit(X), X


def outputs(model, X) -> dict:
    """Every compared output of ``model`` on ``X``, in memory (DataArrays kept as they are)."""
    methods = METHODS.get(type(model).__name__, MIXTURE_METHODS)
    computed = dask.compute({m: getattr(model, m)(X) for m in methods})[0]
    return {m: v.compute() if isinstance(v, xr.Dataset) else v for m, v in computed.items()}


def assert_same_outputs(got: dict, expected: dict) -> None:
    """Equal values bit for bit (NaN where omitted), and the same dims and coordinates."""
    for method, value in expected.items():
        other = got[method]
        if isinstance(value, xr.DataArray):
            # The names are dask's graph names (issue 25 §4), not part of the prediction.
            xr.testing.assert_identical(other.rename(None), value.rename(None))
        elif isinstance(value, xr.Dataset):
            xr.testing.assert_identical(other, value)
            other, value = other.to_dataarray(), value.to_dataarray()
        np.testing.assert_array_equal(np.asarray(other), np.asarray(value), method)


def assert_same_state(loaded, model) -> None:
    """The loaded estimator has every attribute of the saved one, with its type and dtype."""
    saved = {k: v for k, v in model.__getstate__().items()}
    assert set(loaded.__dict__) == set(saved)
    for key, value in saved.items():
        other = loaded.__dict__[key]
        assert type(other) is type(value), key
        if isinstance(value, np.ndarray):
            assert other.dtype == value.dtype, key
            np.testing.assert_array_equal(other, value, key)


# ------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("name", ESTIMATORS)
def test_a_loaded_model_predicts_bit_for_bit(name, kind, tmp_path):
    model, X = fitted(name, kind)
    path = tmp_path / "model.zarr"
    dask_emk.save(model, path)
    loaded = dask_emk.load(path)
    assert type(loaded) is type(model)
    if name != "Pipeline":
        assert_same_state(loaded, model)
    assert loaded.get_params(deep=False).keys() == model.get_params(deep=False).keys()
    assert_same_outputs(outputs(loaded, X), outputs(model, X))


def test_the_method_and_the_function_write_the_same_file(tmp_path):
    model, X = fitted("KMeans", "gridded")
    model.save(tmp_path / "a.zarr")
    dask_emk.save(model, tmp_path / "b.zarr")
    a, b = dask_emk.load(tmp_path / "a.zarr"), dask_emk.load(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a.predict(X).values, b.predict(X).values)


def test_a_loaded_model_reads_a_new_dataset_as_the_fit_did(tmp_path):
    """Variables in another order, levels reversed: matched by label as after fit."""
    model, X = fitted("GaussianMixture", "gridded")
    model.save(tmp_path / "m.zarr")
    loaded = dask_emk.load(tmp_path / "m.zarr")
    shuffled = X[["z", "salt", "temp"]].isel(level=[1, 0])
    np.testing.assert_array_equal(loaded.predict(shuffled).values, model.predict(X).values)
    assert list(loaded.feature_names_in_) == list(model.feature_names_in_)
    assert "z[level=850]" in loaded.feature_names_in_


def test_the_file_is_the_export_schema_plus_the_model_group(tmp_path):
    model, _ = fitted("GaussianMixture", "gridded")
    model.save(tmp_path / "m.zarr")
    root = xr.open_zarr(tmp_path / "m.zarr", consolidated=False)
    xr.testing.assert_identical(root.drop_attrs(), model.to_xarray().drop_attrs())
    assert root.attrs[FORMAT_ATTR] == 1
    assert root.attrs["dask_emk_version"] == dask_emk.__version__
    group = xr.open_zarr(tmp_path / "m.zarr", group=MODEL_GROUP, consolidated=False)
    params = json.loads(group.attrs["params"])
    assert params["nan_policy"] == "omit" and params["n_components"] == K
    state = json.loads(group.attrs["state"])
    np.testing.assert_array_equal(group[state["means_"]["__array__"]].values, model.means_)
    assert state["feature_names_in_"]["__strings__"] == list(model.feature_names_in_)


def test_lazy_training_labels_are_left_out_as_by_pickling(tmp_path):
    model, X = fitted("KMeans", "dask")
    model.save(tmp_path / "m.zarr")
    loaded = dask_emk.load(tmp_path / "m.zarr")
    with pytest.raises(AttributeError, match="predict"):
        _ = loaded.labels_
    np.testing.assert_array_equal(loaded.predict(X).compute(), model.labels_.compute())


# ------------------------------------------------------------- safety
def test_an_existing_path_is_never_replaced(tmp_path):
    model, _ = fitted("KMeans", "numpy")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists"):
        model.save(foreign)
    assert os.listdir(foreign) == ["keep.txt"]
    model.save(tmp_path / "m.zarr")
    before = sorted(p.name for p in (tmp_path / "m.zarr").rglob("*"))
    with pytest.raises(ValueError, match="exists"):
        model.save(tmp_path / "m.zarr")
    assert sorted(p.name for p in (tmp_path / "m.zarr").rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr", "notes"]


def test_dask_emk_save_follows_the_output_rule(tmp_path):
    """dask_emk.save replaces only a store it (or a run) wrote, and only with overwrite=True."""
    model, X = fitted("KMeans", "numpy")
    other, _ = fitted("DPMeans", "numpy")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UnsafeOutputError, match="is not a dask-emk results store"):
        dask_emk.save(model, foreign)
    assert os.listdir(foreign) == ["keep.txt"]
    path = tmp_path / "m.zarr"
    dask_emk.save(model, path)
    with pytest.raises(UnsafeOutputError, match="overwrite=True"):
        dask_emk.save(other, path)
    dask_emk.save(other, path, overwrite=True)
    assert isinstance(dask_emk.load(path), DPMeans)
    model.save(tmp_path / "new.zarr")  # unmarked: nothing replaces it
    with pytest.raises(UnsafeOutputError, match="is not a dask-emk results store"):
        dask_emk.save(other, tmp_path / "new.zarr", overwrite=True)
    assert isinstance(dask_emk.load(tmp_path / "new.zarr"), KMeans)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr", "new.zarr", "notes"]


def test_what_cannot_be_saved_is_refused_before_anything_is_written(tmp_path):
    quiet = GaussianMixture(K, max_iter=5, random_state=0, callback=lambda model, info: None)
    model = quiet.fit(ROWS)
    with pytest.raises(TypeError, match="callback"):
        model.save(tmp_path / "m.zarr")
    with pytest.raises(TypeError, match="callback"):
        dask_emk.save(model, tmp_path / "m.zarr")
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="not fitted"):
        KMeans(K).save(tmp_path / "m.zarr")


def test_load_refuses_what_is_not_a_model_file(tmp_path):
    zarr.create_group(tmp_path / "other.zarr", attributes={"title": "data"})
    with pytest.raises(ValueError, match="not a dask-emk model file"):
        dask_emk.load(tmp_path / "other.zarr")
    with pytest.raises(ValueError, match="does not exist"):
        dask_emk.load(tmp_path / "nothing.zarr")


def test_load_builds_no_class_but_its_own(tmp_path):
    model, _ = fitted("KMeans", "numpy")
    model.save(tmp_path / "m.zarr")
    group = zarr.open_group(tmp_path / "m.zarr", path=MODEL_GROUP, mode="r+")
    group.attrs["estimator"] = "Popen"
    with pytest.raises(ValueError, match="class 'Popen', which dask-emk does not load"):
        dask_emk.load(tmp_path / "m.zarr")


def test_a_newer_format_is_refused_naming_the_upgrade(tmp_path):
    model, _ = fitted("KMeans", "numpy")
    model.save(tmp_path / "m.zarr")
    group = zarr.open_group(tmp_path / "m.zarr", mode="r+")
    group.attrs[FORMAT_ATTR] = 2
    with pytest.raises(ValueError, match="format 2.*upgrade dask-emk"):
        dask_emk.load(tmp_path / "m.zarr")


def test_no_pickle_in_a_model_file(tmp_path):
    model, _ = fitted("Pipeline", "gridded")
    dask_emk.save(model, tmp_path / "m.zarr")
    for path in (tmp_path / "m.zarr").rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), path  # pickle protocol 2+


# ------------------------------------------------------------- the fixture
def fixture_model() -> tuple[GaussianMixture, xr.Dataset]:
    """The committed model's settings, fitted on its data (two variables on a small grid)."""
    rows = blobs(n=120, d=2, K=2, seed=7)
    ds = xr.Dataset(
        {
            "u": (("time", "lat"), rows[:, 0].reshape(12, 10)),
            "v": (("time", "lat"), rows[:, 1].reshape(12, 10)),
        },  # fmt: skip
        coords={"time": np.arange(12), "lat": np.linspace(-45, 45, 10)},
    )
    ds["u"][0, 0] = np.nan
    model = GaussianMixture(2, covariance_type="diag", nan_policy="omit", random_state=0)
    return model.fit(ds), ds


def write_fixture() -> None:
    """Write tests/data/model_v1.zarr (run once per format version, then commit it)."""
    fixture_model()[0].save(FIXTURE)


def test_the_committed_format_1_file_loads_and_predicts_as_a_fresh_fit():
    """Today's fit of the same settings finds the same mixture; its components may come
    in another order (a later seeding draws otherwise), so they are matched by their means."""
    loaded = dask_emk.load(FIXTURE)
    fresh, ds = fixture_model()
    assert zarr.open_group(FIXTURE, mode="r").attrs[FORMAT_ATTR] == 1
    distances = np.linalg.norm(loaded.means_[:, None] - fresh.means_[None], axis=-1)
    order = distances.argmin(axis=1)  # fresh component of each loaded one
    assert sorted(order) == list(range(fresh.n_components))
    np.testing.assert_allclose(loaded.means_, fresh.means_[order], rtol=1e-6)
    got, want = loaded.predict(ds).values, fresh.predict(ds).values
    np.testing.assert_array_equal(np.where(got >= 0, order[got], got), want)
    np.testing.assert_allclose(
        loaded.predict_proba(ds).values, fresh.predict_proba(ds).values[..., order],
        rtol=1e-6, atol=1e-12,
    )  # fmt: skip
    assert list(loaded.feature_names_in_) == ["u", "v"] and loaded.nan_policy == "omit"
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert size < 20_000


# ------------------------------------------------------------- object storage
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


@pytest.fixture
def bucket(s3, request) -> str:
    name = "p-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"


@pytest.mark.parametrize("name", ["GaussianMixture", "Pipeline", "AnnealedGaussianMixture"])
def test_a_model_file_on_s3_predicts_bit_for_bit(name, bucket):
    model, X = fitted(name, "gridded")
    url = f"{bucket}/models/m.zarr"
    dask_emk.save(model, url)
    assert_same_outputs(outputs(dask_emk.load(url), X), outputs(model, X))
    with pytest.raises(ValueError, match="exists"):
        dask_emk.save(model, url)
    fs = fsspec.filesystem("s3")
    fs.pipe_file(f"{bucket.removeprefix('s3://')}/theirs.zarr/zarr.json", b"{}")
    with pytest.raises(ValueError, match="exists"):
        dask_emk.save(model, f"{bucket}/theirs.zarr")
    assert fs.cat_file(f"{bucket.removeprefix('s3://')}/theirs.zarr/zarr.json") == b"{}"


# ------------------------------------------------------------- results stores
@pytest.fixture(scope="module")
def grid_store(tmp_path_factory) -> Path:
    """A generated grid: 3 regimes, 30% land, 5% gaps."""
    path = tmp_path_factory.mktemp("grid") / "grid.zarr"
    truth = random_mixture(3, K, separation=8.0, seed=3)
    write_grid_zarr(path, (4, 16, 24), truth, chunks=(2, 8, 12), land=0.3, gaps=0.05, seed=3)
    return path


@pytest.mark.parametrize(
    ("model", "preprocess"),
    [
        ({"type": "gmm", "n_components": K, "max_iter": 5}, {"standardize": True}),
        ({"type": "kmeans", "n_components": K, "init": "k-means++"}, {}),
        ({"type": "gmm-ic", "n_components": K, "max_iter": 5}, {}),
    ],
    ids=["gmm-standardized", "kmeans", "gmm-ic"],
)
def test_a_results_store_is_a_model_file(model, preprocess, tmp_path, grid_store):
    """``dask_emk.load`` of a run's results gives the fitted model: its labels on the
    input are the labels the run stored (a standardised fit: behind its scaler)."""
    cfg = {
        "input": {"store": str(grid_store), "nan_policy": "omit"},
        "model": model,
        "preprocess": preprocess,
        "scheduler": {"address": "sync"},
        "output": {"results": str(tmp_path / "r.zarr"), "plots": False},
    }
    (tmp_path / "p.toml").write_text(to_toml(cfg))
    result = invoke("run", tmp_path / "p.toml", "--quiet")
    assert result.exit_code == 0, result.output
    loaded = dask_emk.load(tmp_path / "r.zarr")
    want = {"gmm": "Pipeline", "kmeans": "KMeans", "gmm-ic": "GaussianMixtureIC"}
    assert type(loaded).__name__ == want[model["type"]]
    stored = xr.open_zarr(tmp_path / "r.zarr", consolidated=False)
    data = xr.open_zarr(grid_store, consolidated=False)[["x0", "x1", "x2"]]
    labels = loaded.predict(data)
    np.testing.assert_array_equal(labels.where(labels >= 0).values, stored["label"].values)
    assert stored.attrs[FORMAT_ATTR] == 1 and stored.attrs["model"] != "Pipeline"
