"""Writes that cannot succeed end in one line naming the path and the problem.

Real `dask-emk` subprocesses: an ``--out`` through a symbolic link that loops
(pathlib raised RuntimeError), and a file-size limit (``RLIMIT_FSIZE`` with
SIGXFSZ ignored, the write fails with EFBIG as a full disk fails with ENOSPC)
hit while the results store or the checkpoint is written (an OSError
traceback). Each exits 1 with one ``Error:`` line; the previous results stay
as they were and no temporary is left behind.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest
from pipeline_helpers import VENV_BIN, snapshot

from dask_emk.pipeline.checkpoint import checkpoint_path
from dask_emk.pipeline.generate import random_mixture, write_mixture_zarr

pytestmark = pytest.mark.slow


def dask_emk(*args, cwd: Path, preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen(
        [VENV_BIN / "dask-emk", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
    )  # fmt: skip


def one_line_error(proc: subprocess.Popen, *fragments) -> str:
    out, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == 1, out + err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree(root: Path, skip: tuple = ()) -> dict[str, str]:
    """Every path under ``root`` with the sha256 of its bytes (links: their target)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            if path.name in skip:
                continue
            if path.is_symlink():
                found[str(path)] = "link " + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(path)] = "dir"
    return found


@pytest.fixture
def data(tmp_path) -> Path:
    """20,000 × 3 rows in one chunk: a results chunk file of tens of kB."""
    path = tmp_path / "data.zarr"
    write_mixture_zarr(path, 20_000, random_mixture(3, 3, seed=0), chunk_rows=20_000, seed=1)
    return path


FIT = ("--k", 3, "--max-iter", 3, "--scheduler", "sync", "-q", "--no-plots", "--responsibilities")


def test_out_through_a_looping_symbolic_link_is_refused(tmp_path, data):
    (tmp_path / "self").symlink_to("self")
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    before = tree(tmp_path)
    cases = {"self": "self", "self/r.zarr": "self", "a/r.zarr": "a", "b/deeper/r.zarr": "b"}
    procs = {out: dask_emk("fit", f"{data}/X", *FIT, "--out", out, cwd=tmp_path) for out in cases}
    for out, proc in procs.items():
        one_line_error(
            proc, f"cannot write {out}: {tmp_path / cases[out]} is a symbolic link that loops",
            "fix or remove the link, or choose another --out",
        )  # fmt: skip
    assert tree(tmp_path) == before


def file_size_limit(limit: int):
    """A preexec_fn: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored)."""

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


def test_file_size_limit_while_writing_keeps_the_previous_results(tmp_path, data):
    results = tmp_path / "r.zarr"
    args = ("fit", f"{data}/X", *FIT, "--out", results)
    first = dask_emk(*args, cwd=tmp_path)
    assert first.wait(300) == 0, first.stderr.read()
    previous = snapshot(results)
    stored = tree(results)
    largest = max(p.stat().st_size for p in results.rglob("*") if p.is_file())
    checkpoint = Path(checkpoint_path(results))
    assert largest > 4 * checkpoint.stat().st_size  # a limit between them is hit by the results
    for limit, path in ((largest // 2, results), (checkpoint.stat().st_size // 2, checkpoint)):
        proc = dask_emk(*args, cwd=tmp_path, preexec_fn=file_size_limit(limit))
        one_line_error(proc, f"cannot write {path}: file too large", "ulimit -f",
                       "what was there before is left as it was")  # fmt: skip
        assert tree(results) == stored
        assert snapshot(results).keys() == previous.keys()
        leftovers = sorted(p.name for p in tmp_path.iterdir())
        assert leftovers == ["data.zarr", "r.zarr", "r.zarr.checkpoint"], leftovers
