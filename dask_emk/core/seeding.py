"""Seeding kernel: k-means|| / k-means++ candidate draws for one block."""

from __future__ import annotations

import numpy as np

from dask_emk.core.assign import farthest_order
from dask_emk.core.blocks import (
    Scratch,
    buffer,
    row_uniforms,
    shift_block,
    sub_blocks,
    thread_scratch,
)


def seed_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    rows: np.ndarray,
    centers: np.ndarray,
    trials: np.ndarray,
    origin: np.ndarray,
    n_keep: int,
    seed: int,
    scale: float | None = None,
) -> dict:
    """One seeding pass over a block: potentials and sampled rows.

    For each stream s (one per row of ``trials``, or one if there are none)
    the distance of a row is D_s = min(d²(x, centers), d²(x, trials[s]))
    (D = 1 when there are no centres). Rows are sampled by keys:

    * ``scale is None``: weighted sampling without replacement
      (Efraimidis–Spirakis), key = log(u) / (w D); the n_keep largest keys
      are a sample with probability ∝ w D.
    * ``scale = ℓ``: k-means|| Bernoulli sampling, key = ℓ w D / u; a row is
      taken iff key > φ (known after the pass), so the largest keys suffice.

    The uniforms u are keyed by ``seed`` and the rows' global indices
    (:func:`dask_emk.core.blocks.row_uniforms`), and D is computed in float64
    from the rows as stored: a row's key, hence the sample, does not depend
    on the chunking, the input type or float32 storage. A row of weight 0
    has no key (-inf) and is never drawn; no weights is weight 1 everywhere.
    The n × d and n × s work arrays come from the thread's scratch
    (:func:`dask_emk.core.blocks.thread_scratch`), not fresh per block.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    rows : ndarray of shape (n,), int, the rows' global indices (ascending)
    centers : ndarray of shape (c, d)
    trials : ndarray of shape (t, d)
    origin : ndarray of shape (d,)
    n_keep : int
    seed : int
    scale : float, optional

    Returns
    -------
    dict with ``nonfinite``, ``potential`` (s,) Σ w D_s, ``key`` (s, n_keep)
    descending (-inf padded) and ``x`` (s, n_keep, d) the sampled rows.
    """
    scratch = thread_scratch("seeding")
    Y = shift_block(X, origin, scratch)
    yy = np.einsum("ij,ij->i", Y, Y, out=scratch.get("yy", Y.shape[:1]))
    finite = np.isfinite(yy)
    nonfinite = Y.shape[0] - int(np.count_nonzero(finite))
    n_streams = max(trials.shape[0], 1)
    u = row_uniforms(rows, seed, n_streams, scratch.get("u", (n_streams, Y.shape[0])))
    if nonfinite:  # rare: copies, not scratch
        X, Y, yy, u = X[finite], Y[finite], yy[finite], u[:, finite]
        weight = None if weight is None else weight[finite]
    mass = _masses(Y, yy, weight, centers, trials, origin, scratch)
    keys = scratch.get("keys", mass.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale is None:
            np.divide(np.log(u, out=keys), mass, out=keys)
        else:
            np.divide(np.multiply(scale, mass, out=keys), u, out=keys)
    keys[mass <= 0] = -np.inf
    return {"nonfinite": nonfinite, "potential": mass.sum(axis=1),
            **_top_keys(keys, X, n_keep)}  # fmt: skip


def _masses(
    Y: np.ndarray, yy: np.ndarray, weight: np.ndarray | None, centers: np.ndarray,
    trials: np.ndarray, origin: np.ndarray, scratch: Scratch,
) -> np.ndarray:
    """w D_s (s, n) of :func:`seed_stats`, in scratch.

    With trials the array is (n, s) in memory, seen transposed: the layout
    the potentials were summed in before scratch (a strided sum adds in
    another order than a contiguous one), so they keep their last bits.
    """
    n = Y.shape[0]
    if centers.shape[0]:
        D = nearest_distance(Y, yy, centers - origin, scratch)
    else:
        D = scratch.get("D", (n,))
        D.fill(1.0)
    if trials.shape[0]:
        T = trials - origin
        Dt = np.matmul(Y, -2.0 * T.T, out=scratch.get("Dt", (n, T.shape[0])))
        Dt += np.einsum("ij,ij->i", T, T)
        Dt += yy[:, None]
        np.maximum(Dt, 0.0, out=Dt)
        streams = np.minimum(D[:, None], Dt, out=Dt).T
    else:
        streams = D[None, :]
    if weight is None:  # weight 1: D itself, as D × 1 is
        return streams
    out = scratch.get("mass", streams.shape[::-1]).T
    return np.multiply(streams, weight, out=out)


def _top_keys(keys: np.ndarray, X: np.ndarray, n_keep: int) -> dict:
    """The n_keep largest ``key`` (s, n_keep) per stream, descending (-inf padded),
    and their rows ``x`` (s, n_keep, d)."""
    n_s, n, d = keys.shape[0], X.shape[0], X.shape[1]
    out_key = np.full((n_s, n_keep), -np.inf)
    out_x = np.zeros((n_s, n_keep, d))
    for s in range(n_s):
        if n > n_keep:
            keep = np.argpartition(keys[s], n - n_keep)[n - n_keep :] if n_keep else keys[s, :0]
        else:
            keep = np.arange(n)
        keep = keep.astype(np.intp)
        keep = keep[farthest_order(keys[s, keep])]
        out_key[s, : keep.shape[0]] = keys[s, keep]
        out_x[s, : keep.shape[0]] = X[keep]
    return {"key": out_key, "x": out_x}


def nearest_distance(
    Y: np.ndarray, yy: np.ndarray, M: np.ndarray, scratch: Scratch | None = None
) -> np.ndarray:
    """Squared distance (n,) from each row of Y to its nearest row of M.

    By sub-blocks of rows: k-means|| gathers ~2K candidates a round, and the
    (n, c) distances of a whole 250k-row block took hundreds of MiB of a
    Dask worker's memory (a 512 MiB worker was killed on its third round).
    With ``scratch`` the sub-block products and the result are its buffers
    ``G`` and ``D`` (the result is overwritten by the next call).

    Parameters
    ----------
    Y : ndarray of shape (n, d), float64
    yy : ndarray of shape (n,), the squared norms of Y's rows
    M : ndarray of shape (c, d), c >= 1
    scratch : Scratch, optional
    """
    neg2_mt = -2.0 * M.T
    m_norms = np.einsum("ij,ij->i", M, M)
    D = buffer(scratch, "D", (Y.shape[0],))
    for rows in sub_blocks(Y.shape[0], M.shape[0]):
        part = Y[rows]
        G = np.matmul(part, neg2_mt, out=buffer(scratch, "G", (part.shape[0], M.shape[0])))
        G += m_norms
        G.min(axis=1, out=D[rows])
    D += yy
    return np.maximum(D, 0.0, out=D)
