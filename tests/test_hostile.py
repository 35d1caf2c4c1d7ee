"""Hostile input, one table: each case ends in a correct fit or a clear error.

Every row is run through the Python API (GaussianMixture, KMeans,
AnnealedGaussianMixture) or the ``dask-emk`` command. A row either expects an
error — a ValueError raised by dask_emk itself (not from deep inside numpy,
dask or zarr; a few rows expect the type scikit-learn raises), or a one-line
``Error: ...`` from the CLI, in both cases matching a pattern that names the
problem — or it is a fit, which checks its own result against scikit-learn or
an equivalent well-formed input, and must give finite parameters. A SIGALRM
guard turns a hang into a failure. docs/troubleshooting.md documents
every row. Below the table: a pickled model does not carry its training data.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner
from helpers import blobs, init_params
from pipeline_helpers import free_port, open_results, scaled_pipeline
from sklearn.cluster import KMeans as SkKMeans
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_emk import AnnealedGaussianMixture, GaussianMixture, KMeans
from dask_emk.core.mstep import CollapsedComponentWarning
from dask_emk.pipeline.cli import main

K = 3
CHUNK = 500
X = blobs(n=3000, d=3, K=K, seed=5)  # 6 chunks of 500 rows
START = init_params(X, K, "full", seed=2)
CENTERS = START["means_init"]


@pytest.fixture(autouse=True)
def no_hang():
    """Fail (instead of hanging CI) when a case runs over 60 s."""

    def fail(signum, frame):
        raise TimeoutError("hostile input case hung for 60 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def sync_scheduler():
    with dask.config.set(scheduler="sync"):
        yield


class CliFailure(Exception):
    """The one-line ``Error: ...`` a failed dask-emk command printed."""


@dataclass
class Case:
    id: str
    run: Callable[[Path], object]
    error: str | None = None  # regex the error must match; None: a correct fit
    raises: type = ValueError  # the Python API's error type (scikit-learn's where it differs)


def gmm(**kw) -> GaussianMixture:
    # tol=0: always 25 iterations, the same as scikit-learn's with the same start.
    return GaussianMixture(K, **{"tol": 0.0, "max_iter": 25, **START, **kw})


def kmeans(**kw) -> KMeans:
    return KMeans(K, init=CENTERS, n_init=1, **kw)


def anneal(**kw) -> AnnealedGaussianMixture:
    return AnnealedGaussianMixture(K, random_state=0, **kw)


def labelled(A=X, labels=("a", "b", "c")) -> xr.DataArray:
    """A as a (sample, feature) DataArray with feature labels."""
    return xr.DataArray(A, dims=("sample", "feature"), coords={"feature": list(labels)})


def frame(A=X, dtype=None) -> pd.DataFrame:
    df = pd.DataFrame(A, columns=["a", "b", "c"])
    return df if dtype is None else df.astype(dtype)


def lazy(A, chunks=(CHUNK, -1)):
    return da.from_array(A, chunks=chunks)


def late_bad(value) -> np.ndarray:
    """X with one bad value in one row of the last chunk."""
    A = X.copy()
    A[-7, 1] = value
    return A


def assert_finite(model) -> None:
    for name in ("weights_", "means_", "covariances_", "cluster_centers_"):
        if hasattr(model, name):
            assert np.all(np.isfinite(getattr(model, name))), name


def assert_same_gmm(a, b, rtol=1e-10) -> None:
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, err_msg=name)


def assert_same_kmeans(a, b, rtol=1e-10) -> None:
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(a.inertia_, b.inertia_, rtol=rtol)


# ---------------------------------------------------------------- zarr stores
def write_store(tmp_path: Path, A: np.ndarray, name="X.zarr") -> Path:
    path = tmp_path / name
    z = zarr.create_array(
        store=str(path), shape=A.shape, chunks=(CHUNK,) + A.shape[1:], dtype=A.dtype
    )
    z[:] = A
    return path


def missing_chunk_store(tmp_path: Path) -> Path:
    path = write_store(tmp_path, X)
    os.remove(path / "c" / "4" / "0")  # rows 2000-2499 gone from disk
    return path


def corrupted_chunk_store(tmp_path: Path) -> Path:
    path = write_store(tmp_path, X)
    (path / "c" / "4" / "0").write_bytes(b"\x00garbage" * 40)
    return path


# ------------------------------------------------------------------ the CLI
def cli(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = result.output.strip().splitlines()
    # Progress lines (scheduler, input) may come first; the error is one last
    # line. Exit code 2: click's check of an option's value (after its usage line).
    if result.exit_code in (1, 2) and lines and lines[-1].startswith("Error: "):
        assert "Traceback" not in result.output, result.output
        raise CliFailure(lines[-1])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback: the test fails on its type
    assert result.exit_code == 0, result.output
    return result.output


def cli_fit(tmp_path: Path, store: Path | str, *extra) -> str:
    return cli("fit", store, "--k", K, "--out", tmp_path / "out.zarr", "--scheduler", "sync",
               "--no-plots", "-q", *extra)  # fmt: skip


def pipeline(tmp_path: Path, **sections) -> Path:
    sections.setdefault("output", {"plots": False})
    return scaled_pipeline("faithful", tmp_path, **sections)


# ------------------------------------------------------------- correct fits
def fit_int_dtype(tmp_path):
    A = np.round(X * 10).astype(np.int64)
    scaled = {
        **START,
        "means_init": CENTERS * 10,
        "precisions_init": START["precisions_init"] / 100,
    }
    got = gmm(**scaled).fit(A)
    assert got.means_.dtype == np.float64
    assert_same_gmm(got, gmm(**scaled).fit(A.astype(np.float64)), rtol=0)
    ref = SkGaussianMixture(K, tol=0.0, max_iter=25, **scaled)
    np.testing.assert_allclose(got.means_, ref.fit(A.astype(float)).means_, rtol=1e-5)
    return got


def fit_bool_dtype_kmeans(tmp_path):
    # Binary rows tie in distance all the time, so the reference is the same
    # data as 0.0/1.0 floats (same chunks), not scikit-learn's tie-breaking.
    A = X > 0
    init = A[[0, 1, 2]].astype(float) + 0.1
    got = KMeans(K, init=init, n_init=1).fit(lazy(A))
    assert got.cluster_centers_.dtype == np.float64
    assert_same_kmeans(got, KMeans(K, init=init, n_init=1).fit(lazy(A.astype(float))), rtol=0)
    assert np.all((got.cluster_centers_ > -1e-12) & (got.cluster_centers_ < 1 + 1e-12))
    return got


def fit_bool_dtype_gmm(tmp_path):
    A = X > 0
    kw = dict(means_init=A[[0, 1, 2]] + 0.1, precisions_init=np.stack([np.eye(3) * 4] * K))
    with warnings.catch_warnings():
        # Binary data: a component may be constant in one feature; reg_covar holds it.
        warnings.simplefilter("ignore", CollapsedComponentWarning)
        got = gmm(**kw).fit(lazy(A))
        same = gmm(**kw).fit(lazy(A.astype(np.float64)))
    assert_same_gmm(got, same, rtol=0)
    return got


def fit_one_row_kmeans(tmp_path):
    got = KMeans(1, n_init=1).fit(X[:1])
    np.testing.assert_array_equal(got.cluster_centers_, X[:1])
    assert got.inertia_ == 0.0
    return got


def fit_constant_gmm(tmp_path):
    A = np.full((1000, 2), 3.5)
    with pytest.warns(CollapsedComponentWarning, match=r"variance below reg_covar=1e-06"):
        got = GaussianMixture(2, random_state=0).fit(lazy(A, chunks=(300, -1)))
    np.testing.assert_allclose(got.means_, 3.5)
    np.testing.assert_allclose(got.covariances_, np.tile(1e-6 * np.eye(2), (2, 1, 1)), atol=1e-12)
    return got


def fit_constant_kmeans(tmp_path):
    A = np.full((1000, 2), -2.0)
    with pytest.warns(ConvergenceWarning, match=r"distinct clusters \(1\).*n_clusters \(2\)"):
        got = KMeans(2, random_state=0).fit(A)
    np.testing.assert_array_equal(got.cluster_centers_, -2.0)
    assert got.inertia_ == 0.0
    return got


def fit_all_duplicates_gmm(tmp_path):
    twice = np.vstack([X, X])  # every row appears twice: same mixture as X
    got = gmm().fit(lazy(twice))
    assert_same_gmm(got, gmm().fit(X), rtol=1e-9)
    np.testing.assert_allclose(
        got.means_, SkGaussianMixture(K, tol=0.0, max_iter=25, **START).fit(twice).means_,
        rtol=1e-6,
    )  # fmt: skip
    return got


def fit_all_duplicates_kmeans(tmp_path):
    twice = np.vstack([X, X])
    got = kmeans().fit(lazy(twice))
    np.testing.assert_allclose(got.cluster_centers_, kmeans().fit(X).cluster_centers_, rtol=1e-12)
    ref = SkKMeans(K, init=CENTERS, n_init=1).fit(twice)
    np.testing.assert_allclose(got.cluster_centers_, ref.cluster_centers_, rtol=1e-10)
    return got


def fit_feature_chunked_gmm(tmp_path):
    got = gmm().fit(lazy(X, chunks=(CHUNK, 1)))
    assert_same_gmm(got, gmm().fit(lazy(X)), rtol=0)
    return got


def fit_feature_chunked_kmeans(tmp_path):
    got = kmeans().fit(lazy(X, chunks=(CHUNK, 2)))
    assert_same_kmeans(got, kmeans().fit(lazy(X)), rtol=0)
    return got


def fit_some_zero_weights(tmp_path):
    w = np.ones(len(X))
    w[2500:] = 0.0  # the whole last chunk weighs nothing
    got = gmm().fit(lazy(X), sample_weight=lazy(w, chunks=CHUNK))
    assert_same_gmm(got, gmm().fit(X[:2500]), rtol=1e-9)
    return got


def fit_tiny_store(tmp_path):
    """Two rows in a store, K=1: sklearn's answer (mean, variance + reg_covar)."""
    A = np.array([[0.0, 1.0], [2.0, 5.0]])
    with pytest.warns(CollapsedComponentWarning, match="flat set"):  # two points: a line
        got = GaussianMixture(1).fit(str(write_store(tmp_path, A)))
    ref = SkGaussianMixture(1).fit(A)
    np.testing.assert_allclose(got.covariances_, ref.covariances_, rtol=1e-12)
    return got


def corrupted_on_threads(tmp_path):
    """A user-built ``da.from_zarr`` array on the threaded scheduler."""
    X_bad = da.from_zarr(str(corrupted_chunk_store(tmp_path)))
    with dask.config.set(scheduler="threads"):
        return kmeans().fit(X_bad)


# ------------------------------------------------- layouts and feature labels
def sk_gmm(A=X, **kw) -> SkGaussianMixture:
    return SkGaussianMixture(K, tol=0.0, max_iter=25, **{**START, **kw}).fit(A)


def fit_feature_first_dataarray(tmp_path):
    """dims (feature, sample): transposed, outputs along sample."""
    A = xr.DataArray(X.T, dims=("feature", "sample"), coords={"sample": np.arange(3000) * 10})
    got = gmm().fit(A)
    ref = sk_gmm()
    np.testing.assert_allclose(got.means_, ref.means_, rtol=1e-6)
    labels = got.predict(A)
    assert labels.dims == ("sample",) and labels["sample"][1] == 10
    np.testing.assert_array_equal(labels.values, ref.predict(X))
    return got


def fit_dataset(tmp_path):
    """A Dataset's data variables are the features, its dim ``sample`` the samples."""
    ds = labelled().to_dataset("feature")
    got = gmm().fit(ds)
    ref = sk_gmm()
    np.testing.assert_allclose(got.means_, ref.means_, rtol=1e-6)
    assert list(got.feature_names_in_) == ["a", "b", "c"]
    labels = got.predict(ds)
    assert labels.dims == ("sample",)
    np.testing.assert_array_equal(labels.values, ref.predict(X))
    return got


def fit_3d_dataarray(tmp_path):
    """A (t, y, feature) DataArray is the fit of its rows; labels come back on (t, y)."""
    cube = xr.DataArray(X.reshape(60, 50, 3), dims=("t", "y", "feature"),
                        coords={"t": np.arange(60) * 10})  # fmt: skip
    got = kmeans().fit(cube)
    ref = SkKMeans(K, init=CENTERS, n_init=1).fit(X)
    assert_same_kmeans(got, ref)
    assert got.labels_.dims == ("t", "y") and got.labels_["t"][1] == 10
    np.testing.assert_array_equal(got.labels_.values.reshape(-1), ref.labels_)
    return got


def fit_stacked_3d(tmp_path):
    """The stacking a 3-D DataArray's error suggests fits (and labels keep t, y)."""
    A3 = labelled().values.reshape(60, 50, 3)
    cube = xr.DataArray(A3, dims=("t", "y", "feature"), coords={"feature": list("abc")})
    got = kmeans().fit(cube.stack(sample=["t", "y"]).transpose("sample", "feature"))
    assert_same_kmeans(got, SkKMeans(K, init=CENTERS, n_init=1).fit(X))
    assert set(got.labels_.coords) >= {"t", "y"}
    return got


def predict_reordered_labels(make, methods, A=None):
    """Predictions on the features in another order equal those in the fitted order."""
    A = labelled() if A is None else A
    model = make().fit(A)
    shuffled = A.iloc[:, [2, 0, 1]] if isinstance(A, pd.DataFrame) else A.isel(feature=[2, 0, 1])
    for method in methods:
        want = np.asarray(getattr(model, method)(A))
        np.testing.assert_array_equal(np.asarray(getattr(model, method)(shuffled)), want, method)
    return model


def fit_dataframe_reordered(tmp_path):
    model = predict_reordered_labels(kmeans, ("predict", "transform"), frame())
    assert list(model.feature_names_in_) == ["a", "b", "c"]
    assert_same_kmeans(model, SkKMeans(K, init=CENTERS, n_init=1).fit(X))
    return model


def fit_nan_feature_label(tmp_path):
    """A NaN feature label is a label like any other (matched at predict)."""
    A = labelled(labels=[0.5, np.nan, 2.5])
    model = predict_reordered_labels(gmm, ("predict_proba",), A)
    np.testing.assert_allclose(model.means_, sk_gmm().means_, rtol=1e-6)
    return model


def fit_warm_start_reordered(tmp_path):
    """A warm start on the features in another order continues the same fit."""
    first = gmm(max_iter=5).fit(labelled())
    same = copy_fit(first, labelled())
    shuffled = copy_fit(first, labelled().isel(feature=[1, 2, 0]))
    assert_same_gmm(shuffled, same, rtol=0)
    return shuffled


def copy_fit(model, A):
    again = pickle.loads(pickle.dumps(model)).set_params(warm_start=True)
    return again.fit(A)


def fit_nullable_dataframe(tmp_path):
    got = gmm().fit(frame(dtype="Float64"))
    np.testing.assert_allclose(got.means_, sk_gmm().means_, rtol=1e-6)
    assert_same_gmm(got, gmm().fit(X), rtol=0)
    return got


def fit_nullable_float32_dataframe(tmp_path):
    got = kmeans().fit(frame(dtype="Float32"))
    assert got.cluster_centers_.dtype == np.float32
    assert_same_kmeans(got, kmeans().fit(X.astype(np.float32)), rtol=0)
    return got


def with_na(dtype) -> pd.DataFrame:
    df = frame(np.round(X * 10), dtype)
    df.iloc[2222, 1] = pd.NA
    return df


# -------------------------------------------------------- dtypes and shapes
def fit_big_endian(dtype, lazy_input=False):
    def run(tmp_path):
        A = X.astype(dtype)
        native = A.astype(A.dtype.newbyteorder("="))
        got = gmm().fit(lazy(A) if lazy_input else A)
        assert got.means_.dtype == native.dtype and got.means_.dtype.isnative
        assert_same_gmm(got, gmm().fit(lazy(native) if lazy_input else native), rtol=0)
        return got

    return run


def fit_list_of_lists(tmp_path):
    got = kmeans().fit(X.tolist())
    assert_same_kmeans(got, kmeans().fit(X), rtol=0)
    return got


def fit_memoryview(tmp_path):
    got = gmm().fit(memoryview(X))
    assert_same_gmm(got, gmm().fit(X), rtol=0)
    return got


def fit_bool_dataarray(tmp_path):
    A = labelled() > 0
    init = np.eye(3) * 0.8 + 0.1
    got = KMeans(K, init=init, n_init=1).fit(A)
    assert_same_kmeans(got, KMeans(K, init=init, n_init=1).fit(A.astype(float)), rtol=0)
    return got


def fit_nan_sample_coordinate(tmp_path):
    """NaN in a sample coordinate is carried to the outputs, not a data value."""
    A = labelled().assign_coords(sample=np.r_[np.nan, np.arange(2999.0)])
    got = kmeans().fit(A)
    assert np.isnan(got.labels_["sample"][0])
    np.testing.assert_array_equal(got.labels_.values, SkKMeans(K, init=CENTERS, n_init=1)
                                  .fit(X).labels_)  # fmt: skip
    return got


def fit_n_components_int64(tmp_path):
    got = GaussianMixture(np.int64(K), tol=0.0, max_iter=25, **START).fit(X)
    assert_same_gmm(got, gmm().fit(X), rtol=0)
    return got


def fit_empty_chunks(tmp_path):
    """Chunks without rows (as filtering a dask array leaves them)."""
    got = kmeans().fit(lazy(X, chunks=((1000, 0, 1500, 0, 500), 3)))
    assert_same_kmeans(got, SkKMeans(K, init=CENTERS, n_init=1).fit(X))
    return got


def fit_mixed_column_names(tmp_path):
    """Column names that are not all strings: labels, but no feature_names_in_."""
    df = pd.DataFrame(X, columns=[0, "b", 2.5])
    got = predict_reordered_labels(gmm, ("predict_proba",), df.rename(columns=str))
    mixed = gmm().fit(df)
    assert not hasattr(mixed, "feature_names_in_")  # as scikit-learn
    np.testing.assert_array_equal(mixed.predict(df[[2.5, 0, "b"]]), got.predict(X))
    return mixed


def fit_max_iter_zero(tmp_path):
    """max_iter=0 (allowed, as in scikit-learn): the given initial parameters."""
    got = gmm(max_iter=0).fit(X)
    np.testing.assert_allclose(got.means_, START["means_init"], rtol=1e-14)
    np.testing.assert_allclose(got.weights_, START["weights_init"], rtol=1e-14)
    np.testing.assert_allclose(got.precisions_, START["precisions_init"], rtol=1e-12)
    assert got.n_iter_ == 0 and not got.converged_
    return got


def fit_k_above_distinct_points(tmp_path):
    A = np.repeat(X[:3], 100, axis=0)  # three distinct points
    init = np.vstack([X[:3], X[:2] + 0.5])
    with pytest.warns(ConvergenceWarning, match=r"distinct clusters \(3\)"):
        got = KMeans(5, init=init, n_init=1).fit(lazy(A, chunks=(70, -1)))
    ref = SkKMeans(5, init=init, n_init=1).fit(A)
    np.testing.assert_allclose(got.cluster_centers_, ref.cluster_centers_, rtol=1e-12)
    assert got.inertia_ == 0.0  # scikit-learn: 1e-26
    return got


# ---------------------------------------------------------------- weights
WEIGHTS = np.random.default_rng(3).uniform(0.2, 3.0, size=len(X))


def fit_dask_weights_numpy_x(tmp_path):
    got = kmeans().fit(X, sample_weight=lazy(WEIGHTS, chunks=700))
    assert_same_kmeans(got, SkKMeans(K, init=CENTERS, n_init=1).fit(X, sample_weight=WEIGHTS))
    return got


def fit_scalar_weight(tmp_path):
    got = kmeans().fit(X, sample_weight=2.0)
    ref = SkKMeans(K, init=CENTERS, n_init=1)
    assert_same_kmeans(got, ref.fit(X, sample_weight=2.0))  # inertia: twice the unweighted
    return got


def fit_scalar_weight_dask(tmp_path):
    got = gmm().fit(lazy(X), sample_weight=3.0)
    assert_same_gmm(got, gmm().fit(lazy(X)), rtol=1e-12)
    return got


def unknown_chunk_weights():
    w = lazy(WEIGHTS, chunks=500)
    return w[w > 0]  # all of them, but dask no longer knows how many


# ------------------------------------------------------------ more stores
def several_arrays_store(tmp_path: Path, group="") -> Path:
    path = tmp_path / "many.zarr"
    root = zarr.open_group(str(path), mode="w")
    parent = root.create_group(group) if group else root
    for name in ("X", "Y"):
        parent.create_array(name, shape=X.shape, chunks=(CHUNK, 3), dtype=X.dtype)[:] = X
    return path


def big_endian_store(tmp_path):
    """A float32 store written big-endian (by another tool): float32 parameters."""
    path = tmp_path / "be.zarr"
    z = zarr.create_array(store=str(path), shape=X.shape, chunks=(CHUNK, 3), dtype=">f4",
                          serializer=zarr.codecs.BytesCodec(endian="big"))  # fmt: skip
    z[:] = X
    got = gmm().fit(str(path))
    assert got.means_.dtype == np.float32
    assert_same_gmm(got, gmm().fit(lazy(X.astype(np.float32))), rtol=0)
    return got


def fit_object_dataframe(tmp_path):
    got = gmm().fit(frame().astype(object))
    assert_same_gmm(got, gmm().fit(X), rtol=0)
    return got


def csv_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    return path


def bom_pipeline(tmp_path: Path) -> Path:
    """A pipeline saved with a UTF-8 byte order mark (as Windows editors do)."""
    path = pipeline(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    return path


def run_bom_pipeline(tmp_path):
    """The same results as the pipeline without the mark."""
    (tmp_path / "plain").mkdir()
    cli("run", bom_pipeline(tmp_path), "-q")
    cli("run", pipeline(tmp_path / "plain"), "-q")
    got = open_results(tmp_path / "faithful.zarr")
    want = open_results(tmp_path / "plain" / "faithful.zarr")
    np.testing.assert_array_equal(got["means"].values, want["means"].values)
    return got


def not_utf8_pipeline(tmp_path: Path) -> Path:
    path = pipeline(tmp_path)
    path.write_bytes(path.read_bytes() + "# café\n".encode("latin-1"))
    return path


# -------------------------------------------------------------------- table
CASES = [  # fmt: off
    # non-finite values: reported by the first pass, named, counted
    Case(
        "gmm-nan-late-chunk",
        lambda p: gmm().fit(lazy(late_bad(np.nan))),
        r"NaN or infinity in 1 row",
    ),
    Case(
        "kmeans-inf-late-chunk",
        lambda p: kmeans().fit(lazy(late_bad(np.inf))),
        r"NaN or infinity in 1 row",
    ),
    Case(
        "gmm-neginf-in-store",
        lambda p: gmm().fit(str(write_store(p, late_bad(-np.inf)))),
        r"NaN or infinity in 1 row",
    ),
    Case("gmm-nan-numpy", lambda p: gmm().fit(late_bad(np.nan)), r"contains NaN or infinity"),
    # dtypes
    Case("gmm-int64", fit_int_dtype),
    Case("kmeans-bool", fit_bool_dtype_kmeans),
    Case("gmm-bool-dask", fit_bool_dtype_gmm),
    Case("gmm-complex", lambda p: gmm().fit(X + 1j), r"Complex data not supported"),
    Case(
        "kmeans-complex-dask", lambda p: kmeans().fit(lazy(X + 0j)), r"Complex data not supported"
    ),
    Case("gmm-strings", lambda p: gmm().fit(X.astype(str)), r"non-numeric dtype"),
    # shapes and sizes
    Case("gmm-1d", lambda p: gmm().fit(X[:, 0]), r"must be 2-D.*reshape\(-1, 1\)"),
    Case(
        "kmeans-3d-dask",
        lambda p: kmeans().fit(lazy(X.reshape(3000, 3, 1), chunks=CHUNK)),
        r"must be 2-D.*got 3-D",
    ),
    Case("gmm-zero-rows-dask", lambda p: gmm().fit(lazy(X[:0])), r"empty.*0 sample"),
    Case("kmeans-zero-rows", lambda p: kmeans().fit(X[:0]), r"empty.*0 sample"),
    Case("gmm-one-row", lambda p: GaussianMixture(1).fit(X[:1]), r"1 sample.*minimum of 2"),
    Case("kmeans-one-row", fit_one_row_kmeans),
    Case("gmm-two-rows-store", fit_tiny_store),
    Case(
        "gmm-k-above-n",
        lambda p: GaussianMixture(5).fit(lazy(X[:4])),
        r"n_samples >= n_components.*n_components = 5, n_samples = 4",
    ),
    Case(
        "kmeans-k-above-n", lambda p: KMeans(5).fit(X[:4]), r"n_samples=4 should be >= n_clusters=5"
    ),
    # degenerate data
    Case("gmm-constant", fit_constant_gmm),
    Case("kmeans-constant", fit_constant_kmeans),
    Case("gmm-all-duplicates", fit_all_duplicates_gmm),
    Case("kmeans-all-duplicates", fit_all_duplicates_kmeans),
    Case(
        "gmm-constant-reg0",
        lambda p: GaussianMixture(2, reg_covar=0.0, random_state=0).fit(np.ones((50, 2))),
        r"increase reg_covar",
    ),
    # chunking
    Case("gmm-feature-chunked", fit_feature_chunked_gmm),
    Case("kmeans-feature-chunked", fit_feature_chunked_kmeans),
    # sample weights
    Case("gmm-some-zero-weights", fit_some_zero_weights),
    Case(
        "gmm-all-zero-weights",
        lambda p: gmm().fit(lazy(X), sample_weight=lazy(np.zeros(3000), CHUNK)),
        r"sample_weight sums to zero",
    ),
    Case(
        "kmeans-all-zero-weights",
        lambda p: kmeans().fit(X, sample_weight=np.zeros(3000)),
        r"sample_weight sums to zero",
    ),
    Case(
        "gmm-negative-weight",
        lambda p: gmm().fit(X, sample_weight=np.r_[np.ones(2999), -1.0]),
        r"negative values",
    ),
    Case(
        "kmeans-nan-weight-dask",
        lambda p: kmeans().fit(lazy(X), sample_weight=lazy(np.r_[np.ones(2999), np.nan], CHUNK)),
        r"sample_weight contains NaN",
    ),
    # initial parameters
    Case(
        "gmm-means-init-shape",
        lambda p: gmm(means_init=CENTERS[:, :2]).fit(X),
        r"means_init must have shape \(3, 3\), got \(3, 2\)",
    ),
    Case(
        "gmm-means-init-strings",
        lambda p: gmm(means_init=CENTERS.astype(str).astype(object) + "x").fit(X),
        r"means_init must be numeric",
    ),
    Case(
        "gmm-weights-init-strings",
        lambda p: gmm(weights_init=["a", "b", "c"]).fit(X),
        r"weights_init must be numeric",
    ),
    Case(
        "kmeans-init-shape",
        lambda p: KMeans(K, init=CENTERS[:2]).fit(X),
        r"initial centers \(2, 3\) does not match",
    ),
    Case(
        "kmeans-init-strings",
        lambda p: KMeans(K, init=np.array([["a"] * 3] * K)).fit(X),
        r"init must be one of .*numeric array",
    ),
    Case(
        "gmm-precisions-not-spd",
        lambda p: gmm(precisions_init=np.stack([np.diag([1.0, -1.0, 1.0])] * K)).fit(X),
        r"precisions_init\[0\] is not positive definite",
    ),
    # stores
    Case(
        "gmm-store-does-not-exist",
        lambda p: gmm().fit(str(p / "nope.zarr")),
        r"zarr store .*nope\.zarr' does not exist",
    ),
    Case(
        "gmm-store-missing-chunk",
        lambda p: gmm().fit(str(missing_chunk_store(p))),
        r"zarr array /.*X\.zarr is missing the chunk file in its store: c/4/0 \(rows 2000-2499\)",
    ),
    Case(
        "kmeans-store-missing-chunk-dask",
        lambda p: kmeans().fit(da.from_zarr(str(missing_chunk_store(p)))),
        r"X\.zarr is missing the chunk file in its store: c/4/0 \(rows 2000-2499\)",
    ),
    Case(
        "gmm-store-corrupted-chunk",
        lambda p: gmm().fit(str(corrupted_chunk_store(p))),
        r"reading zarr array /.*X\.zarr failed: a chunk file is corrupted",
    ),
    Case(
        "kmeans-store-corrupted-chunk-threads",
        corrupted_on_threads,
        r"X\.zarr failed: a chunk file is corrupted",
    ),
    # the dask-emk command
    Case(
        "cli-unknown-pipeline-key",
        lambda p: cli("run", pipeline(p, model={"n_componentz": 2})),
        r"Error: .*n_componentz",
    ),
    Case(
        "cli-unreachable-scheduler",
        lambda p: cli("run", pipeline(p), "--scheduler", f"tcp://127.0.0.1:{free_port()}"),
        r"Error: cannot reach the Dask scheduler at tcp://127\.0\.0\.1",
    ),
    Case(
        "cli-unknown-scheduler",
        lambda p: cli("run", pipeline(p), "--scheduler", "yarn"),
        r"Error: unknown scheduler 'yarn'",
    ),
    Case(
        "cli-store-does-not-exist",
        lambda p: cli_fit(p, p / "nope.zarr"),
        r"Error: input store .*nope\.zarr' does not exist",
    ),
    Case(
        "cli-store-missing-chunk",
        lambda p: cli_fit(p, missing_chunk_store(p)),
        r"Error: .*X\.zarr is missing the chunk file in its store: c/4/0",
    ),
    Case(
        "cli-kmeans-store-corrupted-chunk",
        lambda p: cli_fit(p, corrupted_chunk_store(p), "--model", "kmeans"),
        r"Error: reading zarr array .*X\.zarr failed: a chunk file is corrupted",
    ),
    Case(
        "cli-gmm-store-corrupted-chunk",
        lambda p: cli_fit(p, corrupted_chunk_store(p)),
        r"Error: reading zarr array .*X\.zarr failed",
    ),
    Case(
        "cli-store-1d",
        lambda p: cli_fit(p, write_store(p, X[:, 0].copy())),
        r"Error: .*must be 2-D",
    ),
    Case(
        "cli-store-nan",
        lambda p: cli_fit(p, write_store(p, late_bad(np.nan))),
        r"Error: Input contains NaN or infinity in 1 row",
    ),
    Case(
        "cli-store-complex",
        lambda p: cli_fit(p, write_store(p, X + 1j)),
        r"Error: .*Complex data not supported",
    ),
    # xarray and pandas layouts, feature labels
    Case("gmm-xarray-dataset", fit_dataset),
    Case("kmeans-xarray-3d", fit_3d_dataarray),
    Case("kmeans-xarray-3d-stacked", fit_stacked_3d),
    Case("gmm-xarray-feature-first", fit_feature_first_dataarray),
    Case(
        "gmm-xarray-same-dim-twice",
        lambda p: gmm().fit(xr.DataArray(X[:9, :3], dims=("x", "x"))),
        r"dimension 'x' twice",
    ),
    Case(
        "gmm-predict-features-reordered",
        lambda p: predict_reordered_labels(gmm, ("predict", "predict_proba", "score_samples")),
    ),
    Case("kmeans-dataframe-columns-reordered", fit_dataframe_reordered),
    Case(
        "anneal-predict-features-reordered",
        lambda p: predict_reordered_labels(anneal, ("predict", "predict_proba", "transform")),
    ),
    Case("gmm-nan-feature-label", fit_nan_feature_label),
    Case("gmm-warm-start-features-reordered", fit_warm_start_reordered),
    Case(
        "gmm-predict-other-feature-labels",
        lambda p: gmm().fit(labelled()).predict(labelled(labels="abz")),
        r"other feature labels .*\['z'\] not seen in fit, \['c'\] missing",
    ),
    Case(
        "kmeans-duplicate-feature-labels",
        lambda p: kmeans().fit(labelled(labels="aab")),
        r"duplicate feature labels \['a'\]",
    ),
    Case("gmm-pandas-Float64", fit_nullable_dataframe),
    Case("kmeans-pandas-Float32", fit_nullable_float32_dataframe),
    Case("gmm-pandas-Float64-NA", lambda p: gmm().fit(with_na("Float64")), r"contains NaN or inf"),
    Case("kmeans-pandas-Int64-NA", lambda p: kmeans().fit(with_na("Int64")), r"contains NaN"),
    Case(
        "gmm-pandas-datetime-column",
        lambda p: gmm().fit(frame().assign(c=pd.date_range("2000", periods=3000))),
        r"columns that are not numbers: \{'c': 'datetime64",
    ),
    Case(
        "kmeans-pandas-string-column",
        lambda p: kmeans().fit(frame().assign(c=["x"] * 3000)),
        r"non-numeric values in its object columns",
    ),
    Case("gmm-pandas-object-numbers", fit_object_dataframe),
    # more dtypes and shapes
    Case("gmm-big-endian-float32-store", big_endian_store),
    Case("gmm-big-endian-float32", fit_big_endian(">f4")),
    Case("gmm-big-endian-float32-dask", fit_big_endian(">f4", lazy_input=True)),
    Case("gmm-big-endian-float64", fit_big_endian(">f8")),
    Case("kmeans-list-of-lists", fit_list_of_lists),
    Case("kmeans-empty-chunks", fit_empty_chunks),
    Case("gmm-pandas-mixed-column-names", fit_mixed_column_names),
    Case("gmm-memoryview", fit_memoryview),
    Case("kmeans-bool-dataarray", fit_bool_dataarray),
    Case("kmeans-nan-sample-coordinate", fit_nan_sample_coordinate),
    Case(
        "gmm-ragged-list",
        lambda p: gmm().fit([[1.0, 2.0, 3.0], [1.0, 2.0]]),
        r"rows of different lengths",
    ),
    Case("gmm-0d", lambda p: gmm().fit(np.float64(3.0)), r"must be 2-D.*got 0-D"),
    Case(
        "kmeans-object-dict",
        lambda p: kmeans().fit(np.array([[{"a": 1}, 1.0, 2.0]] * 9, dtype=object)),
        r"non-numeric values in an object array",
        raises=TypeError,  # as scikit-learn (its estimator checks expect a TypeError)
    ),
    # sample weights
    Case("kmeans-dask-weights-numpy-X", fit_dask_weights_numpy_x),
    Case("kmeans-scalar-weight", fit_scalar_weight),
    Case("gmm-scalar-weight-dask", fit_scalar_weight_dask),
    Case(
        "kmeans-weights-unknown-chunks",
        lambda p: kmeans().fit(lazy(X), sample_weight=unknown_chunk_weights()),
        r"sample_weight has unknown chunk sizes; call sample_weight\.compute_chunk_sizes\(\)",
    ),
    Case(
        "kmeans-string-weights",
        lambda p: kmeans().fit(X, sample_weight=np.array(["1"] * 3000)),
        r"sample_weight has non-numeric dtype",
    ),
    Case(
        "gmm-string-weights-dask",
        lambda p: gmm().fit(lazy(X), sample_weight=lazy(np.array(["1"] * 3000), CHUNK)),
        r"sample_weight has non-numeric dtype",
    ),
    Case(
        "kmeans-complex-weights",
        lambda p: kmeans().fit(X, sample_weight=WEIGHTS + 1j),
        r"Complex data not supported: sample_weight",
    ),
    Case(
        "gmm-inf-weight-dask",
        lambda p: gmm().fit(lazy(X), sample_weight=lazy(np.r_[WEIGHTS[1:], np.inf], CHUNK)),
        r"sample_weight contains NaN or infinity",
    ),
    # parameters
    Case(
        "gmm-warm-start-new-n-features",
        lambda p: gmm(warm_start=True).fit(X).fit(X[:, :2]),
        r"warm_start=True continues the previous fit, but this one differs in "
        r"n_features 3 -> 2; set warm_start=False",
    ),
    Case(
        "gmm-warm-start-new-n-components",
        lambda p: (
            GaussianMixture(K, warm_start=True, random_state=0)
            .fit(X)
            .set_params(n_components=4)
            .fit(X)
        ),
        r"differs in n_components 3 -> 4",
    ),
    Case(
        "gmm-warm-start-new-covariance-type",
        lambda p: (
            gmm(warm_start=True)
            .fit(X)
            .set_params(covariance_type="diag", precisions_init=None)
            .fit(X)
        ),
        r"differs in covariance_type 'full' -> 'diag'",
    ),  # fmt: skip
    Case(
        "anneal-sample-size-below-k",
        lambda p: AnnealedGaussianMixture(5, sample_size=3).fit(X),
        r"sample_size=3 is below n_components=5.*raise sample_size to >= 5",
    ),
    Case("gmm-max-iter-0", fit_max_iter_zero),
    Case("kmeans-max-iter-0", lambda p: kmeans(max_iter=0).fit(X), r"max_iter must be an integer"),
    Case(
        "gmm-n-components-float",
        lambda p: GaussianMixture(3.0).fit(X),
        r"n_components must be an integer >= 1, got 3\.0",
    ),
    Case("kmeans-n-clusters-bool", lambda p: KMeans(True).fit(X), r"n_clusters must be an integer"),
    Case("gmm-n-components-int64", fit_n_components_int64),
    Case(
        "kmeans-random-state-generator",
        lambda p: KMeans(K, random_state=np.random.default_rng(0)).fit(X),
        r"random_state must be .*Generator is not accepted.*integer seed",
    ),
    Case("gmm-tol-negative", lambda p: gmm(tol=-1.0).fit(X), r"tol must be a non-negative"),
    Case(
        "gmm-split-every-1",
        lambda p: gmm(split_every=1).fit(lazy(X)),
        r"split_every must be an integer >= 2",
    ),
    Case(
        "gmm-means-init-nan",
        lambda p: gmm(means_init=np.full((K, 3), np.nan)).fit(X),
        r"means_init contains NaN",
    ),
    Case(
        "kmeans-init-nan",
        lambda p: KMeans(K, init=np.full((K, 3), np.nan)).fit(X),
        r"init contains NaN",
    ),
    Case("kmeans-k-above-distinct-points", fit_k_above_distinct_points),
    Case(
        "gmm-sample-non-integer",
        lambda p: gmm().fit(X).sample(2.5),
        r"n_samples must be an integer >= 1, got 2\.5",
    ),
    # the fitted model
    Case(
        "gmm-predict-before-fit",
        lambda p: GaussianMixture(K).predict(X),
        r"not fitted yet",
        raises=NotFittedError,
    ),
    Case(
        "gmm-to-xarray-before-fit",
        lambda p: GaussianMixture(K).to_xarray(),
        r"not fitted yet",
        raises=NotFittedError,
    ),
    Case(
        "kmeans-transform-before-fit",
        lambda p: KMeans(K).transform(X),
        r"not fitted yet",
        raises=NotFittedError,
    ),
    Case(
        "gmm-predict-wrong-n-features-dask",
        lambda p: gmm().fit(X).predict(lazy(X[:, :2])),
        r"X has 2 features, but GaussianMixture is expecting 3",
    ),
    Case(
        "anneal-predict-wrong-n-features",
        lambda p: anneal().fit(X).predict_proba(X[:, :2]),
        r"X has 2 features, but AnnealedGaussianMixture is expecting 3",
    ),
    # the dask-emk command, continued
    Case(
        "cli-max-iter-0",
        lambda p: cli_fit(p, write_store(p, X), "--max-iter", 0),
        r"Error: Invalid value for '--max-iter': 0 is not in the range x>=1",
    ),
    Case(
        "cli-pipeline-max-iter-0",
        lambda p: cli("run", pipeline(p, model={"max_iter": 0})),
        r"Error: .*\[model\] max_iter must be >= 1, got 0",
    ),
    Case(
        "cli-k-0",
        lambda p: cli("fit", write_store(p, X), "--k", 0, "--out", p / "o.zarr"),
        r"Error: Invalid value for '--k': 0 is not in the range x>=1",
    ),
    Case(
        "cli-negative-tol",
        lambda p: cli_fit(p, write_store(p, X), "--tol", -1),
        r"Error: Invalid value for '--tol'",
    ),
    Case(
        "cli-unknown-covariance-type",
        lambda p: cli_fit(p, write_store(p, X), "--covariance-type", "fool"),
        r"Error: Invalid value for '--covariance-type': 'fool' is not one of",
    ),
    Case(
        "cli-covariance-type-for-kmeans",
        lambda p: cli_fit(p, write_store(p, X), "--model", "kmeans", "--covariance-type", "diag"),
        r"Error: --covariance-type does not apply to --model kmeans \(it takes --init, --tol",
    ),
    Case(
        "cli-tol-for-anneal",
        lambda p: cli_fit(p, write_store(p, X), "--model", "anneal", "--tol", 0.1),
        r"Error: --tol does not apply to --model anneal \(it takes the --anneal-\.\.\. options\)",
    ),
    Case(
        "cli-store-several-arrays",
        lambda p: cli_fit(p, several_arrays_store(p)),
        r"Error: store '.*many\.zarr' holds several arrays, \['X', 'Y'\]; name the array to "
        r"fit, e\.g\. `dask-emk fit .*many\.zarr/X`",
    ),
    Case(
        "cli-store-nested-group",
        lambda p: cli_fit(p, several_arrays_store(p, group="grp")),
        r"Error: store .*holds several arrays, \['grp/X', 'grp/Y'\].*"
        r"`dask-emk fit .*many\.zarr/grp/X`",
    ),
    Case(
        "cli-store-array-not-found",
        lambda p: cli_fit(p, several_arrays_store(p) / "Z"),
        r"Error: array 'Z' not found in store .*`dask-emk fit .*many\.zarr/X`",
    ),
    Case(
        "cli-show-data-store",
        lambda p: cli("show", several_arrays_store(p)),
        r"Error: .*many\.zarr is a zarr store \(arrays \['X', 'Y'\]\) that no dask-emk run "
        r"wrote, not a results store",
    ),
    Case(
        "cli-show-data-array",
        lambda p: cli("show", write_store(p, X)),
        r"Error: .*X\.zarr is a zarr array \(input data\?\), not a results store",
    ),
    Case(
        "cli-csv-empty",
        lambda p: cli_fit(p, csv_file(p, b"")),
        r"Error: input csv .*data\.csv is empty; write a header row",
    ),
    Case(
        "cli-csv-ragged",
        lambda p: cli_fit(p, csv_file(p, b"a,b\n1,2\n3\n")),
        r"Error: input csv .*data\.csv is not a table: .*Line #3 \(got 1 columns instead of 2\)",
    ),
    Case(
        "cli-csv-not-utf8",
        lambda p: cli_fit(p, csv_file(p, "café,b\n1,2\n".encode("latin-1"))),
        r"Error: input csv .*data\.csv is not UTF-8 text \(byte 0xe9 at position 3\)",
    ),
    Case("cli-pipeline-utf8-bom", run_bom_pipeline),
    Case(
        "cli-pipeline-not-utf8",
        lambda p: cli("run", not_utf8_pipeline(p)),
        r"Error: pipeline .*\.toml is not UTF-8 text \(byte 0xe9 at position \d+\); save it",
    ),
]  # fmt: on


def test_the_table_is_big_enough():
    assert len(CASES) >= 130 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, tmp_path):
    if case.error is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no silent overflow/NaN
            warnings.simplefilter("ignore", ConvergenceWarning)  # fixed iteration counts
            model = case.run(tmp_path)
        assert_finite(model)
        return
    with pytest.raises((case.raises, CliFailure)) as info:
        case.run(tmp_path)
    message = str(info.value)
    assert re.search(case.error, message), message
    if info.type is not CliFailure:
        # Raised by dask_emk's own checks, not from deep inside numpy/dask/zarr;
        # NotFittedError by scikit-learn's check_is_fitted, called by dask_emk.
        frames = [str(entry.path) for entry in info.traceback]
        raised_in = frames[-2] if case.raises is NotFittedError else frames[-1]
        assert "dask_emk" in raised_in, f"raised in {raised_in}: {message}"
        assert "Traceback" not in message


# ------------------------------------------------ pickles without the data
BIG = np.tile(X, (67, 1))[:200_000]  # 4.8 MB


@pytest.mark.parametrize(
    "model",
    [
        KMeans(K, random_state=0),
        GaussianMixture(K, max_iter=5, random_state=0),
        AnnealedGaussianMixture(K, sample_size=2000, random_state=0),
    ],
    ids=lambda m: type(m).__name__,
)
def test_pickle_does_not_carry_the_training_data(model):
    """Lazy labels_ (a graph holding the data) stay out of the pickle; the
    unpickled model predicts the same and says where labels_ went."""
    data = lazy(BIG, chunks=(25_000, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(data)
    blob = pickle.dumps(model)
    assert len(blob) < 100_000, len(blob)
    back = pickle.loads(blob)
    labels = back.predict(data).compute()
    np.testing.assert_array_equal(labels, model.predict(data).compute())
    if hasattr(model, "labels_"):
        np.testing.assert_array_equal(labels, model.labels_.compute())
        with pytest.raises(AttributeError, match=r"labels_ of lazy training data is not pickled"):
            back.labels_  # noqa: B018


def test_pickle_keeps_numpy_labels():
    model = kmeans().fit(X)
    back = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(back.labels_, SkKMeans(K, init=CENTERS, n_init=1).fit(X).labels_)
