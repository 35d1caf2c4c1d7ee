"""A k-means iteration on a gridded store with gaps vs on its valid rows stored dense.

The gridded store: a zarr Dataset of 4 float32 variables on (time, lat, lon),
with 30% of the points masked (NaN in every variable: a land mask of 25% of
the cells plus scattered gaps), read with ``nan_policy='omit'`` (rows stacked
block by block, NaN rows dropped inside each pass). The dense store: the same
valid rows as one (n_valid, 4) float32 zarr array, in chunks of about as many
rows as a grid chunk holds valid points. Both written by this script, in the
same run, and fitted from the same centres with tol=0.

Time per iteration: the time between consecutive ``callback`` calls of a
``KMeans`` fit (one Lloyd pass each; the first iteration, which includes the
fit's set-up, is left out), median over the fit's iterations; fits on the
two stores alternate, ``--repeat`` times each. The target of issue 13 is a
ratio gridded / dense of at most 1.2.

    python benchmarks/bench_gridded.py --dir /tmp/bench-data --repeat 3

What the gridded iteration does more: reads the masked points too (30% more
bytes to decode), finds the NaN rows of each block, copies the valid rows
out (``without_nan_rows``) and stacks the four variables (``reshape_blockwise``
and a concatenation, fused into the read tasks).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr

from dask_emk import KMeans
from dask_emk.engine.inputs import as_input

VARIABLES = ("sst", "sal", "chl", "ssh")


def make_cube(shape: tuple[int, int, int], masked: float, seed: int = 0) -> np.ndarray:
    """(time, lat, lon, 4) float32 regimes, NaN at a land mask and scattered gaps."""
    rng = np.random.default_rng(seed)
    T, Y, X = shape
    regime = (np.arange(Y)[:, None] * 4 // Y + np.arange(X)[None, :] * 2 // X) % 4
    centers = rng.normal(scale=3.0, size=(4, 4)).astype(np.float32)
    cube = centers[regime][None] + rng.standard_normal((T, Y, X, 4), dtype=np.float32)
    land = rng.random((Y, X)) < 0.25
    gaps = rng.random((T, Y, X)) < 1 - (1 - masked) / 0.75  # 30% masked in all
    cube[(land[None] | gaps)] = np.nan
    return cube


def write_stores(
    cube: np.ndarray, chunks: tuple, folder: Path, compress: bool
) -> tuple[str, str, np.ndarray]:
    """(gridded Dataset store, dense 2-D store, valid rows in gridded input's row order)."""
    T, Y, X, _ = cube.shape
    ds = xr.Dataset({v: (("time", "lat", "lon"), cube[..., i]) for i, v in enumerate(VARIABLES)},
                    coords={"time": np.arange(T), "lat": np.linspace(-89.5, 89.5, Y),
                            "lon": np.linspace(0.5, 359.5, X)})  # fmt: skip
    ds = ds.chunk(dict(zip(("time", "lat", "lon"), chunks, strict=True)))
    gridded, dense = str(folder / "gridded.zarr"), str(folder / "dense.zarr")
    for path in (gridded, dense):
        shutil.rmtree(path, ignore_errors=True)
    codecs = {} if compress else {"compressors": None}  # default: zarr's (zstd)
    encoding = {v: codecs for v in VARIABLES}
    ds.to_zarr(gridded, zarr_format=3, consolidated=False, encoding=encoding)
    rows = as_input(ds, nan_policy="omit").array.compute()
    rows = rows[~np.isnan(rows).any(axis=1)]
    n_chunks = np.prod([len(c) for c in ds.chunks.values()])
    per_chunk = -(-rows.shape[0] // n_chunks)  # about the valid points of a grid chunk
    z = zarr.create_array(dense, shape=rows.shape, chunks=(per_chunk, 4), dtype="f4", **codecs)
    z[:] = rows
    return gridded, dense, rows


def iteration_seconds(fit_input, init: np.ndarray, iters: int, omit: bool) -> list[float]:
    """Seconds of each Lloyd iteration after the first, from the fit's callback."""
    stamps = []
    km = KMeans(len(init), init=init, n_init=1, max_iter=iters, tol=0.0,
                nan_policy="omit" if omit else "raise",
                callback=lambda model, info: stamps.append(time.perf_counter()))  # fmt: skip
    km.fit(fit_input)
    return list(np.diff(stamps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-data")
    p.add_argument("--shape", type=int, nargs=3, default=(48, 180, 360), metavar=("T", "Y", "X"))
    p.add_argument("--chunks", type=int, nargs=3, default=(8, 180, 360), metavar=("T", "Y", "X"))
    p.add_argument("--uncompressed", action="store_true", help="stores without compressor")
    p.add_argument("--masked", type=float, default=0.30, help="fraction of masked points")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--iters", type=int, default=6, help="Lloyd iterations per fit")
    p.add_argument("--repeat", type=int, default=3, help="fits per store, alternating")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    print("python " + " ".join(sys.argv))
    args.dir.mkdir(parents=True, exist_ok=True)
    cube = make_cube(tuple(args.shape), args.masked)
    gridded, dense, rows = write_stores(
        cube, tuple(args.chunks), args.dir, compress=not args.uncompressed
    )
    n_points = int(np.prod(args.shape))
    init = rows[np.random.default_rng(1).choice(rows.shape[0], args.k, replace=False)]
    init = init.astype(np.float64)
    print(f"grid {tuple(args.shape)} x {len(VARIABLES)} float32 variables, chunks "
          f"{tuple(args.chunks)}: {n_points:,} points, {1 - rows.shape[0] / n_points:.1%} "
          f"masked; dense store {rows.shape[0]:,} x {len(VARIABLES)}; K={args.k}, "
          f"{args.iters} iterations per fit, "
          f"{'uncompressed' if args.uncompressed else 'zstd'}, threaded scheduler, "
          f"{args.workers} workers")  # fmt: skip
    inputs = {
        "gridded": (lambda: xr.open_zarr(gridded, consolidated=False), True),
        "dense": (lambda: dense, False),
    }
    times = {name: [] for name in inputs}
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        for opened, omit in inputs.values():  # warm-up: compiled kernels, page cache
            iteration_seconds(opened(), init, 2, omit)
        for _ in range(args.repeat):
            for name, (opened, omit) in inputs.items():
                times[name].extend(iteration_seconds(opened(), init, args.iters, omit))
    print(f"{'store':>8} {'median ms':>10} {'best ms':>8} {'iterations':>10}")
    for name, values in times.items():
        print(f"{name:>8} {statistics.median(values) * 1e3:10.1f} {min(values) * 1e3:8.1f} "
              f"{len(values):10d}")  # fmt: skip
    ratio_median = statistics.median(times["gridded"]) / statistics.median(times["dense"])
    ratio_best = min(times["gridded"]) / min(times["dense"])
    print(
        f"gridded / dense per iteration: median {ratio_median:.2f}x, best {ratio_best:.2f}x "
        "(target <= 1.2x)"
    )


if __name__ == "__main__":
    main()
