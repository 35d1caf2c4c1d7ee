"""What marks an output as dask-emk's, and the names of its temporaries.

The data of the ownership rule (:mod:`dask_emk.pipeline.outputs.policy` applies
it): the kinds of output, the marker each carries (a store's root attribute, a
checkpoint's header line, a PNG's ``Software`` text chunk, the JSON head of a
lock or of a note that a store is being built), the temporary names beside an
output, the lock's JSON, and the errors. No file is written here; the backends
(:mod:`~dask_emk.pipeline.outputs.local`, :mod:`~dask_emk.pipeline.outputs.objects`)
and the policy import it.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
import time
from pathlib import Path

import zarr

from dask_emk._version import __version__
from dask_emk.engine.locations import is_url, normalize_location, open_store

FORMAT = 1
RESULTS, GENERATED, CHECKPOINT, PLOT = "results", "generated", "checkpoint", "plot"
#: Root zarr attribute marking a store written by dask-emk, per kind of store.
STORE_MARKERS = {RESULTS: "dask_emk_results", GENERATED: "dask_emk_generated"}
#: First bytes of every checkpoint (any format version).
CHECKPOINT_MAGIC = b"dask-emk checkpoint"
#: PNG ``Software`` text chunk of dask-emk's plots.
PNG_SOFTWARE = "dask-emk"
#: First bytes of a lock file.
LOCK_MAGIC = b'{"dask_emk_lock": 1'
#: First bytes of the object saying a store is being built at its path (object stores).
PARTIAL_MAGIC = b'{"dask_emk_partial": 1'
LOCK, PARTIAL = "lock", "partial"
MAGIC = {CHECKPOINT: CHECKPOINT_MAGIC, LOCK: LOCK_MAGIC, PARTIAL: PARTIAL_MAGIC}
DESCRIPTIONS = {
    RESULTS: "dask-emk results store",
    GENERATED: "data store written by dask-emk generate",
    CHECKPOINT: "dask-emk checkpoint",
    PLOT: "plot written by dask-emk",
    LOCK: "dask-emk lock file",
    PARTIAL: "dask-emk note of a store being built",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The object that makes a zarr 3 store open: its root group's metadata.
ROOT_METADATA = "zarr.json"
#: The name the root metadata of a new local store is written under first.
STAGED_ROOT = "zarr.json.tmp"


class UnsafeOutputError(ValueError):
    """dask-emk will not write a path; the message names it and the fix."""


class NoRoomError(ValueError):
    """A write failed for want of room (disk full, quota, file-size limit); names the path."""


#: The errors of a write that found no room: what each means, and the fix.
NO_ROOM = {
    errno.ENOSPC: ("no space left on the device", "free space there"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there"),
    errno.EFBIG: ("file too large: a file would pass the file-size limit (ulimit -f) or the "
                  "largest file the file system holds", "raise the limit"),
}  # fmt: skip


def no_room(exc: BaseException) -> OSError | None:
    """The OSError of :data:`NO_ROOM` that ``exc`` is or stems from (a dask worker's
    error arrives as itself or chained), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in NO_ROOM:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def no_room_error(path, exc: OSError) -> NoRoomError:
    """The error for a write of ``path`` (or into it) that found no room."""
    problem, fix = NO_ROOM[exc.errno]
    return NoRoomError(
        f"cannot write {path}: {problem}. {fix.capitalize()} or choose another output path, "
        "and rerun; what was there before is left as it was."
    )


def foreign_error(path, kind: str, where: str = "path") -> UnsafeOutputError:
    """The refusal of an existing ``path`` that is not dask-emk's output of ``kind``."""
    return UnsafeOutputError(
        f"{path} exists and is not a {DESCRIPTIONS[kind]}; choose another {where}, "
        "or remove it yourself."
    )


# ------------------------------------------------------------------ names
def partial_path(path: str | os.PathLike) -> Path | str:
    """Where a store is built before it is moved into place.

    On an object store: the object saying the store at ``path`` is being built.
    """
    return suffixed(path, ".partial")


def moved_aside_path(path: str | os.PathLike) -> Path | str:
    """Where a local store is moved while it is replaced (:func:`~.local.replace_dir`)."""
    return suffixed(path, ".old")


def temp_path(path: str | os.PathLike) -> Path | str:
    """Where a local file is written before it is renamed into place."""
    return suffixed(path, ".tmp")


def lock_path(path: str | os.PathLike) -> Path | str:
    """The lock held while a run writes ``path`` (:func:`~.policy.claim`)."""
    return suffixed(path, ".lock")


def suffixed(path: str | os.PathLike, suffix: str) -> Path | str:
    """``path`` with ``suffix`` added to its name (``r.zarr`` -> ``r.zarr.lock``)."""
    return beside(path, location_name(path) + suffix)


def beside(path: str | os.PathLike, name: str) -> Path | str:
    """The path called ``name`` in the folder of ``path`` (for a URL: its prefix)."""
    path = normalize_location(path)
    if is_url(path):
        return f"{path.rsplit('/', 1)[0]}/{name}"
    return Path(path).with_name(name)


def output_location(path: str | os.PathLike) -> Path | str:
    """An output as dask-emk handles it: a URL as a string, a local path (or ``file://``
    URL) as a Path."""
    path = normalize_location(path)
    return path if is_url(path) else Path(path)


def location_name(path: str | os.PathLike) -> str:
    """The last part of a path or URL: ``r.zarr`` for ``s3://bucket/runs/r.zarr``."""
    path = normalize_location(path)
    return path.rsplit("/", 1)[-1] if is_url(path) else Path(path).name


# ------------------------------------------------------------ recognition
def store_marker(kind: str) -> dict:
    """The root attribute that marks a store of ``kind`` as written by dask-emk."""
    return {STORE_MARKERS[kind]: {"format": FORMAT, "version": __version__}}


@functools.cache
def marked_root(kind: str) -> bytes:
    """The root ``zarr.json`` of an empty group marked for ``kind``, as zarr writes it."""
    written: dict = {}
    zarr.create_group(
        store=zarr.storage.MemoryStore(written), attributes=store_marker(kind), zarr_format=3
    )
    return written[ROOT_METADATA].to_bytes()


def has_store_marker(path, kind: str) -> bool:
    """Whether the zarr group at ``path`` carries the root attribute of ``kind``."""
    try:
        attrs = zarr.open_group(store=open_store(path), mode="r").attrs
    except Exception:  # not a zarr group (zarr raises several types): not ours
        return False
    marker = attrs.get(STORE_MARKERS[kind])
    return isinstance(marker, dict) and "format" in marker


def carries_marker(head: bytes, kind: str) -> bool:
    """Whether the first bytes of a file are those of a complete file of ``kind``
    (a checkpoint's header line, a plot's PNG text chunk, a lock's or a note's JSON)."""
    if kind == PLOT:
        return png_text(head).get("Software") == PNG_SOFTWARE
    return head.startswith(MAGIC[kind])


def png_text(data: bytes) -> dict[str, str]:
    """The ``tEXt`` chunks before the image data of PNG bytes (possibly cut short)."""
    if not data.startswith(_PNG_SIGNATURE):
        return {}
    text, pos = {}, len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT" or len(body) < length:
            break
        if kind == b"tEXt" and b"\0" in body:
            key, value = body.split(b"\0", 1)
            text[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return text


# ------------------------------------------------------------------ locks
def lock_info() -> dict:
    """The JSON a lock holds: who holds it (pid, host) and since when."""
    return {"dask_emk_lock": 1, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip


def describe_holder(info: dict) -> str:
    """A lock's holder in words, for the messages."""
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"


def taken_over(lock, previous: dict) -> str:
    """The note of a lock left by a dead run and taken over."""
    return f"took over {lock} left by {describe_holder(previous)}, no longer running"
