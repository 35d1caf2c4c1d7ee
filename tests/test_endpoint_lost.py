"""The S3 endpoint stops answering in the middle of a fit: the error says so.

A real moto S3 server (its own, not the module-wide one of
tests/test_object_storage.py, since it is stopped here) serves the input of a
`dask-emk run` subprocess; once the run has checkpointed an iteration the
server is stopped. The run must end with one line saying the endpoint (its
URL) cannot be reached and how to go on, not that a healthy store's chunk
file is corrupted, and publish nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import fsspec
import numpy as np
import pytest
from pipeline_helpers import VENV_BIN, to_toml, wait_for
from s3_helpers import s3_server, write_zarr

from dask_emk.pipeline.checkpoint import checkpoint_path

pytestmark = pytest.mark.slow


def test_endpoint_stopped_mid_fit_is_named_not_the_store(tmp_path):
    results = tmp_path / "r.zarr"
    with s3_server() as env:
        fs = fsspec.filesystem("s3", endpoint_url=env["AWS_ENDPOINT_URL"], key="testing",
                               secret="testing")  # fmt: skip
        fs.mkdir("lost")
        X = np.random.default_rng(0).normal(size=(20_000, 3)).astype(np.float32)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            write_zarr("s3://lost/data.zarr", X, 1_000)
        toml = tmp_path / "p.toml"
        toml.write_text(to_toml({
            "input": {"store": "s3://lost/data.zarr", "array": "X"},
            # Every pass reads the store (with the rows kept, the next read would be the
            # outputs' after 10,000 iterations: the same error, minutes later).
            "model": {"type": "gmm", "n_components": 3, "tol": 0.0, "max_iter": 10_000,
                      "cache": False},
            "scheduler": {"address": "sync"},
            "output": {"results": str(results), "plots": False},
        }))  # fmt: skip
        proc = subprocess.Popen(
            [VENV_BIN / "dask-emk", "run", toml, "-q"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
        )  # fmt: skip
        wait_for(Path(checkpoint_path(results)).exists, 180, "the first checkpoint")
    # The server is stopped: the fit's next read finds nobody at the endpoint.
    out, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == 1, out + err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    line = lines[0]
    for fragment in ("reading zarr array s3://lost/data.zarr/X failed",
                     f"{env['AWS_ENDPOINT_URL']} (AWS_ENDPOINT_URL) cannot be reached",
                     "Check that the endpoint is up", "--resume"):  # fmt: skip
        assert fragment in line, line
    assert "corrupted" not in line and "rewrite" not in line, line
    assert not results.exists()
