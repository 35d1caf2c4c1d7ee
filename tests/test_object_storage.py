"""Store URLs on a real S3-compatible server (moto in server mode on 127.0.0.1).

No mocks of s3fs, zarr or botocore: every read and write crosses HTTP to the
server, configured only through the standard AWS_* environment (or a
pipeline's storage_options). Fits read from S3 equal the same fits read from
local disk, bit for bit; so do `dask-emk fit` and `dask-emk run` (subprocesses,
sync scheduler and a LocalCluster whose workers read S3) with their results
on S3. A missing chunk object, a wrong bucket, missing credentials or an
unreachable endpoint is one clear error before any fit; the output-safety
rule refuses object-store paths dask-emk did not write; a run killed while
publishing its results leaves nothing that opens as complete.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
from functools import partial

import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from pipeline_helpers import VENV_BIN, assert_one_line_error, invoke, to_toml
from s3_helpers import s3_server, write_zarr

from dask_emk import AnnealedGaussianMixture, GaussianMixture, KMeans
from dask_emk.engine.storage import MissingChunksError
from dask_emk.pipeline.generate import random_mixture, read_truth
from dask_emk.pipeline.outputs import RESULTS, UnsafeOutputError, claim, written_by_dask_emk

CHUNK_ROWS = 1_000
#: A quick `dask-emk fit` (k-means: few passes over the data, each a request per chunk).
FIT = ("--model", "kmeans", "--k", 3, "--scheduler", "sync", "-q", "--no-plots")
#: A Gaussian mixture with every per-sample output.
FIT_GMM = ("--k", 3, "--scheduler", "sync", "-q", "--no-plots", "--responsibilities",
           "--log-density")  # fmt: skip


def blobs(n: int = 3_000, seed: int = 0) -> np.ndarray:
    """Three separated clusters in 3-D, float32."""
    rng = np.random.default_rng(seed)
    centers = np.array([[-6.0, 0.0, 2.0], [0.0, 6.0, -2.0], [6.0, -3.0, 0.0]])
    return (centers[rng.integers(0, 3, n)] + rng.normal(size=(n, 3))).astype(np.float32)


@pytest.fixture(scope="module")
def s3():
    """The server's environment, set for this process (and inherited by subprocesses)."""
    with s3_server() as env, pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.fixture
def bucket(s3, request) -> str:
    """A fresh, empty bucket: ``s3://<name>``."""
    name = "t-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    fs = fsspec.filesystem("s3")
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def data(bucket, tmp_path) -> tuple[str, str]:
    """The same store on S3 and on local disk: (s3 URL, local path) of its array X."""
    X = blobs()
    write_zarr(f"{bucket}/data.zarr", X, CHUNK_ROWS)
    write_zarr(str(tmp_path / "data.zarr"), X, CHUNK_ROWS)
    return f"{bucket}/data.zarr/X", str(tmp_path / "data.zarr/X")


def objects(url: str, fs=None) -> dict[str, str]:
    """Every object under ``url`` with the sha256 of its bytes."""
    fs = fs or fsspec.filesystem("s3")
    fs.invalidate_cache()
    root = url.removeprefix("s3://")
    return {key: hashlib.sha256(fs.cat_file(key)).hexdigest() for key in fs.find(root)}


def assert_same_results(url: str, local) -> None:
    """The results store at ``url`` (read with xarray from S3) equals the local one exactly."""
    remote = xr.open_zarr(url, consolidated=False)
    reference = xr.open_zarr(local, consolidated=False)
    assert set(remote.data_vars) == set(reference.data_vars)
    for name in reference.data_vars:
        if not name.endswith("seconds"):
            np.testing.assert_array_equal(remote[name].values, reference[name].values, name)


# ------------------------------------------------------------------ the API
def test_estimators_read_s3_exactly_like_local_disk(data):
    url, local = data
    fits = [partial(KMeans, n_clusters=3, random_state=0),
            partial(GaussianMixture, n_components=3, random_state=0)]  # fmt: skip
    for make in fits:
        remote, reference = make().fit(url), make().fit(local)
        for name in ("cluster_centers_", "means_", "covariances_", "weights_"):
            if hasattr(reference, name):
                np.testing.assert_array_equal(getattr(remote, name), getattr(reference, name))
        np.testing.assert_array_equal(remote.predict(url), reference.predict(local))
    anneal = partial(AnnealedGaussianMixture, n_components=3, random_state=0)
    np.testing.assert_array_equal(anneal().fit(url).means_, anneal().fit(local).means_)


def test_missing_chunk_object_is_an_error(data):
    url, _ = data
    fsspec.filesystem("s3").rm_file(url.removeprefix("s3://") + "/c/2/0")
    message = rf"zarr array {url} is missing the chunk file in its store: c/2/0 \(rows 2000-2999\)"
    with pytest.raises(MissingChunksError, match=message):
        KMeans(n_clusters=3, random_state=0).fit(url)


def test_https_store_is_read_like_local_disk(data, tmp_path):
    """A store served over plain HTTP (read-only): same fit; writing there is refused."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data.zarr/X"
        remote = KMeans(n_clusters=3, random_state=0).fit(url)
        reference = KMeans(n_clusters=3, random_state=0).fit(data[1])
        np.testing.assert_array_equal(remote.cluster_centers_, reference.cluster_centers_)
        result = invoke("fit", url, *FIT, "--out", url.replace("data.zarr/X", "r.zarr"))
        assert_one_line_error(result, "http:// URLs are read-only")
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError, match=f"cannot reach the storage endpoint of {url}"):
        KMeans(n_clusters=3).fit(url)  # the server is gone


# ------------------------------------------------------------------ errors
def fresh_s3_clients() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def unreachable_env() -> dict:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}


@pytest.mark.parametrize(
    "url, env, message",
    [
        pytest.param("s3://no-such-bucket/data.zarr/X", {},
                     "s3://no-such-bucket does not exist at http://127.0.0.1", id="wrong bucket"),
        pytest.param("{bucket}/none.zarr/X", {},
                     "zarr store '{bucket}/none.zarr/X' does not exist", id="missing store"),
        pytest.param("{bucket}/data.zarr/X",
                     {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
                     "no credentials to access {bucket}/data.zarr/X; set AWS_ACCESS_KEY_ID and "
                     "AWS_SECRET_ACCESS_KEY", id="no credentials"),
        pytest.param("{bucket}/data.zarr/X", unreachable_env,
                     "cannot reach the storage endpoint of {bucket}/data.zarr/X at "
                     "http://127.0.0.1:", id="unreachable endpoint"),
        pytest.param("gs://bucket/data.zarr/X", {},
                     "gs:// URLs need the package gcsfs: pip install gcsfs.", id="no gcsfs"),
    ],
)  # fmt: skip
def test_unusable_store_url_is_one_error_before_any_fit(
    s3, data, bucket, monkeypatch, request, url, env, message
):
    url, message = url.format(bucket=bucket), message.format(bucket=bucket)
    for key, value in (env() if callable(env) else env).items():
        if value is None:
            monkeypatch.delenv(key)
        else:
            monkeypatch.setenv(key, value)
    fresh_s3_clients()  # fsspec reuses clients made under the previous environment
    request.addfinalizer(fresh_s3_clients)
    start = time.perf_counter()
    with pytest.raises(ValueError) as raised:
        KMeans(n_clusters=3).fit(url)
    assert message in str(raised.value)
    result = invoke("fit", url, *FIT, "--out", f"{bucket}/r.zarr")
    assert_one_line_error(result, message)
    keys = {"key": s3["AWS_ACCESS_KEY_ID"], "secret": s3["AWS_SECRET_ACCESS_KEY"]}
    server = fsspec.filesystem("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], **keys)
    assert "r.zarr" not in "".join(objects(bucket, server))
    assert time.perf_counter() - start < 20


# ------------------------------------------------------------- output safety
def test_object_store_paths_dask_emk_did_not_write_are_refused(data, bucket):
    url, _ = data
    fs = fsspec.filesystem("s3")
    write_zarr(f"{bucket}/other.zarr", blobs(10), 10)
    name = bucket.removeprefix("s3://")
    fs.pipe_file(f"{name}/notes.txt", b"do not lose me\n")
    fs.pipe_file(f"{name}/proj/analysis.py", b"print('mine')\n")
    fs.pipe_file(f"{name}/mine.zarr.lock", b"my own lock file\n")
    before = objects(bucket)
    refused = {
        f"{bucket}/data.zarr": "is the input store",
        f"{bucket}/data.zarr/r.zarr": "is inside the input store",
        f"{bucket}/other.zarr": "exists and is not a dask-emk results store",
        f"{bucket}/other.zarr/r.zarr": "is inside the zarr store",
        f"{bucket}/notes.txt": "exists and is not a dask-emk results store",
        f"{bucket}/proj": "exists and is not a dask-emk results store",
        f"{bucket}/mine.zarr": "mine.zarr.lock exists and was not written by dask-emk",
    }
    for out, message in refused.items():
        assert_one_line_error(invoke("fit", url, *FIT, "--out", out), out, message)
    result = invoke("fit", f"{bucket}/data.zarr", *FIT, "--out", bucket)
    assert_one_line_error(result, "contains the input store")
    assert objects(bucket) == before


def test_results_on_s3_are_replaced_only_when_dask_emk_wrote_them(data, bucket, tmp_path):
    url, local = data
    out = f"{bucket}/runs/r.zarr"
    assert invoke("fit", url, *FIT, "--out", out).exit_code == 0
    assert written_by_dask_emk(out, RESULTS)
    again = ("--model", "kmeans", "--k", 2, "--scheduler", "sync", "-q", "--out")
    result = invoke("fit", url, *again, out)
    assert result.exit_code == 0, result.output
    assert invoke("fit", local, *again, tmp_path / "r.zarr").exit_code == 0
    assert_same_results(out, tmp_path / "r.zarr")
    keys = objects(f"{bucket}/runs")
    beside = sorted(key.rsplit("/", 1)[1] for key in keys if "/r.zarr/" not in key)
    assert beside == ["r.convergence.png", "r.zarr.checkpoint"]  # no lock, no .partial left
    show = invoke("show", out)
    assert show.exit_code == 0 and show.output.startswith(f"{out}: "), show.output


def test_generate_writes_to_s3_and_replaces_only_its_own_store(bucket, tmp_path):
    out = f"{bucket}/gen.zarr"
    args = ("generate", out, "--n", 2_000, "--d", 2, "--k", 2, "--chunk-rows", 500)
    assert invoke(*args).exit_code == 0
    assert_one_line_error(invoke(*args), f"{out} already exists", "pass --overwrite")
    assert invoke(*args, "--seed", 1, "--overwrite").exit_code == 0
    assert invoke("generate", tmp_path / "gen.zarr", *args[2:], "--seed", 1).exit_code == 0
    truth = random_mixture(2, 2, seed=1)
    np.testing.assert_array_equal(read_truth(out).means, truth.means)
    np.testing.assert_array_equal(zarr.open_array(zarr.storage.FsspecStore.from_url(f"{out}/X"))[:],
                                  zarr.open_array(tmp_path / "gen.zarr/X")[:])  # fmt: skip
    assert sorted(objects(bucket)) == sorted(k for k in objects(bucket) if "/gen.zarr/" in k)


def test_lock_object_refuses_a_second_run_and_is_taken_over_once_its_holder_died(data, bucket):
    url, _ = data
    out = f"{bucket}/r.zarr"
    fs = fsspec.filesystem("s3")
    lock = f"{bucket[5:]}/r.zarr.lock"
    holder = subprocess.Popen(["sleep", "60"])
    info = {"dask_emk_lock": 1, "pid": holder.pid, "host": socket.gethostname(),
            "started": "2026-01-01 00:00:00", "token": "x"}  # fmt: skip
    fs.pipe_file(lock, json.dumps(info).encode())
    held = f"{out} is being written by another dask-emk run (pid {holder.pid}"
    assert_one_line_error(invoke("fit", url, *FIT, "--out", out), held)
    holder.kill()
    holder.wait()
    result = invoke("fit", url, *FIT, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"took over s3://{lock} left by pid {holder.pid}" in result.output
    assert not fs.exists(lock) and written_by_dask_emk(out, RESULTS)
    fs.pipe_file(lock, json.dumps(info | {"host": "elsewhere"}).encode())
    result = invoke("fit", url, *FIT, "--out", out)
    assert_one_line_error(result, "locked by a dask-emk run on another host", f"remove s3://{lock}")


def test_lock_object_is_created_by_a_conditional_put(bucket):
    """Two claims at once (threads of one process): the second finds the first's lock."""
    out = f"{bucket}/r.zarr"
    errors = []

    def second_claim():
        try:
            with claim(out, RESULTS, where="--out"):
                pass
        except UnsafeOutputError as exc:
            errors.append(str(exc))

    with claim(out, RESULTS, where="--out"):
        thread = threading.Thread(target=second_claim)
        thread.start()
        thread.join()
    assert len(errors) == 1 and f"{out} is being written by another dask-emk run" in errors[0]
    assert not fsspec.filesystem("s3").exists(f"{out}.lock")


# ------------------------------------------------------- subprocesses, cluster
def dask_emk(*args, env: dict | None = None, **popen) -> subprocess.Popen:
    command = [VENV_BIN / "dask-emk", *map(str, args)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(command, env=env or os.environ.copy(), **pipes, **popen)


def finished(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    return out


@pytest.mark.slow
def test_cli_fit_and_run_with_input_and_results_on_s3_equal_local_disk(s3, data, bucket, tmp_path):
    url, local = data
    fit = dask_emk("fit", url, *FIT_GMM, "--out", f"{bucket}/fit.zarr")
    pipeline = {
        "input": {"store": url.removesuffix("/X"), "array": "X",
                  "storage_options": {"endpoint_url": s3["AWS_ENDPOINT_URL"]}},
        "model": {"type": "kmeans", "n_components": 3},
        "scheduler": {"address": "local:2"},
        "output": {"results": f"{bucket}/run.zarr", "plots": False,
                   "storage_options": {"endpoint_url": s3["AWS_ENDPOINT_URL"]}},
    }  # fmt: skip
    toml = tmp_path / "run.toml"
    toml.write_text(to_toml(pipeline))
    # Only storage_options name the endpoint: the cluster's workers get it from there.
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    run = dask_emk("run", toml, "-q", env=env)
    finished(fit)
    finished(run)
    assert invoke("fit", local, *FIT_GMM, "--out", tmp_path / "fit.zarr").exit_code == 0
    pipeline["input"] = {"store": local.removesuffix("/X"), "array": "X"}
    pipeline["output"] = {"results": str(tmp_path / "run.zarr"), "plots": False}
    pipeline["scheduler"] = {"address": "sync"}
    toml.write_text(to_toml(pipeline))
    assert invoke("run", toml, "-q").exit_code == 0
    assert_same_results(f"{bucket}/fit.zarr", tmp_path / "fit.zarr")
    assert_same_results(f"{bucket}/run.zarr", tmp_path / "run.zarr")
    assert fsspec.filesystem("s3").exists(f"{bucket[5:]}/run.zarr.checkpoint")


@pytest.mark.slow
def test_run_killed_while_publishing_leaves_no_store_that_opens(s3, bucket, tmp_path):
    """Input on local disk (a quick fit), results on S3: killed at its first result object."""
    X = blobs(20_000, seed=1)
    write_zarr(str(tmp_path / "big.zarr"), X, 250)
    out = f"{bucket}/killed.zarr"
    proc = dask_emk("fit", tmp_path / "big.zarr", *FIT_GMM, "--out", out)
    fs = fsspec.filesystem("s3")
    deadline = time.monotonic() + 120
    while not fs.find(out.removeprefix("s3://")):  # the first object inside the store
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        fs.invalidate_cache()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert fs.exists(f"{out[5:]}.partial") and fs.exists(f"{out[5:]}.lock")
    with pytest.raises(Exception):  # noqa: B017 - whatever xarray raises: no store opens
        xr.open_zarr(out, consolidated=False)
    assert not written_by_dask_emk(out, RESULTS)
    result = invoke("fit", tmp_path / "big.zarr", *FIT, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"took over {out}.lock left by pid {proc.pid}" in result.output
    assert written_by_dask_emk(out, RESULTS)
    assert xr.open_zarr(out, consolidated=False)["label"].shape == (len(X),)
    assert not fs.exists(f"{out[5:]}.partial") and not fs.exists(f"{out[5:]}.lock")
