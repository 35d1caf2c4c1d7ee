"""``python -m dask_emk``: the dask-emk command."""

from dask_emk.pipeline.cli import main

main(prog_name="dask-emk")
