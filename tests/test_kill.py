"""`dask-emk run` killed (SIGINT, SIGKILL, SIGTERM) in each phase of its work, then rerun.

A small pipeline (generated input, k-means|| then EM, checkpoint after every
iteration, per-sample outputs, sync scheduler) is run once undisturbed to
time how long it works after locking its results. Copies of it (two side by
side) are then signalled in turn at chosen moments: one chain from nothing
(while the input store is generated, at a random moment of the fit, while
the results store is written, right after it is published), one fitting
afresh over complete results (twice at random moments, while the new store
is written, right after it replaces the old one). Each kill is followed by a
rerun (``--resume`` once a checkpoint exists), itself the next one killed.
After every kill the previous complete results are intact (at the path, or
moved aside for the next run to put back); after every completed run they
equal the undisturbed ones and no temporary file, lock or half-written store
is left. (tests/test_safety.py and tests/test_faults.py build the states too
brief to aim a kill at: a marker cut short or staged, a store moved aside
between the two renames; tests/test_safety.py also covers the plots'
temporaries.)
"""

from __future__ import annotations

import re
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
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
SIGNALS = (signal.SIGINT, signal.SIGKILL, signal.SIGTERM)
#: The chains run side by side (the runs are single-threaded), each a list of
#: aims: (what starts the clock, the longest random wait after it in seconds, or
#: None for the span the undisturbed run worked after locking its results).
#: "over_results" starts from the undisturbed run's complete results.
CHAINS = {
    "from_nothing": [
        ("generating", 0.1),  # the input store begun
        ("locked", None),  # anywhere: mostly fitting and checkpointing
        ("exporting", 0.05),  # the first results store begun
        ("published", 0.0),  # the store just renamed into place
    ],
    "over_results": [
        ("locked", None),
        ("locked", None),
        ("exporting", 0.05),  # a store begun to replace complete results
        ("published", 0.0),  # the new store renamed in: the old one moved aside or gone
    ],
}
KILLS = sum(len(aims) for aims in CHAINS.values())
#: Runs that may finish before their signal, per aim, before the test gives up.
TRIES = 6
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
    reference, window = undisturbed_run(tmp_path / "over_results")
    with ThreadPoolExecutor(len(CHAINS)) as pool:
        chains = [
            pool.submit(kill_and_rerun, tmp_path / name, aims, reference, window, seed=i)
            for i, (name, aims) in enumerate(CHAINS.items())
        ]
        landed = [chain.result() for chain in chains]
    counts = {sig.name: sum(n[sig] for n in landed) for sig in SIGNALS}
    phases = {name: sum(n[name] for n in landed) for name in [*PHASES.values(), NO_TEMPORARY]}
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    print(
        f"kills landed: {counts}, while {phases}, in {sum(n['runs'] for n in landed)} runs; "
        f"the undisturbed run worked {window:.1f} s after taking its lock; total "
        f"{time.monotonic() - began:.0f} s wall, {cpu_seconds:.0f} s CPU of the runs"
    )
    assert sum(counts.values()) == KILLS
    assert min(counts.values()) >= KILLS // len(SIGNALS)


def kill_and_rerun(folder: Path, aims: list, reference: dict, window: float, seed: int) -> dict:
    """Kill runs of the pipeline in ``folder`` (empty or absent, or holding the
    undisturbed run), one kill per aim of ``aims``; check each kill and each
    completed run.

    Returns the number of runs and of kills that landed, per signal and phase.
    """
    folder.mkdir(exist_ok=True)
    toml = scaled_pipeline("quickstart", folder, drop=["anneal"], **PIPELINE)
    results = folder / "quickstart.zarr"
    rng = np.random.default_rng(seed)
    tally = dict.fromkeys(["runs", *SIGNALS, *PHASES.values(), NO_TEMPORARY], 0)
    resume = ()  # the first run fits afresh, over any results
    for aim, longest in aims:
        sig = SIGNALS[(seed + sum(tally[s] for s in SIGNALS)) % len(SIGNALS)]
        for _ in range(TRIES):  # until a signal lands: a run may finish before it
            had_results = results.exists()
            tally["runs"] += 1
            delay = rng.uniform(0, window if longest is None else longest)
            returncode, err, _ = signalled_run(toml, resume, delay, sig, AIMS[aim](folder))
            resume = ("--resume",)
            # Finished before the signal, or SIGINT/SIGTERM hit the interpreter's
            # shutdown (Python restores the default action there: killed, silently;
            # under -q the only line such a run wrote is that it took over the lock a
            # killed run left, before the handler was removed at the command's end).
            handled = sig != signal.SIGKILL
            at_shutdown = handled and returncode == -sig and all(
                "took over" in line for line in err.splitlines())
            if not (returncode == 0 or at_shutdown):
                break
            check_complete(results, reference)
            resume = ()  # fit afresh, so that the aimed-at phase comes again
            if aim == "generating":  # a complete input store would be reused, not generated
                shutil.rmtree(folder / "quickstart-data.zarr")
        else:
            raise AssertionError(f"{TRIES} runs ended before a {sig.name} aimed at {aim!r}")
        check_interrupted(returncode, err, sig, lock_path(results))
        tally[sig] += 1
        tally[phase(folder)] += 1
        if had_results:  # whole, at the path or moved aside for the next run
            kept = results if results.exists() else moved_aside_path(results)
            assert_same(values(kept), reference)
    returncode, err, _ = signalled_run(toml, resume, 120, None)
    assert returncode == 0, err
    check_complete(results, reference)
    return tally


def published(folder: Path) -> Callable[[], bool]:
    """True once the results store begun (``.partial``) has been seen and is gone:
    renamed into place."""
    partial, seen = folder / "quickstart.zarr.partial", []

    def ready() -> bool:
        if partial.exists():
            seen.append(True)
            return False
        return bool(seen)

    return ready


#: What starts the clock of each aim, given the run's folder: a test for each poll.
AIMS = {
    "locked": lambda folder: None,
    "generating": lambda folder: (folder / "quickstart-data.zarr.partial").exists,
    "exporting": lambda folder: (folder / "quickstart.zarr.partial").exists,
    "published": published,
}


#: The temporary a kill leaves, by the phase it interrupted.
PHASES = {
    "quickstart-data.zarr.partial": "generating",
    "quickstart.zarr.checkpoint.tmp": "checkpointing",
    "quickstart.zarr.partial": "exporting",
    "quickstart.zarr.old": "publishing",
}
NO_TEMPORARY = "fitting or published"


def phase(folder: Path) -> str:
    """What a killed run was doing, judged by the temporary it left."""
    left = [name for name in PHASES if (folder / name).exists()]
    return PHASES[left[0]] if left else NO_TEMPORARY


def signalled_run(
    toml: Path, resume: tuple, delay: float, sig, ready: Callable[[], bool] | None = None
) -> tuple[int, str, float]:
    """`dask-emk run`, sent ``sig`` ``delay`` s after it locks its results (and
    ``ready()`` is true) unless it ended before; (return code, stderr, seconds it
    worked after taking the lock)."""
    proc = start(toml, *resume)
    mine = f'"pid": {proc.pid},'
    lock = lock_path(toml.with_suffix(".zarr"))
    wait_for(lambda: mine in _text(lock) or proc.poll() is not None, 120, "the results lock")
    locked = time.monotonic()
    if ready is not None:
        wait_for(lambda: ready() or proc.poll() is not None, 120, "the aimed-at moment")
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


#: The warning of a run that takes over the lock a killed run left.
TAKEOVER = re.compile(r"^\d\d:\d\d:\d\d results: took over \S+\.lock left by pid \d+ ")


def check_interrupted(returncode: int, err: str, sig: signal.Signals, lock: Path) -> None:
    if sig == signal.SIGKILL:
        assert returncode == -signal.SIGKILL, err
        return
    # Handled: one line, no traceback, the lock released.
    assert returncode == 128 + sig, err
    # A rerun first says (a warning) that it took over the killed run's lock.
    lines = [line for line in err.strip().splitlines() if not TAKEOVER.match(line)]
    assert len(lines) == 1 and lines[0].startswith(f"Error: interrupted by {sig.name}"), err
    assert not lock.exists()


def check_complete(results: Path, reference: dict) -> None:
    assert_same(values(results), reference)
    assert {p.name for p in results.parent.iterdir()} == FINAL


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
