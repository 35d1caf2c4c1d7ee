"""The local file-system backend: flock, rename, and folders moved aside.

- A file (checkpoint, plot) is written to ``<path>.tmp`` and renamed over
  ``path``: a kill at any moment leaves the previous file whole.
- A store is built in ``<path>.partial`` (its root ``zarr.json`` written first,
  whole, so the folder is recognisably dask-emk's from the start) and renamed
  into place; a previous store is first moved aside to ``<path>.old`` (POSIX
  cannot rename a folder over a non-empty one), which the next run puts back
  if it was killed between the two renames.
- ``<path>.lock`` (JSON: pid, host, start time) is held with ``flock``, which
  the kernel releases when its process dies: a lock left by a dead process is
  taken over; one holding another host's JSON is reported. ``flock`` is POSIX:
  :mod:`fcntl` is imported when a lock is taken, so the CLI still imports (and
  reads, checks, fits in memory) where it is missing, and a run that writes
  says that it needs a POSIX system there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import zarr

from dask_emk.engine.locations import normalize_location
from dask_emk.pipeline.outputs.markers import (
    DESCRIPTIONS,
    LOCK,
    MAGIC,
    NO_ROOM,
    ROOT_METADATA,
    STAGED_ROOT,
    STORE_MARKERS,
    UnsafeOutputError,
    carries_marker,
    describe_holder,
    foreign_error,
    has_store_marker,
    lock_info,
    lock_path,
    marked_root,
    moved_aside_path,
    no_room,
    no_room_error,
    partial_path,
    taken_over,
    temp_path,
)


class LocalFiles:
    """Outputs on a local file system (see the module's docstring)."""

    # -------------------------------------------------------------- reading
    def exists(self, path) -> bool:
        return os.path.lexists(path)

    def read_head(self, path, size: int = 4096) -> bytes | None:
        """The first bytes of a regular file (b"" if unreadable); None for anything else."""
        if os.path.islink(path) or not os.path.isfile(path):
            return None
        return _head(path, size)

    def is_marked_store(self, path, kind: str) -> bool:
        return not os.path.islink(path) and os.path.isdir(path) and has_store_marker(path, kind)

    def is_own_leftover(self, path, kind: str) -> bool:
        """True if a temporary of ``kind`` at ``path`` is provably dask-emk's: a complete
        output, an empty folder or file (a writer killed just after creating it), or a
        file cut short inside its header."""
        if os.path.islink(path):
            return False
        if kind in STORE_MARKERS:
            if not os.path.isdir(path):
                return False
            entries = os.listdir(path)
            if entries == [STAGED_ROOT]:  # killed while new_store wrote the marker
                return marked_root(kind).startswith(_head(Path(path) / STAGED_ROOT))
            return not entries or has_store_marker(path, kind)
        head = self.read_head(path)
        if head is None:
            return False
        return not head or MAGIC.get(kind, b"").startswith(head) or carries_marker(head, kind)

    def being_built(self, path, kind: str) -> bool:
        return False  # a local store is built beside its path, never at it

    def temporaries(self, path, kind: str) -> list[tuple[Path | str, str]]:
        """The temporary names a writer of ``kind`` uses beside ``path``, with their kinds."""
        if kind in STORE_MARKERS:
            return [(partial_path(path), kind), (moved_aside_path(path), kind),
                    (lock_path(path), LOCK)]  # fmt: skip
        return [(temp_path(path), kind)]

    # --------------------------------------------------------------- checks
    def check_reachable(self, target: Path, where: str) -> None:
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
                    f"cannot write {target}: {path} is a symbolic link that loops (it leads "
                    f"back to itself); fix or remove the link, or choose another {where}."
                ) from None

    def check_writable(self, target: Path, where: str) -> None:
        """The nearest existing folder above ``target`` must be a folder we may write in."""
        for folder in target.absolute().parents:
            if os.path.isdir(folder):
                break
            if os.path.lexists(folder):
                raise UnsafeOutputError(
                    f"cannot write {target}: {folder} is a file, not a folder; choose "
                    f"another {where}."
                )
        effective = os.access in os.supports_effective_ids
        if not os.access(folder, os.W_OK | os.X_OK, effective_ids=effective):
            raise UnsafeOutputError(
                f"cannot write {target}: no permission to create files in {folder} (or it is "
                f"read-only); choose another {where}."
            )

    def resolved(self, path) -> Path:
        """``path`` with links followed, to compare it with the inputs."""
        return Path(path).resolve()

    def folders_above(self, target: Path) -> list[Path]:
        return list(target.absolute().parents)

    def key(self, path: Path) -> Path:
        """What identifies ``path`` among the claims a thread holds."""
        return path.absolute()

    # ---------------------------------------------------------------- writes
    def lock(self, path: Path, where: str) -> tuple[Callable[[], None], list[str]]:
        """Create the missing parent folders and flock ``<path>.lock``; a function
        releasing both, and notes of a lock taken over."""
        lock = lock_path(path)
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

    def clean_leftovers(self, path, kind: str) -> list[str]:
        """Put back a store moved aside with nothing at ``path`` (the run died between
        the two renames of :func:`replace_dir`) and remove the temporaries of ours."""
        path, notes = Path(path), []
        if kind in STORE_MARKERS:
            old = moved_aside_path(path)
            if not os.path.lexists(path) and self.is_marked_store(old, kind):
                os.replace(old, path)
                notes.append(f"restored {path} that an interrupted run had moved aside")
        for temp, temp_kind in self.temporaries(path, kind):
            if temp_kind != LOCK and os.path.lexists(temp):
                remove_leftover(temp, kind)
        return notes

    def write_file(self, path, data: bytes, kind: str) -> None:
        """Write ``data`` to ``<path>.tmp``, then rename it over ``path`` (a ``kind``
        file of ours). A kill at any moment leaves the previous file whole; a write
        that finds no room removes the temporary and raises :class:`NoRoomError`."""
        path = Path(path)
        tmp = temp_path(path)
        if os.path.lexists(tmp):
            remove_leftover(tmp, kind)
        if os.path.lexists(path) and not _complete(path, kind):
            raise foreign_error(path, kind)
        try:
            with open(tmp, "xb") as f:
                f.write(data)
        except OSError as exc:
            if exc.errno not in NO_ROOM:
                raise
            os.remove(tmp)  # ours, cut short: the previous file stays whole
            raise no_room_error(path, exc) from None
        os.replace(tmp, path)

    @contextlib.contextmanager
    def building_store(self, path, kind: str) -> Iterator[zarr.abc.store.Store]:
        """``<path>.partial`` as a marked store, renamed into place when the body ends.

        A body that finds no room removes it at once (else the next run does).
        """
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


def _complete(path, kind: str) -> bool:
    """Whether ``path`` is a complete output of ``kind`` that dask-emk wrote."""
    if kind in STORE_MARKERS:
        return LocalFiles().is_marked_store(path, kind)
    head = LocalFiles().read_head(path)
    return head is not None and carries_marker(head, kind)


def _head(path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


# ------------------------------------------------------------------ stores
def remove_leftover(temp: Path, kind: str) -> None:
    """Delete a temporary of ``kind`` if it is provably dask-emk's, else refuse.

    A store's root ``zarr.json`` (its marker) goes last, so a deletion cut
    short still leaves a store recognisably dask-emk's.
    """
    if not LocalFiles().is_own_leftover(temp, kind):
        raise UnsafeOutputError(f"{temp} was not written by dask-emk; remove it yourself.")
    if kind not in STORE_MARKERS:
        os.unlink(temp)
        return
    for entry in os.scandir(temp):
        if entry.name == ROOT_METADATA:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(temp) / ROOT_METADATA)
    os.rmdir(temp)


def new_store(path: str | os.PathLike, kind: str) -> Path:
    """An empty zarr 3 group at ``<path>.partial`` that carries the marker from its first write.

    The folder is made empty and its root ``zarr.json`` is written whole as
    ``zarr.json.tmp`` and renamed in, so a kill leaves an empty folder, that
    file cut short, or a marked store: each one recognisably dask-emk's
    (:meth:`LocalFiles.is_own_leftover`). Letting zarr write it in place left a
    window where the folder held a ``zarr.json`` not yet written (a kill test hit it).
    """
    tmp = partial_path(normalize_location(path))
    if os.path.lexists(tmp):
        remove_leftover(tmp, kind)
    os.mkdir(tmp)
    staged = Path(tmp) / STAGED_ROOT
    staged.write_bytes(marked_root(kind))
    os.replace(staged, Path(tmp) / ROOT_METADATA)
    return tmp


def replace_dir(src: Path, dst: Path, kind: str) -> None:
    """Move store ``src`` to ``dst``, replacing a ``dst`` of ``kind`` that dask-emk wrote.

    The old store is first moved aside, so the new one appears by one rename.
    (POSIX cannot rename a directory over a non-empty one; a kill between the
    two renames leaves the old store at ``<dst>.old``, which
    :meth:`LocalFiles.clean_leftovers` puts back.)
    """
    if os.path.lexists(dst):
        if not _complete(dst, kind):
            raise foreign_error(dst, kind)
        old = moved_aside_path(dst)
        if os.path.lexists(old):
            remove_leftover(old, kind)
        os.replace(dst, old)
        os.replace(src, dst)
        remove_leftover(old, kind)
    else:
        os.replace(src, dst)


# ------------------------------------------------------------------- locks
#: Lock files this process holds. A forked child (a "processes" scheduler
#: worker) closes its copies, so an orphan of a killed run holds no lock.
_lock_fds: set[int] = set()


def _close_lock_fds_in_child() -> None:
    for fd in _lock_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere no fork, and no flock either
    os.register_at_fork(after_in_child=_close_lock_fds_in_child)


def _flock():
    """``fcntl.flock`` and its flags; a clear error where the system has none."""
    try:
        import fcntl
    except ImportError:
        raise UnsafeOutputError(
            "dask-emk locks a local output with flock, which this system lacks (it is POSIX: "
            "Linux, macOS); write to an object store (s3://, gs://) instead, or run under "
            "WSL on Windows."
        ) from None
    return fcntl.flock, fcntl.LOCK_EX | fcntl.LOCK_NB


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
    flock, flags = _flock()
    while True:
        if os.path.lexists(lock) and not LocalFiles().is_own_leftover(lock, LOCK):
            raise UnsafeOutputError(
                f"{lock} exists and is not a {DESCRIPTIONS[LOCK]}; remove it yourself, "
                f"or choose another {where}."
            )
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise UnsafeOutputError(
                f"cannot create {lock} ({exc.strerror}); choose another {where}."
            ) from None
        try:
            flock(fd, flags)
        except BlockingIOError:
            holder = describe_holder(_read_lock(fd))
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
            f"{lock} was left by a dask-emk run on another host ({describe_holder(previous)}); "
            "if no run is active there, remove the lock file yourself."
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(lock_info()).encode(), 0)
    _lock_fds.add(fd)
    return fd, [taken_over(lock, previous)] if previous else []


def _read_lock(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
    except ValueError:  # empty, or being written
        return {}
    return info if isinstance(info, dict) else {}


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
