"""Batch Hartigan kernel: single-row moves that lower the k-means cost."""

from __future__ import annotations

import numpy as np

from dask_emk.core.assign import lloyd_assign
from dask_emk.core.blocks import shift_block, squared_distances, sub_blocks


def hartigan_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    centers: np.ndarray,
    mass: np.ndarray,
    origin: np.ndarray,
    edges: np.ndarray,
) -> dict:
    """Lloyd statistics of one block and the Hartigan moves of its rows.

    A row x of weight w in cluster i (its nearest centre) moved alone to
    cluster j changes the k-means cost by

        Δ_j = N_j / (N_j + w) ‖x − m_j‖² − N_i / (N_i − w) ‖x − m_i‖²

    (exact when the centres are the means of clusters of masses N). Lloyd
    never makes these moves: N_i/(N_i − w) > 1 > N_j/(N_j + w), so Δ_j < 0 is
    possible while ‖x − m_i‖ ≤ ‖x − m_j‖. A row is a *candidate* when
    min_j Δ_j < 0, with j ≠ i over clusters of positive mass; a row alone in
    its cluster (N_i − w ≤ 0) is not moved (that would empty the cluster).
    Candidate moves are summed into gain bins, so that the caller can apply
    only the moves with the largest gains (the moves of one pass interact;
    their sum is no longer exact): bin b holds the rows whose gain −Δ is
    below ``edges[b-1]`` and at least ``edges[b]`` (``edges`` descending;
    bin 0 everything at or above ``edges[0]``, the last bin everything below
    the last edge). Distances are computed in sub-blocks: no (n, K) array of
    more than :data:`SUB_BLOCK_BYTES` is held.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    centers : ndarray of shape (K, d), float64
    mass : ndarray of shape (K,)
        N, the weight of each cluster over the whole data at ``centers``
        (from the previous pass).
    origin : ndarray of shape (d,), the fixed reference point
    edges : ndarray of shape (B − 1,), descending positive gain thresholds

    Returns
    -------
    dict with the Lloyd statistics of :func:`lloyd_assign` at ``centers``
    (``N``, ``S`` about ``origin``, ``inertia``, ``nonfinite``), ``count``
    (finite rows), and per gain bin: ``dN`` (B, K) and ``dS`` (B, K, d), the
    weight and Σ w (x − origin) the candidates bring to (+) and take from
    (−) each cluster, ``gain`` (B,) the sum of their Δ (≤ 0) and ``moved``
    (B,) their number.
    """
    X, labels, min_dist, out = lloyd_assign(X, weight, centers, origin)
    w = np.ones(X.shape[0]) if weight is None else np.asarray(weight, dtype=np.float64)
    if out["nonfinite"]:  # rows holding NaN/inf: counted, then left out of the rest
        finite = np.isfinite(min_dist)
        X, w, labels = X[finite], w[finite], labels[finite]
    K, d = centers.shape
    B = edges.shape[0] + 1
    dN, dS = np.zeros(B * K), np.zeros((B * K, d))
    gain, moved = np.zeros(B), np.zeros(B)
    M = centers - origin
    open_target = mass > 0  # an empty cluster is KMeans' relocation's business
    for sl in sub_blocks(X.shape[0], d + 2 * K):
        Y, lab, wt = shift_block(X[sl], origin), labels[sl], w[sl]
        rows = np.arange(Y.shape[0])
        D = squared_distances(Y, M)
        own = mass[lab]
        with np.errstate(divide="ignore", invalid="ignore"):
            leave = np.where(own - wt > 0, own / (own - wt), np.nan) * D[rows, lab]
            join = mass / (mass + wt[:, None]) * D
        join[:, ~open_target] = np.inf
        join[rows, lab] = np.inf
        to = join.argmin(axis=1)
        delta = join[rows, to] - leave
        cand = np.flatnonzero(delta < 0)  # NaN (alone in its cluster) is never < 0
        if cand.size == 0:
            continue
        delta, to, lab, wt, Y = delta[cand], to[cand], lab[cand], wt[cand], Y[cand]
        b = (edges[None, :] > -delta[:, None]).sum(axis=1)
        gain += np.bincount(b, weights=delta, minlength=B)
        moved += np.bincount(b, minlength=B)
        into, out_of = b * K + to, b * K + lab
        dN += np.bincount(into, weights=wt, minlength=B * K)
        dN -= np.bincount(out_of, weights=wt, minlength=B * K)
        yw = Y * wt[:, None]
        np.add.at(dS, into, yw)
        np.subtract.at(dS, out_of, yw)
    out.update(count=X.shape[0], dN=dN.reshape(B, K), dS=dS.reshape(B, K, d), gain=gain,
               moved=moved)  # fmt: skip
    return out
