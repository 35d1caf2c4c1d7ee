"""The dask-emk command: generate, fit, show, and one-line errors that write nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from pipeline_helpers import (
    assert_one_line_error,
    invoke,
    matched_errors,
    open_results,
    scaled_pipeline,
)

from dask_emk.pipeline.generate import read_truth


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mix.zarr"
    result = invoke("generate", path, "--n", 30_000, "--d", 2, "--k", 3, "--chunk-rows", 5_000,
                    "--seed", 3)  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


def test_generate_writes_data_and_truth(store):
    X = zarr.open_array(store / "X", mode="r")
    assert X.shape == (30_000, 2) and X.chunks == (5_000, 2) and X.dtype == np.float32
    truth = read_truth(store)
    labels = zarr.open_array(store / "labels", mode="r")[:]
    # The data follow the stored truth: per-component sample means near the true means.
    for k in range(3):
        np.testing.assert_allclose(X[:][labels == k].mean(axis=0), truth.means[k], atol=0.1)
    again = invoke("generate", store, "--n", 10, "--d", 2, "--k", 3)
    assert_one_line_error(again, "already exists")


def test_fit_kmeans_and_show(store, tmp_path):
    out = tmp_path / "km.zarr"
    result = invoke("fit", f"{store}/X", "--model", "kmeans", "--k", 3, "--out", out,
                    "--scheduler", "sync", "--no-plots")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "kmeans iter" in result.output and "fitted vs truth" in result.output
    mean_err, weight_err, _ = matched_errors(out)
    assert mean_err < 0.05 and weight_err < 0.01
    ds = open_results(out)
    assert ds["label"].shape == (30_000,) and ds.attrs["model"] == "KMeans"
    shown = invoke("show", out)
    assert shown.exit_code == 0 and "KMeans" in shown.output and "means" in shown.output


def test_fit_gmm_quiet_threads(store, tmp_path):
    out = tmp_path / "gm.zarr"
    result = invoke("fit", store / "X", "--k", 3, "--out", out, "--scheduler", "threads",
                    "--quiet", "--responsibilities", "--no-plots")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "gmm iter" not in result.output  # --quiet silences per-iteration lines
    assert matched_errors(out)[0] < 0.05
    assert open_results(out)["responsibility"].shape == (30_000, 3)


def test_python_dash_m():
    proc = subprocess.run(
        [sys.executable, "-m", "dask_emk", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("generate", "run", "fit", "show"):
        assert command in proc.stdout


# ------------------------------------------------------------------ bad input
def assert_nothing_written(directory: Path) -> None:
    assert sorted(p.name for p in directory.iterdir() if p.suffix != ".toml") == []


def test_missing_store(tmp_path):
    result = invoke("fit", tmp_path / "nope.zarr", "--k", 2, "--out", tmp_path / "r.zarr")
    assert_one_line_error(result, "does not exist", "dask-emk generate")
    assert_nothing_written(tmp_path)


def test_wrong_array_name(store, tmp_path):
    out = tmp_path / "r.zarr"
    result = invoke("fit", f"{store}/Y", "--k", 2, "--out", out)
    assert_one_line_error(result, "'Y' not found", "'X'")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [((100,), "float64", "must be 2-D"), ((100, 2), "str", "non-numeric")],
)
def test_bad_array(tmp_path, shape, dtype, message):
    bad = tmp_path / "bad.zarr"
    group = zarr.open_group(bad, mode="w")
    arr = group.create_array("X", shape=shape, dtype=dtype)
    arr[...] = np.ones(shape).astype(dtype)
    out = tmp_path / "out" / "r.zarr"
    assert_one_line_error(invoke("fit", f"{bad}/X", "--k", 2, "--out", out), message)
    assert not (tmp_path / "out").exists()


def test_toml_unknown_key(tmp_path):
    toml = scaled_pipeline("faithful", tmp_path, model={"max_iters": 5})
    line = assert_one_line_error(invoke("run", toml), "unknown key 'max_iters'", "[model]")
    assert "did you mean 'max_iter'" in line
    assert_nothing_written(tmp_path)


def test_toml_wrong_type(tmp_path):
    toml = scaled_pipeline("faithful", tmp_path, model={"n_components": "two"})
    assert_one_line_error(invoke("run", toml), "model.n_components must be an integer", "'two'")
    assert_nothing_written(tmp_path)


def test_toml_unknown_section(tmp_path):
    toml = scaled_pipeline("faithful", tmp_path, outputs={"results": "x"})
    assert_one_line_error(invoke("run", toml), "unknown key 'outputs'", "did you mean 'output'")


def test_unreachable_scheduler_writes_nothing(tmp_path):
    toml = scaled_pipeline("quickstart", tmp_path, **{"input.generate": {"n": 1000}})
    # Port 9 (discard) on localhost: nothing listens, the connection is refused.
    result = invoke("run", toml, "--scheduler", "tcp://127.0.0.1:9")
    assert_one_line_error(result, "cannot reach the Dask scheduler", "dask scheduler")
    assert_nothing_written(tmp_path)  # not even the generated input


def test_unknown_scheduler_spec(tmp_path):
    toml = scaled_pipeline("faithful", tmp_path)
    assert_one_line_error(invoke("run", toml, "--scheduler", "cluster"), "local:N", "tcp://")
    assert_nothing_written(tmp_path)


def test_resume_with_changed_pipeline_is_refused(tmp_path):
    toml = scaled_pipeline("faithful", tmp_path)
    assert invoke("run", toml, "-q", "--no-plots").exit_code == 0
    changed = scaled_pipeline("faithful", tmp_path, model={"tol": 1e-3})
    assert_one_line_error(invoke("run", changed, "--resume"), "different pipeline")


@pytest.mark.parametrize("wrapped", [False, True])
def test_signal_inside_c_code_still_exits_as_interrupted(wrapped):
    """A SIGTERM that numba's dispatcher turns into a chained SystemError ends the
    command like the signal itself: exit code 128 + 15 and the one `Error:` line."""
    raised = "KeyboardInterrupt(signal.SIGTERM)"
    if wrapped:  # as numba raises it: the interrupt chained to a SystemError
        raised = f"SystemError('returned a result with an exception set') from {raised}"
    code = (
        "import signal\n"
        "from dask_emk.pipeline.cli import _fail_cleanly\n"
        f"def command():\n    raise {raised}\n"
        "_fail_cleanly(command)()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 128 + 15, done.stderr
    assert done.stderr.startswith("Error: interrupted by SIGTERM"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
