"""Progress is logged: what runs and how long it took, one number everywhere, -q quiet."""

from __future__ import annotations

import importlib.util
import json
import logging
import re

import numpy as np
import pytest
from click.testing import CliRunner
from pipeline_helpers import open_results, to_toml

from dask_emk import STEPS_LOGGER, AnnealedGaussianMixture
from dask_emk.pipeline.cli import main
from dask_emk.pipeline.scheduler import dashboard

TIME = re.compile(r"^\d\d:\d\d:\d\d ")


def three_blobs(n=3_000, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 2))


def test_annealing_logs_each_step_with_its_variance_and_time(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        model = AnnealedGaussianMixture(3, random_state=0, sample_size=1_000).fit(three_blobs())
    lines = [r.getMessage() for r in caplog.records if r.name == STEPS_LOGGER]
    steps = [line for line in lines if re.match(r"(anneal|harden) step", line)]
    # One line per step of the recorded path, with its σ², its number of means, its time.
    path = model.path_
    assert len(steps) == path.sizes["step"]
    for line, sigma2 in zip(steps, path["sigma2"].values, strict=True):
        assert f"σ² {sigma2:<8.4g}" in line and re.search(r", \d+\.\d\d s$", line), line
    assert any("split" in line for line in steps)
    n_means = np.isfinite(path["means"].values[-1]).all(axis=1).sum()
    assert f"{n_means:3d} means" in steps[-1]
    # The full-data Lloyd run: one line per iteration.
    lloyd = [line for line in lines if line.startswith("lloyd iter")]
    assert len(lloyd) >= 1 and all(re.search(r", \d+\.\d\d s$", line) for line in lloyd)
    assert capsys.readouterr().out == ""  # verbose=0 prints nothing


def test_anneal_verbose_prints_the_logged_lines(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        AnnealedGaussianMixture(3, random_state=0, sample_size=1_000, verbose=1).fit(three_blobs())
    printed = capsys.readouterr().out.splitlines()
    logged = [r.getMessage() for r in caplog.records if r.name == STEPS_LOGGER]
    assert printed == logged and len(printed) > 5


@pytest.fixture
def pipeline(tmp_path):
    def write(standardize: bool, plots: bool = False):
        cfg = {
            "input": {"generate": {"path": str(tmp_path / "data.zarr"), "n": 6000, "d": 2,
                                   "k": 3, "chunk_rows": 1500, "seed": 2}},
            "preprocess": {"standardize": standardize},
            "model": {"type": "gmm", "n_components": 3, "init": "kmeans", "max_iter": 6,
                      "tol": 0.0},
            "scheduler": {"address": "sync"},
            "output": {"results": str(tmp_path / "r.zarr"), "plots": plots},
        }  # fmt: skip
        path = tmp_path / "p.toml"
        path.write_text(to_toml(cfg))
        return path

    return write


def test_run_logs_every_iteration_and_stage_with_times(pipeline, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        result = CliRunner().invoke(main, ["run", str(pipeline(False))], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    iterations = [r.getMessage() for r in caplog.records
                  if r.name == STEPS_LOGGER and "gmm iter" in r.getMessage()]  # fmt: skip
    assert len(iterations) == int(open_results(tmp_path / "r.zarr").attrs["n_iter"]) == 6
    stages = [r.getMessage() for r in caplog.records if r.name == "dask_emk"]
    assert any(re.fullmatch(r"fit: 6 iterations in \d+\.\d s, .*", s) for s in stages), stages
    assert any(re.fullmatch(r"export: .*r\.zarr \(root, truth, label\) in \d+\.\d s", s)
               for s in stages), stages  # fmt: skip
    # On the terminal (stderr): every log line after the time of day; stdout the truth table.
    logged = [line for line in result.stderr.splitlines() if line]
    assert logged and all(TIME.match(line) for line in logged), logged
    assert "gmm iter" not in result.stdout and "fitted vs truth" in result.stdout


def test_quiet_shows_no_progress(pipeline):
    result = CliRunner().invoke(main, ["run", str(pipeline(False)), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and "fitted vs truth" in result.stdout
    again = CliRunner().invoke(main, ["run", str(pipeline(False))], catch_exceptions=False)
    assert "gmm iter" in again.stderr  # -q does not outlive its command


def test_standardized_lower_bound_is_one_number_everywhere(pipeline, tmp_path):
    result = CliRunner().invoke(main, ["run", str(pipeline(True))], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = float(open_results(tmp_path / "r.zarr")["history_lower_bound"].values[-1])
    console = re.search(r"fit: .*lower bound (\S+) \(mean log density per row, data units\)",
                        result.stderr)  # fmt: skip
    last_iteration = re.findall(r"gmm iter +\d+ +lower bound +(\S+)", result.stderr)[-1]
    shown = json.loads(CliRunner().invoke(main, ["show", str(tmp_path / "r.zarr"), "--json"])
                       .stdout)["objective"]  # fmt: skip
    assert shown["units"] == "mean log density per row, data units"
    # Printed with 8 significant digits: equal to that precision, in the data's units
    # (the standardised fit's own bound differs by Σ log scale, far more than that).
    for value in (float(console.group(1)), float(last_iteration), shown["last"]):
        assert value == pytest.approx(stored, rel=1e-7, abs=0)


@pytest.mark.skipif(importlib.util.find_spec("bokeh") is not None, reason="bokeh installed")
def test_no_dashboard_link_without_bokeh():
    line = dashboard("http://127.0.0.1:8787/status")
    assert "http" not in line and "bokeh" in line
    assert dashboard("http://x:8787/status", remote=True) == "dashboard http://x:8787/status"
