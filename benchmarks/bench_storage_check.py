"""Cost of the read-path check for missing chunk files (dask_emk.engine.storage).

One k-means pass (``passes.assign_pass``, one compute) over a 1,000,000 × 32
float32 zarr store in 125,000-row chunks on the local threaded scheduler,
reading through :class:`dask_emk.engine.storage.CheckedZarrRead` and through the
zarr array directly (same ``from_array`` graph otherwise). Runs alternate
between the two, in one process; medians and best times are reported,
and the time of one block's check alone.

    python benchmarks/bench_storage_check.py --dir /tmp/bench-data --runs 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from dask_emk.engine import passes
from dask_emk.engine.storage import CheckedZarrRead, file_coords, missing_files

N, D, K, CHUNK = 1_000_000, 32, 16, 125_000


def ensure_store(path: Path) -> zarr.Array:
    if path.exists():
        z = zarr.open_array(path, mode="r")
        if z.shape == (N, D) and z.chunks == (CHUNK, D):
            return z
    rng = np.random.default_rng(0)
    z = zarr.create_array(
        store=str(path), shape=(N, D), chunks=(CHUNK, D), dtype="f4", overwrite=True
    )
    for start in range(0, N, CHUNK):
        z[start : start + CHUNK] = rng.normal(size=(CHUNK, D)).astype(np.float32)
    return zarr.open_array(path, mode="r")


def one_pass(source, centers: np.ndarray) -> float:
    X = da.from_array(source, chunks=(CHUNK, D), asarray=False, fancy=False, name=False)
    start = time.perf_counter()
    passes.assign_pass(X, None, centers, np.zeros(D))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-data"))
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    z = ensure_store(args.dir / "storage-check.zarr")
    centers = np.random.default_rng(1).normal(size=(K, D))
    sources = {"unchecked": z, "checked": CheckedZarrRead(z)}
    for source in sources.values():
        one_pass(source, centers)  # warm-up: page cache, compiled kernels
    times = {name: [] for name in sources}
    for _ in range(args.runs):
        for name, source in sources.items():
            times[name].append(one_pass(source, centers))
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:>9}: median {med[name] * 1e3:6.1f} ms, best {min(t) * 1e3:6.1f} ms")
    best = {name: min(t) for name, t in times.items()}
    for what, value in (("median", med), ("best", best)):
        print(f" overhead ({what}): {(value['checked'] / value['unchecked'] - 1) * 100:+.1f}%")
    coords = file_coords(z, (slice(0, CHUNK), slice(0, D)))
    start = time.perf_counter()
    for _ in range(200):
        missing_files(z, coords)
    print(f"one block's check alone: {(time.perf_counter() - start) / 200 * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
