"""Seeding kernel: k-means|| / k-means++ candidate draws for one block."""

from __future__ import annotations

import numpy as np

from dask_emk.core.assign import farthest_order
from dask_emk.core.blocks import row_uniforms, shift_block, sub_blocks


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
    Y = shift_block(X, origin)
    yy = np.einsum("ij,ij->i", Y, Y)
    finite = np.isfinite(yy)
    nonfinite = Y.shape[0] - int(finite.sum())
    u = row_uniforms(rows, seed, max(trials.shape[0], 1))
    if nonfinite:
        X, Y, yy, u = X[finite], Y[finite], yy[finite], u[:, finite]
        weight = None if weight is None else weight[finite]
    w = np.ones(Y.shape[0]) if weight is None else weight
    D = np.ones(Y.shape[0])
    if centers.shape[0]:
        D = nearest_distance(Y, yy, centers - origin)
    if trials.shape[0]:
        T = trials - origin
        Dt = Y @ (-2.0 * T.T) + np.einsum("ij,ij->i", T, T) + yy[:, None]
        streams = np.minimum(D[:, None], np.maximum(Dt, 0.0)).T
    else:
        streams = D[None, :]
    mass = streams * w
    with np.errstate(divide="ignore", invalid="ignore"):
        keys = np.log(u) / mass if scale is None else scale * mass / u
    keys[mass <= 0] = -np.inf
    n_s, n, d = streams.shape[0], Y.shape[0], Y.shape[1]
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
    return {"nonfinite": nonfinite, "potential": mass.sum(axis=1), "key": out_key, "x": out_x}


def nearest_distance(Y: np.ndarray, yy: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Squared distance (n,) from each row of Y to its nearest row of M.

    By sub-blocks of rows: k-means|| gathers ~2K candidates a round, and the
    (n, c) distances of a whole 250k-row block took hundreds of MiB of a
    Dask worker's memory (a 512 MiB worker was killed on its third round).

    Parameters
    ----------
    Y : ndarray of shape (n, d), float64
    yy : ndarray of shape (n,), the squared norms of Y's rows
    M : ndarray of shape (c, d), c >= 1
    """
    neg2_mt = -2.0 * M.T
    m_norms = np.einsum("ij,ij->i", M, M)
    D = np.empty(Y.shape[0])
    for rows in sub_blocks(Y.shape[0], M.shape[0]):
        G = Y[rows] @ neg2_mt
        G += m_norms
        G.min(axis=1, out=D[rows])
    return np.maximum(D + yy, 0.0)
