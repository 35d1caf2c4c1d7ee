"""Pipelines and the dask-emk command: config, inputs, generated data, runs,
checkpoints, results stores, schedulers, figures."""
