"""A content fingerprint of the data, taken in the first pass a fit makes anyway.

Each block's rows (and sample weights) as read are hashed with CRC-32 (zlib
releases the GIL; ~3 GB/s, against ~1 GB/s for the k-means kernel); the
blocks' hashes are folded in block order through the tree reduction as a
polynomial hash modulo a prime below 2**31, so the sum vector carries them
exactly in float64. A block (row) of the pass gains two columns, ``(1, crc)``;
two partial results ``(kA, hA)`` then ``(kB, hB)`` fold to
``(kA + kB, hA · P**kB + hB mod M)``, an associative merge: the tree gives the
fold of all blocks in order, whatever its shape. Equal fingerprints mean the
same bytes in the same blocks with probability 1 - 1/M (~5e-10) for any change.

The hook is :func:`watch_content`: a pipeline wraps a fit in it, and the first
pass run under it (:func:`dask_emk.engine.reduction.reduce_pass`, whichever
pass that is: a scaler's, an annealing's, a fit's) also returns the
fingerprint of the rows it read, before any row is left out for NaN. The
pass's own statistics are unchanged, bit for bit.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import partial

import numpy as np

#: The modulus (the prime 2**31 - 1) and base of the fold: every value and
#: product of two stays an exact integer in float64 / Python ints.
MODULUS = 2**31 - 1
BASE = 1_000_003

#: Columns the fingerprint adds to a pass's row: block count, folded hash.
WIDTH = 2


class ContentWatch:
    """The fingerprint of the first pass run while it is active.

    Parameters
    ----------
    on_fingerprint : callable ``(int) -> None``
        Called once with the fingerprint, when the pass has computed it
        (before its statistics go back to the fit); it may raise to stop the
        fit there.

    Attributes
    ----------
    fingerprint : int or None
        Set by the first pass; None until then.
    """

    def __init__(self, on_fingerprint: Callable[[int], None]):
        self.on_fingerprint = on_fingerprint
        self.fingerprint: int | None = None
        self.armed = True

    def run(self, reduce_pass, call_block, X, weight, block_fn, size, *args, combine=None,
            drop_nan_rows=False, also=None, wrap=None, **options):  # fmt: skip
        """``reduce_pass`` of ``block_fn`` with the fingerprint columns added, then removed.

        The rows are hashed as read; the engine's ``call_block`` then runs
        ``block_fn`` on them (leaving out rows for ``drop_nan_rows`` there), so
        every kind of pass hashes the same bytes. ``wrap`` marks the wrapper
        as the engine must see it (e.g. a block function given row indices).
        """
        inner = partial(call_block, block_fn=block_fn, args=args, drop_nan_rows=drop_nan_rows)
        merge = partial(combine_fingerprinted, combine=combine, size=size)
        fn = fingerprinted_block if wrap is None else wrap(fingerprinted_block)
        out = reduce_pass(
            X, weight, fn, size + WIDTH, inner, combine=merge, also=also, drop_nan_rows=False,
            **options,
        )  # fmt: skip
        vector, values = out if also is not None else (out, None)
        self.fingerprint = int(vector[size + 1])
        self.on_fingerprint(self.fingerprint)
        vector = np.ascontiguousarray(vector[:size])
        return vector if also is None else (vector, values)


_WATCH: ContextVar[ContentWatch | None] = ContextVar("dask_emk_content_watch", default=None)


@contextlib.contextmanager
def watch_content(on_fingerprint: Callable[[int], None]) -> Iterator[ContentWatch]:
    """Fingerprint the data in the first pass run in the body (:class:`ContentWatch`)."""
    watch = ContentWatch(on_fingerprint)
    token = _WATCH.set(watch)
    try:
        yield watch
    finally:
        _WATCH.reset(token)


def take_watch() -> ContentWatch | None:
    """The active watch if no pass has answered it yet (it is then disarmed), else None."""
    watch = _WATCH.get()
    if watch is None or not watch.armed:
        return None
    watch.armed = False
    return watch


def block_fingerprint(x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """``(1, crc)`` of one block: CRC-32 of its rows' bytes, then its weights', mod M.

    Weights that are all 1 are no weights (the same fit), so they are not hashed.
    """
    crc = zlib.crc32(np.ascontiguousarray(x).view(np.uint8).reshape(-1))
    if w is not None and np.any(w != 1):
        crc = zlib.crc32(np.ascontiguousarray(w).view(np.uint8).reshape(-1), crc)
    return np.array([1.0, float(crc % MODULUS)])


def fold(rows: np.ndarray) -> np.ndarray:
    """Merge ``(count, hash)`` rows, in order, into one ``(1, 2)`` row (see the module)."""
    count, value = 0, 0
    for k, h in rows.tolist():
        value = (value * pow(BASE, int(k), MODULUS) + int(h)) % MODULUS
        count += int(k)
    return np.array([[float(count), float(value)]])


def fingerprinted_block(x, w, *rest) -> np.ndarray:
    """The pass's row of the block followed by its fingerprint columns.

    ``rest`` is ``(inner,)``, or ``(rows, inner)`` when the engine passes the
    block's row indices; the pass's row is ``inner(x, w, *rows)``.
    """
    *extra, inner = rest
    row = np.asarray(inner(x, w, *extra), dtype=np.float64).reshape(-1)
    return np.concatenate([row, block_fingerprint(x, w)])[None, :]


def combine_fingerprinted(rows: np.ndarray, combine, size: int) -> np.ndarray:
    """The pass's own ``combine`` (default: a sum) of its columns; :func:`fold` of the rest."""
    head = rows[:, :size]
    merged = head.sum(axis=0, keepdims=True) if combine is None else combine(head)
    return np.concatenate([merged, fold(rows[:, size:])], axis=1)
