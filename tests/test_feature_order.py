"""A Dataset's features are its data variables in name order, whatever order it lists them in.

xarray finds ``ds[["t", "q"]]`` and ``ds[["q", "t"]]`` equal, and a zarr 3
store opened without consolidated metadata lists its variables in a
different order from open to open: the same data must give the same model.
References: scikit-learn's KMeans and GaussianMixture on the numpy matrix
of the variables in name order, from the same initialisation; the model's
own predict on that matrix.
"""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import blobs, fit_quiet, init_params
from pipeline_helpers import assert_one_line_error, invoke, to_toml
from sklearn.cluster import KMeans as SkKMeans
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_emk import GaussianMixture, KMeans

K = 3
DIMS, SHAPE = ("time", "lat"), (30, 20)
NAMES = ["t", "q", "p"]  # the Dataset's order
FEATURES = sorted(NAMES)  # its features' order
ROWS = blobs(n=600, d=3, K=K, seed=7)  # (time, lat) × FEATURES
START = init_params(ROWS, K, "full", seed=2)
MIXTURE = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def dataset(order=NAMES) -> xr.Dataset:
    """ROWS on (time, lat), the variables listed in ``order``."""
    values = {v: (DIMS, ROWS[:, FEATURES.index(v)].reshape(SHAPE)) for v in order}
    coords = {"time": np.arange(SHAPE[0]), "lat": np.linspace(-60.0, 60.0, SHAPE[1])}
    return xr.Dataset(values, coords=coords).chunk({"time": 10})


def gmm() -> GaussianMixture:
    return GaussianMixture(K, tol=0.0, max_iter=8, **START)


def kmeans() -> KMeans:
    return KMeans(K, init=START["means_init"], n_init=1)


@pytest.fixture(autouse=True)
def sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


def assert_same_fit(got, ref, names) -> None:
    for name in names:
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)


# ------------------------------------------------------------ one model
def test_any_variable_order_gives_one_mixture_in_name_order():
    orders = (NAMES, NAMES[::-1], FEATURES)
    assert dataset(NAMES).equals(dataset(NAMES[::-1]))  # xarray: the same data
    fits = [fit_quiet(gmm(), dataset(order)) for order in orders]
    for model in fits:
        assert list(model.feature_names_in_) == FEATURES
        assert_same_fit(model, fits[0], MIXTURE)
    ref = fit_quiet(SkGaussianMixture(K, tol=0.0, max_iter=8, **START), ROWS)
    for name in MIXTURE:
        np.testing.assert_allclose(getattr(fits[0], name), getattr(ref, name), rtol=1e-6)


def test_an_unconsolidated_store_fits_one_kmeans_at_every_open(tmp_path):
    """Written with its variables in reverse name order, opened five times."""
    store = tmp_path / "ds.zarr"
    dataset(FEATURES[::-1]).to_zarr(store, consolidated=False)
    fits = [kmeans().fit(xr.open_zarr(store, consolidated=False)) for _ in range(5)]
    fits.append(kmeans().fit(dataset(NAMES)))
    for model in fits:
        assert list(model.feature_names_in_) == FEATURES
        assert_same_fit(model, fits[0], ("cluster_centers_", "inertia_", "n_iter_"))
    ref = SkKMeans(K, init=START["means_init"], n_init=1).fit(ROWS)
    np.testing.assert_allclose(fits[0].cluster_centers_, ref.cluster_centers_, rtol=1e-10)
    np.testing.assert_array_equal(fits[0].labels_.values.ravel(), ref.labels_)


def test_the_sample_dims_follow_the_first_variable_by_name():
    """'a' on (lat, time), 'b' on (time, lat): rows in (lat, time) order, for either order."""
    ds = dataset(["p", "q"]).rename(p="b", q="a")
    ds["a"] = ds["a"].transpose("lat", "time")
    init = START["means_init"][:, :2]
    fits = [KMeans(K, init=init, n_init=1).fit(ds[order]) for order in (["b", "a"], ["a", "b"])]
    rows = np.stack([ds["a"].values.ravel(), ds["b"].transpose("lat", "time").values.ravel()], 1)
    ref = SkKMeans(K, init=init, n_init=1).fit(rows)
    for model in fits:
        assert list(model.feature_names_in_) == ["a", "b"]
        assert model.labels_.dims == ("lat", "time")
        assert_same_fit(model, fits[0], ("cluster_centers_", "inertia_"))
        np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-10)
        np.testing.assert_array_equal(model.labels_.values.ravel(), ref.labels_)


# ------------------------------------------------ predict by feature name
def test_predict_takes_a_datasets_variables_by_the_models_names():
    model = fit_quiet(gmm(), dataset(NAMES))
    sk = fit_quiet(SkGaussianMixture(K, tol=0.0, max_iter=8, **START), ROWS)
    np.testing.assert_array_equal(model.predict(ROWS), sk.predict(ROWS))
    for order in (NAMES[::-1], FEATURES):
        X = dataset(order)
        np.testing.assert_array_equal(model.predict(X).values.ravel(), model.predict(ROWS))
        proba = model.predict_proba(X).values.reshape(-1, K)
        np.testing.assert_allclose(proba, model.predict_proba(ROWS), rtol=1e-12)
        np.testing.assert_allclose(model.score(X), model.score(ROWS), rtol=1e-12)


def test_a_model_recorded_in_another_order_predicts_by_name():
    """feature_names_in_ not in name order (a model fitted before): columns matched by name."""
    frame = pd.DataFrame(ROWS[:, [FEATURES.index(v) for v in NAMES]], columns=NAMES)
    model = kmeans().fit(frame)
    assert list(model.feature_names_in_) == NAMES
    for order in (NAMES, FEATURES):
        X = dataset(order)
        np.testing.assert_array_equal(model.predict(X).values.ravel(), model.predict(frame))
        np.testing.assert_allclose(model.transform(X).values.reshape(-1, K),
                                   model.transform(frame), rtol=1e-12)  # fmt: skip


def test_dask_emk_predict_follows_the_models_names(tmp_path):
    model_file, store = tmp_path / "km.zarr", tmp_path / "in.zarr"
    model = kmeans().fit(dataset(NAMES))
    model.save(model_file)
    dataset(FEATURES[::-1]).to_zarr(store, consolidated=False)
    out = tmp_path / "out.zarr"
    result = invoke("predict", model_file, store, "--out", out, "--scheduler", "sync")
    assert result.exit_code == 0, result.output
    labels = xr.open_zarr(out)["label"].transpose(*DIMS).values.ravel()
    np.testing.assert_array_equal(labels, model.predict(ROWS))


# ----------------------------------------------------- a missing variable
def test_a_missing_variable_is_named(tmp_path):
    model = kmeans().fit(dataset(NAMES))
    with pytest.raises(ValueError, match=r"\['p'\] missing"):
        model.predict(dataset(["t", "q"]))
    model_file, store = tmp_path / "km.zarr", tmp_path / "in.zarr"
    model.save(model_file)
    dataset(["t", "q"]).to_zarr(store, consolidated=False)
    result = invoke("predict", model_file, store, "--out", tmp_path / "out.zarr")
    assert_one_line_error(result, "(it lacks ['p'])", "--variables")


# ----------------------------------------------- the pipeline's generated grid
def test_a_generated_grid_compares_its_truth_in_the_features_order(tmp_path):
    """x0 … x10 are features in name order (x10 before x2): the truth follows them."""
    from dask_emk.pipeline.config import load_pipeline
    from dask_emk.pipeline.generate import random_mixture, write_grid_zarr
    from dask_emk.pipeline.sources import open_source

    truth = random_mixture(11, 2, seed=1)
    write_grid_zarr(tmp_path / "g.zarr", (2, 4, 6), truth, land=0.0, gaps=0.0, seed=1)
    cfg = {
        "input": {"store": str(tmp_path / "g.zarr")},
        "model": {"type": "kmeans", "n_components": 2, "random_state": 0},
        "output": {"results": str(tmp_path / "r.zarr")},
    }
    (tmp_path / "p.toml").write_text(to_toml(cfg))
    source = open_source(load_pipeline(tmp_path / "p.toml")[0].input)
    labels = list(source.data.feature_labels)
    assert labels == sorted(f"x{i}" for i in range(11)) and labels[2] == "x10"
    at = [int(label[1:]) for label in labels]
    np.testing.assert_array_equal(source.truth.means, truth.means[:, at])
    np.testing.assert_array_equal(source.truth.covariances, truth.covariances[:, at][:, :, at])
