"""Read overhead of an S3 store (moto's server on 127.0.0.1) against local disk.

One k-means pass (``passes.assign_pass``, one compute) over a 1,000,000 × 8
float32 zarr store in 125,000-row chunks, on the local threaded scheduler,
read the way ``KMeans().fit(path_or_url)`` reads it (:func:`as_input`: checked
reads, one ``exists`` per chunk). The same store is written to a local folder
and to a bucket of an S3-compatible server (moto in server mode, a separate
process on this machine, so it does not share the client's interpreter). Runs
alternate between the two; medians and best times are reported, plus the
time to open the input (metadata reads, and for S3 the bucket check).

    python benchmarks/bench_object_storage.py --dir /tmp/bench-data --runs 5

This measures the S3 protocol's cost (HTTP requests, signing, copies through
s3fs) on a local server, not a network: a real object store adds latency and
bandwidth limits per request on top.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fsspec
import numpy as np
import zarr

N, D, K, CHUNK = 1_000_000, 8, 16, 125_000


def start_server() -> tuple[subprocess.Popen, dict]:
    """moto's S3 server in its own process on a free port; (process, AWS_* environment)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    os.environ.update(env)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return server, env
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto server did not start")


def write_store(store, X: np.ndarray) -> None:
    z = zarr.create_array(store=store, shape=X.shape, chunks=(CHUNK, D), dtype="f4",
                          overwrite=True)  # fmt: skip
    z[:] = X


def one_pass(location: str, centers: np.ndarray) -> tuple[float, float]:
    """(seconds to open the input, seconds for one k-means pass over it)."""
    from dask_emk.engine import passes
    from dask_emk.engine.inputs import as_input

    start = time.perf_counter()
    X = as_input(location).array
    opened = time.perf_counter()
    passes.assign_pass(X, None, centers, np.zeros(D))
    return opened - start, time.perf_counter() - opened


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-data")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    server, _ = start_server()
    try:
        X = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
        fsspec.filesystem("s3").mkdir("bench")
        local, url = str(args.dir / "s3-overhead.zarr"), "s3://bench/s3-overhead.zarr"
        write_store(local, X)
        write_store(zarr.storage.FsspecStore.from_url(url), X)
        centers = np.random.default_rng(1).normal(size=(K, D))
        sources = {"local": local, "s3": url}
        for location in sources.values():
            one_pass(location, centers)  # warm-up: page cache, compiled kernels, clients
        times = {name: [] for name in sources}
        for _ in range(args.runs):
            for name, location in sources.items():
                times[name].append(one_pass(location, centers))
        for name, runs in times.items():
            opens, passes_ = zip(*runs, strict=True)
            print(f"{name:>5}: pass median {statistics.median(passes_) * 1e3:7.1f} ms, "
                  f"best {min(passes_) * 1e3:7.1f} ms; open median "
                  f"{statistics.median(opens) * 1e3:6.1f} ms")  # fmt: skip
        ratio = {what: f(p for _, p in times["s3"]) / f(p for _, p in times["local"])
                 for what, f in (("median", statistics.median), ("best", min))}  # fmt: skip
        print(f"S3 / local, one pass: median {ratio['median']:.2f}x, best {ratio['best']:.2f}x "
              f"({N * D * 4 / 1e6:.0f} MB in {N // CHUNK} chunks)")  # fmt: skip
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
