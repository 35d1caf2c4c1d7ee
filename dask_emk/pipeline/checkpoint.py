"""Checkpoints: the small model state after every iteration, saved beside the results.

A checkpoint is one file ``<results>.checkpoint``: the header line
``dask-emk checkpoint, format 2`` then a pickle of a dict of stage states (the
fitted annealing model, the estimator or centres reached so far, the
iteration history), the key of the pipeline sections that decide the
result, and what it was fitted on (:class:`InputRecord`: the store, the rows'
shape, dtype and chunks, and a content fingerprint the first pass over the
data computes as it reads, :mod:`dask_emk.engine.fingerprint`). ``--resume``
against other data refuses, naming what changed: store, shape, dtype or
chunks before any work, content at the end of the first pass (before
anything is written). It is replaced atomically (written to ``<results>.checkpoint.tmp``,
then renamed; on an object store: one put, atomic itself), so a kill at any
moment leaves the previous complete checkpoint; the next run removes the ``.tmp``.

Pickle is used because the states are scikit-learn style estimators, which
scikit-learn itself persists with pickle. A file without the header is never
unpickled (nor replaced): loading refuses it, and the output rule of
:mod:`dask_emk.pipeline.outputs` refuses to write over it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dask_emk.engine.fingerprint import ContentWatch, watch_content
from dask_emk.engine.locations import is_url, location_exists, normalize_location, read_location
from dask_emk.engine.reduction import reduce_pass
from dask_emk.pipeline.outputs import (
    CHECKPOINT,
    CHECKPOINT_MAGIC,
    suffixed,
    write_file_atomically,
    written_by_dask_emk,
)

#: Format 2: the checkpoint records its input (:class:`InputRecord`).
HEADER = CHECKPOINT_MAGIC + b", format 2\n"


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


@dataclass(frozen=True)
class InputRecord:
    """What a checkpoint was fitted on: the data as the estimators read them.

    Attributes
    ----------
    store : str
        The input's identity: an absolute local path or a URL (and the array in it).
    shape : tuple of int
        (n_samples, n_features) of the rows fitted.
    dtype : str
    chunks : tuple of int
        Rows per chunk.
    fingerprint : int or None
        :mod:`dask_emk.engine.fingerprint` of the rows; None until a pass made it.
    """

    store: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    fingerprint: int | None = None

    @classmethod
    def of(cls, store: str, array) -> InputRecord:
        """The record of ``array`` (2-D rows, numpy or dask) read from ``store``."""
        chunks = getattr(array, "chunks", None)
        rows = tuple(int(c) for c in chunks[0]) if chunks else (int(array.shape[0]),)
        return cls(store, tuple(map(int, array.shape)), str(array.dtype), rows)

    def changes(self, now: InputRecord) -> list[str]:
        """What differs in ``now``, as phrases; the content only if both were fingerprinted."""
        shown = {"store": str, "shape": _shape, "dtype": str, "chunks": _chunks}
        out = [
            f"{name} ({show(getattr(self, name))}, now {show(getattr(now, name))})"
            for name, show in shown.items()
            if getattr(self, name) != getattr(now, name)
        ]
        prints = (self.fingerprint, now.fingerprint)
        if None not in prints and prints[0] != prints[1]:
            out.append("content (same shape, dtype and chunks, other values: rewritten)")
        return out


def _shape(shape: tuple) -> str:
    return " × ".join(map(str, shape))


def _chunks(rows: tuple) -> str:
    """'48 chunk(s) of 5000 rows' (a shorter last one named)."""
    sizes = sorted(set(rows[:-1] or rows))
    tail = f", the last {rows[-1]}" if rows[-1] not in sizes else ""
    return f"{len(rows)} chunk(s) of {'/'.join(map(str, sizes))} rows{tail}"


def input_identity(inputs: dict) -> str:
    """The input's identity from a pipeline's [input]: an absolute path or URL (and array)."""
    location = inputs["store"] or inputs["csv"] or (inputs["generate"] or inputs["photo"])["path"]
    location = normalize_location(location)
    if not is_url(location):
        location = os.path.abspath(location)
    return f"{location}/{inputs['array']}" if inputs.get("array") else location


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
    store : str
        :func:`input_identity` of the input: a checkpoint of another store is refused.
    """

    def __init__(self, results: str | os.PathLike, key: str, resume: bool, enabled: bool = True,
                 store: str = ""):  # fmt: skip
        self.path = checkpoint_path(results)
        self.key = key
        self.enabled = enabled
        #: What the resumed checkpoint was fitted on, and what this run fits.
        self.saved_input: InputRecord | None = None
        self.input: InputRecord | None = None
        self.stages: dict = self._load(store) if resume else {}

    def _load(self, store: str) -> dict:
        if not location_exists(self.path):
            return {}
        saved = read_checkpoint(self.path)
        self.saved_input = saved["input"]
        if self.saved_input is not None and self.saved_input.store != store:
            raise self._refusal([f"store ({self.saved_input.store}, now {store})"])
        if saved.get("key") != self.key:
            raise ValueError(
                f"checkpoint {self.path} was written by a different pipeline "
                "(input, anneal or model changed); drop --resume to start afresh."
            )
        return saved["stages"]

    def check_input(self, record: InputRecord) -> None:
        """Take ``record`` (not fingerprinted yet) as this run's input; refuse it if it
        is not what the resumed checkpoint was fitted on.

        Metadata only, before any pass; the content is checked by the first
        pass run under :meth:`watch_content`.
        """
        if self.saved_input is not None:
            changed = self.saved_input.changes(record)
            if changed:
                raise self._refusal(changed)
        self.input = record

    @contextlib.contextmanager
    def watch_content(self) -> Iterator[ContentWatch]:
        """The body's first pass fingerprints the data; a resumed run refuses other content
        there, before the fit goes on (and before the checkpoint is saved again)."""
        with watch_content(self._fingerprinted) as watch:
            yield watch

    @property
    def expected_fingerprint(self) -> int | None:
        """The content fingerprint of the run resumed (None: nothing to compare with)."""
        return None if self.saved_input is None else self.saved_input.fingerprint

    def _fingerprinted(self, fingerprint: int) -> None:
        now = replace(self.input, fingerprint=fingerprint)
        if self.saved_input is not None:
            changed = self.saved_input.changes(now)
            if changed:
                raise self._refusal(changed)
        self.input = now

    def _refusal(self, changed: list[str]) -> ValueError:
        return ValueError(
            f"checkpoint {self.path} was fitted on other data; changed: {'; '.join(changed)}. "
            "Resuming would publish the old data's fit; drop --resume to fit this input afresh."
        )

    def get(self, stage: str):
        """The saved state of ``stage``, or None."""
        return self.stages.get(stage)

    def save(self, stage: str, state) -> None:
        """Record the state of ``stage`` and write the checkpoint atomically."""
        self.stages[stage] = state
        if not self.enabled:
            return
        data = pickle.dumps({"key": self.key, "input": self.input, "stages": self.stages})
        write_file_atomically(self.path, HEADER + data, CHECKPOINT)


def fingerprint_pass(X) -> None:
    """A pass over ``X`` (2-D rows) that only reads it: under :meth:`Checkpoint.watch_content`
    it fingerprints them, for a resumed run whose fit is done and makes no pass of its own."""
    reduce_pass(X, None, _no_statistics, 0)


def _no_statistics(x, w) -> np.ndarray:
    return np.zeros((1, 0))
