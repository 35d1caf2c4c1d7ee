"""Hostile input, one table: each case ends in a correct fit or a clear error.

Every row is run through the Python API (GaussianMixture, KMeans) or the
``dask-emk`` command. A row either expects an error — a ValueError raised by
dask_emk itself (not from deep inside numpy, dask or zarr) or a one-line
``Error: ...`` from the CLI, in both cases matching a pattern that names the
problem — or it is a fit, which checks its own result against scikit-learn or
an equivalent well-formed input, and must give finite parameters. A SIGALRM
guard turns a hang into a failure. README.md "Troubleshooting" documents
every row.
"""

from __future__ import annotations

import os
import re
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import blobs, init_params
from pipeline_helpers import free_port, scaled_pipeline
from sklearn.cluster import KMeans as SkKMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_emk import GaussianMixture, KMeans
from dask_emk.cli import main
from dask_emk.stats import CollapsedComponentWarning

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


def gmm(**kw) -> GaussianMixture:
    # tol=0: always 25 iterations, the same as scikit-learn's with the same start.
    return GaussianMixture(K, tol=0.0, max_iter=25, **{**START, **kw})


def kmeans(**kw) -> KMeans:
    return KMeans(K, init=CENTERS, n_init=1, **kw)


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
    # Progress lines (scheduler, input) may come first; the error is one last line.
    if result.exit_code == 1 and lines and lines[-1].startswith("Error: "):
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
        r"zarr array /.*X\.zarr is missing the chunk file on disk: c/4/0 \(rows 2000-2499\)",
    ),
    Case(
        "kmeans-store-missing-chunk-dask",
        lambda p: kmeans().fit(da.from_zarr(str(missing_chunk_store(p)))),
        r"X\.zarr is missing the chunk file on disk: c/4/0 \(rows 2000-2499\)",
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
        r"Error: .*X\.zarr is missing the chunk file on disk: c/4/0",
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
]  # fmt: on


def test_the_table_is_big_enough():
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, tmp_path):
    if case.error is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no silent overflow/NaN
            warnings.simplefilter("ignore", ConvergenceWarning)  # fixed iteration counts
            model = case.run(tmp_path)
        assert_finite(model)
        return
    with pytest.raises((ValueError, CliFailure)) as info:
        case.run(tmp_path)
    message = str(info.value)
    assert re.search(case.error, message), message
    if info.type is not CliFailure:
        # Raised by dask_emk's own checks, not from deep inside numpy/dask/zarr.
        raised_in = info.traceback[-1].path
        assert "dask_emk" in str(raised_in), f"raised in {raised_in}: {message}"
        assert "Traceback" not in message
