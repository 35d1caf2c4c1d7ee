"""Checkpoints: the small model state after every iteration, saved beside the results.

A checkpoint is one file ``<results>.checkpoint``: the header line
``dask-emk checkpoint, format 1`` then a pickle of a dict of stage states (the
fitted annealing model, the estimator or centres reached so far, the
iteration history) and the key of the pipeline sections that decide the
result. It is replaced atomically (written to ``<results>.checkpoint.tmp``,
then renamed; on an object store: one put, atomic itself), so a kill at any
moment leaves the previous complete checkpoint; the next run removes the ``.tmp``.

Pickle is used because the states are scikit-learn style estimators, which
scikit-learn itself persists with pickle. A file without the header is never
unpickled (nor replaced): loading refuses it, and the output rule of
:mod:`dask_emk.pipeline.outputs` refuses to write over it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from dask_emk.engine.locations import location_exists, read_location
from dask_emk.pipeline.outputs import (
    CHECKPOINT,
    CHECKPOINT_MAGIC,
    suffixed,
    write_file_atomically,
    written_by_dask_emk,
)

HEADER = CHECKPOINT_MAGIC + b", format 1\n"


def checkpoint_path(results: str | os.PathLike) -> Path | str:
    """Where the checkpoint of the results store ``results`` (path or URL) is kept."""
    return suffixed(results, ".checkpoint")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The saved dict (``key``, ``stages``) of a checkpoint file; its header is checked first.

    Raises
    ------
    ValueError
        Not a dask-emk checkpoint, or one of another format version.
    """
    if not written_by_dask_emk(path, CHECKPOINT):
        raise ValueError(
            f"{path} is not a dask-emk checkpoint, so it is not loaded; remove it yourself "
            "or drop --resume."
        )
    data = read_location(path) or b""
    if not data.startswith(HEADER):
        raise ValueError(
            f"checkpoint {path} was written by another version of dask-emk; "
            "drop --resume to start afresh."
        )
    return pickle.loads(data[len(HEADER) :])


class Checkpoint:
    """The checkpoint of one pipeline run.

    Parameters
    ----------
    results : path of the results store; the checkpoint sits beside it.
    key : str
        :func:`dask_emk.pipeline.config.config_key` of the pipeline.
    resume : bool
        Load an existing matching checkpoint; otherwise start afresh.
    enabled : bool
        Save after every iteration (False: keep nothing on disk).
    """

    def __init__(self, results: str | os.PathLike, key: str, resume: bool, enabled: bool = True):
        self.path = checkpoint_path(results)
        self.key = key
        self.enabled = enabled
        self.stages: dict = self._load() if resume else {}

    def _load(self) -> dict:
        if not location_exists(self.path):
            return {}
        saved = read_checkpoint(self.path)
        if saved.get("key") != self.key:
            raise ValueError(
                f"checkpoint {self.path} was written by a different pipeline "
                "(input, anneal or model changed); drop --resume to start afresh."
            )
        return saved["stages"]

    def get(self, stage: str):
        """The saved state of ``stage``, or None."""
        return self.stages.get(stage)

    def save(self, stage: str, state) -> None:
        """Record the state of ``stage`` and write the checkpoint atomically."""
        self.stages[stage] = state
        if not self.enabled:
            return
        data = pickle.dumps({"key": self.key, "stages": self.stages})
        write_file_atomically(self.path, HEADER + data, CHECKPOINT)
