"""Checkpoints: the small model state after every iteration, saved beside the results.

A checkpoint is one pickle file ``<results>.checkpoint`` holding a dict of
stage states (the fitted annealing model, the estimator or centres reached so
far, the iteration history) and the key of the pipeline sections that decide
the result. It is replaced atomically (write, then ``os.replace``), so a kill
at any moment leaves the previous complete checkpoint.

Pickle is used because the states are scikit-learn style estimators, which
scikit-learn itself persists with pickle; only load checkpoints you wrote.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

FORMAT = 1


class Checkpoint:
    """The checkpoint of one pipeline run.

    Parameters
    ----------
    results : path of the results store; the checkpoint sits beside it.
    key : str
        :func:`dask_emk.config.config_key` of the pipeline.
    resume : bool
        Load an existing matching checkpoint; otherwise start afresh.
    enabled : bool
        Save after every iteration (False: keep nothing on disk).
    """

    def __init__(self, results: str | os.PathLike, key: str, resume: bool, enabled: bool = True):
        results = Path(results)
        self.path = results.with_name(results.name + ".checkpoint")
        self.key = key
        self.enabled = enabled
        self.stages: dict = self._load() if resume else {}

    def _load(self) -> dict:
        if not self.path.exists():
            return {}
        with open(self.path, "rb") as f:
            saved = pickle.load(f)
        if saved.get("format") != FORMAT or saved.get("key") != self.key:
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
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump({"format": FORMAT, "key": self.key, "stages": self.stages}, f)
        os.replace(tmp, self.path)
