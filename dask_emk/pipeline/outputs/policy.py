"""The one rule for everything dask-emk writes: it replaces or deletes only what it wrote.

Every writer goes through this package: results stores (``fit``, ``run``),
checkpoints, PNG plots and generated data stores (``generate``).

- A path that exists is replaced only if it carries dask-emk's marker for its
  kind (:mod:`~dask_emk.pipeline.outputs.markers`): the root zarr attribute
  ``dask_emk_results`` (results stores) or ``dask_emk_generated`` (generated
  data stores), the header line of a checkpoint, the ``Software: dask-emk``
  text chunk of a PNG. Anything else (a folder of other files, a regular
  file, a zarr store dask-emk did not write, the input store, a path inside
  or around it, a symbolic link) is refused by :func:`check_output` before any
  work starts, as is a path that cannot be created (parent is a file, no
  permission, read-only folder).
- Temporaries sit beside the output (``<path>.partial``, and locally
  ``<path>.old`` and ``<path>.tmp``). The next run removes those that are
  provably its own (they carry the marker, or are empty); a user's file with
  such a name is refused, never deleted.
- ``<path>.lock`` (JSON: pid, host, start time) is held by :func:`claim`
  while a run writes ``path``: a second run refuses, a lock left by a dead
  process on this host is taken over, and it is removed at exit.

How a backend keeps the rule with what its storage offers is its own module's
docstring: :mod:`~dask_emk.pipeline.outputs.local` (flock, renames) and
:mod:`~dask_emk.pipeline.outputs.objects` (conditional puts, root ``zarr.json``
last); :func:`~dask_emk.pipeline.outputs.backend.backend_for` picks one from
the location, once per call here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import zarr

from dask_emk.engine.locations import normalize_location
from dask_emk.pipeline.outputs.backend import backend_for
from dask_emk.pipeline.outputs.markers import (
    DESCRIPTIONS,
    RESULTS,
    STORE_MARKERS,
    UnsafeOutputError,
    carries_marker,
    foreign_error,
    location_name,
    output_location,
)


def written_by_dask_emk(path: str | os.PathLike, kind: str) -> bool:
    """True if ``path`` is a complete output of ``kind`` that dask-emk wrote.

    Stores are recognised by their root attribute, checkpoints by their header
    line (never unpickled to find out), plots by their PNG text chunk.
    """
    backend = backend_for(path)
    if kind in STORE_MARKERS:
        return backend.is_marked_store(path, kind)
    head = backend.read_head(path)
    return head is not None and carries_marker(head, kind)


def temporaries(path: str | os.PathLike, kind: str) -> list[tuple[Path | str, str]]:
    """The temporary names a writer of ``kind`` uses beside ``path``, with their kinds."""
    return backend_for(path).temporaries(output_location(path), kind)


# ------------------------------------------------------------------ checks
def check_output(
    path: str | os.PathLike,
    kind: str,
    *,
    where: str,
    inputs: Iterable[str | os.PathLike] = (),
    replace: bool = True,
    replace_hint: str = "",
) -> Path | str:
    """Refuse, before any work, a path dask-emk must not write; return it as a Path (a URL: str).

    Parameters
    ----------
    path : the output path (or object-store URL) as the user gave it
    kind : RESULTS, GENERATED, CHECKPOINT or PLOT
    where : str
        How the user names the path (``--out``, ``output.results``, ...), for
        the messages.
    inputs : paths the run reads; the output may not be, contain or be inside one.
    replace : bool
        Replace an existing output of ``kind`` that dask-emk wrote (else refuse,
        naming ``replace_hint``, e.g. ``--overwrite``).

    Raises
    ------
    UnsafeOutputError
    """
    raw = normalize_location(path)
    target = output_location(raw)
    if not raw or location_name(raw) in ("", ".", ".."):
        raise UnsafeOutputError(
            f"{where} {raw!r} is not a path dask-emk can write; give a new name such as "
            f"{'results' if kind == RESULTS else 'data'}.zarr."
        )
    backend = backend_for(target)
    backend.check_reachable(target, where)
    _check_not_an_input(target, inputs, where)
    _check_not_in_a_store(target, where)
    if backend.exists(target) and not backend.being_built(target, kind):
        if not written_by_dask_emk(target, kind):
            raise foreign_error(target, kind, where)
        if not replace:
            raise UnsafeOutputError(
                f"{target} already exists (a {DESCRIPTIONS[kind]}); pass {replace_hint} to "
                f"replace it, or choose another {where}."
            )
    for temp, temp_kind in backend.temporaries(target, kind):
        if backend.exists(temp) and not backend.is_own_leftover(temp, temp_kind):
            raise UnsafeOutputError(
                f"{temp} exists and was not written by dask-emk; remove it yourself, "
                f"or choose another {where}."
            )
    backend.check_writable(target, where)
    return target


def _check_not_an_input(target: Path | str, inputs, where: str) -> None:
    for source in inputs:
        source = normalize_location(source)
        relation = _relation(target, source)
        if relation is None:
            continue
        local_file = isinstance(target, Path) and not os.path.isdir(source)
        what = "input file" if local_file else "input store"
        raise UnsafeOutputError(
            f"{where} {target} {relation} the {what} {source}; choose another {where}."
        )


def _relation(target: Path | str, source: str) -> str | None:
    """How ``target`` lies to ``source``: 'is', 'is inside', 'contains' or None."""
    backend = backend_for(target)
    if backend_for(source) is not backend:
        return None
    resolved, source_resolved = backend.resolved(target), backend.resolved(source)
    if resolved == source_resolved:
        return "is"
    if source_resolved in resolved.parents:
        return "is inside"
    if resolved in source_resolved.parents:
        return "contains"
    return None


def _check_not_in_a_store(target: Path | str, where: str) -> None:
    """Refuse a path inside a zarr store: replacing that store later would delete it."""
    backend = backend_for(target)
    for folder in backend.folders_above(target):
        if any(backend.exists(f"{folder}/{name}") for name in ("zarr.json", ".zgroup", ".zarray")):
            raise UnsafeOutputError(
                f"{where} {target} is inside the zarr store {folder}; choose another {where}."
            )


# ------------------------------------------------------------------ claim
_held = threading.local()


@contextlib.contextmanager
def claim(
    path: str | os.PathLike,
    kind: str,
    *,
    where: str,
    companions: Iterable[tuple[Path, str]] = (),
) -> Iterator[list[str]]:
    """Hold ``path``'s lock for the body, after cleaning up leftovers of earlier runs.

    Creates the missing parent folders (removed again at exit if still empty),
    takes ``<path>.lock`` (refusing if another run holds it), restores a store
    an interrupted run had moved aside, and removes the temporaries of ``path``
    and of each ``(companion path, kind)`` that are provably dask-emk's. Yields
    one line per restored store or taken-over lock. Nested claims of one path
    in one thread share the outer claim. On an object store the lock is an
    object and there are no folders to create.
    """
    path = output_location(path)
    backend = backend_for(path)
    if not hasattr(_held, "paths"):
        _held.paths = set()
    held, key = _held.paths, backend.key(path)
    if key in held:
        yield []
        return
    release, notes = backend.lock(path, where)
    held.add(key)
    try:
        for output, output_kind in [(path, kind), *companions]:
            notes += clean_leftovers(output, output_kind)
        yield notes
    finally:
        held.discard(key)
        release()


# ------------------------------------------------------------------ writes
def clean_leftovers(path: str | os.PathLike, kind: str) -> list[str]:
    """Remove the temporaries an interrupted writer of ``path`` left; notes of what it did.

    A local store moved aside (``<path>.old``) with nothing at ``path`` is put
    back; on an object store, a store that ``<path>.partial`` says was being
    built is removed unless it was completed.
    """
    path = output_location(path)
    return backend_for(path).clean_leftovers(path, kind)


def write_file_atomically(path: str | os.PathLike, data: bytes, kind: str) -> None:
    """Replace ``path`` (absent, or a ``kind`` file dask-emk wrote) by ``data``; a kill
    at any moment leaves the previous file whole (a rename locally, one put on an
    object store)."""
    path = output_location(path)
    backend_for(path).write_file(path, data, kind)


@contextlib.contextmanager
def building_store(path: str | os.PathLike, kind: str) -> Iterator[zarr.abc.store.Store]:
    """A writable zarr store marked for ``kind``, published at ``path`` when the body ends.

    Locally it is ``<path>.partial``, renamed into place; on an object store it
    is ``path`` itself, its root ``zarr.json`` written last. If the body raises,
    what it wrote stays for the next run to remove (a write that found no room
    locally is removed at once and raised as :class:`NoRoomError`).
    """
    path = output_location(path)
    with backend_for(path).building_store(path, kind) as store:
        yield store
