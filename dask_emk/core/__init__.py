"""The numeric core: numpy (and numba) only, one block of rows at a time.

Nothing here imports dask, distributed, xarray or zarr (tests/test_layout.py
checks it)."""
