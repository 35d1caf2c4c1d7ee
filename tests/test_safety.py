"""dask-emk replaces or deletes only what it wrote itself.

Every writer (``fit``, ``run``, ``generate``, checkpoints, plots) is pointed at
the user's files: the input store, a path inside or around it, a folder of
other files, a regular file, a foreign zarr store, a path whose parent is a
file, ``.`` and the empty string, a read-only folder and one without
permission. Each must exit 1 with one ``Error:`` line, leave every byte of the
user's tree as it was and create nothing. Then the positive cases: what
dask-emk wrote is replaced, its leftovers removed, a second concurrent run
refused and a stale lock taken over.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pathlib
import pickle
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import zarr
from pipeline_helpers import (
    VENV_BIN,
    assert_one_line_error,
    invoke,
    open_results,
    to_toml,
    wait_for,
)

from dask_emk.pipeline.generate import random_mixture, read_truth, write_mixture_zarr
from dask_emk.pipeline.outputs import RESULTS, claim, lock_path

matplotlib.use("Agg")
INPUT = "inputs/data.zarr"
FIT = ("--k", 2, "--scheduler", "sync", "-q")


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its type and the sha256 of its bytes."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "link " + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def user_files(tmp_path, monkeypatch) -> Path:
    """The user's working folder (the current directory): an input store that
    dask-emk did not write, a folder of files, a text file, another zarr store."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    store = zarr.open_group(INPUT, mode="w")
    store.create_array("X", shape=(600, 2), chunks=(200, 2), dtype="f8")[:] = np.concatenate(
        [rng.normal(-5, 1, (300, 2)), rng.normal(5, 1, (300, 2))]
    )
    (tmp_path / "inputs" / "README").write_text("where the data came from\n")
    (tmp_path / "proj" / "src").mkdir(parents=True)
    (tmp_path / "proj" / "src" / "analysis.py").write_text("print('mine')\n")
    (tmp_path / "proj" / "notes.md").write_text("# notes\n")
    (tmp_path / "notes.txt").write_text("do not lose me\n")
    zarr.create_array(store="other.zarr", shape=(4,), dtype="i4")[:] = [1, 2, 3, 4]
    return tmp_path


def pipeline(folder: Path, results: str, **output) -> Path:
    toml = folder / "pipeline.toml"
    toml.write_text(
        to_toml(
            {
                "input": {"store": INPUT, "array": "X"},
                "model": {"type": "kmeans", "n_components": 2},
                "scheduler": {"address": "sync"},
                "output": {"results": results, **output},
            }
        )
    )
    return toml


def writer_args(writer: str, target: str, folder: Path) -> list:
    if writer == "fit":
        return ["fit", f"{INPUT}/X", *FIT, "--out", target]
    if writer == "run":
        return ["run", pipeline(folder, target)]
    return ["generate", target, "--n", 100, "--d", 2, "--k", 2, "--overwrite"]


def assert_refused_untouched(folder: Path, args: list, *fragments) -> str:
    before = tree(folder)
    line = assert_one_line_error(invoke(*args), *fragments)
    assert tree(folder) == before
    return line


NOT_OURS = "exists and is not a"
TARGETS = {
    # target: (message of fit/run, message of generate)
    INPUT: ("is the input store", NOT_OURS),
    f"{INPUT}/new.zarr": ("is inside the input store", "is inside the zarr store"),
    "inputs": ("contains the input store", NOT_OURS),
    "proj": (NOT_OURS, NOT_OURS),
    "notes.txt": (NOT_OURS, NOT_OURS),
    "other.zarr": (NOT_OURS, NOT_OURS),
    "notes.txt/r.zarr": ("notes.txt is a file, not a folder", "is a file, not a folder"),
    ".": ("is not a path dask-emk can write",) * 2,
    "": ("is not a path dask-emk can write",) * 2,
}


@pytest.mark.parametrize("writer", ["fit", "run", "generate"])
@pytest.mark.parametrize("target", list(TARGETS), ids=lambda t: t or "empty")
def test_writer_refuses_user_files(user_files, writer, target):
    message = TARGETS[target][writer == "generate"]
    args = writer_args(writer, target, user_files)
    line = assert_refused_untouched(user_files, args, message)
    assert (repr(target) if target in ("", ".") else target) in line  # names the path
    fixes = {NOT_OURS: "remove it yourself", TARGETS["."][0]: "give a new name such as"}
    assert fixes.get(message, "choose another") in line  # and the fix


def user_png(path: Path) -> None:
    """A PNG that matplotlib wrote for the user (not dask-emk)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    fig.savefig(path, format="png")
    plt.close(fig)


COMPANIONS = {
    "checkpoint": "r.zarr.checkpoint",
    "plot": "r.convergence.png",
    "results temporary": "r.zarr.partial",
    "moved-aside name": "r.zarr.old",
    "lock name": "r.zarr.lock",
    "checkpoint temporary": "r.zarr.checkpoint.tmp",
    "plot temporary": "r.convergence.png.tmp",
}


@pytest.mark.parametrize("what", ["folder", "file"])
@pytest.mark.parametrize("companion", list(COMPANIONS))
def test_files_beside_the_results_are_not_overwritten(user_files, companion, what):
    """The checkpoint, the plots and the temporary names of a run are not
    written over a user's folder or file of the same name."""
    name = COMPANIONS[companion]
    path = user_files / name
    if what == "folder":
        shutil.copytree(user_files / "proj", path)
    elif companion.startswith("plot"):
        user_png(path)
    else:
        path.write_text("a user's file\n")
    for writer in ("fit", "run"):
        assert_refused_untouched(user_files, writer_args(writer, "r.zarr", user_files), name)


@pytest.mark.parametrize("companion", ["r.zarr.checkpoint", "r.convergence.png"])
def test_input_store_at_a_checkpoint_or_plot_path_is_refused(user_files, companion):
    os.replace(INPUT, companion)
    args = ["fit", f"{companion}/X", *FIT, "--out", "r.zarr"]
    assert_refused_untouched(user_files, args, f"is the input store {companion}")


def test_generate_refuses_a_temporary_name_it_did_not_write(user_files):
    shutil.copytree("proj", "data.zarr.partial")
    args = ["generate", "data.zarr", "--n", 100, "--d", 2, "--k", 2]
    assert_refused_untouched(user_files, args, "data.zarr.partial", "was not written by dask-emk")


class Touch:
    """Unpickling this creates a file: the proof that a checkpoint was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_foreign_checkpoint_is_never_unpickled(user_files):
    sentinel = user_files / "unpickled"
    Path("r.zarr.checkpoint").write_bytes(pickle.dumps(Touch(sentinel)))
    for extra in ([], ["--resume"]):
        args = ["fit", f"{INPUT}/X", *FIT, "--out", "r.zarr", *extra]
        assert_refused_untouched(user_files, args, "r.zarr.checkpoint", "not a dask-emk checkpoint")
    assert not sentinel.exists()


def test_lock_of_another_host_is_refused(user_files):
    info = {"dask_emk_lock": 1, "pid": 1, "host": "elsewhere", "started": "2026-01-01 00:00:00"}
    lock_path("r.zarr").write_text(json.dumps(info))
    args = ["fit", f"{INPUT}/X", *FIT, "--out", "r.zarr"]
    assert_refused_untouched(user_files, args, "another host", "pid 1 on elsewhere")


# ----------------------------------------------------- what dask-emk wrote
def test_results_plots_and_checkpoint_written_by_dask_emk_are_replaced(user_files):
    args = ["fit", f"{INPUT}/X", "--scheduler", "sync", "-q", "--out", "out/r.zarr"]
    assert invoke(*args, "--k", 2).exit_code == 0
    first = tree(user_files / "out")
    assert invoke(*args, "--k", 3, "--init", "k-means++").exit_code == 0
    second = tree(user_files / "out")
    ds = open_results("out/r.zarr")
    assert ds.sizes["component"] == 3 and ds.attrs["dask_emk_results"]["format"] == 1
    names = ["r.clusters.png", "r.convergence.png", "r.zarr.checkpoint"]
    for name in names:
        assert second[name] != first[name], name
    assert sorted(n for n in second if "/" not in n) == sorted(names + ["r.zarr"])


def test_leftovers_of_an_interrupted_run_are_removed(user_files):
    args = ["fit", f"{INPUT}/X", *FIT, "--out", "r.zarr"]
    assert invoke(*args).exit_code == 0
    expected = tree(user_files)
    # What kills at various moments leave: a complete and an empty store
    # temporary, a checkpoint and a plot cut short, a lock of a dead run.
    shutil.copytree("r.zarr", "r.zarr.partial")
    os.mkdir("r.zarr.old")
    Path("r.zarr.checkpoint.tmp").write_bytes(Path("r.zarr.checkpoint").read_bytes()[:60])
    Path("r.convergence.png.tmp").write_bytes(Path("r.convergence.png").read_bytes()[:4096])
    Path("r.clusters.png.tmp").write_bytes(b"")
    write_dead_lock("r.zarr")
    result = invoke(*args, "--resume")  # from the whole checkpoint, not the cut-short one
    assert result.exit_code == 0, result.output
    assert set(tree(user_files)) == set(expected)  # the same names: nothing left over


def write_dead_lock(results: str) -> int:
    """The lock file a run killed on this host leaves; the pid it names."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    info = {"dask_emk_lock": 1, "pid": dead.pid, "host": socket.gethostname(), "started": "x"}
    lock_path(results).write_text(json.dumps(info))
    return dead.pid


def test_stale_lock_of_a_dead_run_is_taken_over(user_files):
    pid = write_dead_lock("r.zarr")
    result = invoke("fit", f"{INPUT}/X", *FIT, "--out", "r.zarr", "--no-plots")
    assert result.exit_code == 0, result.output
    assert f"took over r.zarr.lock left by pid {pid}" in result.output
    assert not lock_path("r.zarr").exists() and open_results("r.zarr").sizes["component"] == 2


def test_generated_store_is_replaced_only_with_overwrite(user_files):
    args = ["generate", "g.zarr", "--n", 500, "--d", 2, "--k", 2]
    assert invoke(*args, "--seed", 1).exit_code == 0
    before = tree(user_files)
    assert_one_line_error(invoke(*args, "--seed", 2), "g.zarr already exists", "--overwrite")
    assert tree(user_files) == before
    assert invoke(*args, "--seed", 2, "--overwrite").exit_code == 0
    np.testing.assert_array_equal(read_truth("g.zarr").means, random_mixture(2, 2, seed=2).means)
    assert sorted(p.name for p in user_files.glob("g.zarr*")) == ["g.zarr"]


def test_python_api_names_the_keyword(user_files):
    truth = random_mixture(2, 2)
    write_mixture_zarr("g.zarr", 100, truth)
    with pytest.raises(ValueError, match=r"g.zarr already exists .*pass overwrite=True"):
        write_mixture_zarr("g.zarr", 100, truth)
    with pytest.raises(ValueError, match="proj exists and is not a data store"):
        write_mixture_zarr("proj", 100, truth, overwrite=True)
    assert (user_files / "proj" / "notes.md").read_text() == "# notes\n"


# ------------------------------------------------------ real subprocesses
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
DROP_FAILED = 125


def permission_bits_bind() -> dict:
    """Popen arguments under which file permissions hold: as root, the child
    drops the capabilities that bypass them (it stays root otherwise)."""
    if os.geteuid() != 0:
        return {}
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def drop_capabilities():
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                os._exit(DROP_FAILED)

    return {"preexec_fn": drop_capabilities}


def dask_emk(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [VENV_BIN / "dask-emk", *map(str, args)], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, **popen,
    )  # fmt: skip


@pytest.mark.slow
def test_unwritable_folders_and_the_reported_bug_in_real_processes(user_files):
    """Read-only and no-permission folders as the kernel enforces them, and the
    bug report (`fit data.zarr/X --out data.zarr` deleted X) end to end."""
    (user_files / "ro").mkdir()
    (user_files / "ro" / "kept.txt").write_text("kept\n")
    (user_files / "noperm").mkdir()
    assert invoke("generate", "data.zarr", "--n", 2000, "--d", 2, "--k", 3).exit_code == 0
    os.chmod(user_files / "ro", 0o555)
    os.chmod(user_files / "noperm", 0o000)
    try:
        probe = subprocess.run(
            [VENV_BIN / "python", "-c", "open('ro/probe', 'w')"], capture_output=True, text=True,
            **permission_bits_bind(),
        )  # fmt: skip
        assert probe.returncode != DROP_FAILED, "prctl could not drop CAP_DAC_OVERRIDE"
        assert "PermissionError" in probe.stderr, "the read-only folder is writable"
        cases = {
            ("fit", "data.zarr"): "is the input store data.zarr",
            ("fit", "ro/r.zarr"): "no permission to create files in",
            ("fit", "noperm/r.zarr"): "no permission to create files in",
            ("run", "ro/r.zarr"): "no permission to create files in",
            ("generate", "ro/d.zarr"): "no permission to create files in",
            ("generate", "noperm/d.zarr"): "no permission to create files in",
        }
        args = {(w, t): writer_args(w, t, user_files) for w, t in cases}
        args["fit", "data.zarr"] = ["fit", "data.zarr/X", "--model", "kmeans", "--k", 3, "--out",
                                    "data.zarr"]  # fmt: skip
        before = tree(user_files)
        procs = {key: dask_emk(*args[key], **permission_bits_bind()) for key in cases}
        for key, proc in procs.items():
            out, _ = proc.communicate(timeout=120)
            lines = out.strip().splitlines()
            assert proc.returncode == 1 and len(lines) == 1, (key, out)
            assert lines[0].startswith("Error: ") and cases[key] in lines[0], (key, out)
        assert tree(user_files) == before
    finally:
        os.chmod(user_files / "ro", 0o755)
        os.chmod(user_files / "noperm", 0o755)


@pytest.mark.slow
def test_second_run_on_the_same_results_is_refused(user_files):
    """A run stopped (SIGSTOP) while it holds the results: a second run refuses
    and writes nothing; the first then finishes with its own results."""
    toml = pipeline(user_files, "r.zarr", plots=False)
    first = dask_emk("run", toml, "-q")
    lock = lock_path(user_files / "r.zarr")
    try:
        wait_for(lambda: f'"pid": {first.pid}' in _text(lock) or first.poll() is not None, 60,
                 "the first run's lock")  # fmt: skip
        first.send_signal(signal.SIGSTOP)
        before = tree(user_files)
        line = assert_one_line_error(invoke("run", toml, "-q"), "is being written by another")
        assert f"pid {first.pid} on {socket.gethostname()}" in line
        assert tree(user_files) == before
    finally:
        first.send_signal(signal.SIGCONT)
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    assert open_results(user_files / "r.zarr").sizes["component"] == 2
    assert not lock.exists()


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


HOLDER = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from dask_emk.pipeline.outputs import RESULTS, claim
with claim(sys.argv[1], RESULTS, where="--out"):
    pool = ProcessPoolExecutor(1)  # forked, as the "processes" scheduler's workers
    print(pool.submit(os.getpid).result(), flush=True)
    time.sleep(60)
"""


def test_orphaned_workers_of_a_killed_run_hold_no_lock(tmp_path):
    """A run killed while a forked worker lives on: the worker (orphaned) must
    not keep the results locked."""
    results = tmp_path / "r.zarr"
    holder = subprocess.Popen(
        [VENV_BIN / "python", "-c", HOLDER, results], stdout=subprocess.PIPE, text=True
    )
    worker = int(holder.stdout.readline())
    holder.kill()
    holder.wait()
    try:
        os.kill(worker, 0)  # still alive, holding a copy of the parent's descriptors
        with claim(results, RESULTS, where="--out") as notes:
            assert notes[0].startswith(f"took over {lock_path(results)} left by pid {holder.pid}")
    finally:
        os.kill(worker, signal.SIGKILL)


@pytest.mark.parametrize(
    "state", ["empty folder", "marker cut short", "marker staged whole", "marked store"]
)
def test_every_state_a_kill_leaves_in_a_new_store_is_taken_back(tmp_path, state):
    """A run killed while it starts its results store leaves `<results>.partial` in one
    of these states; the next run recognises each as its own and starts afresh."""
    from dask_emk.pipeline.outputs import RESULTS, STAGED_ROOT, marked_root, new_store

    results = tmp_path / "r.zarr"
    partial = tmp_path / "r.zarr.partial"
    partial.mkdir()
    marker = marked_root(RESULTS)
    if state == "marker cut short":
        (partial / STAGED_ROOT).write_bytes(marker[:20])
    elif state == "marker staged whole":
        (partial / STAGED_ROOT).write_bytes(marker)
    elif state == "marked store":
        (partial / "zarr.json").write_bytes(marker)
        (partial / "labels").mkdir()
    assert new_store(results, RESULTS) == partial
    assert sorted(os.listdir(partial)) == ["zarr.json"]
    assert (partial / "zarr.json").read_bytes() == marker


@pytest.mark.parametrize("foreign", [b'{"zarr_format": 3, "node_type": "group"}', b"notes"])
def test_a_staged_root_that_is_not_ours_is_refused(tmp_path, foreign):
    from dask_emk.pipeline.outputs import RESULTS, STAGED_ROOT, UnsafeOutputError, new_store

    partial = tmp_path / "r.zarr.partial"
    partial.mkdir()
    (partial / STAGED_ROOT).write_bytes(foreign)
    with pytest.raises(UnsafeOutputError, match="not written by dask-emk"):
        new_store(tmp_path / "r.zarr", RESULTS)
    assert (partial / STAGED_ROOT).read_bytes() == foreign
