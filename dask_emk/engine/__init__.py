"""Dask orchestration: input conversion, storage reads, and the pass runner
(blockwise kernels + tree reduction, one compute per pass)."""
