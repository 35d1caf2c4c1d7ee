"""Chunk and shard files missing from a zarr store are reported, never fitted.

Real stores on disk, one file deleted: every way of passing zarr data (store
path, ``file://`` URL, ``zarr.Array``, ``da.from_zarr``, ``xarray.open_zarr``)
must raise dask_emk's error naming the store, the array and the missing file
(and, where the store is listed, how many of how many) — in ``fit``, in
``predict`` after the file vanished, and in a lazy ``labels_`` computed later.
Intact stores, sharded or not, must fit exactly as the same data in memory.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from dask.callbacks import Callback
from helpers import blobs, init_params
from sklearn.exceptions import ConvergenceWarning

from dask_emk import GaussianMixture, KMeans
from dask_emk.engine.reduction import raise_on_nonfinite
from dask_emk.engine.storage import MissingChunksError, check_zarr_chunks, file_coords

K = 3
A = blobs(n=1200, d=4, K=K, seed=3)
START = init_params(A, K, "full", seed=2)  # weights, means, precisions

#: name -> (chunks, shards, file to delete, the rows/features it holds, files in all)
LAYOUTS = {
    "chunks": ((200, 4), None, "c/3/0", "rows 600-799", 6),
    "shards-rows": ((200, 4), (400, 4), "c/1/0", "rows 400-799", 3),
    "shards-features": ((200, 2), (400, 2), "c/1/1", "rows 400-799, features 2-3", 6),
}

#: How a user passes the store at ``path`` (a group holding the array "X").
KINDS = {
    "path": str,
    "url": lambda path: f"file://{path}",
    "zarr": lambda path: zarr.open_group(str(path), mode="r")["X"],
    "dask": lambda path: da.from_zarr(str(path), component="X"),
    "xarray": lambda path: xr.open_zarr(path, consolidated=False)["X"],
    "dataarray": lambda path: xr.open_dataarray(path, engine="zarr", consolidated=False),
}


def write_store(tmp_path: Path, layout: str) -> Path:
    chunks, shards, *_ = LAYOUTS[layout]
    path = tmp_path / "X.zarr"
    z = zarr.create_array(
        store=str(path), name="X", shape=A.shape, chunks=chunks, shards=shards,
        dtype=A.dtype, dimension_names=("sample", "feature"),
    )  # fmt: skip
    z[:] = A
    return path


def delete_file(path: Path, layout: str) -> None:
    os.remove(path / "X" / LAYOUTS[layout][2])


def missing_pattern(layout: str, counted: bool = False) -> str:
    """The error for LAYOUTS[layout]'s deleted file; ``counted``: from a listing."""
    chunks, shards, key, extent, total = LAYOUTS[layout]
    kind = "chunk" if shards is None else "shard"
    what = f"1 of its {total} {kind} files" if counted else f"the {kind} file"
    return rf"zarr array /\S+/X\.zarr/X is missing {what} in its store: {key} \({extent}\)\."


def gmm() -> GaussianMixture:
    # Given parameters: no seeding passes, and the same fit for any chunking.
    return GaussianMixture(K, max_iter=5, tol=0.0, **START)


def kmeans() -> KMeans:
    return KMeans(K, init=START["means_init"], n_init=1, max_iter=5)


def fit(model, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X)


def raises_missing(pattern: str):
    return pytest.raises(MissingChunksError, match=pattern)


def assert_same_gmm(a, b) -> None:
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, err_msg=name)


# ------------------------------------------------------------------- intact stores
@pytest.fixture(scope="module")
def numpy_gmm() -> GaussianMixture:
    return fit(gmm(), A)


@pytest.mark.parametrize(
    "layout, kind",
    [("chunks", kind) for kind in KINDS] + [("shards-rows", "path"), ("shards-features", "path"),
                                            ("shards-features", "xarray")],
)  # fmt: skip
def test_intact_store_fits_as_numpy(tmp_path, numpy_gmm, layout, kind):
    X = KINDS[kind](write_store(tmp_path, layout))
    assert_same_gmm(fit(gmm(), X), numpy_gmm)


def test_intact_store_kmeans_as_numpy(tmp_path):
    got = fit(kmeans(), str(write_store(tmp_path, "shards-features")))
    ref = fit(kmeans(), A)
    np.testing.assert_allclose(got.inertia_, ref.inertia_, rtol=1e-10)
    np.testing.assert_array_equal(got.labels_, ref.labels_)


def test_selection_without_the_missing_file_fits(tmp_path):
    """Only the files a read covers are checked: rows 0-599 do not need c/3/0."""
    path = write_store(tmp_path, "chunks")
    delete_file(path, "chunks")
    got = fit(gmm(), da.from_zarr(str(path), component="X")[:600])
    assert_same_gmm(got, fit(gmm(), A[:600]))
    with raises_missing(missing_pattern("chunks")):
        fit(gmm(), da.from_zarr(str(path), component="X")[500:])


@pytest.mark.parametrize(
    "selection",
    [(slice(0, 200), slice(0, 4)), (slice(199, 401),), (slice(None, None, -3), 1),
     (np.array([5, 1150, 610]), slice(2, 3)), (-1, [0, 3]), (slice(1100, 1300, 7), None),
     (slice(700, 300),)],
)  # fmt: skip
def test_file_coords_are_the_files_a_selection_reads(tmp_path, selection):
    """Against brute force: the files holding the elements numpy indexing picks."""
    z = zarr.open_group(str(write_store(tmp_path, "shards-features")), mode="r")["X"]
    rows, cols = np.indices(A.shape)
    plain = tuple(s for s in selection if s is not None)
    picked = set(zip(rows[plain].ravel() // 400, cols[plain].ravel() // 2, strict=True))
    assert set(file_coords(z, selection)) == picked


# --------------------------------------------------------------- a file is missing
@pytest.mark.parametrize("model", [gmm, kmeans], ids=["gmm", "kmeans"])
@pytest.mark.parametrize(
    "layout, kind",
    [("chunks", kind) for kind in KINDS]
    + [(layout, kind) for layout in ("shards-rows", "shards-features")
       for kind in ("path", "dask", "xarray")],
)  # fmt: skip
def test_fit_reports_the_missing_file(tmp_path, model, layout, kind):
    path = write_store(tmp_path, layout)
    delete_file(path, layout)
    with raises_missing(missing_pattern(layout)) as info:
        fit(model(), KINDS[kind](path))
    assert "NaN" not in str(info.value)
    assert "write_empty_chunks" in str(info.value)  # the fix


def test_store_written_by_xarray_is_not_reported_as_nan(tmp_path):
    """xarray writes NaN as the fill value and decodes it: still a missing chunk."""
    path = tmp_path / "X.zarr"
    data = xr.DataArray(A, dims=("sample", "feature"), name="X").chunk({"sample": 200})
    data.to_dataset().to_zarr(path, zarr_format=3, consolidated=False)
    delete_file(path, "chunks")
    for X in (xr.open_zarr(path, consolidated=False)["X"], str(path)):
        with raises_missing(missing_pattern("chunks")):
            fit(kmeans(), X)


@pytest.mark.parametrize("model", [gmm, kmeans], ids=["gmm", "kmeans"])
@pytest.mark.parametrize("kind", ["path", "zarr", "dask"])
def test_predict_after_the_file_vanished(tmp_path, model, kind):
    path = write_store(tmp_path, "shards-features")
    fitted = fit(model(), KINDS[kind](path))
    delete_file(path, "shards-features")
    with raises_missing(missing_pattern("shards-features")):
        np.asarray(fitted.predict(KINDS[kind](path)))


@pytest.mark.parametrize("kind", ["dask", "xarray", "zarr"])
def test_lazy_labels_computed_after_the_file_vanished(tmp_path, kind):
    path = write_store(tmp_path, "chunks")
    model = fit(kmeans(), KINDS[kind](path))
    intact = model.labels_.compute()
    delete_file(path, "chunks")
    with raises_missing(missing_pattern("chunks")):
        model.labels_.compute()
    np.testing.assert_array_equal(intact, fit(kmeans(), A).labels_)


# ----------------------------------------------------- inputs listed up front
def lazily_sliced(path: Path) -> xr.DataArray:
    """An xarray variable sliced before it was chunked: its reads cannot be checked."""
    X = xr.open_zarr(path, consolidated=False, chunks=None)["X"]
    return X.isel(sample=slice(0, 1000)).chunk({"sample": 200})


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_other_collections_list_the_store_up_front(tmp_path, layout):
    path = write_store(tmp_path, layout)
    assert_same_gmm(fit(gmm(), lazily_sliced(path)), fit(gmm(), A[:1000]))
    delete_file(path, layout)
    with raises_missing(missing_pattern(layout, counted=True)):
        fit(gmm(), lazily_sliced(path))


class DeleteAtFirstCompute(Callback):
    """Deletes a file when the fit's first compute starts: after its input checks."""

    def __init__(self, path: Path, layout: str):
        super().__init__(start=self._start)
        self.path = path / "X" / LAYOUTS[layout][2]

    def _start(self, dsk):
        self.path.unlink(missing_ok=True)


def test_nan_rows_from_a_vanished_file_are_reported_as_missing(tmp_path):
    """A file lost mid-fit under an up-front-listed input reads as NaN (xarray's fill)."""
    path = tmp_path / "X.zarr"
    data = xr.DataArray(A, dims=("sample", "feature"), name="X").chunk({"sample": 200})
    data.to_dataset().to_zarr(path, zarr_format=3, consolidated=False)
    X = lazily_sliced(path)
    with DeleteAtFirstCompute(path, "chunks"), raises_missing(missing_pattern("chunks", True)):
        fit(KMeans(K, n_init=1, random_state=0), X)  # seeding draws rows first


def test_raise_on_nonfinite_checks_the_store_first(tmp_path):
    path = write_store(tmp_path, "shards-rows")
    X = da.from_zarr(str(path), component="X")
    with pytest.raises(ValueError, match=r"Input contains NaN or infinity in 3 row"):
        raise_on_nonfinite(3, X)
    delete_file(path, "shards-rows")
    with raises_missing(missing_pattern("shards-rows", counted=True)):
        raise_on_nonfinite(3, X)
    raise_on_nonfinite(0, X)  # nothing counted: nothing checked, nothing raised


def test_listing_counts_every_missing_shard(tmp_path):
    path = write_store(tmp_path, "shards-features")
    for key in ("c/0/1", "c/1/1", "c/2/0", "c/2/1"):
        os.remove(path / "X" / key)
    with pytest.raises(MissingChunksError) as info:
        check_zarr_chunks(zarr.open_group(str(path), mode="r")["X"])
    expected = (
        r"is missing 4 of its 6 shard files in its store: c/0/1 \(rows 0-399, features 2-3\), "
        r"c/1/1 \(rows 400-799, features 2-3\), c/2/0 \(rows 800-1199, features 0-1\) and 1 more\."
    )
    assert re.search(expected, str(info.value)), str(info.value)


@pytest.mark.slow
def test_distributed_workers_report_the_missing_file(tmp_path):
    """Worker processes run the checked reads and relay the error unchanged."""
    from distributed import Client, LocalCluster

    path = write_store(tmp_path, "shards-features")
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        for kind in ("path", "xarray"):
            assert_same_gmm(fit(gmm(), KINDS[kind](path)), fit(gmm(), A))
        delete_file(path, "shards-features")
        for kind in ("path", "xarray"):
            with raises_missing(missing_pattern("shards-features")):
                fit(gmm(), KINDS[kind](path))
