"""Packaging: the example pipelines and their data shipped in the package, the
version flag, plots skipped with a warning without matplotlib, and (slow) a wheel
installed in a fresh virtualenv running a shipped pipeline with no source tree."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import PIPELINES, ROOT, invoke, open_results

import dask_emk
from dask_emk.pipeline.config import load_pipeline, packaged_pipelines


def test_packaged_pipelines_are_the_repository_files():
    shipped = packaged_pipelines()
    assert sorted(shipped) == sorted(p.stem for p in PIPELINES.glob("*.toml"))
    for name, path in shipped.items():
        assert path.read_bytes() == (PIPELINES / f"{name}.toml").read_bytes()
    data = Path(dask_emk.__file__).parent / "data" / "faithful.csv"
    assert data.read_bytes() == (ROOT / "data" / "faithful.csv").read_bytes()


def test_packaged_pipeline_by_name(tmp_path, monkeypatch):
    """Inputs from the package, outputs relative to the current directory."""
    monkeypatch.chdir(tmp_path)
    cfg, text = load_pipeline("faithful")
    assert text == (PIPELINES / "faithful.toml").read_text(encoding="utf-8")
    assert Path(cfg.input.csv) == Path(dask_emk.__file__).parent / "data" / "faithful.csv"
    assert cfg.output.results == "out/faithful.zarr"
    quick, _ = load_pipeline("quickstart")
    assert quick.input.generate.path == "out/quickstart-data.zarr"
    # A file of that name in the current directory wins over the packaged pipeline.
    (tmp_path / "quickstart").write_text(
        (PIPELINES / "quickstart.toml").read_text(encoding="utf-8").replace("= 1_000_000", "= 5")
    )
    assert load_pipeline("quickstart")[0].input.generate.n == 5


def test_unknown_pipeline_names_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "quickstrat")
    assert result.exit_code == 1
    assert "cannot read pipeline quickstrat" in result.output
    assert "faithful, large, photo, quickstart" in result.output


def test_version_flag():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"dask-emk, version {dask_emk.__version__}\n"


def test_run_packaged_faithful_equals_the_repository_file(tmp_path, monkeypatch):
    """`dask-emk run faithful` from any directory: the fit of the repository's file."""
    monkeypatch.chdir(tmp_path)
    assert invoke("run", "faithful", "-q", "--no-plots").exit_code == 0
    ours = open_results(tmp_path / "out" / "faithful.zarr")
    text = (PIPELINES / "faithful.toml").read_text(encoding="utf-8")
    toml = tmp_path / "repo.toml"
    toml.write_text(text.replace('"out/faithful.zarr"', f'"{tmp_path / "repo.zarr"}"'))
    monkeypatch.chdir(ROOT)  # the repository's file reads data/faithful.csv from here
    assert invoke("run", toml, "-q", "--no-plots").exit_code == 0
    theirs = open_results(tmp_path / "repo.zarr")
    assert ours["means"].shape == (2, 2)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(ours[name].values, theirs[name].values)


def test_missing_matplotlib_skips_the_plots(tmp_path):
    """Without matplotlib a run warns, fits and writes its results, and draws nothing."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # import matplotlib -> ImportError
        "from dask_emk.__main__ import main; main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code, "run", "faithful", "-q"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning: skipping the plots: plots need matplotlib" in run.stderr
    assert (tmp_path / "out" / "faithful.zarr").is_dir()
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.slow
def test_wheel_in_a_fresh_virtualenv(tmp_path):
    """Build the wheel, install it (dependencies from this environment) in a fresh
    venv, and run `dask-emk --version` and a shipped pipeline from outside the clone."""
    pip = [sys.executable, "-m", "pip"]
    # No source tree on the path (the tests put the clone on PYTHONPATH, where pip would
    # find its build's egg-info and call dask-emk installed already).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", tmp_path / "wheel", ROOT],
                   env=env, check=True, timeout=600)  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("dask_emk-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("dask_emk/py.typed", "dask_emk/pipelines/quickstart.toml",
                    "dask_emk/data/faithful.csv"):  # fmt: skip
        assert shipped in names
    # A fresh venv that sees this environment's packages (not its editable dask_emk:
    # a plain path line in a .pth file runs no .pth files found there).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    bin_dir = env_dir / "bin"
    site = subprocess.run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig."
                           "get_paths()['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", bin_dir / "python", "install", "-q", "--no-deps", wheel],
                   env=env, check=True, timeout=600)  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run(
        [bin_dir / "python", "-c", "import dask_emk; print(dask_emk.__file__)"],
        cwd=work, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert str(env_dir) in where.stdout, where.stderr  # the installed copy, not the clone
    version = subprocess.run([bin_dir / "dask-emk", "--version"], cwd=work, env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert version.stdout.strip() == f"dask-emk, version {dask_emk.__version__}"
    run = subprocess.run([bin_dir / "dask-emk", "run", "faithful", "-q", "--no-plots"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert (work / "out" / "faithful.zarr").is_dir()
    assert not list(env_dir.rglob("*.zarr"))  # nothing written inside site-packages
