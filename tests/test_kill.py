"""`dask-emk run` killed at random moments (SIGINT, SIGKILL, SIGTERM), then rerun.

A small pipeline (generated input, k-means|| then EM, checkpoint after every
iteration, per-sample outputs, sync scheduler) is run once undisturbed to
time how long it works after locking its results. Copies of it (two side by
side) are then signalled at seeded random moments of that span after they
lock theirs, so the kills land in generating, fitting, checkpointing and
exporting. Each kill is followed by a rerun (``--resume`` once a checkpoint
exists), itself a candidate for the next kill. After every kill the previous
complete results are intact (at the path, or moved aside for the next run to
put back); after every completed run they equal the undisturbed ones and no
temporary file, lock or half-written store is left. (tests/test_safety.py
covers the plots' temporaries.)
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import VENV_BIN, scaled_pipeline, snapshot, wait_for

from dask_emk.pipeline.outputs import lock_path, moved_aside_path

pytestmark = pytest.mark.slow

PIPELINE = {
    "input.generate": {"n": 50_000, "chunk_rows": 5_000},
    "model": {"init": "kmeans", "tol": 0.0, "max_iter": 25},
    "output": {"plots": False, "responsibilities": True, "log_density": True},
    "scheduler": {"address": "sync"},
}
#: Two chains run side by side (the runs are single-threaded), each in rounds:
#: one from nothing, one fitting afresh over the previous results.
CHAINS, ROUNDS, KILLS_PER_ROUND = 2, 2, 5
SIGNALS = (signal.SIGINT, signal.SIGKILL, signal.SIGTERM)
#: What a completed run leaves in its folder, and nothing else.
FINAL = {
    "quickstart.toml",
    "quickstart-data.zarr",
    "quickstart.zarr",
    "quickstart.zarr.checkpoint",
}


def start(toml: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [VENV_BIN / "dask-emk", "run", toml, "-q", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def values(results: Path) -> dict:
    """Every data variable of a results store except the timings."""
    return {k: v for k, v in snapshot(results).items() if k not in ("attrs", "history_seconds")}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[name], value, rtol=1e-10, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_killed_runs_rerun_to_the_undisturbed_result(tmp_path):
    began, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    reference, window = undisturbed_run(tmp_path / "undisturbed")
    with ThreadPoolExecutor(CHAINS) as pool:
        chains = [
            pool.submit(kill_and_rerun, tmp_path / f"chain{i}", reference, window, seed=i)
            for i in range(CHAINS)
        ]
        landed = [chain.result() for chain in chains]
    counts = {sig.name: sum(n[sig] for n in landed) for sig in SIGNALS}
    phases = {name: sum(n[name] for n in landed) for name in [*PHASES.values(), "fitting"]}
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    print(
        f"kills landed: {counts}, while {phases}, in {sum(n['runs'] for n in landed)} runs; "
        f"the undisturbed run worked {window:.1f} s after taking its lock; total "
        f"{time.monotonic() - began:.0f} s wall, {cpu_seconds:.0f} s CPU of the runs"
    )
    assert sum(counts.values()) == CHAINS * ROUNDS * KILLS_PER_ROUND
    assert min(counts.values()) >= CHAINS * (ROUNDS * KILLS_PER_ROUND // len(SIGNALS))


def kill_and_rerun(folder: Path, reference: dict, window: float, seed: int) -> dict:
    """Kill runs of the pipeline in ``folder`` at random moments up to ``window`` s
    after they lock their results; check each kill and each completed run.

    Returns the number of runs and of kills that landed, per signal.
    """
    folder.mkdir()
    toml = scaled_pipeline("quickstart", folder, drop=["anneal"], **PIPELINE)
    results = folder / "quickstart.zarr"
    rng = np.random.default_rng(seed)
    tally = dict.fromkeys(["runs", *SIGNALS, *PHASES.values(), "fitting"], 0)
    for round_ in range(ROUNDS):
        if round_ % 2 == 0:  # from nothing: kills land in generating and fitting too
            for path in folder.iterdir():
                if path != toml:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        resume, span, kills = (), window, 0  # the first run fits afresh, over any results
        # From nothing, the first kill waits for the generated store to be begun:
        # generating is too short a phase for random moments to land in often.
        after = folder / "quickstart-data.zarr.partial" if round_ % 2 == 0 else None
        while kills < KILLS_PER_ROUND:
            had_results = results.exists()
            sig = SIGNALS[sum(tally[s] for s in SIGNALS) % len(SIGNALS)]
            tally["runs"] += 1
            delay = rng.uniform(0, 0.1 if after else span)
            returncode, err, worked = signalled_run(toml, resume, delay, sig, after)
            resume, after = ("--resume",), None
            # Finished before the signal, or SIGINT/SIGTERM hit the interpreter's
            # shutdown (Python restores the default action there: killed, silently).
            handled = sig != signal.SIGKILL
            if returncode == 0 or (handled and returncode == -sig and not err):
                check_complete(results, reference)
                span = min(span, worked)  # the next runs resume past the fit: aim inside them
                continue
            check_interrupted(returncode, err, sig, lock_path(results))
            kills += 1
            tally[sig] += 1
            tally[phase(folder)] += 1
            if had_results:  # whole, at the path or moved aside for the next run
                kept = results if results.exists() else moved_aside_path(results)
                assert_same(values(kept), reference)
        returncode, err, _ = signalled_run(toml, resume, 120, None)
        assert returncode == 0, err
        check_complete(results, reference)
    return tally


#: The temporary a kill leaves, by the phase it interrupted (fitting leaves none).
PHASES = {
    "quickstart-data.zarr.partial": "generating",
    "quickstart.zarr.checkpoint.tmp": "checkpointing",
    "quickstart.zarr.partial": "exporting",
}


def phase(folder: Path) -> str:
    """What a killed run was doing, judged by the temporary it left."""
    left = [name for name in PHASES if (folder / name).exists()]
    return PHASES[left[0]] if left else "fitting"


def signalled_run(
    toml: Path, resume: tuple, delay: float, sig, after: Path | None = None
) -> tuple[int, str, float]:
    """`dask-emk run`, sent ``sig`` ``delay`` s after it locks its results (and
    ``after`` appears) unless it ended before; (return code, stderr, seconds it
    worked after taking the lock)."""
    proc = start(toml, *resume)
    mine = f'"pid": {proc.pid},'
    lock = lock_path(toml.with_suffix(".zarr"))
    wait_for(lambda: mine in _text(lock) or proc.poll() is not None, 120, "the results lock")
    locked = time.monotonic()
    if after is not None:
        wait_for(lambda: after.exists() or proc.poll() is not None, 120, after.name)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, time.monotonic() - locked


def undisturbed_run(folder: Path) -> tuple[dict, float]:
    """The reference values, and how long the run worked after locking its results (s)."""
    folder.mkdir()
    toml = scaled_pipeline("quickstart", folder, drop=["anneal"], **PIPELINE)
    returncode, err, worked = signalled_run(toml, (), 120, None)
    assert returncode == 0, err
    return values(folder / "quickstart.zarr"), worked


def check_interrupted(returncode: int, err: str, sig: signal.Signals, lock: Path) -> None:
    if sig == signal.SIGKILL:
        assert returncode == -signal.SIGKILL, err
        return
    # Handled: one line, no traceback, the lock released.
    assert returncode == 128 + sig, err
    assert err.strip().startswith(f"Error: interrupted by {sig.name}"), err
    assert len(err.strip().splitlines()) == 1, err
    assert not lock.exists()


def check_complete(results: Path, reference: dict) -> None:
    assert_same(values(results), reference)
    assert {p.name for p in results.parent.iterdir()} == FINAL


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
