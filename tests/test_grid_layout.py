"""Which dims of gridded input are samples and which features, and how weights and features line up.

The data: ERA-Interim-like ``z``, ``u``, ``v`` on (month, level, latitude,
longitude), float32 latitudes from pole to pole. References: scikit-learn's
KMeans on rows stacked by hand with numpy (features variable × level), and
the same fit with weights given in X's order.
"""

from __future__ import annotations

import logging

import dask
import numpy as np
import pytest
import xarray as xr
from helpers import blobs
from pipeline_helpers import invoke, open_results, to_toml
from sklearn.cluster import KMeans as SkKMeans
from sklearn.pipeline import Pipeline

from dask_emk import KMeans, StandardScaler
from dask_emk.engine.inputs import dim_role

K = 3
SHAPE = (12, 3, 19, 8)  # month, level, latitude (±90 included), longitude
DIMS = ("month", "level", "latitude", "longitude")
NAMES = ["z", "u", "v"]  # the Dataset's order; its features are in name order
VARIABLES = sorted(NAMES)
LEVELS = [300, 500, 850]
LAT = np.linspace(-90, 90, SHAPE[2], dtype=np.float32)
ROWS = blobs(n=12 * 19 * 8, d=9, K=K, seed=5)  # (month, lat, lon) × (variable by name, level)
ORDER = [VARIABLES.index(v) for v in NAMES]  # the Dataset's variables among the features'
CUBE = ROWS.reshape(12, 19, 8, 3, 3)[..., ORDER, :].transpose(0, 4, 1, 2, 3)  # (*DIMS, NAMES)
FEATURES = [f"{v}[level={p}]" for v in VARIABLES for p in LEVELS]
INIT = ROWS[[0, 500, 1000]]


def era(chunks=None) -> xr.Dataset:
    coords = {"month": np.arange(1, 13), "level": LEVELS, "latitude": LAT,
              "longitude": np.arange(SHAPE[3]) * 45.0}  # fmt: skip
    ds = xr.Dataset({v: (DIMS, CUBE[..., i]) for i, v in enumerate(NAMES)}, coords=coords)
    return ds if chunks is None else ds.chunk(chunks)


def kmeans(**kw) -> KMeans:
    return KMeans(K, init=INIT, n_init=1, **kw)


#: One level only: (month, latitude, longitude) × (u, v, z), whatever the layout rules.
SINGLE = ROWS.reshape(-1, 3, 3)[..., 0]


def single_level(chunks=None) -> xr.Dataset:
    return era(chunks).isel(level=0, drop=True)


def kmeans3(**kw) -> KMeans:
    return KMeans(K, init=SINGLE[[0, 500, 1000]], n_init=1, **kw)


@pytest.fixture(autouse=True)
def sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


# ------------------------------------------------------------- the layout
def test_a_level_dim_gives_features_and_the_layout_is_logged(caplog):
    """Levels are features (9 = 3 variables × 3 levels), samples over (month, lat, lon)."""
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        model = kmeans().fit(era({"month": 4, "latitude": 10}))
    ref = SkKMeans(K, init=INIT, n_init=1).fit(ROWS)
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-10)
    assert list(model.feature_names_in_) == FEATURES
    assert model.labels_.dims == ("month", "latitude", "longitude")
    np.testing.assert_array_equal(model.labels_.values.reshape(-1), ref.labels_)
    assert (
        "KMeans fitted on 1824 samples × 9 features; samples from dims "
        "(month 12 × latitude 19 × longitude 8); features ['u[level=300]'" in caplog.text
    )


@pytest.mark.parametrize(
    "dim, attrs, role",
    [
        ("p", {"axis": "Z"}, "vertical"),
        ("p", {"positive": "down"}, "vertical"),
        ("p", {"standard_name": "air_pressure"}, "vertical"),
        ("p", {"units": "hPa"}, "vertical"),
        ("plev", {}, "vertical"),
        ("depth", {}, "vertical"),
        ("level", {"axis": "T"}, "sample"),  # metadata first, the name last
        ("t", {"units": "days since 2000-01-01"}, "sample"),
        ("nav", {"standard_name": "latitude"}, "sample"),
        ("nav", {"units": "degrees_east"}, "sample"),
        ("lat", {}, "sample"),
        ("member", {}, None),
    ],
)
def test_dim_roles_from_cf_metadata_then_names(dim, attrs, role):
    coord = xr.DataArray([1.0, 2.0], dims=dim, attrs=attrs)
    assert dim_role(dim, coord) == role


def test_a_cf_vertical_coordinate_of_any_name_gives_features():
    ds = era().rename(level="p")
    ds["p"].attrs["axis"] = "Z"
    model = kmeans().fit(ds)
    assert model.n_features_in_ == 9 and model.labels_.dims == ("month", "latitude", "longitude")


def test_an_unknown_shared_dim_is_refused_naming_sample_dims():
    ds = era().expand_dims(member=2)
    with pytest.raises(ValueError, match=r"\['member'\] are not known as time.*"
                       r"sample_dims=\['member', 'month', 'latitude', 'longitude'\]"):  # fmt: skip
        kmeans().fit(ds)
    model = KMeans(K, n_init=1, random_state=0, sample_dims=["member", "month", "latitude",
                                                             "longitude"]).fit(ds)  # fmt: skip
    assert model.n_features_in_ == 9
    with pytest.raises(ValueError, match=r"\['member'\] are not known as time"):
        kmeans(feature_dim="var").fit(ds.to_dataarray("var"))


def test_a_dataarray_with_a_level_dim_is_the_dataset_fit():
    """The same data as one DataArray (var, month, level, lat, lon): the same 9
    features in the same order, alone and after the scaler in a Pipeline."""
    X = era({"month": 4})[VARIABLES].to_dataarray("var")  # a DataArray's features: its order
    model = kmeans(feature_dim="var").fit(X)
    ref = SkKMeans(K, init=INIT, n_init=1).fit(ROWS)
    assert list(model.feature_names_in_) == FEATURES
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-10)
    np.testing.assert_array_equal(model.labels_.values.reshape(-1), ref.labels_)
    pipe = Pipeline([("scale", StandardScaler(feature_dim="var")),
                     ("km", KMeans(K, n_init=1, random_state=0))]).fit(X)  # fmt: skip
    manual = KMeans(K, n_init=1, random_state=0).fit(StandardScaler().fit_transform(era()))
    assert list(pipe["km"].feature_names_in_) == FEATURES
    np.testing.assert_allclose(pipe["km"].cluster_centers_, manual.cluster_centers_, rtol=1e-10)


def test_pipeline_takes_the_layout_once_from_the_scaler():
    """sample_dims on the scaler only: the same fit as scaler and model given it each."""
    ds = era({"month": 6}).expand_dims(member=2).chunk({"member": 1})
    dims = ["member", "month", "latitude", "longitude"]
    scaler = StandardScaler(sample_dims=dims).fit(ds)
    manual = KMeans(K, n_init=1, random_state=0, sample_dims=dims).fit(scaler.transform(ds))
    pipe = Pipeline([("scale", StandardScaler(sample_dims=dims)),
                     ("km", KMeans(K, n_init=1, random_state=0))]).fit(ds)  # fmt: skip
    assert pipe["km"].n_features_in_ == manual.n_features_in_ == 9
    np.testing.assert_allclose(pipe["km"].cluster_centers_, manual.cluster_centers_, rtol=1e-12)
    labels = pipe.predict(ds)
    assert labels.dims == tuple(dims)
    np.testing.assert_array_equal(labels.values, manual.labels_.values)


# ---------------------------------------------------------------- weights
def test_weights_are_matched_by_label_not_position():
    """lat running the other way in the weights: the fit with them in X's order."""
    ds = single_level({"month": 4})
    w = np.exp(ds.latitude.astype(np.float64) / 60.0)  # not symmetric about the equator
    ref = kmeans3().fit(ds, sample_weight=w)
    flipped = kmeans3().fit(ds, sample_weight=w.isel(latitude=slice(None, None, -1)))
    np.testing.assert_allclose(flipped.cluster_centers_, ref.cluster_centers_, rtol=1e-10)
    np.testing.assert_allclose(flipped.inertia_, ref.inertia_, rtol=1e-10)
    rows = np.broadcast_to(w.values[None, :, None], (12, *SHAPE[2:])).reshape(-1)
    sk = SkKMeans(K, init=SINGLE[[0, 500, 1000]], n_init=1).fit(SINGLE, sample_weight=rows)
    np.testing.assert_allclose(ref.cluster_centers_, sk.cluster_centers_, rtol=1e-10)
    shifted = w.assign_coords(latitude=w.latitude + 0.5)
    with pytest.raises(ValueError, match=r"sample_weight's 'latitude' labels are not X's"):
        kmeans3().fit(ds, sample_weight=shifted)


@pytest.mark.parametrize("chunks", [None, {"month": 4}], ids=["in-memory", "dask"])
def test_readme_area_weights_work_at_the_poles(chunks):
    """``np.cos(np.deg2rad(ds.lat))`` of float32 latitudes: −4.4e-8 at ±90° counts as 0."""
    ds = era(chunks)
    w = np.cos(np.deg2rad(ds.latitude))  # the README's recipe, as written
    assert w.dtype == np.float32 and w.values[0] < 0
    model = kmeans().fit(ds, sample_weight=w)
    rows = np.broadcast_to(np.maximum(w.values, 0)[None, :, None], (12, *SHAPE[2:]))
    sk = SkKMeans(K, init=INIT, n_init=1).fit(ROWS, sample_weight=rows.reshape(-1))
    np.testing.assert_allclose(model.cluster_centers_, sk.cluster_centers_, rtol=1e-10)
    np.testing.assert_allclose(model.inertia_, sk.inertia_, rtol=1e-10)
    # A weight that is negative beyond rounding still is an error.
    with pytest.raises(ValueError, match=r"negative values \(down to -1e-05\)"):
        kmeans().fit(ds, sample_weight=w.where(w > 0.5, -1e-5))
    with pytest.raises(ValueError, match="negative values"):
        kmeans().fit(ROWS, sample_weight=np.full(ROWS.shape[0], -1e-15))  # float64: beyond


# ------------------------------------------------------- bad shapes, errors
@pytest.mark.parametrize("chunks", [None, {"month": 4}], ids=["in-memory", "dask"])
def test_a_sample_dim_of_length_0_is_one_clear_error(chunks):
    empty = era(chunks).isel(month=slice(0, 0))
    with pytest.raises(ValueError, match=r"X has no samples: its sample dim 'month' has length 0"):
        kmeans().fit(empty)
    with pytest.raises(ValueError, match=r"X has no features: its feature dim 'level' has len"):
        kmeans().fit(era(chunks).isel(level=slice(0, 0)))
    with pytest.raises(ValueError, match=r"X has no samples: its sample dim 'month'"):
        kmeans(feature_dim="var").fit(empty["z"].expand_dims(var=1).isel(level=0))


def test_predict_names_a_missing_or_extra_variable():
    model = kmeans3().fit(single_level())
    with pytest.raises(ValueError, match=r"other feature labels .*: \['v'\] missing"):
        model.predict(single_level()[["z", "u"]])
    with pytest.raises(ValueError, match=r"\['w'\] not seen in fit, none missing"):
        model.predict(single_level().assign(w=single_level().z))


# -------------------------------------------------------- feature order
def test_pipeline_features_in_sorted_or_listed_order(tmp_path):
    """An xarray store opened without consolidated metadata lists its variables in
    any order; the pipeline fits them sorted by name (listed ones too), every time."""
    from dask_emk.pipeline.config import load_pipeline
    from dask_emk.pipeline.sources import open_source

    store = tmp_path / "era.zarr"
    names = ["z", "u", "v", "q", "t2"]
    ds = era().isel(level=0, drop=True)
    ds = ds.assign(q=ds.z * 2.0, t2=ds.u - ds.v)
    ds[names].to_zarr(store, consolidated=False)
    cfg = {
        "input": {"store": str(store), "sample_dims": ["month", "latitude", "longitude"]},
        "model": {"type": "kmeans", "n_components": K, "init": "k-means++", "random_state": 0},
        "scheduler": {"address": "sync"},
        "output": {"results": str(tmp_path / "r.zarr")},
    }
    path = tmp_path / "p.toml"
    path.write_text(to_toml(cfg))
    opened = [open_source(load_pipeline(path)[0].input) for _ in range(6)]
    assert all(list(s.data.feature_labels) == sorted(names) for s in opened)
    result = invoke("run", path, "--quiet")
    assert result.exit_code == 0, result.output
    assert list(open_results(tmp_path / "r.zarr")["feature"].values) == sorted(names)
    cfg["input"]["variables"] = ["z", "u"]
    path.write_text(to_toml(cfg))
    assert list(open_source(load_pipeline(path)[0].input).data.feature_labels) == ["u", "z"]
