"""The output backends' protocol, each on real storage: a local temp dir and moto's S3 server.

Both backends keep the same two promises the ownership rule builds on: a
file written atomically is the old content or the new, never a mix or
nothing, when the write fails; and a lock has one holder (a second taker is
refused, naming the path), which is free again once released.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from s3_helpers import s3_server

from dask_emk.engine.locations import read_location, storage_options
from dask_emk.pipeline.outputs import (
    CHECKPOINT,
    CHECKPOINT_MAGIC,
    NoRoomError,
    UnsafeOutputError,
    backend_for,
    temp_path,
)
from dask_emk.pipeline.outputs.local import LocalFiles
from dask_emk.pipeline.outputs.objects import ObjectStore

ROOT = Path(__file__).resolve().parents[1]
OLD, NEW = CHECKPOINT_MAGIC + b" old\n", CHECKPOINT_MAGIC + b" new\n" + b"x" * 100_000


@pytest.fixture(scope="module")
def s3():
    """The server's environment; fsspec's cached file systems (which keep the endpoint
    of an earlier module's server) are dropped before and after."""
    fsspec.get_filesystem_class("s3").clear_instance_cache()
    with s3_server() as env, pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env
    fsspec.get_filesystem_class("s3").clear_instance_cache()


@pytest.fixture
def bucket(s3, request) -> str:
    name = "b-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"


def test_backend_is_chosen_from_the_location(tmp_path):
    assert isinstance(backend_for(tmp_path / "r.zarr"), LocalFiles)
    assert isinstance(backend_for(f"file://{tmp_path}/r.zarr"), LocalFiles)
    assert isinstance(backend_for("s3://bucket/r.zarr"), ObjectStore)


# ------------------------------------------------------------------ local
def test_local_write_that_fails_leaves_the_old_file_whole(tmp_path):
    """A write cut short by the kernel (file-size limit: EFBIG, as a full disk) keeps
    the previous checkpoint byte for byte and removes its temporary."""
    path, backend = tmp_path / "c.checkpoint", LocalFiles()
    backend.write_file(path, OLD, CHECKPOINT)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
    try:
        with pytest.raises(NoRoomError, match="file too large"):
            backend.write_file(path, NEW, CHECKPOINT)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert path.read_bytes() == OLD
    assert not temp_path(path).exists()
    backend.write_file(path, NEW, CHECKPOINT)
    assert path.read_bytes() == NEW


def test_local_lock_refuses_a_second_holder(tmp_path):
    path, backend = tmp_path / "sub" / "r.zarr", LocalFiles()
    release, notes = backend.lock(path, "output.results")
    assert notes == [] and (tmp_path / "sub" / "r.zarr.lock").exists()
    with pytest.raises(UnsafeOutputError, match="being written by another dask-emk run"):
        backend.lock(path, "output.results")
    release()
    assert not (tmp_path / "sub").exists()  # the folder it created, empty again
    release, _ = backend.lock(path, "output.results")  # free again
    release()


# --------------------------------------------------------------- object store
def test_object_put_that_fails_leaves_the_old_object_whole(bucket):
    """A put to an endpoint that does not answer fails with a clear error; the
    object stays as it was (a put is whole or absent)."""
    url, backend = f"{bucket}/c.checkpoint", ObjectStore()
    backend.write_file(url, OLD, CHECKPOINT)
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens
    fast = {"endpoint_url": closed, "config_kwargs": {"connect_timeout": 1,
            "retries": {"total_max_attempts": 1}}}  # fmt: skip
    with storage_options({url: fast}), pytest.raises(ValueError, match="cannot reach"):
        backend.write_file(url, NEW, CHECKPOINT)
    assert read_location(url) == OLD
    backend.write_file(url, NEW, CHECKPOINT)
    assert read_location(url) == NEW


def test_object_lock_refuses_a_second_holder(bucket):
    url, backend = f"{bucket}/runs/r.zarr", ObjectStore()
    release, notes = backend.lock(url, "output.results")
    assert notes == [] and read_location(f"{url}.lock").startswith(b'{"dask_emk_lock": 1')
    with pytest.raises(UnsafeOutputError, match="being written by another dask-emk run"):
        backend.lock(url, "output.results")
    release()
    assert read_location(f"{url}.lock") is None
    release, _ = backend.lock(url, "output.results")  # free again
    release()


def test_without_fcntl_the_cli_imports_and_a_local_lock_says_why(tmp_path):
    """Where there is no fcntl (Windows) the CLI still imports; taking a local lock is
    one clear error, and the folders it would have created are not left behind."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"  # import fcntl -> ImportError
        "from pathlib import Path\n"
        "from dask_emk.pipeline import cli\n"
        "from dask_emk.pipeline.outputs import RESULTS, UnsafeOutputError, claim\n"
        "try:\n"
        f"    with claim(Path({str(tmp_path / 'sub' / 'r.zarr')!r}), RESULTS, where='--out'):\n"
        "        pass\n"
        "except UnsafeOutputError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert "locks a local output with flock, which this system lacks" in done.stdout
    assert not (tmp_path / "sub").exists()
