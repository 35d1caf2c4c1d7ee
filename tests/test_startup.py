"""Start-up and first-run compilation, each in a fresh interpreter (issue 26).

- numba's disk cache goes to a per-user folder, never into the package;
- ``dask-emk --help`` and a pipeline error do not import the numeric stack;
- a first fit with an empty cache says that it compiles, and is not much
  slower than a warm one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dask_emk"


def python(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout."""
    base = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], env={**base, **(env or {})}, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


KMEANS_FIT = """
import numpy as np
from dask_emk import KMeans
X = np.random.default_rng(0).normal(size=(500, 2))
print(KMeans(3, random_state=0).fit(X).inertia_)
"""


def test_numba_cache_goes_to_the_user_cache_not_the_package(tmp_path):
    before = listing(PACKAGE)
    done = python(KMEANS_FIT, env={"XDG_CACHE_HOME": str(tmp_path)})
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
