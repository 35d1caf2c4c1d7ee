"""Gridded zarr stores read straight into rows (StackedZarrRows), and when they are not.

A Dataset opened with ``xarray.open_zarr`` whose variables are floats read
as stored goes to rows one task a block, each block's variables copied once
into a (points, features) buffer; a variable whose values xarray decodes
(scale, offset, a non-NaN fill value) or that was computed on is stacked
through xarray. Either way the rows must equal the stacked values.
"""

from __future__ import annotations

import contextlib
import os

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from helpers import CountComputes

from dask_emk import KMeans
from dask_emk.core.blocks import rows_without_nan, without_nan_rows
from dask_emk.engine.inputs import as_input
from dask_emk.engine.reduction import block_stats_array
from dask_emk.engine.storage import (
    MissingChunksError,
    StackedZarrRows,
    checked_xarray,
    file_key,
    zarr_arrays,
)

DIMS = ("time", "lat", "lon")
SHAPE = (6, 5, 8)
CHUNKS = {"time": 4, "lat": 3}  # uneven blocks: 4+2, 3+2, 8


def cube(n_vars: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(*SHAPE, n_vars)).astype(np.float32)
    values[rng.random(SHAPE) < 0.3] = np.nan
    return values


def write(path, values: np.ndarray, encoding=None) -> xr.Dataset:
    """The store, opened with its variables in the order v0, v1, ... (as written)."""
    ds = xr.Dataset(
        {f"v{i}": (DIMS, values[..., i]) for i in range(values.shape[-1])},
        coords={"time": np.arange(SHAPE[0]), "lat": np.linspace(-60, 60, SHAPE[1])},
    ).chunk(CHUNKS)
    with zarr.config.set({"array.write_empty_chunks": True}):
        ds.to_zarr(path, zarr_format=3, consolidated=False, encoding=encoding or {})
    opened = xr.open_zarr(path, consolidated=False)
    return opened[list(ds.data_vars)]


def expected_rows(values: np.ndarray) -> np.ndarray:
    """The grid's blocks one after the other (C order), each block's points in C order."""
    blocks = []
    for t in (slice(0, 4), slice(4, 6)):
        for y in (slice(0, 3), slice(3, 5)):
            blocks.append(values[t, y].reshape(-1, values.shape[-1]))
    return np.concatenate(blocks)


def readers(array) -> list:
    return [
        value
        for layer in array.__dask_graph__().layers.values()
        for value in getattr(layer, "mapping", {}).values()
        if isinstance(value, StackedZarrRows)
    ]


@pytest.fixture(autouse=True)
def sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


def test_a_store_read_as_stored_gives_one_task_a_block(tmp_path):
    values = cube()
    data = as_input(write(tmp_path / "s.zarr", values), nan_policy="omit")
    assert len(readers(data.array)) == 1
    np.testing.assert_array_equal(data.array.compute(), expected_rows(values))
    assert data.array.chunks == ((96, 64, 48, 32), (3,))
    assert list(data.feature_labels) == ["v0", "v1", "v2"]
    assert len(zarr_arrays(data.array)) == 3  # every store is named in errors
    stats = block_stats_array(data.array, None, lambda x, w: x[:1, :1].astype(float), 1)
    (optimized,) = dask.optimize(stats)
    assert len(dict(optimized.__dask_graph__())) == 4 + 2  # a task a block, args, reader


@pytest.mark.parametrize(
    "selection",
    [np.s_[5:30], np.s_[3:27:4, 1:], np.s_[[29, 0, 13]], np.s_[17], np.s_[-3:, 2], np.s_[240:]],
    ids=["across-blocks", "stepped", "index-array", "one-row", "negative", "empty"],
)
def test_any_selection_of_the_reader(tmp_path, selection):
    values = cube()
    ds = write(tmp_path / "s.zarr", values)
    (reader,) = readers(as_input(ds).array)
    np.testing.assert_array_equal(reader[selection], expected_rows(values)[selection])


@pytest.mark.parametrize(
    "encoding",
    [
        {"v1": {"scale_factor": 0.01, "add_offset": 1.0, "dtype": "int16", "_FillValue": -999}},
        {"v0": {"_FillValue": -9999.0}},
    ],
    ids=["scaled-int", "non-nan-fill"],
)
def test_decoded_variables_are_read_through_xarray(tmp_path, encoding):
    values = cube()
    ds = write(tmp_path / "s.zarr", values, encoding)
    data = as_input(ds, nan_policy="omit")
    assert readers(data.array) == []
    decoded = np.stack([ds[f"v{i}"].values for i in range(3)], axis=-1)
    assert np.isnan(decoded).sum() == np.isnan(values).sum()  # the fill decodes to NaN
    np.testing.assert_array_equal(data.array.compute(), expected_rows(decoded))


def test_a_computed_variable_is_stacked_through_xarray(tmp_path):
    values = cube()
    ds = write(tmp_path / "s.zarr", values)
    data = as_input(ds.assign(v2=ds.v2 * 2), nan_policy="omit")
    assert readers(data.array) == []
    np.testing.assert_array_equal(data.array.compute(), expected_rows(values * [1, 1, 2]))


def test_a_file_gone_after_opening_raises_and_fill_reads_nan(tmp_path):
    values = cube()
    ds = write(tmp_path / "s.zarr", values)
    data = as_input(ds, nan_policy="omit")
    array = zarr.open_array(tmp_path / "s.zarr" / "v1", mode="r")
    os.remove(tmp_path / "s.zarr" / "v1" / file_key(array, (1, 0, 0)))
    message = r"s.zarr/v1 is missing the chunk file in its store: c/1/0/0 \(time 4-5, lat 0-2"
    with pytest.raises(MissingChunksError, match=message):
        data.array.compute()
    filled = as_input(checked_xarray(ds, "fill"), nan_policy="omit")
    assert len(readers(filled.array)) == 1
    expected = values.copy()
    expected[4:, :3, :, 1] = np.nan
    np.testing.assert_array_equal(filled.array.compute(), expected_rows(expected))


@pytest.mark.parametrize("d", [1, 2, 3, 4, 8, 9])
@pytest.mark.parametrize("order", ["C", "F"])
def test_rows_left_out_by_omit_for_any_width(d, order):
    """NaN rows are left out, rows with ±inf kept (even with a NaN: they are errors)."""
    rng = np.random.default_rng(d)
    X = rng.normal(size=(500, d)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[rng.random(X.shape) < 0.02] = -np.inf
    X = np.asarray(X, order=order)
    keep = ~np.isnan(X).any(axis=1) | np.isinf(X).any(axis=1)
    assert 0 < keep.sum() < len(X)
    np.testing.assert_array_equal(rows_without_nan(X), keep)
    np.testing.assert_array_equal(without_nan_rows(X, np.arange(500.0))[1], np.flatnonzero(keep))


@contextlib.contextmanager
def _cleared(filesystem_class):
    try:
        yield
    finally:
        filesystem_class.clear_instance_cache()


def test_a_store_on_s3_reads_like_local_disk_and_checks_its_objects(tmp_path):
    """The chunk objects of a block are asked in the read's round trip to the store."""
    from s3_helpers import s3_server

    values = cube()
    local = write(tmp_path / "s.zarr", values)
    # fsspec caches its S3 file systems by their arguments, not the endpoint of the
    # environment: none made for another server is reused here, nor this one later.
    s3fs = fsspec.get_filesystem_class("s3")
    s3fs.clear_instance_cache()
    with s3_server() as env, pytest.MonkeyPatch.context() as patch, _cleared(s3fs):
        for key, value in env.items():
            patch.setenv(key, value)
        fs = fsspec.filesystem("s3")
        fs.mkdir("grid")
        fs.put(str(tmp_path / "s.zarr"), "grid/s.zarr", recursive=True)
        ds = xr.open_zarr("s3://grid/s.zarr", consolidated=False)[list(local.data_vars)]
        data = as_input(ds, nan_policy="omit")
        assert len(readers(data.array)) == 1
        np.testing.assert_array_equal(data.array.compute(), expected_rows(values))
        fs.rm("grid/s.zarr/v2/c/0/1/0")
        with pytest.raises(MissingChunksError, match=r"s3://grid/s.zarr/v2 is missing"):
            data.array.compute()
        filled = as_input(checked_xarray(ds, "fill"), nan_policy="omit").array.compute()
        expected = values.copy()
        expected[:4, 3:, :, 2] = np.nan
        np.testing.assert_array_equal(filled, expected_rows(expected))


def test_a_fit_from_the_store_equals_the_fit_of_its_rows_with_as_many_computes(tmp_path):
    values = cube()
    ds = write(tmp_path / "s.zarr", values)
    rows = expected_rows(values)
    valid = rows[~np.isnan(rows).any(axis=1)]
    init = valid[:3].astype(np.float64)
    fits, counts = [], []
    for X in (ds, da.from_array(rows, chunks=((96, 64, 48, 32), (3,)))):
        with CountComputes() as counter:
            fits.append(KMeans(3, init=init, n_init=1, nan_policy="omit", tol=0.0).fit(X))
        counts.append(counter.count)
    assert counts[0] == counts[1] > 1
    np.testing.assert_allclose(fits[0].cluster_centers_, fits[1].cluster_centers_, rtol=1e-12)
    labels = fits[0].predict(ds)
    assert labels.dims == DIMS and np.isnan(labels.where(labels >= 0)).sum() > 0
    np.testing.assert_array_equal(
        labels.values.reshape(-1), fits[1].predict(values.reshape(-1, 3)).astype(labels.dtype)
    )


@pytest.mark.parametrize("feature_last", [True, False])
def test_a_stored_dataarray_with_its_features_last_is_read_as_stored(tmp_path, feature_last):
    values = cube()
    X = xr.DataArray(values, dims=(*DIMS, "band"), coords={"band": [450, 550, 650]})
    if not feature_last:
        X = X.transpose("band", *DIMS)
    X.chunk({**CHUNKS, "band": -1}).to_dataset(name="X").to_zarr(
        tmp_path / "a.zarr", consolidated=False
    )
    stored = xr.open_zarr(tmp_path / "a.zarr", consolidated=False)["X"]
    data = as_input(stored, feature_dim="band", nan_policy="omit")
    assert len(readers(data.array)) == int(feature_last)
    assert list(data.feature_labels) == [450, 550, 650]
    np.testing.assert_array_equal(data.array.compute(), expected_rows(values))
