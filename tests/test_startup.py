"""Start-up and first-run compilation, each in a fresh interpreter (issue 26).

- numba's disk cache goes to a per-user folder, never into the package;
- ``dask-emk --help`` and a pipeline error do not import the numeric stack;
- a first fit with an empty cache says that it compiles, and is not much
  slower than a warm one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dask_emk"


def python(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout."""
    base = without_numba_cache_dir()
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], env={**base, **(env or {})}, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip


def without_numba_cache_dir() -> dict:
    """The environment, without a NUMBA_CACHE_DIR that would win over XDG_CACHE_HOME."""
    return {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


KMEANS_FIT = """
import numpy as np
from dask_emk import KMeans
X = np.random.default_rng(0).normal(size=(500, 2))
print(KMeans(3, random_state=0).fit(X).inertia_)
"""


@pytest.mark.parametrize("first", ["", "import numba\n"], ids=["numba-later", "numba-first"])
def test_numba_cache_goes_to_the_user_cache_not_the_package(tmp_path, first):
    """Also when the user imported numba first (it read its settings then)."""
    before = listing(PACKAGE)
    done = python(first + KMEANS_FIT, env={"XDG_CACHE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert listing(PACKAGE) == before  # numba's default wrote core/__pycache__/*.nbi
    cache = tmp_path / "dask-emk" / "numba"
    assert any(cache.rglob("loops.lloyd_rows-*.nbi")), sorted(listing(tmp_path))
    assert any(cache.rglob("*.nbc"))


def test_a_user_numba_cache_dir_is_kept(tmp_path):
    mine = tmp_path / "mine"
    done = python(KMEANS_FIT, env={"XDG_CACHE_HOME": str(tmp_path / "xdg"),
                                   "NUMBA_CACHE_DIR": str(mine)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert any(mine.rglob("*.nbi"))
    assert not (tmp_path / "xdg").exists()


def test_an_unwritable_cache_folder_means_no_cache_and_one_line(tmp_path):
    blocker = tmp_path / "file"  # a parent that is a file: unwritable even for root
    blocker.write_text("")
    before = listing(PACKAGE)
    code = "import logging; logging.basicConfig(); " + KMEANS_FIT
    done = python(code, env={"XDG_CACHE_HOME": str(blocker)})
    assert done.returncode == 0, done.stderr
    assert listing(PACKAGE) == before  # no fall-back into the package folder
    lines = [line for line in done.stderr.splitlines() if "not writable" in line]
    assert len(lines) == 1, done.stderr
    assert "NUMBA_CACHE_DIR" in lines[0]


HEAVY = ("numba", "sklearn", "xarray", "scipy", "distributed", "pandas", "dask.array")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "PIPELINE"]])
def test_cli_start_up_imports_no_numeric_stack(tmp_path, args):
    """--help, --version and a pipeline error: no numba, scikit-learn, xarray, scipy,
    distributed, pandas or dask.array (2-3 s and 400 MB before, issue 26)."""
    pipeline = tmp_path / "typo.toml"
    pipeline.write_text('[input]\nstore = "x.zarr"\n[model]\nn_componets = 2\n'
                        '[output]\nresults = "r.zarr"\n')  # fmt: skip
    args = [str(pipeline) if a == "PIPELINE" else a for a in args]
    code = (
        "import sys\nfrom dask_emk.__main__ import main\n"
        f"sys.argv = ['dask-emk', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print('MODULES', [m for m in {HEAVY!r} if m in sys.modules])\n"
        "sys.exit(code)"
    )
    done = python(code, env={"XDG_CACHE_HOME": str(tmp_path / "empty")})
    assert done.returncode == (1 if args[0] == "run" else 0), done.stderr
    assert "MODULES []" in done.stdout, done.stdout + done.stderr
    if args[0] == "run":  # the error alone (no "compiling kernels"), before any import
        assert done.stderr.splitlines() == [
            f"Error: {pipeline}: unknown key 'n_componets' in [model]; did you mean "
            "'n_components'? allowed: type, n_components, random_state, covariance_type, "
            "init, tol, reg_covar, max_iter, n_init, accelerate, variance, estep, cache, "
            "split_every, nan_policy."
        ]


FIRST_FITS = """
import json, logging, time
logging.basicConfig(level=logging.INFO)
import numpy as np
from distributed import Client, LocalCluster
from dask_emk import GaussianMixture, KMeans
X = np.random.default_rng(0).normal(size=(2000, 2))
X[:1000] += 8
out = {}
start = time.perf_counter()
with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \\
        Client(cluster):
    out["cluster"] = time.perf_counter() - start
    for rep in ("first", "warm"):
        for name, model in (("kmeans", KMeans(3, random_state=0)),
                            ("gmm", GaussianMixture(3, random_state=0))):
            start = time.perf_counter()
            model.fit(X)
            out[f"{name} {rep}"] = time.perf_counter() - start
print(json.dumps(out))
"""


@pytest.mark.slow
def test_first_fits_on_a_local_cluster_say_they_compile_then_use_the_cache(tmp_path):
    """An empty cache: one "compiling kernels" line. A fresh process after that
    (the cache filled, as after the first run): no line, and each first fit
    within 2x a warm one plus the cluster start (x1.5 for a loaded machine)."""
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    cold = python(FIRST_FITS, env=env, timeout=900)
    assert cold.returncode == 0, cold.stderr
    assert cold.stderr.count("compiling kernels (first run only, ~") == 1, cold.stderr
    fresh = python(FIRST_FITS, env=env, timeout=900)
    assert fresh.returncode == 0, fresh.stderr
    assert "compiling kernels" not in fresh.stderr
    times = json.loads(fresh.stdout.strip().splitlines()[-1])
    for name in ("kmeans", "gmm"):
        bound = 2 * times[f"{name} warm"] + times["cluster"]
        assert times[f"{name} first"] <= 1.5 * bound, times


@pytest.mark.slow
def test_the_cli_says_it_compiles_on_a_first_run(tmp_path):
    """The CLI shows the dask_emk logger's INFO lines: a first fit with an empty
    cache says "compiling kernels" once, on stderr; the next run does not."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 6])
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", header="a,b", comments="")
    code = (
        "import sys\nfrom dask_emk.__main__ import main\n"
        "sys.argv = ['dask-emk', 'fit', 'x.csv', '--model', 'kmeans', '--k', '2', '--out', "
        "sys.argv[1], '--scheduler', 'sync', '--no-plots', '-q']\nmain()"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    said = []
    for out in ("first.zarr", "second.zarr"):
        done = subprocess.run(
            [sys.executable, "-c", code, out], cwd=tmp_path, capture_output=True, text=True,
            env={**without_numba_cache_dir(), **env, "PYTHONPATH": str(ROOT)}, timeout=600,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        said.append(done.stderr.count("compiling kernels (first run only, ~"))
    assert said == [1, 0]
