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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import zarr

from dask_emk._version import __version__

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
_LOCK = "lock"
_MAGIC = {CHECKPOINT: CHECKPOINT_MAGIC, _LOCK: LOCK_MAGIC}
DESCRIPTIONS = {
    RESULTS: "dask-emk results store",
    GENERATED: "data store written by dask-emk generate",
    CHECKPOINT: "dask-emk checkpoint",
    PLOT: "plot written by dask-emk",
    _LOCK: "dask-emk lock file",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class UnsafeOutputError(ValueError):
    """dask-emk will not write a path; the message names it and the fix."""


# ------------------------------------------------------------------ names
def partial_path(path: str | os.PathLike) -> Path:
    """Where a store is built before it is moved into place."""
    return _suffixed(path, ".partial")


def moved_aside_path(path: str | os.PathLike) -> Path:
    """Where :func:`replace_dir` moves the previous store while replacing it."""
    return _suffixed(path, ".old")


def temp_path(path: str | os.PathLike) -> Path:
    """Where :func:`write_file_atomically` writes a file before renaming it."""
    return _suffixed(path, ".tmp")


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file :func:`claim` holds while a run writes ``path``."""
    return _suffixed(path, ".lock")


def _suffixed(path, suffix: str) -> Path:
    path = Path(path)
    return path.with_name(path.name + suffix)


def temporaries(path: str | os.PathLike, kind: str) -> list[Path]:
    """The temporary names a writer of ``kind`` uses beside ``path``."""
    if kind in STORE_MARKERS:
        return [partial_path(path), moved_aside_path(path), lock_path(path)]
    return [temp_path(path)]


# ------------------------------------------------------------ recognition
def store_marker(kind: str) -> dict:
    """The root attribute that marks a store of ``kind`` as written by dask-emk."""
    return {STORE_MARKERS[kind]: {"format": FORMAT, "version": __version__}}


def written_by_dask_emk(path: str | os.PathLike, kind: str) -> bool:
    """True if ``path`` is a complete output of ``kind`` that dask-emk wrote.

    Stores are recognised by their root attribute, checkpoints by their header
    line (never unpickled to find out), plots by their PNG text chunk.
    """
    if os.path.islink(path):
        return False
    if kind in STORE_MARKERS:
        return os.path.isdir(path) and _has_store_marker(path, kind)
    if not os.path.isfile(path):
        return False
    head = _head(path)
    if kind == PLOT:
        return png_text(head).get("Software") == PNG_SOFTWARE
    return head.startswith(_MAGIC[kind])


def _is_own_leftover(path: str | os.PathLike, kind: str) -> bool:
    """True if a temporary of ``kind`` at ``path`` is provably dask-emk's.

    Besides complete outputs, an empty folder or file (a writer killed just
    after creating it) and a file cut short inside its header count.
    """
    if os.path.islink(path):
        return False
    if kind in STORE_MARKERS:
        return os.path.isdir(path) and (not os.listdir(path) or _has_store_marker(path, kind))
    if not os.path.isfile(path):
        return False
    head = _head(path)
    return not head or _MAGIC.get(kind, b"").startswith(head) or written_by_dask_emk(path, kind)


def _has_store_marker(path, kind: str) -> bool:
    try:
        store = zarr.storage.LocalStore(path, read_only=True)
        marker = zarr.open_group(store=store, mode="r").attrs.get(STORE_MARKERS[kind])
    except Exception:  # not a zarr group (zarr raises several types): not ours
        return False
    return isinstance(marker, dict) and "format" in marker


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
) -> Path:
    """Refuse, before any work, a path dask-emk must not write; return it as a Path.

    Parameters
    ----------
    path : the output path as the user gave it
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
    raw = os.fspath(path)
    target = Path(raw)
    if not raw or target.name in ("", ".", ".."):
        raise UnsafeOutputError(
            f"{where} {raw!r} is not a path dask-emk can write; give a new name such as "
            f"{'results' if kind == RESULTS else 'data'}.zarr."
        )
    _check_not_an_input(target, inputs, where)
    _check_not_in_a_store(target, where)
    if os.path.lexists(target):
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
    for temp in temporaries(target, kind):
        temp_kind = _LOCK if temp == lock_path(target) else kind
        if os.path.lexists(temp) and not _is_own_leftover(temp, temp_kind):
            raise UnsafeOutputError(
                f"{temp} exists and was not written by dask-emk; remove it yourself, "
                f"or choose another {where}."
            )
    _check_writable(target, where)
    return target


def _check_not_an_input(target: Path, inputs, where: str) -> None:
    resolved = target.resolve()
    for source in inputs:
        source_resolved = Path(source).resolve()
        if resolved == source_resolved:
            relation = "is"
        elif source_resolved in resolved.parents:
            relation = "is inside"
        elif resolved in source_resolved.parents:
            relation = "contains"
        else:
            continue
        what = "input store" if os.path.isdir(source) else "input file"
        raise UnsafeOutputError(
            f"{where} {target} {relation} the {what} {source}; choose another {where}."
        )


def _check_not_in_a_store(target: Path, where: str) -> None:
    """Refuse a path inside a zarr store: replacing that store later would delete it."""
    for folder in target.absolute().parents:
        if any(os.path.exists(folder / name) for name in ("zarr.json", ".zgroup", ".zarray")):
            raise UnsafeOutputError(
                f"{where} {target} is inside the zarr store {folder}; choose another {where}."
            )


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
    in one thread share the outer claim.
    """
    path = Path(path)
    if not hasattr(_held, "paths"):
        _held.paths = set()
    held, key = _held.paths, path.absolute()
    if key in held:
        yield []
        return
    created = _make_parents(path, where)
    try:
        fd, notes = _lock(lock_path(path), path, where)
    except BaseException:
        _remove_empty(created)
        raise
    held.add(key)
    try:
        for output, output_kind in [(path, kind), *companions]:
            notes += clean_leftovers(output, output_kind)
        yield notes
    finally:
        held.discard(key)
        _unlock(fd, lock_path(path))
        _remove_empty(created)


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
    info = {"dask_emk_lock": 1, "pid": os.getpid(), "host": socket.gethostname()}
    info["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
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


# ------------------------------------------------------- temporaries, writes
def clean_leftovers(path: str | os.PathLike, kind: str) -> list[str]:
    """Remove the temporaries an interrupted writer of ``path`` left; notes of what it did.

    A store moved aside (``<path>.old``) with nothing at ``path`` is put back:
    the run died between the two renames of :func:`replace_dir`.
    """
    path, notes = Path(path), []
    if kind in STORE_MARKERS:
        old = moved_aside_path(path)
        if not os.path.lexists(path) and written_by_dask_emk(old, kind):
            os.replace(old, path)
            notes.append(f"restored {path} that an interrupted run had moved aside")
    for temp in temporaries(path, kind):
        if temp != lock_path(path) and os.path.lexists(temp):
            remove_leftover(temp, kind)
    return notes


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
    """An empty zarr 3 group at ``<path>.partial`` that carries the marker from its first write."""
    tmp = partial_path(path)
    if os.path.lexists(tmp):
        remove_leftover(tmp, kind)
    store = zarr.storage.LocalStore(tmp)
    zarr.create_group(store=store, attributes=store_marker(kind), zarr_format=3)
    return tmp


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

    A kill at any moment leaves the previous file whole.
    """
    path = Path(path)
    tmp = temp_path(path)
    if os.path.lexists(tmp):
        remove_leftover(tmp, kind)
    if os.path.lexists(path):
        _refuse_foreign(path, kind)
    with open(tmp, "xb") as f:
        f.write(data)
    os.replace(tmp, path)


def _refuse_foreign(path: Path, kind: str) -> None:
    if not written_by_dask_emk(path, kind):
        raise UnsafeOutputError(
            f"{path} exists and is not a {DESCRIPTIONS[kind]}; choose another path, "
            "or remove it yourself."
        )
