"""The protocol an output backend follows, and the choice of one from a location."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

import zarr

from dask_emk.engine.locations import is_url, normalize_location
from dask_emk.pipeline.outputs.local import LocalFiles
from dask_emk.pipeline.outputs.objects import ObjectStore


class Backend(Protocol):
    """Where outputs are written: how to lock, write atomically, build a store and clean up.

    Paths are as :func:`~dask_emk.pipeline.outputs.markers.output_location`
    gives them (a Path locally, a URL string on an object store). ``kind`` is
    one of the kinds of :mod:`~dask_emk.pipeline.outputs.markers`.
    """

    def exists(self, path) -> bool: ...

    def read_head(self, path, size: int = 4096) -> bytes | None:
        """The first ``size`` bytes of the file at ``path``; None if it is not a file."""

    def is_marked_store(self, path, kind: str) -> bool:
        """Whether ``path`` is a zarr store carrying the marker of ``kind``."""

    def is_own_leftover(self, path, kind: str) -> bool:
        """Whether the temporary of ``kind`` at ``path`` is provably dask-emk's."""

    def being_built(self, path, kind: str) -> bool:
        """Whether ``path`` is a store dask-emk is (or was, when killed) building in place."""

    def temporaries(self, path, kind: str) -> list[tuple]:
        """The temporaries a writer of ``kind`` uses beside ``path``, with their kinds."""

    def lock(self, path, where: str) -> tuple[Callable[[], None], list[str]]:
        """Take ``<path>.lock`` or refuse; a function releasing it, and notes."""

    def write_file(self, path, data: bytes, kind: str) -> None:
        """Replace ``path`` (absent or a ``kind`` file of ours) by ``data``, all or nothing."""

    def building_store(self, path, kind: str) -> AbstractContextManager[zarr.abc.store.Store]:
        """A marked store to write in, published at ``path`` when the body ends."""

    def clean_leftovers(self, path, kind: str) -> list[str]:
        """Remove what an interrupted writer of ``path`` left; notes of what was restored."""


#: The backends, one instance each (they hold no state).
LOCAL, OBJECT_STORE = LocalFiles(), ObjectStore()


def backend_for(path: str | os.PathLike) -> LocalFiles | ObjectStore:
    """The backend of a location: an object store for a URL, else the local file system."""
    return OBJECT_STORE if is_url(normalize_location(path)) else LOCAL
