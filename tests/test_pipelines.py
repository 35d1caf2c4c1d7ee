"""End to end: `dask-emk run` on the shipped pipelines (scaled down) on real schedulers.

Results are opened with xarray.open_zarr and checked against the generator's
ground truth (or scikit-learn for the real data set), and runs on other
schedulers against the synchronous run.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from pipeline_helpers import (
    DEFAULT_MIN_TASK_BYTES,
    ROOT,
    VENV_BIN,
    dask_cluster_processes,
    matched_errors,
    open_results,
    scaled_pipeline,
)
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_emk.engine import reduction
from dask_emk.pipeline.checkpoint import read_checkpoint
from dask_emk.pipeline.cli import main

QUICK = {"input.generate": {"n": 60_000, "chunk_rows": 10_000}, "anneal": {"sample_size": 5_000}}


def run_cli(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def assert_same_parameters(a: Path, b: Path, rtol: float = 1e-10) -> None:
    """Same fitted parameters and per-sample labels in two results stores."""
    da_, db = open_results(a), open_results(b)
    for name in ("weights", "means", "covariances", "history_lower_bound"):
        np.testing.assert_allclose(da_[name].values, db[name].values, rtol=rtol, atol=0)
    np.testing.assert_array_equal(da_["label"].values, db["label"].values)


@pytest.fixture(scope="module")
def quickstart_sync(tmp_path_factory) -> tuple[Path, str]:
    """The scaled quickstart run once on the synchronous scheduler, with plots:
    (its results store, its output). The reference of every other scheduler's run."""
    folder = tmp_path_factory.mktemp("quickstart_sync")
    out = run_cli("run", scaled_pipeline("quickstart", folder, **QUICK), "--scheduler", "sync")
    return folder / "quickstart.zarr", out


@pytest.fixture(scope="module")
def faithful_sync(tmp_path_factory) -> Path:
    """The faithful pipeline run once (synchronous scheduler, with plots): its results store."""
    folder = tmp_path_factory.mktemp("faithful_sync")
    run_cli("run", scaled_pipeline("faithful", folder), "-q")
    return folder / "faithful.zarr"


def test_quickstart_sync_matches_truth(quickstart_sync):
    results, out = quickstart_sync
    tmp_path = results.parent
    assert "fitted vs truth" in out and "gmm iter" in out
    mean_err, weight_err, order = matched_errors(results)
    assert mean_err < 0.1 and weight_err < 0.02
    ds = open_results(results)
    # Per-sample outputs along the input's sample axis, in the input's chunks.
    n = 60_000
    assert ds["label"].shape == (n,) and ds["responsibility"].shape == (n, 4)
    assert ds["label"].encoding["chunks"] == (10_000,)
    np.testing.assert_allclose(ds["responsibility"].sum("component").values, 1.0, atol=1e-6)
    assert np.isfinite(ds["log_density"].values).all()
    true_labels = zarr.open_array(tmp_path / "quickstart-data.zarr" / "labels", mode="r")[:]
    agree = np.mean(ds["label"].values == order[true_labels])
    assert agree > 0.9
    # History, config and version travel with the results.
    assert ds.sizes["iteration"] == ds.attrs["n_iter"] and ds.attrs["converged"] == "True"
    assert np.all(np.diff(ds["history_lower_bound"].values) > -1e-6)
    assert "[input.generate]" in ds.attrs["pipeline_toml"]
    assert ds.attrs["dask_emk_version"]
    path = open_results(results, "anneal_path")
    assert np.all(np.diff(path["sigma2"].values) < 0)
    for fig in ("convergence", "path", "clusters"):
        assert (tmp_path / f"quickstart.{fig}.png").stat().st_size > 1000
    assert not (tmp_path / "quickstart.zarr.partial").exists()


@pytest.mark.slow
def test_quickstart_local_cluster_equals_sync(tmp_path, quickstart_sync):
    toml = scaled_pipeline("quickstart", tmp_path, **QUICK)
    out = run_cli("run", toml, "--no-plots", "--scheduler", "local:2")  # not -q: the line
    assert "scheduler: LocalCluster, 2 workers" in out
    assert_same_parameters(quickstart_sync[0], tmp_path / "quickstart.zarr")
    assert matched_errors(tmp_path / "quickstart.zarr")[0] < 0.1


def test_faithful_matches_scikit_learn(faithful_sync):
    ds = open_results(faithful_sync)
    X = np.loadtxt(ROOT / "data" / "faithful.csv", delimiter=",", skiprows=1)
    sk = SkGaussianMixture(2, tol=1e-10, max_iter=1000, random_state=0).fit(X)
    order = np.argsort(sk.means_[:, 0])
    mine = np.argsort(ds["means"].values[:, 0])
    np.testing.assert_allclose(ds["means"].values[mine], sk.means_[order], rtol=1e-4)
    np.testing.assert_allclose(ds["weights"].values[mine], sk.weights_[order], rtol=1e-4)
    assert list(ds["feature"].values) == ["eruptions", "waiting"]
    # Short eruptions (about 2 min) are a third of the data.
    assert abs(ds["means"].values[mine[0], 0] - 2.04) < 0.01
    assert abs(ds["weights"].values[mine[0]] - 0.356) < 0.005
    assert (faithful_sync.parent / "faithful.clusters.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["local:2", "processes"])
def test_faithful_other_schedulers_equal_sync(tmp_path, faithful_sync, scheduler):
    toml = scaled_pipeline("faithful", tmp_path)
    run_cli("run", toml, "-q", "--no-plots", "--scheduler", scheduler)
    assert_same_parameters(faithful_sync, tmp_path / "faithful.zarr")


@pytest.mark.slow
def test_large_scaled_down_matches_truth(tmp_path):
    toml = scaled_pipeline(
        "large",
        tmp_path,
        **{"input.generate": {"n": 32_000, "chunk_rows": 4_000}, "anneal": {"sample_size": 8_000}},
    )
    run_cli("run", toml, "-q", "--no-plots", "--scheduler", "threads")
    mean_err, weight_err, _ = matched_errors(tmp_path / "large.zarr")
    assert mean_err < 0.15 and weight_err < 0.01
    assert open_results(tmp_path / "large.zarr")["means"].shape == (16, 8)


# --------------------------------------------------------------- real cluster
@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` and two single-threaded `dask worker` processes on 127.0.0.1."""
    with dask_cluster_processes(tmp_path) as (address, _):
        yield address


@pytest.mark.slow
def test_tcp_cluster_equals_sync(tmp_path, dask_cluster, quickstart_sync):
    toml = scaled_pipeline("quickstart", tmp_path, **QUICK)
    out = run_cli("run", toml, "--no-plots", "--scheduler", dask_cluster)  # not -q: the line
    assert f"scheduler: {dask_cluster}" in out
    assert_same_parameters(quickstart_sync[0], tmp_path / "quickstart.zarr")


# -------------------------------------------------------------------- resume
def checkpoint_iteration(path: Path) -> int:
    try:
        state = read_checkpoint(path)["stages"].get("model")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError):
        return 0
    return len(state.history) if state is not None else 0


RESUME = {
    "input.generate": {"n": 40_000, "chunk_rows": 2_000, "d": 3, "k": 5},
    "model": {"init": "kmeans", "tol": 0.0, "max_iter": 40},
    "output": {"plots": False},
    "scheduler": {"address": "sync"},
}


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(tmp_path):
    # The killed run is a subprocess with the engine's default chunk grouping
    # (which shapes k-means|| seeding): the in-process runs must use it too.
    assert DEFAULT_MIN_TASK_BYTES > 0
    with dask.config.set({reduction.MIN_TASK_BYTES_KEY: DEFAULT_MIN_TASK_BYTES}):
        _resume_after_kill(tmp_path)


def _resume_after_kill(tmp_path) -> None:
    (tmp_path / "full").mkdir(), (tmp_path / "killed").mkdir()
    toml = scaled_pipeline("quickstart", tmp_path / "killed", drop=["anneal"], **RESUME)
    proc = subprocess.Popen(
        [VENV_BIN / "dask-emk", "run", toml, "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = tmp_path / "killed" / "quickstart.zarr.checkpoint"
    deadline = time.monotonic() + 60
    while checkpoint_iteration(ckpt) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reached = checkpoint_iteration(ckpt)
    assert 3 <= reached < 40, "the run was not interrupted mid-fit"
    assert not (tmp_path / "killed" / "quickstart.zarr").exists()
    out = run_cli("run", toml, "--resume")  # not -q: the fit's line
    assert "40 iterations" in out
    full = scaled_pipeline("quickstart", tmp_path / "full", drop=["anneal"], **RESUME)
    run_cli("run", full, "-q")
    assert_same_parameters(
        tmp_path / "full" / "quickstart.zarr", tmp_path / "killed" / "quickstart.zarr", rtol=0
    )
