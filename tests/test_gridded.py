"""Gridded xarray input with gaps: Datasets and N-D DataArrays, nan_policy, outputs on the grid.

The data: three variables on (time, lat, lon), dask-backed and chunked along
time and lat, with a land mask (a whole band of lat chunks is land, so some
blocks hold no valid point) and 3% scattered NaN. With ``nan_policy='omit'``
every fit must equal scikit-learn's on the valid rows of the stacked array.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from helpers import CountComputes, blobs, fit_quiet, init_params
from sklearn.cluster import KMeans as SkKMeans
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_emk import AnnealedGaussianMixture, GaussianMixture, KMeans
from dask_emk.engine.inputs import as_input
from dask_emk.models.anneal import draw_sample
from dask_emk.models.seeding import kmeans_parallel, kmeans_plusplus, random_rows

K = 3
DIMS = ("time", "lat", "lon")
SHAPE = (24, 16, 20)
CHUNKS = {"time": 6, "lat": 4}
NAMES = ["temp", "salt", "oxygen"]  # the Dataset's order, not its features' (name order)
FEATURES = sorted(NAMES)


def make_cube() -> np.ndarray:
    """(time, lat, lon, 3) values with land (NaN in every variable) and scattered NaN."""
    rng = np.random.default_rng(3)
    A = blobs(n=int(np.prod(SHAPE)), d=3, K=K, seed=4).reshape(*SHAPE, 3) + [15.0, 35.0, 0.0]
    land = np.zeros(SHAPE[1:], dtype=bool)
    land[:4] = True  # the first lat chunk: blocks without a single valid point
    land[8:11, 5:9] = True  # an island
    A[:, land] = np.nan
    A[rng.random(A.shape) < 0.03] = np.nan
    return A


CUBE = make_cube()
# The stacked array: C order of (time, lat, lon), the variables in name order.
ROWS = CUBE[..., [NAMES.index(name) for name in FEATURES]].reshape(-1, 3)
VALID = ~np.isnan(ROWS).any(axis=1)
START = init_params(ROWS[VALID], K, "full", seed=2)
COORDS = {
    "time": np.arange(SHAPE[0]) * 10,
    "lat": np.linspace(-70.0, 70.0, SHAPE[1]),
    "lon": np.arange(SHAPE[2]) * 3.0,
}


def dataset(chunks=CHUNKS) -> xr.Dataset:
    ds = xr.Dataset(
        {name: (DIMS, CUBE[..., i]) for i, name in enumerate(NAMES)},
        coords={**COORDS, "cell_area": (("lat", "lon"), np.ones(SHAPE[1:]))},
    )
    return ds if chunks is None else ds.chunk(chunks)


def dataarray() -> xr.DataArray:
    """The same data as one DataArray, features FIRST along a dim named 'var' (name order)."""
    return dataset()[FEATURES].to_dataarray("var").transpose("var", *DIMS)


@pytest.fixture(autouse=True)
def sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


def gmm(**kw) -> GaussianMixture:
    return GaussianMixture(K, tol=0.0, max_iter=10, nan_policy="omit", **START, **kw)


def kmeans(**kw) -> KMeans:
    return KMeans(K, **{"init": START["means_init"], "n_init": 1, "nan_policy": "omit", **kw})


@pytest.fixture(scope="module")
def sk_gmm():
    return fit_quiet(SkGaussianMixture(K, tol=0.0, max_iter=10, **START), ROWS[VALID])


@pytest.fixture(scope="module")
def sk_kmeans():
    return SkKMeans(K, init=START["means_init"], n_init=1).fit(ROWS[VALID])


def assert_same_mixture(got, ref) -> None:
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-6, err_msg=name)


def assert_on_grid(out, extra: tuple = ()) -> None:
    """Dims and coordinates of the input, lazy."""
    assert out.dims == DIMS + extra
    for name, values in COORDS.items():
        np.testing.assert_array_equal(out[name].values, values)
    assert out["cell_area"].dims == ("lat", "lon")
    assert isinstance(out.data, da.Array)


def assert_omitted(values: np.ndarray, missing) -> None:
    """``missing`` exactly at the grid points holding NaN (values (T, Y, X, ...))."""
    flat = values.reshape(ROWS.shape[0], -1)
    is_missing = np.isnan(flat) if np.isnan(missing) else flat == missing
    np.testing.assert_array_equal(is_missing.all(axis=1), ~VALID)
    assert not is_missing[VALID].any()


# ---------------------------------------------------------------- the fits
@pytest.mark.parametrize("make", [dataset, dataarray], ids=["Dataset", "DataArray"])
def test_gaussian_mixture_equals_sklearn_on_the_valid_rows(make, sk_gmm):
    X = make()
    model = fit_quiet(gmm(feature_dim="var" if isinstance(X, xr.DataArray) else None), X)
    assert_same_mixture(model, sk_gmm)
    assert list(model.feature_names_in_) == FEATURES

    with CountComputes() as counter:
        labels, proba, log_prob = model.predict(X), model.predict_proba(X), model.score_samples(X)
    assert counter.count == 0  # lazy for lazy input
    assert_on_grid(labels)
    assert_on_grid(proba, ("component",))
    assert_on_grid(log_prob)
    # Named and described as every output of ours (export.OUTPUTS): to_netcdf/to_zarr keep it.
    assert (labels.name, proba.name, log_prob.name) == ("label", "responsibility", "log_density")
    assert labels.attrs["_FillValue"] == -1 and list(labels.attrs["flag_values"]) == [0, 1, 2]
    assert proba.attrs["units"] == "1" and "units" not in log_prob.attrs
    assert_omitted(labels.values, -1)
    assert_omitted(proba.values, np.nan)
    assert_omitted(log_prob.values, np.nan)
    np.testing.assert_array_equal(labels.values.reshape(-1)[VALID], sk_gmm.predict(ROWS[VALID]))
    np.testing.assert_allclose(
        proba.values.reshape(-1, K)[VALID], sk_gmm.predict_proba(ROWS[VALID]), atol=1e-9
    )
    np.testing.assert_allclose(model.score(X), sk_gmm.score(ROWS[VALID]), rtol=1e-9)
    np.testing.assert_allclose(model.bic(X), sk_gmm.bic(ROWS[VALID]), rtol=1e-9)


@pytest.mark.parametrize("make", [dataset, dataarray], ids=["Dataset", "DataArray"])
def test_kmeans_equals_sklearn_on_the_valid_rows(make, sk_kmeans):
    X = make()
    model = kmeans(feature_dim="var" if isinstance(X, xr.DataArray) else None).fit(X)
    np.testing.assert_allclose(model.cluster_centers_, sk_kmeans.cluster_centers_, rtol=1e-6)
    np.testing.assert_allclose(model.inertia_, sk_kmeans.inertia_, rtol=1e-6)
    assert model.n_iter_ == sk_kmeans.n_iter_
    assert_on_grid(model.labels_)
    assert_omitted(model.labels_.values, -1)
    np.testing.assert_array_equal(model.labels_.values.reshape(-1)[VALID], sk_kmeans.labels_)
    distances = model.transform(X)
    assert_on_grid(distances, ("component",))
    assert_omitted(distances.values, np.nan)
    np.testing.assert_allclose(
        distances.values.reshape(-1, K)[VALID], sk_kmeans.transform(ROWS[VALID]), rtol=1e-9
    )
    np.testing.assert_allclose(model.score(X), sk_kmeans.score(ROWS[VALID]), rtol=1e-9)
    np.testing.assert_array_equal(model.fit_predict(X).values, model.labels_.values)


def test_an_empty_cluster_is_refilled_from_a_valid_row():
    """A centre far from the data empties its cluster; scikit-learn's relocation
    (the farthest row) must pick among the valid rows only."""
    init = START["means_init"].copy()
    init[2] = 1e3
    model = kmeans(init=init).fit(dataset())
    ref = SkKMeans(K, init=init, n_init=1).fit(ROWS[VALID])
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-6)
    np.testing.assert_allclose(model.inertia_, ref.inertia_, rtol=1e-6)


def test_seeding_draws_only_valid_rows():
    """90% of the rows hold NaN: every draw of every seeding is a valid row."""
    rows = ROWS.copy()
    rows[np.random.default_rng(0).random(rows.shape[0]) < 0.9, 1] = np.nan
    valid = rows[~np.isnan(rows).any(axis=1)]
    lazy = da.from_array(rows, chunks=(500, -1))
    for X in (rows, lazy):
        data = as_input(X, nan_policy="omit")
        drawn = [
            random_rows(X, 40, 0, omit_nan=True),
            kmeans_plusplus(X, 8, 0, omit_nan=True),
            draw_sample(data, None, 4000, np.random.RandomState(0), None).X,
        ]
        for centers in drawn:
            assert ((centers[:, None, :] == valid[None]).all(axis=2)).any(axis=1).all()
        share = valid.shape[0] / rows.shape[0]
        assert drawn[2].shape[0] == pytest.approx(4000 * share, rel=0.2)
        assert np.isfinite(kmeans_parallel(X, 8, 0, omit_nan=True)).all()


def test_weights_on_a_sample_dim_broadcast_over_the_others():
    """Area weights cos(lat) as a DataArray on lat: scikit-learn's fit with them broadcast."""
    weight = np.cos(np.deg2rad(dataset().lat))
    model = kmeans().fit(dataset(), sample_weight=weight)
    rows = np.broadcast_to(weight.values[None, :, None], SHAPE).reshape(-1)
    ref = SkKMeans(K, init=START["means_init"], n_init=1).fit(
        ROWS[VALID], sample_weight=rows[VALID]
    )
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-6)
    np.testing.assert_allclose(model.inertia_, ref.inertia_, rtol=1e-6)


def test_annealing_on_the_grid_is_the_fit_of_its_rows():
    """The same fit as on the stacked rows; labels on the grid are each point's nearest centre."""
    kw = {"nan_policy": "omit", "random_state": 0, "sample_size": 3000}
    model = AnnealedGaussianMixture(K, **kw).fit(dataset())
    rows = AnnealedGaussianMixture(K, **kw).fit(as_input(dataset(), nan_policy="omit").array)
    np.testing.assert_array_equal(model.cluster_centers_, rows.cluster_centers_)
    assert_on_grid(model.labels_)
    assert_omitted(model.labels_.values, -1)
    dist = ((ROWS[VALID, None, :] - model.cluster_centers_[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(model.labels_.values.reshape(-1)[VALID], dist.argmin(axis=1))
    assert_omitted(model.predict_proba(dataset()).values, np.nan)


def test_in_memory_dataset_gives_the_same_fit(sk_kmeans):
    model = kmeans().fit(dataset(chunks=None))
    np.testing.assert_allclose(model.cluster_centers_, sk_kmeans.cluster_centers_, rtol=1e-6)
    assert_omitted(model.labels_.values, -1)


def test_numpy_rows_with_nan_omit():
    """2-D numpy input: the same fit; label -1 and NaN at the rows left out."""
    model = kmeans().fit(ROWS)
    ref = SkKMeans(K, init=START["means_init"], n_init=1).fit(ROWS[VALID])
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-6)
    np.testing.assert_array_equal(model.labels_ == -1, ~VALID)
    np.testing.assert_array_equal(np.isnan(model.transform(ROWS)).all(axis=1), ~VALID)


# ------------------------------------------------------- lazy, and how lazy
def test_as_many_computes_as_the_2d_array_fit():
    rows = as_input(dataset(), nan_policy="omit").array
    for make in (gmm, kmeans):
        counts = []
        for X in (dataset(), rows):
            with CountComputes() as counter:
                fit_quiet(make(), X)
            counts.append(counter.count)
        assert counts[0] == counts[1], (make, counts)
    assert counts[0] > 1


def test_rows_follow_the_stored_chunks(tmp_path):
    """A zarr store opened lazily: each row block is one stored block (no rechunk
    across the grid), and labels written back read as NaN where omitted."""
    store = tmp_path / "ocean.zarr"
    # All-land chunks are written too: a missing chunk file is an error (see test_storage).
    with zarr.config.set({"array.write_empty_chunks": True}):
        dataset().to_zarr(store)
    ds = xr.open_zarr(store)
    data = as_input(ds, nan_policy="omit")
    blocks = [t * y * SHAPE[2] for t in ds.chunks["time"] for y in ds.chunks["lat"]]
    assert data.array.chunks == (tuple(blocks), (3,))
    model = kmeans().fit(ds)
    labels = model.predict(ds)
    labels.to_dataset(name="label").to_zarr(tmp_path / "labels.zarr")
    back = xr.open_zarr(tmp_path / "labels.zarr")["label"].values
    assert_omitted(back, np.nan)
    np.testing.assert_array_equal(back, np.where(labels.values < 0, np.nan, labels.values))


def test_no_array_with_unknown_chunk_sizes(monkeypatch):
    """Every dask array made while fitting and predicting has known chunk sizes."""
    made = []
    new = da.Array.__new__

    def spy(cls, *args, **kwargs):
        array = new(cls, *args, **kwargs)
        made.append(array)
        return array

    monkeypatch.setattr(da.Array, "__new__", spy)
    for model in (gmm(), kmeans()):
        fit_quiet(model, dataset())
        model.predict(dataset()).compute()
    n_made = len(made)
    x = da.ones(10, chunks=5)
    filtered = x[x > 0]  # an array the spy must catch
    unknown = [a.name for a in made if any(np.isnan(c) for c in sum(a.chunks, ()))]
    assert n_made > 20 and unknown == [filtered.name], unknown


# --------------------------------------------------------- named features
def test_a_variable_with_depth_gives_one_feature_per_level():
    temp = np.stack([CUBE[..., 0], CUBE[..., 0] * 0.5 + 1.0], axis=1)  # (time, depth, lat, lon)
    ds = xr.Dataset(
        {"temp": (("time", "depth", "lat", "lon"), temp), "salt": (DIMS, CUBE[..., 1])},
        coords={**COORDS, "depth": [10.0, 50.0]},
    ).chunk({"time": 6, "lat": 4, "depth": 1})
    init = START["means_init"][:, [1, 2, 2]]  # salt, then temp at each depth: name order
    model = kmeans(init=init).fit(ds)
    names = ["salt", "temp[depth=10.0]", "temp[depth=50.0]"]
    assert list(model.feature_names_in_) == names
    salt = CUBE[..., NAMES.index("salt")].reshape(-1, 1)
    rows = np.concatenate([salt, temp.transpose(0, 2, 3, 1).reshape(-1, 2)], axis=1)
    valid = ~np.isnan(rows).any(axis=1)
    ref = SkKMeans(K, init=init, n_init=1).fit(rows[valid])
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-6)
    exported = model.to_xarray()
    assert list(exported["feature"].values) == names
    assert exported.attrs["nan_policy"] == "omit"
    # predict matches variables by name: another order gives the same labels.
    swapped = ds[["salt", "temp"]]
    np.testing.assert_array_equal(model.predict(swapped).values, model.labels_.values)


def test_sample_dims_chooses_the_samples():
    """sample_dims=('time', 'lat', 'lon') on a 3-D DataArray: one feature."""
    X = dataset()["temp"]
    model = KMeans(2, init=[[10.0], [20.0]], n_init=1, nan_policy="omit", sample_dims=DIMS)
    model.fit(X)
    temp = CUBE[..., 0].reshape(-1, 1)
    ref = SkKMeans(2, init=[[10.0], [20.0]], n_init=1).fit(temp[~np.isnan(temp[:, 0])])
    np.testing.assert_allclose(model.cluster_centers_, ref.cluster_centers_, rtol=1e-6)
    assert model.labels_.dims == DIMS


# ----------------------------------------------------------------- errors
def test_nan_raises_by_default_naming_omit():
    with pytest.raises(ValueError, match=r"NaN or infinity in \d+ row\(s\).*nan_policy='omit'"):
        fit_quiet(GaussianMixture(K, **START), dataset())
    with pytest.raises(ValueError, match=r"X contains NaN or infinity; pass nan_policy='omit'"):
        KMeans(K).fit(ROWS)


@pytest.mark.parametrize("lazy", [True, False])
def test_infinity_raises_also_with_omit(lazy):
    cube = CUBE.copy()
    cube[5, 6, 7, 1] = -np.inf
    cube[5, 6, 8] = [np.nan, np.inf, 0.0]  # NaN does not hide infinity
    ds = xr.Dataset({name: (DIMS, cube[..., i]) for i, name in enumerate(NAMES)})
    ds = ds.chunk(CHUNKS) if lazy else ds
    with pytest.raises(ValueError, match=r"infinity in 2 row\(s\).*NaN as missing, never infin"):
        kmeans().fit(ds)


@pytest.mark.parametrize(
    "kw, X, message",
    [
        ({}, lambda: dataset()["temp"].expand_dims(band=2).copy(),
         r"4-D DataArray with dims \('band', 'time', 'lat', 'lon'\) and none is named "
         r"'feature'.*feature_dim='lon'"),
        ({"feature_dim": "depth"}, dataarray, r"'depth' .* is not a dimension of X"),
        ({"sample_dims": ["time"]}, dataarray,
         r"sample_dims=\['time'\] leaves \['var', 'lat', 'lon'\].*name it with feature_dim"),
        ({"feature_dim": "var"}, dataset, r"feature_dim='var' applies to a DataArray"),
        ({}, lambda: xr.Dataset({"a": ("x", [1.0, 2]), "b": ("y", [1.0, 2])}),
         r"share no dimension .*sample_dims="),
        ({"sample_dims": ["time", "lat", "lon"]},
         lambda: dataset().assign(bathymetry=dataset().cell_area),
         r"\{'bathymetry': \['time'\]\} lack them"),
        ({"nan_policy": "propagate"}, dataset, r"nan_policy must be one of \('raise', 'omit'"),
        ({"sample_dims": []}, dataset, r"sample_dims must be None, a dimension name or a list"),
    ],
)  # fmt: skip
def test_dims_and_policies_that_do_not_say(kw, X, message):
    with pytest.raises(ValueError, match=message):
        KMeans(K, **{"nan_policy": "omit", **kw}).fit(X())


def test_flat_weights_of_gridded_data_are_refused():
    with pytest.raises(ValueError, match=r"give sample_weight as an xarray.DataArray"):
        kmeans().fit(dataset(), sample_weight=np.ones(ROWS.shape[0]))
