"""The object-store backend (``s3://``, ``gs://``): atomic puts, conditional puts, root last.

An object store has no renames and no flock; it offers instead that a put is
atomic and can be conditional on the object not existing:

- A file (checkpoint, plot) is one put, whole or absent: no ``.tmp``.
- A store is written in place, its root ``zarr.json`` last
  (:meth:`ObjectStore.building_store`): that object is what makes the store
  open at all (zarr and xarray find no store without it), and it carries the
  marker. First the object ``<path>.partial`` is put (JSON: "dask-emk is
  building the store at path"); a store being replaced then loses its root
  ``zarr.json`` first, then its other objects. So at every moment the path
  holds the previous complete store, an incomplete one that does not open (no
  root ``zarr.json``) and that ``<path>.partial`` marks as dask-emk's for the
  next run to remove, or the new complete store.
- ``<path>.lock`` is an object (the JSON of a local lock file, plus a token)
  created by a conditional put (``If-None-Match: *``, honoured by AWS S3,
  MinIO and moto), so of two runs starting together one refuses. Nothing
  releases it when a run is killed: a lock left by a process that no longer
  runs on this host is taken over; one from another host is reported, for
  the user to remove once no run is active there. The run reads its lock back
  after creating it and refuses if it holds another run's token; on a store
  that ignores conditional puts that check is all there is, so two runs
  starting within the same instant may both proceed.

``https://`` is read-only: :meth:`ObjectStore.check_reachable` refuses it as an output.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import zarr

from dask_emk.engine.locations import (
    READ_ONLY_SCHEMES,
    bucket_of,
    check_reachable,
    filesystem,
    location_exists,
    open_store,
    read_location,
    remote_errors,
    url_scheme,
)
from dask_emk.pipeline.outputs.markers import (
    DESCRIPTIONS,
    LOCK,
    LOCK_MAGIC,
    MAGIC,
    PARTIAL,
    ROOT_METADATA,
    STORE_MARKERS,
    UnsafeOutputError,
    carries_marker,
    describe_holder,
    foreign_error,
    has_store_marker,
    lock_info,
    lock_path,
    partial_path,
    store_marker,
    taken_over,
)


class ObjectStore:
    """Outputs on an object store (see the module's docstring)."""

    # -------------------------------------------------------------- reading
    def exists(self, path: str) -> bool:
        return location_exists(path)

    def read_head(self, path: str, size: int = 4096) -> bytes | None:
        """The first bytes of the object at ``path``; None if there is none."""
        return read_location(path, size)

    def is_marked_store(self, path: str, kind: str) -> bool:
        return has_store_marker(path, kind)

    def is_own_leftover(self, path: str, kind: str) -> bool:
        """True if the lock or note object at ``path`` is dask-emk's (they are put whole)."""
        head = self.read_head(path)
        return head is not None and head.startswith(MAGIC[kind])

    def being_built(self, path: str, kind: str) -> bool:
        """Whether dask-emk is building (or was building) a store at ``path``."""
        return kind in STORE_MARKERS and self.is_own_leftover(partial_path(path), PARTIAL)

    def temporaries(self, path: str, kind: str) -> list[tuple[Path | str, str]]:
        """The note and lock objects beside a store (a file has none: a put is atomic)."""
        if kind in STORE_MARKERS:
            return [(partial_path(path), PARTIAL), (lock_path(path), LOCK)]
        return []

    # --------------------------------------------------------------- checks
    def check_reachable(self, target: str, where: str) -> None:
        """A scheme that can be written, and a bucket that answers."""
        if url_scheme(target) in READ_ONLY_SCHEMES:
            raise UnsafeOutputError(
                f"{where} {target}: {url_scheme(target)}:// URLs are read-only; write to a "
                f"local path or an object store (s3://, gs://) instead."
            )
        check_reachable(target)

    def check_writable(self, target: str, where: str) -> None:
        """Nothing to check before writing: the bucket answered (:meth:`check_reachable`)."""

    def resolved(self, path: str) -> PurePosixPath:
        return PurePosixPath(path)

    def folders_above(self, target: str) -> list[str]:
        """The prefixes above ``target``, nearest first, down to the bucket."""
        bucket = bucket_of(target)
        parts = target[len(bucket) :].split("/")[:-1]  # "", then the prefixes
        return ["/".join([bucket, *parts[1:i]]) for i in range(len(parts), 0, -1)]

    def key(self, path: str) -> str:
        return path

    # ---------------------------------------------------------------- writes
    def lock(self, path: str, where: str) -> tuple[Callable[[], None], list[str]]:
        """Create the lock object ``<path>.lock``; a function removing it, and notes."""
        lock = lock_path(path)
        token, notes = _lock_object(lock, path, where)
        return functools.partial(_unlock_object, lock, token), notes

    def clean_leftovers(self, path: str, kind: str) -> list[str]:
        """Remove a store that ``<path>.partial`` says was being built (unless it was
        completed: the run died just before removing the note), then the note."""
        if self.being_built(path, kind):
            if not self.is_marked_store(path, kind):
                _delete_objects(path)
            _delete_objects(partial_path(path))
        return []

    def write_file(self, path: str, data: bytes, kind: str) -> None:
        """Put ``data`` at ``path`` (a ``kind`` file of ours if something is there):
        one put, atomic itself."""
        if location_exists(path) and not _complete(path, kind):
            raise foreign_error(path, kind)
        fs, key = filesystem(path)
        with remote_errors(path):
            fs.pipe_file(key, data)

    @contextlib.contextmanager
    def building_store(self, path: str, kind: str) -> Iterator[zarr.abc.store.Store]:
        """The store at ``path`` itself, its root ``zarr.json`` held back until the body ends.

        The note ``<path>.partial`` is put, a previous store of ours is deleted
        (root ``zarr.json`` first), everything is written except the root
        ``zarr.json`` (:class:`RootLastStore`), which is put when the body has
        finished, and the note is removed. If the body raises, what it wrote
        stays for the next run to remove.
        """
        if location_exists(path) and not self.being_built(path, kind):
            if not self.is_marked_store(path, kind):
                raise foreign_error(path, kind)
        note = json.dumps({"dask_emk_partial": 1, "kind": kind, "store": path}).encode()
        self.write_file(partial_path(path), note, PARTIAL)
        if location_exists(path):
            _delete_objects(path)
        store = RootLastStore(open_store(path, read_only=False))
        zarr.create_group(store=store, attributes=store_marker(kind), zarr_format=3)
        yield store
        fs, key = filesystem(path)
        with remote_errors(path):
            fs.pipe_file(f"{key}/{ROOT_METADATA}", store.held_root())
        # zarr's reads go through another (async) file system, whose listings made while
        # the root was held (consolidating lists the store) would hide the root now put.
        open_store(path).fs.invalidate_cache()
        _delete_objects(partial_path(path))


def _complete(path: str, kind: str) -> bool:
    """Whether ``path`` is a complete output of ``kind`` that dask-emk wrote."""
    if kind in STORE_MARKERS:
        return has_store_marker(path, kind)
    head = read_location(path, 4096)
    return head is not None and carries_marker(head, kind)


def _delete_objects(url: str) -> None:
    """Delete the object at ``url``, or the store under it, root ``zarr.json`` first.

    Without its root ``zarr.json`` a store no longer opens, so a deletion cut
    short never leaves a store that opens as complete.
    """
    fs, key = filesystem(url)
    with remote_errors(url):
        if fs.isfile(key):
            fs.rm_file(key)
            return
        if fs.exists(f"{key}/{ROOT_METADATA}"):
            fs.rm_file(f"{key}/{ROOT_METADATA}")
        if fs.exists(key):
            fs.rm(key, recursive=True)


class RootLastStore(zarr.storage.WrapperStore):
    """A zarr store whose root ``zarr.json`` is held in memory, not written.

    Everything else goes to the wrapped store; reads of the root metadata see
    the held copy, so zarr and xarray write through it as usual. The held
    bytes are written last (:meth:`ObjectStore.building_store`), when the store is whole.
    """

    def __init__(self, store, held: dict | None = None):
        super().__init__(store)
        self._held = {} if held is None else held

    def _with_store(self, store):
        return type(self)(store, self._held)

    def held_root(self) -> bytes:
        return self._held[ROOT_METADATA].to_bytes()

    async def get(self, key, prototype, byte_range=None):
        if key != ROOT_METADATA:
            return await super().get(key, prototype, byte_range)
        return self._held.get(key)  # zarr reads metadata whole

    async def exists(self, key) -> bool:
        return key in self._held if key == ROOT_METADATA else await super().exists(key)

    async def set(self, key, value) -> None:
        if key == ROOT_METADATA:
            self._held[key] = value
        else:
            await super().set(key, value)

    async def set_if_not_exists(self, key, value) -> None:
        if key == ROOT_METADATA:
            self._held.setdefault(key, value)
        else:
            await super().set_if_not_exists(key, value)

    async def _set_many(self, values) -> None:
        for key, value in values:
            await self.set(key, value)

    async def _get_many(self, requests):
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def delete(self, key) -> None:
        if key == ROOT_METADATA:
            self._held.pop(key, None)
        else:
            await super().delete(key)


# ------------------------------------------------------------------- locks
def _lock_object(lock: str, path: str, where: str) -> tuple[str, list[str]]:
    """Create the lock object ``lock`` by a conditional put; its token and notes.

    A lock left by a process that no longer runs on this host is taken over
    (once: a second failure means another run took it meanwhile).
    """
    token = uuid.uuid4().hex
    data = json.dumps({**lock_info(), "token": token}).encode()
    notes = []
    for _ in range(2):
        if _create_object(lock, data):
            break
        previous = _read_lock_object(lock, where)
        if not _stale(previous):
            raise UnsafeOutputError(_held_message(previous, lock, path, where))
        with remote_errors(lock):
            fs, key = filesystem(lock)
            fs.rm_file(key)
        notes = [taken_over(lock, previous)]
    else:
        raise UnsafeOutputError(_held_message({}, lock, path, where))
    holder = _read_lock_object(lock, where)
    if holder.get("token") != token:  # a store that ignored the condition
        raise UnsafeOutputError(_held_message(holder, lock, path, where))
    return token, notes


def _create_object(url: str, data: bytes) -> bool:
    """Put ``data`` at ``url`` unless an object is there (conditional put); whether it did."""
    fs, key = filesystem(url)
    with remote_errors(url):
        try:
            fs.pipe_file(key, data, mode="create")
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError):  # no conditional put: best effort
            if fs.exists(key):
                return False
            fs.pipe_file(key, data)
    return True


def _read_lock_object(lock: str, where: str) -> dict:
    """The JSON of a lock object ({} if it vanished); refuses an object that is no lock."""
    data = read_location(lock, 4096)
    if data is None:
        return {}
    if not data.startswith(LOCK_MAGIC):
        raise UnsafeOutputError(
            f"{lock} exists and is not a {DESCRIPTIONS[LOCK]}; remove it yourself, "
            f"or choose another {where}."
        )
    try:
        info = json.loads(data)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _stale(info: dict) -> bool:
    """Whether a lock's holder is a process of this host that no longer runs."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # running, as another user
        return False
    return False


def _held_message(info: dict, lock: str, path: str, where: str) -> str:
    if info.get("host", socket.gethostname()) == socket.gethostname():
        return (f"{path} is being written by another dask-emk run ({describe_holder(info)}); "
                f"wait for it to finish, or choose another {where}.")  # fmt: skip
    return (
        f"{path} is locked by a dask-emk run on another host ({describe_holder(info)}); if "
        f"no run is active there, remove {lock} yourself, or choose another {where}."
    )


def _unlock_object(lock: str, token: str) -> None:
    """Remove the lock object if it is still this run's."""
    data = read_location(lock, 4096)
    if data is None or token.encode() not in data:
        return
    fs, key = filesystem(lock)
    with remote_errors(lock):
        fs.rm_file(key)
