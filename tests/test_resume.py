"""``--resume`` only continues a fit on the data it was fitted on.

A checkpoint records its input: the store, the rows' shape, dtype and chunks,
and a content fingerprint (a CRC-32 per block folded in block order) that the
first pass of the fit computes as it reads. The fingerprint is checked against
a plain zlib reference, the pass it rides on against the same pass without it
(bit for bit); `dask-emk run --resume` (real subprocesses) against a store
regenerated with another seed, or reshaped, retyped, rechunked or moved, exits
1 with one line naming what changed and writes nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import zlib
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from pipeline_helpers import VENV_BIN, to_toml, wait_for

from dask_emk import KMeans
from dask_emk.engine.fingerprint import BASE, MODULUS, watch_content
from dask_emk.pipeline.checkpoint import checkpoint_path, read_checkpoint
from dask_emk.pipeline.generate import random_mixture, write_mixture_zarr


def reference_fingerprint(X: np.ndarray, rows_per_block: int) -> int:
    """CRC-32 of each block's bytes, folded in block order (plain Python)."""
    value = 0
    for start in range(0, X.shape[0], rows_per_block):
        crc = zlib.crc32(np.ascontiguousarray(X[start : start + rows_per_block]).tobytes())
        value = (value * BASE + crc % MODULUS) % MODULUS
    return value


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_first_pass_fingerprints_the_rows_without_changing_the_fit(scheduler):
    X = np.random.default_rng(0).normal(size=(5_000, 3))
    X[7, 1] = np.nan  # hashed as read, before nan_policy='omit' leaves the row out
    Xd = da.from_array(X, chunks=(700, 3))
    seen = []
    with dask.config.set(scheduler=scheduler):
        plain = KMeans(3, random_state=0, nan_policy="omit").fit(Xd)
        with watch_content(seen.append) as watch:
            watched = KMeans(3, random_state=0, nan_policy="omit").fit(Xd)
    # Only the first pass hashes; the fit is the same bit for bit.
    assert seen == [watch.fingerprint] == [reference_fingerprint(X, 700)]
    np.testing.assert_array_equal(watched.cluster_centers_, plain.cluster_centers_)
    assert watched.inertia_ == plain.inertia_
    changed = X.copy()
    changed[4_999, 2] = np.nextafter(changed[4_999, 2], np.inf)  # one ulp of one value
    swapped = np.concatenate([X[700:1400], X[:700], X[1400:]])  # two blocks swapped
    for other in (changed, swapped):
        with watch_content(seen.append):
            KMeans(2, max_iter=1, random_state=0, nan_policy="omit").fit(
                da.from_array(other, chunks=(700, 3))
            )
        assert seen[-1] == reference_fingerprint(other, 700) != seen[0]
    # Weights of 1 are no weights (the same fit); other weights are content.
    for weight, same in ((np.ones(5_000), True), (np.arange(5_000) % 3 + 1.0, False)):
        with watch_content(seen.append):
            KMeans(2, max_iter=1, random_state=0, nan_policy="omit").fit(
                Xd, sample_weight=da.from_array(weight, chunks=700)
            )
        assert (seen[-1] == seen[0]) is same


# ------------------------------------------------------ dask-emk run --resume
N, CHUNK = 40_000, 4_000


def write_data(path: Path, seed: int = 1, n: int = N, chunk: int = CHUNK, dtype="float32"):
    truth = random_mixture(3, 3, seed=0)
    write_mixture_zarr(path, n, truth, chunk_rows=chunk, dtype=dtype, seed=seed, overwrite=True)


def pipeline(folder: Path, store: str = "data.zarr", max_iter: int = 300) -> Path:
    toml = folder / f"p-{store}.toml"
    toml.write_text(
        to_toml({
            "input": {"store": str(folder / store), "array": "X"},
            "model": {"type": "gmm", "n_components": 3, "random_state": 0, "tol": 0.0,
                      "max_iter": max_iter},
            "scheduler": {"address": "sync"},
            "output": {"results": str(folder / "r.zarr"), "plots": False},
        })
    )  # fmt: skip
    return toml


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VENV_BIN / "dask-emk", "run", *map(str, args), "-q"], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refused(proc, *fragments) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_resume_mid_fit_on_regenerated_data_is_refused_in_the_first_pass(tmp_path):
    """Killed mid-fit, the store regenerated with another seed: --resume refuses
    (the content), leaves the checkpoint as it was and publishes nothing."""
    write_data(tmp_path / "data.zarr", seed=1)
    toml = pipeline(tmp_path)
    first = subprocess.Popen([VENV_BIN / "dask-emk", "run", toml, "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    checkpoint = Path(checkpoint_path(tmp_path / "r.zarr"))
    wait_for(checkpoint.exists, 120, "the first checkpoint")
    first.send_signal(signal.SIGINT)
    assert first.wait(60) == 128 + signal.SIGINT
    saved = read_checkpoint(checkpoint)
    assert not saved["stages"]["model"].converged  # stopped mid-fit: the resumed fit makes passes
    assert 0 < len(saved["stages"]["model"].history) < 300
    assert saved["input"].fingerprint is not None
    before = digest(checkpoint)
    write_data(tmp_path / "data.zarr", seed=2)
    assert_refused(run(toml, "--resume"), "was fitted on other data", "content", "drop --resume")
    assert digest(checkpoint) == before
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.slow
def test_resume_after_the_fit_refuses_any_other_input(tmp_path):
    """The fit done (a resumed run makes no pass of its own, so it reads the data
    once for the fingerprint): each change of the input is named; the same data
    resumes to the same results."""
    write_data(tmp_path / "data.zarr", seed=1)
    toml = pipeline(tmp_path, max_iter=3)
    assert run(toml).returncode == 0
    checkpoint = Path(checkpoint_path(tmp_path / "r.zarr"))
    kept = {path: digest(path) for path in (tmp_path / "r.zarr").rglob("*") if path.is_file()}
    kept[checkpoint] = digest(checkpoint)

    def unchanged():
        now = {path: digest(path) for path in (tmp_path / "r.zarr").rglob("*") if path.is_file()}
        return now | {checkpoint: digest(checkpoint)} == kept

    write_data(tmp_path / "data.zarr", seed=2)
    assert_refused(run(toml, "--resume"), "changed: content")
    assert unchanged()
    cases = {
        "shape (40000 × 3, now 40100 × 3)": {"n": N + 100},
        "dtype (float32, now float64)": {"dtype": "float64"},
        "chunks (10 chunk(s) of 4000 rows, now 20 chunk(s) of 2000 rows)": {"chunk": 2_000},
    }
    for message, change in cases.items():
        write_data(tmp_path / "data.zarr", seed=1, **change)
        assert_refused(run(toml, "--resume"), f"changed: {message}")
        assert unchanged()
    write_data(tmp_path / "data.zarr", seed=1)
    shutil.copytree(tmp_path / "data.zarr", tmp_path / "copy.zarr")
    line = assert_refused(run(pipeline(tmp_path, "copy.zarr", max_iter=3), "--resume"))
    assert f"changed: store ({tmp_path / 'data.zarr'}/X, now {tmp_path / 'copy.zarr'}/X)" in line
    assert unchanged()
    resumed = run(toml, "--resume")
    assert resumed.returncode == 0, resumed.stderr
