"""Scaled-down copies of the shipped pipelines and a small TOML writer for tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xarray as xr
from click.testing import CliRunner
from scipy.optimize import linear_sum_assignment

from dask_emk.engine import reduction
from dask_emk.pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
VENV_BIN = Path(sys.executable).parent
#: The engine's chunk grouping as `dask-emk` subprocesses see it (conftest
#: turns it off for the in-process tests).
DEFAULT_MIN_TASK_BYTES = reduction.DEFAULT_MIN_TASK_BYTES


def to_toml(cfg: dict) -> str:
    """TOML text for a dict of tables holding scalars, lists and sub-tables."""
    lines = []

    def table(name: str, body: dict) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if name:
            lines.append(f"[{name}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {_value(value)}")
        for key, value in body.items():
            if isinstance(value, dict):
                table(f"{name}.{key}" if name else key, value)

    table("", cfg)
    return "\n".join(lines) + "\n"


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return repr(value)


def scaled_pipeline(name: str, tmp_path: Path, drop=(), **sections) -> Path:
    """Copy of pipelines/<name>.toml with outputs under tmp_path and overrides.

    ``sections`` maps a section name ('input.generate', 'model', ...) to the
    keys to replace in it; ``drop`` names top-level sections to remove.
    """
    cfg = tomllib.loads((PIPELINES / f"{name}.toml").read_text())
    for section in drop:
        del cfg[section]
    cfg["output"]["results"] = str(tmp_path / f"{name}.zarr")
    if "generate" in cfg["input"]:
        cfg["input"]["generate"]["path"] = str(tmp_path / f"{name}-data.zarr")
    if "csv" in cfg["input"]:
        cfg["input"]["csv"] = str(ROOT / cfg["input"]["csv"])
    for section, changes in sections.items():
        node = cfg
        for part in section.split("."):
            node = node.setdefault(part, {})
        node.update(changes)
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(cfg))
    return path


def invoke(*args):
    """``dask-emk ARGS`` in-process; the click Result."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments) -> str:
    """Exit code 1 and a single `Error: ...` line containing every fragment
    (after "compiling kernels …", said by a first run with an empty cache)."""
    lines = [line for line in result.output.strip().splitlines()
             if "compiling kernels (first run only" not in line]  # fmt: skip
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def open_results(path, group=None) -> xr.Dataset:
    return xr.open_zarr(path, group=group, consolidated=False)


def snapshot(results: Path) -> dict:
    """Every variable of the results store, read in full (fails on a broken store)."""
    ds = open_results(results).load()
    return {name: ds[name].values.copy() for name in ds.data_vars} | {"attrs": dict(ds.attrs)}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def matched_errors(results: Path) -> tuple[float, float, np.ndarray]:
    """Largest mean error (true sd units) and weight error against the truth group,
    and the fitted index of each true component."""
    fit, truth = open_results(results), open_results(results, "truth")
    means, weights = fit["means"].values, fit["weights"].values
    true_means = truth["means"].values
    cost = ((true_means[:, None, :] - means[None]) ** 2).sum(axis=2)
    _, order = linear_sum_assignment(cost)
    sd = np.sqrt(np.diagonal(truth["covariances"].values, axis1=1, axis2=2))
    mean_err = float(np.max(np.abs(means[order] - true_means) / sd))
    weight_err = float(np.max(np.abs(weights[order] - truth["weights"].values)))
    return mean_err, weight_err, order


# --------------------------------------------------------------- real cluster
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dask_cluster_processes(
    workdir: Path, n_workers: int = 2, nanny: bool = True
) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """`dask scheduler` and ``n_workers`` single-threaded `dask worker` processes
    on 127.0.0.1; yields (address, worker processes) and stops them all after.

    With ``nanny=False`` each worker process is the worker itself (kill it and
    it is gone); with a nanny, the Popen is the nanny and the worker is its child.
    """
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(workdir / "cluster.log", "a")
    procs = [
        subprocess.Popen(
            [VENV_BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    ]  # fmt: skip
    try:
        from distributed import Client

        for _ in range(n_workers):
            procs.append(
                subprocess.Popen(
                    [VENV_BIN / "dask", "worker", address, "--nthreads", "1",
                     "--nanny" if nanny else "--no-nanny",
                     "--dashboard-address", ":0", "--local-directory", str(workdir / "dw")],
                    stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(n_workers, timeout=60)
        yield address, procs[1:]
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
