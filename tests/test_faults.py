"""Faults injected into running fits: workers SIGKILLed, the client SIGKILLed mid-export.

Worker loss runs on a real cluster (`dask scheduler` + `dask worker` processes
on 127.0.0.1, with and without a nanny) while a GaussianMixture fit on a zarr
store runs in a thread; the fit must finish with the parameters of an
undisturbed run. Export kills run `dask-emk run` in a subprocess and kill it
as soon as the results store's ``.partial`` directory appears.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import blobs
from pipeline_helpers import (
    VENV_BIN,
    dask_cluster_processes,
    scaled_pipeline,
    snapshot,
    wait_for,
)
from sklearn.exceptions import ConvergenceWarning

from dask_emk import GaussianMixture
from dask_emk.pipeline.cli import main
from dask_emk.pipeline.outputs import RESULTS, clean_leftovers, moved_aside_path, partial_path

pytestmark = pytest.mark.slow

N_ITER = 12


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """240,000 × 4 float64 rows in 48 chunks: long enough to kill a worker mid-fit."""
    path = tmp_path_factory.mktemp("faults") / "X.zarr"
    X = blobs(n=240_000, d=4, K=3, seed=11)
    z = zarr.create_array(store=str(path), shape=X.shape, chunks=(5_000, 4), dtype="f8")
    z[:] = X
    return path


def gmm() -> GaussianMixture:
    # tol=0: always N_ITER iterations, so "mid-fit" is well defined.
    return GaussianMixture(
        3, tol=0.0, max_iter=N_ITER, random_state=0, verbose=1, verbose_interval=1
    )


def fit_quietly(model, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X)


class Progress(io.StringIO):
    """stdout of a verbose fit, polled for the iteration it reached."""

    def iteration(self) -> int:
        return self.getvalue().count("Iteration")


def fit_in_thread(X) -> tuple[threading.Thread, Progress, dict]:
    progress, out = Progress(), {}

    def target():
        try:
            with contextlib.redirect_stdout(progress):
                out["model"] = fit_quietly(gmm(), X)
        except BaseException as exc:  # reported by the test, not lost in the thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, progress, out


@pytest.fixture(scope="module")
def undisturbed(store) -> GaussianMixture:
    """The same fit on the synchronous scheduler: no cluster, nothing killed."""
    with dask.config.set(scheduler="sync"), contextlib.redirect_stdout(io.StringIO()):
        return fit_quietly(gmm(), str(store))


def assert_same_fit(a, b) -> None:
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=1e-10, atol=1e-12, err_msg=name
        )
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=1e-10)
    assert a.n_iter_ == b.n_iter_ == N_ITER


@pytest.mark.parametrize("nanny", [False, True], ids=["no-nanny", "nanny"])
def test_worker_killed_mid_fit_gives_undisturbed_result(tmp_path, store, undisturbed, nanny):
    from distributed import Client

    with (
        dask_cluster_processes(tmp_path, n_workers=2, nanny=nanny) as (address, procs),
        Client(address, timeout="30s") as client,
    ):
        pids = client.run(os.getpid)  # worker address -> pid of the worker process
        if not nanny:
            assert sorted(pids.values()) == sorted(p.pid for p in procs)
        thread, progress, out = fit_in_thread(str(store))
        wait_for(lambda: progress.iteration() >= 3 or not thread.is_alive(), 120, "iteration 3")
        assert thread.is_alive(), out.get("error", "the fit ended before the kill")
        victim_address, victim = sorted(pids.items())[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = progress.iteration()
        thread.join(timeout=240)
        assert not thread.is_alive(), "the fit hung after losing a worker"
        assert "error" not in out, repr(out.get("error"))
        assert killed_at < N_ITER, "the worker was killed after the fit"
        assert_same_fit(out["model"], undisturbed)
        if nanny:
            # The nanny restarts its worker: two workers again, one a new process.
            client.wait_for_workers(2, timeout=60)
            new_pids = set(client.run(os.getpid).values())
            assert victim not in new_pids and len(new_pids) == 2
        else:
            wait_for(lambda: victim_address not in client.scheduler_info()["workers"], 30,
                     "the scheduler to drop the dead worker")  # fmt: skip
            assert len(client.scheduler_info()["workers"]) == 1
            assert procs[0].poll() == -signal.SIGKILL or procs[1].poll() == -signal.SIGKILL


# ------------------------------------------------------------ killed in export
EXPORT = {
    "input.generate": {"n": 400_000, "chunk_rows": 50_000, "d": 2, "k": 4},
    "model": {"init": "k-means++", "tol": 0.0, "max_iter": 3},
    "output": {"plots": False, "responsibilities": True, "log_density": True},
    "scheduler": {"address": "sync"},
}


def run_killed_in_export(toml: Path, results: Path, *extra: str) -> None:
    """Start `dask-emk run`, SIGKILL it the moment the .partial store appears."""
    partial = partial_path(results)
    proc = subprocess.Popen(
        [VENV_BIN / "dask-emk", "run", toml, "-q", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: partial.exists() or proc.poll() is not None, 120, ".partial")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    # Killed before the rename: the partial store is still there, never the results.
    assert partial.exists()


def run_cli(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_kill_during_export_leaves_previous_results_or_none(tmp_path):
    results = tmp_path / "quickstart.zarr"
    three = scaled_pipeline("quickstart", tmp_path, drop=["anneal"], **EXPORT)

    # 1. First run killed in export: no results at all.
    run_killed_in_export(three, results)
    assert not results.exists()
    # 2. --resume continues from the checkpoint (the fit is done) and exports.
    run_cli("run", three, "-q", "--resume")
    first = snapshot(results)
    assert first["attrs"]["n_iter"] == 3 and first["responsibility"].shape == (400_000, 4)
    assert not partial_path(results).exists()

    # 3. A different run over the same results, killed in export: the previous
    #    results are untouched and whole.
    four = scaled_pipeline(
        "quickstart", tmp_path, drop=["anneal"], **{**EXPORT, "model": {"max_iter": 4}}
    )
    run_killed_in_export(four, results)
    kept = snapshot(results)
    assert kept.keys() == first.keys()
    for name, value in first.items():
        if name != "attrs":
            np.testing.assert_array_equal(kept[name], value, err_msg=name)
    assert kept["attrs"] == first["attrs"]

    # 4. Rerun: the new results replace the old ones, nothing left over.
    run_cli("run", four, "-q", "--resume")
    second = snapshot(results)
    assert second["attrs"]["n_iter"] == 4
    assert not np.array_equal(second["means"], first["means"])
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(results.name))
    assert leftovers == ["quickstart.zarr", "quickstart.zarr.checkpoint"]


def test_results_moved_aside_by_a_kill_between_renames_are_restored(tmp_path):
    """Replacing results is two renames (POSIX cannot rename a directory over a
    non-empty one); a kill between them leaves the old store at ``.old`` and
    none at the path. The next run puts the old one back before it fits."""
    results = tmp_path / "faithful.zarr"
    toml = scaled_pipeline("faithful", tmp_path, output={"plots": False})
    run_cli("run", toml, "-q")
    before = snapshot(results)
    os.replace(results, moved_aside_path(results))  # the state such a kill leaves
    assert clean_leftovers(results, RESULTS) == [
        f"restored {results} that an interrupted run had moved aside"
    ]
    assert clean_leftovers(results, RESULTS) == []
    np.testing.assert_array_equal(snapshot(results)["means"], before["means"])
    os.replace(results, moved_aside_path(results))
    out = run_cli("run", toml, "-q", "--scheduler", "sync")
    assert "restored" in out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("faithful.zarr")) == [
        "faithful.zarr",
        "faithful.zarr.checkpoint",
    ]
