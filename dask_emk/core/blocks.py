"""Block utilities shared by the kernels: reusable scratch buffers, the shift
by a reference point, cache-sized sub-blocks, random draws keyed by row."""

from __future__ import annotations

import math
import threading

import numpy as np


class Scratch:
    """Reusable float64 work buffers for the sub-blocks of one kernel call.

    Fresh multi-MB temporaries per sub-block are served by ``mmap`` and
    page-faulted in every time (glibc's default; Dask's nanny even lowers the
    trim threshold): that tripled the E-step's time in a single-thread
    measurement (benchmarks/RESULTS.md). Buffers taken from here
    are overwritten by the next sub-block, so nothing built on them may be
    returned.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype`` (float64 or float32;
        contents undefined)."""
        size = math.prod(shape)
        words = -(-size * np.dtype(dtype).itemsize // 8)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < words:
            buffer = self._buffers[name] = np.empty(words)
        return buffer[:words].view(dtype)[:size].reshape(shape)


_THREAD_SCRATCH = threading.local()


def thread_scratch(role: str) -> Scratch:
    """The calling thread's :class:`Scratch` for ``role``, kept between calls.

    A fresh Scratch per kernel call page-faults its buffers in again on
    every block (the kernel is called once per block): 8.6 ms of system time
    in a 53 ms full-covariance E-step of a 65,536-row block (d = 32, K = 16;
    benchmarks/RESULTS.md, session 7). Kept per thread, the buffers cost
    their peak size once per worker thread, which a call reached anyway.
    One Scratch per ``role``, so a kernel and the sub-block walk it drives
    never share a buffer; nothing built on them may outlive the call.
    """
    scratch = _THREAD_SCRATCH.__dict__.get(role)
    if scratch is None:
        scratch = _THREAD_SCRATCH.__dict__[role] = Scratch()
    return scratch


def unit_weights(n: int) -> np.ndarray:
    """Read-only ones of shape (n,): the weights of a block without ``sample_weight``,
    kept per thread (a fresh 1 MB of ones per block is page-faulted in every time)."""
    ones = _THREAD_SCRATCH.__dict__.get("ones")
    if ones is None or ones.size < n:
        ones = _THREAD_SCRATCH.__dict__["ones"] = np.ones(n)
        ones.flags.writeable = False
    return ones[:n]


def buffer(scratch: Scratch | None, name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape) if scratch is None else scratch.get(name, shape)


def shift_block(X: np.ndarray, origin: np.ndarray, scratch: Scratch | None = None) -> np.ndarray:
    """Return ``X - origin`` as a float64 array of shape (n, d)."""
    return np.subtract(X, origin, out=buffer(scratch, "Y", X.shape), dtype=np.float64)


def squared_distances(Y: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, K) between rows of Y and rows of M.

    One GEMM (‖y‖² − 2 y·m + ‖m‖²), clipped at zero against rounding.
    """
    dist = np.einsum("ij,ij->i", Y, Y)[:, None] - 2.0 * (Y @ M.T)
    dist += np.einsum("ij,ij->i", M, M)[None, :]
    np.maximum(dist, 0.0, out=dist)
    return dist


#: Rows per sub-block inside a kernel call: small enough that Φ stays in cache.
SUB_BLOCK_BYTES = 2**21


def sub_blocks(n: int, width: int, nbytes: int = SUB_BLOCK_BYTES):
    """Row slices of about ``nbytes`` of float64 each (at least one slice)."""
    step = max(64, nbytes // (8 * width))
    return [slice(s, s + step) for s in range(0, max(n, 1), step)]


#: Rows per group of the row-keyed draws (:func:`row_uniforms`): each group
#: and stream has its own Philox counter, set once per group (~1 µs) against
#: ~16 ns a draw, so a block pays next to nothing to start at any row.
ROW_GROUP = 4096


def row_uniforms(
    rows: np.ndarray, seed: int, n_streams: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Uniform draws in (0, 1], shape (n_streams, n), keyed by global row index.

    The draw of row r in stream s is a function of (``seed``, s, r) only: a
    Philox generator keyed by ``seed`` with counter (0, r // ROW_GROUP, s, 0),
    position r % ROW_GROUP in its output. So a row gets the same draw
    whatever the chunking, the scheduler, the dtype, the input type or the
    rows left out before it in its block.

    Parameters
    ----------
    rows : ndarray of shape (n,), int
        Global indices of the block's rows, ascending.
    seed : int
        Key of the generator (drawn from ``random_state``).
    n_streams : int
        Independent draws per row.
    out : ndarray of shape (n_streams, n), float64, optional
        Written and returned (a kernel's scratch buffer).
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((n_streams, rows.shape[0])) if out is None else out
    groups = rows // ROW_GROUP
    cuts = np.flatnonzero(np.diff(groups)) + 1
    bit_generator = np.random.Philox(key=seed)
    generator = np.random.Generator(bit_generator)
    state = bit_generator.state
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, rows.shape[0]], strict=True):
        if a == b:
            continue
        at = rows[a:b] - groups[a] * ROW_GROUP
        for s in range(n_streams):
            state["state"]["counter"] = np.array([0, groups[a], s, 0], dtype=np.uint64)
            state["buffer_pos"] = 4  # no draws buffered from another counter
            bit_generator.state = state
            out[s, a:b] = generator.random(int(at[-1]) + 1)[at]
    return np.subtract(1.0, out, out=out)


#: Integer per-row outputs (labels) of rows left out by ``nan_policy='omit'``;
#: float outputs hold NaN there.
LABEL_FILL = -1


def rows_without_nan(X: np.ndarray) -> np.ndarray | None:
    """Mask of the rows to keep under ``nan_policy='omit'``, or None to keep all.

    A row holding NaN is left out; a row holding ±inf is kept (also with a
    NaN), so the kernels count it as an error, as without the policy.
    """
    nan = _any_in_row(np.isnan, X)
    if not nan.any():
        return None
    return ~nan | _any_in_row(np.isinf, X)


#: Unsigned integers as wide as a row of 1, 2, 4 or 8 booleans.
_ROW_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _any_in_row(test, X: np.ndarray) -> np.ndarray:
    """Rows (n,) where the elementwise ``test`` (``np.isnan``, ...) holds for a feature.

    With 1, 2, 4 or 8 features (C order) a row's booleans are read as one
    integer, non-zero where one holds: 3x faster than the column by column
    test used otherwise for the usual few features, itself 20x faster than
    numpy's ``any(axis=1)`` over 4 columns (benchmarks/bench_gridded.py).
    """
    word = _ROW_WORDS.get(X.shape[1])
    if word is not None and X.flags.c_contiguous:
        return test(X).view(word).reshape(-1) != 0
    if X.shape[1] > 32:
        return test(X).any(axis=1)
    found = test(X[:, 0])
    for j in range(1, X.shape[1]):
        found |= test(X[:, j])
    return found


def without_nan_rows(X: np.ndarray, weight: np.ndarray | None, *per_row: np.ndarray):
    """``X``, ``weight`` and each of ``per_row`` (n,) (e.g. the rows' global
    indices) without the rows :func:`rows_without_nan` leaves out."""
    keep = rows_without_nan(X)
    if keep is None:
        return X, weight, *per_row
    # take() of row indices copies whole rows; a boolean mask went element by element (7x slower).
    rows = np.flatnonzero(keep)
    rest = (None if a is None else np.take(a, rows) for a in (weight, *per_row))
    return np.take(X, rows, axis=0), *rest
