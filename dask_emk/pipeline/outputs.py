"""The one rule for everything dask-emk writes: it replaces or deletes only what it wrote.

Every writer goes through this module: results stores (``fit``, ``run``),
checkpoints, PNG plots and generated data stores (``generate``).

- A path that exists is replaced only if it carries dask-emk's marker for its
  kind: the root zarr attribute ``dask_emk_results`` (results stores) or
  ``dask_emk_generated`` (generated data stores), the header line of a
  checkpoint, the ``Software: dask-emk`` text chunk of a PNG. Anything else
  (a folder of other files, a regular file, a zarr store dask-emk did not
  write, the input store, a path inside or around it, a symbolic link) is
  refused by :func:`check_output` before any work starts, as is a path that
  cannot be created (parent is a file, no permission, read-only folder).
- Temporaries are ``<path>.partial`` (a store being built), ``<path>.old``
  (the previous store while it is replaced) and ``<path>.tmp`` (a file being
  written). The next run removes those that are provably its own (they carry
  the marker, or are empty); a user's file with such a name is refused, never
  deleted.
- ``<path>.lock`` (JSON: pid, host, start time) is held by :func:`claim`
  while a run writes ``path``: a second run refuses, a lock left by a dead
  process on this host is taken over (the lock is an ``flock``, which the
  kernel releases when its process dies), and it is removed at exit.

Object stores (``s3://``, ``gs://``; ``https://`` is read-only) follow the
same rule with what they offer instead of renames and flocks (an object put
is atomic; a put can be conditional on the object not existing):

- A file (checkpoint, plot) is one put, whole or absent: no ``.tmp``.
- A store is written in place, its root ``zarr.json`` last
  (:func:`building_store`): that object is what makes the store open at all
  (zarr and xarray find no store without it), and it carries the marker.
  First the object ``<path>.partial`` is put (JSON: "dask-emk is building
  the store at path"); a store being replaced then loses its root
  ``zarr.json`` first, then its other objects. So at every moment the path
  holds the previous complete store, an incomplete one that does not open
  (no root ``zarr.json``) and that ``<path>.partial`` marks as dask-emk's for
  the next run to remove, or the new complete store.
- ``<path>.lock`` is an object (the same JSON as a lock file, plus a token)
  created by a conditional put (``If-None-Match: *``, honoured by AWS S3,
  MinIO and moto), so of two runs starting together one refuses. Nothing
  releases it when a run is killed: a lock left by a process that no longer
  runs on this host is taken over; one from another host is reported, for
  the user to remove once no run is active there. The run reads its lock back
  after creating it and refuses if it holds another run's token; on a store
  that ignores conditional puts that check is all there is, so two runs
  starting within the same instant may both proceed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import shutil
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

import zarr

from dask_emk._version import __version__
from dask_emk.engine.locations import (
    READ_ONLY_SCHEMES,
    bucket_of,
    check_reachable,
    filesystem,
    is_url,
    location_exists,
    normalize_location,
    open_store,
    read_location,
    remote_errors,
    url_scheme,
)

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
_LOCK, _PARTIAL = "lock", "partial"
_MAGIC = {CHECKPOINT: CHECKPOINT_MAGIC, _LOCK: LOCK_MAGIC, _PARTIAL: PARTIAL_MAGIC}
DESCRIPTIONS = {
    RESULTS: "dask-emk results store",
    GENERATED: "data store written by dask-emk generate",
    CHECKPOINT: "dask-emk checkpoint",
    PLOT: "plot written by dask-emk",
    _LOCK: "dask-emk lock file",
    _PARTIAL: "dask-emk note of a store being built",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


# ------------------------------------------------------------------ names
def partial_path(path: str | os.PathLike) -> Path | str:
    """Where a store is built before it is moved into place.

    On an object store: the object saying the store at ``path`` is being built.
    """
    return suffixed(path, ".partial")


def moved_aside_path(path: str | os.PathLike) -> Path | str:
    """Where :func:`replace_dir` moves the previous store while replacing it."""
    return suffixed(path, ".old")


def temp_path(path: str | os.PathLike) -> Path | str:
    """Where :func:`write_file_atomically` writes a file before renaming it."""
    return suffixed(path, ".tmp")


def lock_path(path: str | os.PathLike) -> Path | str:
    """The lock file :func:`claim` holds while a run writes ``path``."""
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


def temporaries(path: str | os.PathLike, kind: str) -> list[tuple[Path | str, str]]:
    """The temporary names a writer of ``kind`` uses beside ``path``, with their kinds.

    Object stores have no ``.old`` (stores are replaced in place) and no
    ``.tmp`` (a put is atomic).
    """
    if kind in STORE_MARKERS:
        if is_url(path):
            return [(partial_path(path), _PARTIAL), (lock_path(path), _LOCK)]
        return [(partial_path(path), kind), (moved_aside_path(path), kind),
                (lock_path(path), _LOCK)]  # fmt: skip
    return [] if is_url(path) else [(temp_path(path), kind)]


# ------------------------------------------------------------ recognition
def store_marker(kind: str) -> dict:
    """The root attribute that marks a store of ``kind`` as written by dask-emk."""
    return {STORE_MARKERS[kind]: {"format": FORMAT, "version": __version__}}


def written_by_dask_emk(path: str | os.PathLike, kind: str) -> bool:
    """True if ``path`` is a complete output of ``kind`` that dask-emk wrote.

    Stores are recognised by their root attribute, checkpoints by their header
    line (never unpickled to find out), plots by their PNG text chunk.
    """
    if is_url(path):
        if kind in STORE_MARKERS:
            return _has_store_marker(path, kind)
        head = read_location(path, 4096)
        if head is None:
            return False
    elif os.path.islink(path):
        return False
    elif kind in STORE_MARKERS:
        return os.path.isdir(path) and _has_store_marker(path, kind)
    elif not os.path.isfile(path):
        return False
    else:
        head = _head(path)
    if kind == PLOT:
        return png_text(head).get("Software") == PNG_SOFTWARE
    return head.startswith(_MAGIC[kind])


def _is_own_leftover(path: str | os.PathLike, kind: str) -> bool:
    """True if a temporary of ``kind`` at ``path`` is provably dask-emk's.

    Besides complete outputs, an empty folder or file (a writer killed just
    after creating it) and a file cut short inside its header count. (On an
    object store the temporaries are the lock and ``.partial`` objects, put whole.)
    """
    if is_url(path):
        head = read_location(path, 4096)
        return head is not None and head.startswith(_MAGIC[kind])
    if os.path.islink(path):
        return False
    if kind in STORE_MARKERS:
        if not os.path.isdir(path):
            return False
        entries = os.listdir(path)
        if entries == [STAGED_ROOT]:  # killed while new_store wrote the marker
            return marked_root(kind).startswith(_head(Path(path) / STAGED_ROOT))
        return not entries or _has_store_marker(path, kind)
    if not os.path.isfile(path):
        return False
    head = _head(path)
    return not head or _MAGIC.get(kind, b"").startswith(head) or written_by_dask_emk(path, kind)


def _has_store_marker(path, kind: str) -> bool:
    try:
        attrs = zarr.open_group(store=open_store(path), mode="r").attrs
    except Exception:  # not a zarr group (zarr raises several types): not ours
        return False
    marker = attrs.get(STORE_MARKERS[kind])
    return isinstance(marker, dict) and "format" in marker


def _being_built(path, kind: str) -> bool:
    """True for an object-store path where dask-emk is building (or was building) a store."""
    return is_url(path) and kind in STORE_MARKERS and _is_own_leftover(partial_path(path), _PARTIAL)


def _head(path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


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
    if is_url(target):
        _check_url_writable(target, where)
    else:
        _check_no_link_loop(target, where)
    _check_not_an_input(target, inputs, where)
    _check_not_in_a_store(target, where)
    if location_exists(target) and not _being_built(target, kind):
        if not written_by_dask_emk(target, kind):
            raise UnsafeOutputError(
                f"{target} exists and is not a {DESCRIPTIONS[kind]}; choose another {where}, "
                "or remove it yourself."
            )
        if not replace:
            raise UnsafeOutputError(
                f"{target} already exists (a {DESCRIPTIONS[kind]}); pass {replace_hint} to "
                f"replace it, or choose another {where}."
            )
    for temp, temp_kind in temporaries(target, kind):
        if location_exists(temp) and not _is_own_leftover(temp, temp_kind):
            raise UnsafeOutputError(
                f"{temp} exists and was not written by dask-emk; remove it yourself, "
                f"or choose another {where}."
            )
    if not is_url(target):
        _check_writable(target, where)
    return target


def _check_no_link_loop(target: Path, where: str) -> None:
    """Refuse a path through a symbolic link that loops (``a -> b -> a``, ``a -> a``).

    Checked first: resolving such a path raises RuntimeError in pathlib. The
    outermost looping component is named, which is the link to fix.
    """
    for path in [*reversed(target.absolute().parents), target.absolute()]:
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                return  # missing (or not a folder): the other checks say so
            raise UnsafeOutputError(
                f"cannot write {target}: {path} is a symbolic link that loops (it leads back "
                f"to itself); fix or remove the link, or choose another {where}."
            ) from None


def _check_not_an_input(target: Path | str, inputs, where: str) -> None:
    for source in inputs:
        relation = _relation(target, normalize_location(source))
        if relation is None:
            continue
        local_file = not is_url(source) and not os.path.isdir(source)
        what = "input file" if local_file else "input store"
        raise UnsafeOutputError(
            f"{where} {target} {relation} the {what} {source}; choose another {where}."
        )


def _relation(target: Path | str, source: str) -> str | None:
    """How ``target`` lies to ``source``: 'is', 'is inside', 'contains' or None."""
    if is_url(target) != is_url(source):
        return None
    if is_url(target):
        resolved, source_resolved = PurePosixPath(target), PurePosixPath(source)
    else:
        resolved, source_resolved = target.resolve(), Path(source).resolve()
    if resolved == source_resolved:
        return "is"
    if source_resolved in resolved.parents:
        return "is inside"
    if resolved in source_resolved.parents:
        return "contains"
    return None


def _check_not_in_a_store(target: Path | str, where: str) -> None:
    """Refuse a path inside a zarr store: replacing that store later would delete it."""
    if is_url(target):
        bucket = bucket_of(target)
        parts = target[len(bucket) :].split("/")[:-1]  # "", then the prefixes
        folders = ["/".join([bucket, *parts[1:i]]) for i in range(len(parts), 0, -1)]
    else:
        folders = list(target.absolute().parents)
    for folder in folders:
        if any(location_exists(f"{folder}/{name}") for name in ("zarr.json", ".zgroup", ".zarray")):
            raise UnsafeOutputError(
                f"{where} {target} is inside the zarr store {folder}; choose another {where}."
            )


def _check_url_writable(target: str, where: str) -> None:
    """An object-store URL: a scheme that can be written, and a bucket that answers."""
    if url_scheme(target) in READ_ONLY_SCHEMES:
        raise UnsafeOutputError(
            f"{where} {target}: {url_scheme(target)}:// URLs are read-only; write to a local "
            f"path or an object store (s3://, gs://) instead."
        )
    check_reachable(target)


def _check_writable(target: Path, where: str) -> None:
    """The nearest existing folder above ``target`` must be a folder we may write in."""
    for folder in target.absolute().parents:
        if os.path.isdir(folder):
            break
        if os.path.lexists(folder):
            raise UnsafeOutputError(
                f"cannot write {target}: {folder} is a file, not a folder; choose another {where}."
            )
    effective = os.access in os.supports_effective_ids
    if not os.access(folder, os.W_OK | os.X_OK, effective_ids=effective):
        raise UnsafeOutputError(
            f"cannot write {target}: no permission to create files in {folder} (or it is "
            f"read-only); choose another {where}."
        )


# ------------------------------------------------------------------ claim
_held = threading.local()
#: Lock files this process holds. A forked child (a "processes" scheduler
#: worker) closes its copies, so an orphan of a killed run holds no lock.
_lock_fds: set[int] = set()


def _close_lock_fds_in_child() -> None:
    for fd in _lock_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()


os.register_at_fork(after_in_child=_close_lock_fds_in_child)


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
    object (see the module's docstring) and there are no folders to create.
    """
    path = output_location(path)
    if not hasattr(_held, "paths"):
        _held.paths = set()
    held, key = _held.paths, path if is_url(path) else path.absolute()
    if key in held:
        yield []
        return
    release, notes = _take_lock(path, where)
    held.add(key)
    try:
        for output, output_kind in [(path, kind), *companions]:
            notes += clean_leftovers(output, output_kind)
        yield notes
    finally:
        held.discard(key)
        release()


def _take_lock(path: Path | str, where: str) -> tuple[Callable[[], None], list[str]]:
    """Lock ``path`` (a local flock or a lock object); a function releasing it, and notes."""
    lock = lock_path(path)
    if is_url(path):
        token, notes = _lock_object(lock, path, where)
        return functools.partial(_unlock_object, lock, token), notes
    created = _make_parents(path, where)
    try:
        fd, notes = _lock(lock, path, where)
    except BaseException:
        _remove_empty(created)
        raise

    def release() -> None:
        try:
            _unlock(fd, lock)
        finally:
            _remove_empty(created)

    return release, notes


def _make_parents(path: Path, where: str) -> list[Path]:
    missing = [p for p in path.absolute().parents if not os.path.isdir(p)]
    created = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except OSError as exc:
            _remove_empty(created)
            raise UnsafeOutputError(
                f"cannot create folder {folder} ({exc.strerror}); choose another {where}."
            ) from None
        created.append(folder)
    return created


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        with contextlib.suppress(OSError):  # not empty: the run wrote there
            os.rmdir(folder)


def _lock(lock: Path, path: Path, where: str) -> tuple[int, list[str]]:
    """Take ``lock`` (an flock on a file holding JSON); the fd and notes."""
    while True:
        if os.path.lexists(lock) and not _is_own_leftover(lock, _LOCK):
            raise UnsafeOutputError(
                f"{lock} exists and is not a {DESCRIPTIONS[_LOCK]}; remove it yourself, "
                f"or choose another {where}."
            )
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise UnsafeOutputError(
                f"cannot create {lock} ({exc.strerror}); choose another {where}."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_lock(fd))
            os.close(fd)
            raise UnsafeOutputError(
                f"{path} is being written by another dask-emk run ({holder}); wait for it "
                f"to finish, or choose another {where}."
            ) from None
        if _same_file(fd, lock):
            break
        os.close(fd)  # the holder removed the file as we opened it: take the new one
    previous = _read_lock(fd)
    if previous and previous.get("host") != socket.gethostname():
        os.close(fd)
        raise UnsafeOutputError(
            f"{lock} was left by a dask-emk run on another host ({_describe(previous)}); "
            "if no run is active there, remove the lock file yourself."
        )
    info = _lock_info()
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _lock_fds.add(fd)
    taken_over = f"took over {lock} left by {_describe(previous)}, no longer running"
    return fd, [taken_over] if previous else []


def _read_lock(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
    except ValueError:  # empty, or being written
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict) -> str:
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _unlock(fd: int, lock: Path) -> None:
    try:
        if _same_file(fd, lock):
            os.unlink(lock)
    finally:
        _lock_fds.discard(fd)
        os.close(fd)


def _lock_info() -> dict:
    return {"dask_emk_lock": 1, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip


def _lock_object(lock: str, path: str, where: str) -> tuple[str, list[str]]:
    """Create the lock object ``lock`` by a conditional put; its token and notes.

    A lock left by a process that no longer runs on this host is taken over
    (once: a second failure means another run took it meanwhile).
    """
    token = uuid.uuid4().hex
    data = json.dumps({**_lock_info(), "token": token}).encode()
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
        notes = [f"took over {lock} left by {_describe(previous)}, no longer running"]
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
            f"{lock} exists and is not a {DESCRIPTIONS[_LOCK]}; remove it yourself, "
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
        return (f"{path} is being written by another dask-emk run ({_describe(info)}); wait "
                f"for it to finish, or choose another {where}.")  # fmt: skip
    return (f"{path} is locked by a dask-emk run on another host ({_describe(info)}); if no "
            f"run is active there, remove {lock} yourself, or choose another {where}.")  # fmt: skip


def _unlock_object(lock: str, token: str) -> None:
    """Remove the lock object if it is still this run's."""
    data = read_location(lock, 4096)
    if data is None or token.encode() not in data:
        return
    fs, key = filesystem(lock)
    with remote_errors(lock):
        fs.rm_file(key)


# ------------------------------------------------------- temporaries, writes
def clean_leftovers(path: str | os.PathLike, kind: str) -> list[str]:
    """Remove the temporaries an interrupted writer of ``path`` left; notes of what it did.

    A store moved aside (``<path>.old``) with nothing at ``path`` is put back:
    the run died between the two renames of :func:`replace_dir`. On an object
    store, a store that ``<path>.partial`` says was being built is removed
    unless it was completed (the run died just before removing the note).
    """
    path = normalize_location(path)
    if is_url(path):
        if _being_built(path, kind):
            if not written_by_dask_emk(path, kind):
                _delete_objects(path)
            _delete_objects(partial_path(path))
        return []
    path, notes = Path(path), []
    if kind in STORE_MARKERS:
        old = moved_aside_path(path)
        if not os.path.lexists(path) and written_by_dask_emk(old, kind):
            os.replace(old, path)
            notes.append(f"restored {path} that an interrupted run had moved aside")
    for temp, temp_kind in temporaries(path, kind):
        if temp_kind != _LOCK and os.path.lexists(temp):
            remove_leftover(temp, kind)
    return notes


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
        if fs.exists(f"{key}/zarr.json"):
            fs.rm_file(f"{key}/zarr.json")
        if fs.exists(key):
            fs.rm(key, recursive=True)


def remove_leftover(temp: Path, kind: str) -> None:
    """Delete a temporary of ``kind`` if it is provably dask-emk's, else refuse.

    A store's root ``zarr.json`` (its marker) goes last, so a deletion cut
    short still leaves a store recognisably dask-emk's.
    """
    if not _is_own_leftover(temp, kind):
        raise UnsafeOutputError(f"{temp} was not written by dask-emk; remove it yourself.")
    if kind not in STORE_MARKERS:
        os.unlink(temp)
        return
    for entry in os.scandir(temp):
        if entry.name == "zarr.json":
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(temp) / "zarr.json")
    os.rmdir(temp)


def new_store(path: str | os.PathLike, kind: str) -> Path:
    """An empty zarr 3 group at ``<path>.partial`` that carries the marker from its first write.

    The folder is made empty and its root ``zarr.json`` is written whole as
    ``zarr.json.tmp`` and renamed in, so a kill leaves an empty folder, that
    file cut short, or a marked store: each one recognisably dask-emk's
    (:func:`_is_own_leftover`). Letting zarr write it in place left a window
    where the folder held a ``zarr.json`` not yet written (a kill test hit it).
    """
    tmp = partial_path(path)
    if os.path.lexists(tmp):
        remove_leftover(tmp, kind)
    os.mkdir(tmp)
    staged = Path(tmp) / STAGED_ROOT
    staged.write_bytes(marked_root(kind))
    os.replace(staged, Path(tmp) / ROOT_METADATA)
    return tmp


#: The name the root metadata of a new local store is written under first.
STAGED_ROOT = "zarr.json.tmp"


@functools.cache
def marked_root(kind: str) -> bytes:
    """The root ``zarr.json`` of an empty group marked for ``kind``, as zarr writes it."""
    written: dict = {}
    zarr.create_group(
        store=zarr.storage.MemoryStore(written), attributes=store_marker(kind), zarr_format=3
    )
    return written[ROOT_METADATA].to_bytes()


@contextlib.contextmanager
def building_store(path: str | os.PathLike, kind: str) -> Iterator[zarr.abc.store.Store]:
    """A writable zarr store marked for ``kind``, published at ``path`` when the body ends.

    Locally it is ``<path>.partial``, renamed into place (:func:`replace_dir`).
    On an object store it is ``path`` itself: the note ``<path>.partial`` is put,
    a previous store of ours is deleted (root ``zarr.json`` first), everything is
    written except the root ``zarr.json``, which :class:`RootLastStore` holds
    back until the body has finished, and the note is removed. If the body
    raises, what it wrote stays for the next run to remove.
    """
    path = normalize_location(path)
    if not is_url(path):
        try:
            tmp = new_store(path, kind)
            yield zarr.storage.LocalStore(tmp)
        except Exception as exc:
            full = no_room(exc)
            if full is None:
                raise
            with contextlib.suppress(OSError, UnsafeOutputError):  # else the next run does
                remove_leftover(partial_path(path), kind)  # give the room back at once
            raise no_room_error(path, full) from None
        replace_dir(tmp, Path(path), kind)
        return
    if location_exists(path) and not _being_built(path, kind):
        _refuse_foreign(path, kind)
    note = json.dumps({"dask_emk_partial": 1, "kind": kind, "store": path}).encode()
    write_file_atomically(partial_path(path), note, _PARTIAL)
    if location_exists(path):
        _delete_objects(path)
    store = RootLastStore(open_store(path, read_only=False))
    zarr.create_group(store=store, attributes=store_marker(kind), zarr_format=3)
    yield store
    fs, key = filesystem(path)
    with remote_errors(path):
        fs.pipe_file(f"{key}/{ROOT_METADATA}", store.held_root())
    _delete_objects(partial_path(path))


#: The object that makes a zarr 3 store open: its root group's metadata.
ROOT_METADATA = "zarr.json"


class RootLastStore(zarr.storage.WrapperStore):
    """A zarr store whose root ``zarr.json`` is held in memory, not written.

    Everything else goes to the wrapped store; reads of the root metadata see
    the held copy, so zarr and xarray write through it as usual. The held
    bytes are written last (:func:`building_store`), when the store is whole.
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


def replace_dir(src: Path, dst: Path, kind: str) -> None:
    """Move store ``src`` to ``dst``, replacing a ``dst`` of ``kind`` that dask-emk wrote.

    The old store is first moved aside, so the new one appears by one rename.
    (POSIX cannot rename a directory over a non-empty one; a kill between the
    two renames leaves the old store at ``<dst>.old``, which
    :func:`clean_leftovers` puts back.)
    """
    if os.path.lexists(dst):
        _refuse_foreign(dst, kind)
        old = moved_aside_path(dst)
        if os.path.lexists(old):
            remove_leftover(old, kind)
        os.replace(dst, old)
        os.replace(src, dst)
        remove_leftover(old, kind)
    else:
        os.replace(src, dst)


def write_file_atomically(path: str | os.PathLike, data: bytes, kind: str) -> None:
    """Write ``data`` to ``<path>.tmp``, then rename it over ``path`` (a ``kind`` file of ours).

    A kill at any moment leaves the previous file whole. On an object store
    the file is one put, which is atomic itself.
    """
    path = normalize_location(path)
    if is_url(path):
        if location_exists(path):
            _refuse_foreign(path, kind)
        fs, key = filesystem(path)
        with remote_errors(path):
            fs.pipe_file(key, data)
        return
    path = Path(path)
    tmp = temp_path(path)
    if os.path.lexists(tmp):
        remove_leftover(tmp, kind)
    if os.path.lexists(path):
        _refuse_foreign(path, kind)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        os.remove(tmp)  # ours, cut short: the previous file stays whole
        raise no_room_error(path, exc) from None
    os.replace(tmp, path)


def _refuse_foreign(path: Path, kind: str) -> None:
    if not written_by_dask_emk(path, kind):
        raise UnsafeOutputError(
            f"{path} exists and is not a {DESCRIPTIONS[kind]}; choose another path, "
            "or remove it yourself."
        )
