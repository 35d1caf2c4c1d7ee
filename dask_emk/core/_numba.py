"""numba for the compiled loops: the decorator, and where its disk cache lives.

numba's default cache location is the ``__pycache__`` beside the source, i.e.
inside the installed package: read-only in many installs, and left behind by
``pip uninstall`` (a leftover ``site-packages/dask_emk/`` then shadowed an
editable install, issue 26). The cache goes to a per-user folder instead,
``$XDG_CACHE_HOME/dask-emk/numba`` (default ``~/.cache/dask-emk/numba``), set
as ``NUMBA_CACHE_DIR`` before numba is imported, so that Dask worker
processes, which import this module afresh, use the same folder. A
``NUMBA_CACHE_DIR`` the user set is kept. Where the folder cannot be written
the loops are compiled in each process, with no disk cache (numba would
otherwise fall back to the package folder).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger("dask_emk")

#: The variable numba reads its cache folder from (at import, and again
#: whenever the compiler finds the NUMBA_* environment changed).
CACHE_ENV = "NUMBA_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dask-emk/numba``, else ``~/.cache/dask-emk/numba``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dask-emk" / "numba"


@functools.cache
def cache_dir() -> Path | None:
    """The folder numba caches compiled loops in, or None where none is writable.

    Sets ``NUMBA_CACHE_DIR`` (when the user has not) and numba's config, so
    that it must run before the first ``@compiled`` function is decorated.
    Logs one line when the folder cannot be written.
    """
    path = Path(os.environ.get(CACHE_ENV) or default_cache_dir())
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        logger.warning(
            "numba cache folder %s is not writable (%s): the compiled loops are compiled "
            "again in every process; set %s to a writable folder to keep them.",
            path, exc.strerror or exc, CACHE_ENV,
        )  # fmt: skip
        return None
    os.environ[CACHE_ENV] = str(path)  # the user's, or ours for the worker processes
    import numba

    # numba read the environment when it was first imported, maybe before this
    numba.config.CACHE_DIR = str(path)
    return path


#: Seconds to compile the loops a first KMeans and GaussianMixture fit use, in
#: one process on an idle machine (benchmarks/RESULTS.md, start-up section).
COMPILE_SECONDS = 7


def compiled(**options):
    """``numba.njit(nogil=True)``, cached on disk in :func:`cache_dir` where it is writable.

    ``fastmath`` is ``False`` unless given: numba compiles a loop that sets no
    flags with those of the first compiled caller that calls it, and keeps
    (and caches) that code for every later call, so its bits would depend on
    which caller ran first.

    numba raises at decoration when it finds no writable cache location; the
    loops are then compiled once per process instead (about a second). When
    the cache holds nothing for a loop's source file yet (the first run after
    an install or an upgrade), :func:`announce_compilation` logs it.
    """
    cache = cache_dir() is not None
    options.setdefault("fastmath", False)
    import numba

    def decorate(function):
        try:
            dispatcher = numba.njit(nogil=True, cache=cache, **options)(function)
        except RuntimeError:
            return numba.njit(nogil=True, **options)(function)
        if not cache or _first_run(dispatcher, function.__code__.co_filename):
            _UNCACHED.add(function.__module__)
        return dispatcher

    return decorate


def _first_run(dispatcher, source: str) -> bool:
    """Whether numba's cache folder for ``dispatcher`` holds no index newer than ``source``.

    Any loop's index counts, not only this one's: a fit uses some loops only,
    and the others would otherwise be announced in every process; an index
    older than the source is from before an upgrade. The folder is numba's own
    (``dispatcher._cache._cache_file``, not a public API): where it cannot be
    found the answer is no, so no false alarm.
    """
    index = getattr(getattr(getattr(dispatcher, "_cache", None), "_cache_file", None),
                    "_index_path", None)  # fmt: skip
    return index is not None and _no_index_since(os.path.dirname(index), source)


@functools.cache
def _no_index_since(folder: str, source: str) -> bool:
    try:
        changed = os.stat(source).st_mtime
        indexes = [e.stat().st_mtime for e in os.scandir(folder) if e.name.endswith(".nbi")]
    except OSError:
        return True
    return not any(when >= changed for when in indexes)


#: Modules of loops with nothing in the disk cache when they were decorated.
_UNCACHED: set[str] = set()


def announce_compilation() -> None:
    """Log, once per process, that the loops will be compiled, if any have no cached code.

    Called before each pass (``engine.reduction.reduce_pass``): numba
    compiles at a loop's first call, silently, in the process that calls it,
    a worker's on a cluster, whose log the user does not see; the client
    knows from the cache folder. Not at import: a command that stops on a
    bad argument before any work says nothing more than its error.
    """
    if _UNCACHED:
        _say_compiling()


@functools.cache
def _say_compiling() -> None:
    # A warning: shown under ``dask-emk -q`` and, with no logging set up, by
    # Python's last-resort handler to a library user (an INFO line would not be).
    logger.warning(
        "compiling kernels (first run only, ~%d s on 2 idle cores; cached in %s)",
        COMPILE_SECONDS, cache_dir() or "no folder: every process compiles",
    )  # fmt: skip
