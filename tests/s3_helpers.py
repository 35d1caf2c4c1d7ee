"""A real S3-compatible server on 127.0.0.1 for the object-storage tests (and benchmark).

moto in server mode answers the S3 protocol over HTTP in a thread of the test
process; dask-emk (in this process, in subprocesses and on cluster workers)
reaches it through s3fs and botocore like any S3 endpoint, configured only by
the standard environment variables. Nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import fsspec
import zarr


@contextlib.contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """Run moto's S3 server on a free port; yield the AWS_* environment that reaches it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # fsspec caches file systems by their arguments, and an endpoint taken from
    # AWS_ENDPOINT_URL is not one of them: drop those of an earlier server.
    s3 = fsspec.get_filesystem_class("s3")
    s3.clear_instance_cache()
    try:
        yield {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            # No instance-metadata lookup for credentials (it would wait on a timeout).
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    finally:
        server.stop()
        s3.clear_instance_cache()


def write_zarr(location: str, X, chunk_rows: int, name: str = "X") -> zarr.Array:
    """``X`` as array ``name`` of a new zarr 3 group at a local path or s3:// URL."""
    store = (
        zarr.storage.FsspecStore.from_url(location) if "://" in location else location
    )
    group = zarr.open_group(store=store, mode="w", zarr_format=3)
    array = group.create_array(name, shape=X.shape, chunks=(chunk_rows, X.shape[1]),
                               dtype=X.dtype)  # fmt: skip
    array[:] = X
    return array
