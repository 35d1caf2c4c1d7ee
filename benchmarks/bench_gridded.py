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
two stores alternate, ``--repeat`` times each. Wall time, and the CPU time
of the whole process (all threads; steadier on a shared machine). The target
of issue 13 is a ratio gridded / dense of at most 1.2.

    python benchmarks/bench_gridded.py --dir /tmp/bench-data --repeat 3
    python benchmarks/bench_gridded.py --dir /tmp/bench-data --repeat 3 --codec none
    python benchmarks/bench_gridded.py --dir /tmp/bench-data --repeat 3 --codec none --gathered

``--gathered`` writes the gridded store without its land cells, on
(time, cell) (CF's "compression by gathering"): 1.07x the valid rows are
stored instead of 1.43x, the masked points left being the scattered gaps.

What the gridded iteration does more: it reads the masked points too (1.43x
the values at 30% masked; zstd also decodes float data laced with NaN about
twice as slowly per value as the dense rows), and the pass drops each block's
NaN rows (``without_nan_rows``: find them, copy the others out). Its rows are
read one task a block, as the dense store's: the four variables of a block
decoded straight into one (points, 4) buffer
(:class:`dask_emk.engine.storage.StackedZarrRows`). The "reads alone" line
times the reads of one pass by themselves (each block read, nothing
computed on it), and the floor is what the ratio would be if a gridded
iteration cost only its extra reads over a dense one.
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


#: Compressors the stores can be written with (the same for both).
CODECS = {
    "zstd": {},  # zarr's default
    "none": {"compressors": None},
    "lz4": {"compressors": zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle")},
}


def write_stores(
    cube: np.ndarray, chunks: tuple, folder: Path, codec: str, gathered: bool = False
) -> tuple[str, str, np.ndarray]:
    """(gridded Dataset store, dense 2-D store, valid rows in gridded input's row order).

    ``gathered``: the gridded store keeps only the cells that are not land,
    on (time, cell) with the cells' lat and lon as coordinates (CF's
    "compression by gathering"); its blocks are ``chunks[0]`` time steps.
    """
    T, Y, X, _ = cube.shape
    lat, lon = np.linspace(-89.5, 89.5, Y), np.linspace(0.5, 359.5, X)
    if gathered:
        ocean = ~np.isnan(cube[..., 0]).all(axis=0)
        cells = np.nonzero(ocean)
        ds = xr.Dataset({v: (("time", "cell"), cube[:, ocean, i]) for i, v in enumerate(VARIABLES)},
                        coords={"time": np.arange(T), "lat": ("cell", lat[cells[0]]),
                                "lon": ("cell", lon[cells[1]])})  # fmt: skip
        ds = ds.chunk({"time": chunks[0], "cell": -1})
    else:
        dims = ("time", "lat", "lon")
        ds = xr.Dataset({v: (dims, cube[..., i]) for i, v in enumerate(VARIABLES)},
                        coords={"time": np.arange(T), "lat": lat, "lon": lon})  # fmt: skip
        ds = ds.chunk(dict(zip(dims, chunks, strict=True)))
    gridded, dense = str(folder / "gridded.zarr"), str(folder / "dense.zarr")
    for path in (gridded, dense):
        shutil.rmtree(path, ignore_errors=True)
    codecs = CODECS[codec]
    encoding = {v: codecs for v in VARIABLES}
    ds.to_zarr(gridded, zarr_format=3, consolidated=False, encoding=encoding)
    rows = as_input(open_gridded(gridded), nan_policy="omit").array.compute()
    rows = rows[~np.isnan(rows).any(axis=1)]
    n_chunks = np.prod([len(c) for c in ds.chunks.values()])
    per_chunk = -(-rows.shape[0] // n_chunks)  # about the valid points of a grid chunk
    z = zarr.create_array(dense, shape=rows.shape, chunks=(per_chunk, 4), dtype="f4", **codecs)
    z[:] = rows
    return gridded, dense, rows


def open_gridded(path: str) -> xr.Dataset:
    """The gridded store, its variables in the order written (the features' order).

    ``xr.open_zarr`` of a store without consolidated metadata lists the
    variables in a different order from one call to the next (zarr reads
    the members' metadata concurrently): without the selection, two fits
    of the same store from the same centres see their features permuted.
    """
    return xr.open_zarr(path, consolidated=False)[list(VARIABLES)]


def iteration_seconds(fit_input, init: np.ndarray, iters: int, omit: bool) -> list[tuple]:
    """(wall, CPU) seconds of each Lloyd iteration after the first, from the fit's callback."""
    stamps = []
    km = KMeans(len(init), init=init, n_init=1, max_iter=iters, tol=0.0,
                nan_policy="omit" if omit else "raise",
                callback=lambda model, info: stamps.append(_clocks()))  # fmt: skip
    km.fit(fit_input)
    return [tuple(b - a) for a, b in zip(stamps, stamps[1:], strict=False)]


def read_seconds(fit_input, omit: bool) -> tuple:
    """(wall, CPU) seconds to read every block of the input's rows once, nothing else."""
    rows = as_input(fit_input, nan_policy="omit" if omit else "raise").array
    n_blocks = len(rows.chunks[0])
    first = rows.map_blocks(_first_row, chunks=((1,) * n_blocks, rows.chunks[1]))
    start = _clocks()
    first.compute()
    return tuple(_clocks() - start)


def _first_row(block: np.ndarray) -> np.ndarray:
    return block[:1]


def _clocks() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


def _median_ms(values: list, which: int) -> float:
    return statistics.median(v[which] for v in values) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-data")
    p.add_argument("--shape", type=int, nargs=3, default=(48, 180, 360), metavar=("T", "Y", "X"))
    p.add_argument("--chunks", type=int, nargs=3, default=(8, 180, 360), metavar=("T", "Y", "X"))
    p.add_argument("--gathered", action="store_true",
                   help="gridded store without its land cells, on (time, cell)")
    p.add_argument("--codec", choices=tuple(CODECS), default="zstd",
                   help="compressor of both stores (lz4: blosc lz4 with byte shuffle)")
    p.add_argument("--uncompressed", action="store_true", help="the same as --codec none")
    p.add_argument("--masked", type=float, default=0.30, help="fraction of masked points")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--iters", type=int, default=6, help="Lloyd iterations per fit")
    p.add_argument("--repeat", type=int, default=3, help="fits per store, alternating")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    print("python " + " ".join(sys.argv))
    args.dir.mkdir(parents=True, exist_ok=True)
    cube = make_cube(tuple(args.shape), args.masked)
    codec = "none" if args.uncompressed else args.codec
    gridded, dense, rows = write_stores(cube, tuple(args.chunks), args.dir, codec, args.gathered)
    n_points = int(np.prod(args.shape))
    init = rows[np.random.default_rng(1).choice(rows.shape[0], args.k, replace=False)]
    init = init.astype(np.float64)
    print(f"grid {tuple(args.shape)} x {len(VARIABLES)} float32 variables, chunks "
          f"{tuple(args.chunks)}: {n_points:,} points, {1 - rows.shape[0] / n_points:.1%} "
          f"masked; dense store {rows.shape[0]:,} x {len(VARIABLES)}; K={args.k}, "
          f"{args.iters} iterations per fit, "
          f"codec {codec}, threaded scheduler, "
          f"{args.workers} workers")  # fmt: skip
    stored = xr.open_zarr(gridded, consolidated=False)
    n_stored = int(np.prod(list(stored.sizes.values())))
    print(f"gridded store{' (gathered: land cells left out)' if args.gathered else ''}: "
          f"dims {dict(stored.sizes)}, {n_stored:,} points stored = "
          f"{n_stored / rows.shape[0]:.2f}x the valid rows")  # fmt: skip
    inputs = {
        "gridded": (lambda: open_gridded(gridded), True),
        "dense": (lambda: dense, False),
    }
    times = {name: [] for name in inputs}
    reads = {name: [] for name in inputs}
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        for opened, omit in inputs.values():  # warm-up: compiled kernels, page cache
            iteration_seconds(opened(), init, 2, omit)
        for _ in range(args.repeat):
            for name, (opened, omit) in inputs.items():
                times[name].extend(iteration_seconds(opened(), init, args.iters, omit))
                reads[name].append(read_seconds(opened(), omit))
    print(f"{'store':>8} {'median ms':>10} {'best ms':>8} {'CPU ms':>7} {'reads ms':>9} "
          f"{'reads CPU':>9} {'iterations':>10}")  # fmt: skip
    for name, values in times.items():
        print(f"{name:>8} {_median_ms(values, 0):10.1f} {min(v[0] for v in values) * 1e3:8.1f} "
              f"{_median_ms(values, 1):7.1f} {_median_ms(reads[name], 0):9.1f} "
              f"{_median_ms(reads[name], 1):9.1f} {len(values):10d}")  # fmt: skip
    print("(median wall and best wall per iteration; CPU: of the whole process, all threads;"
          " reads: one pass's block reads alone, median)")
    for which, label in ((0, "wall"), (1, "CPU")):
        grid, dense = _median_ms(times["gridded"], which), _median_ms(times["dense"], which)
        extra_reads = _median_ms(reads["gridded"], which) - _median_ms(reads["dense"], which)
        print(f"gridded / dense per iteration ({label}): median {grid / dense:.2f}x; "
              f"floor if only the extra reads cost: {(dense + extra_reads) / dense:.2f}x "
              "(target <= 1.2x)")


if __name__ == "__main__":
    main()
