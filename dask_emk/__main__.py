"""``python -m dask_emk``: the dask-emk command."""

from .cli import main

main(prog_name="dask-emk")
