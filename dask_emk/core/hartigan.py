"""Batch Hartigan moves: single-row moves that lower the k-means cost, found
per block (:func:`hartigan_stats`), and the choice among them from a pass's
sums alone (:func:`hartigan_edges`, :func:`hartigan_moves`,
:func:`moved_cost_change`, :func:`moved_centers`); the polish that runs them
is :func:`dask_emk.models.hartigan.hartigan_polish`."""

from __future__ import annotations

import numpy as np

from dask_emk.core.assign import lloyd_assign
from dask_emk.core.blocks import shift_block, squared_distances, sub_blocks

#: Hartigan polish: its moves are summed in this many gain bins per pass (the
#: pass returns HARTIGAN_BINS × K × d sums, so few), ...
HARTIGAN_BINS = 8
#: ... a factor HARTIGAN_BIN_RATIO apart, the top bin edge HARTIGAN_TOP_GAIN
#: gain units (:func:`hartigan_edges`) and the last one 4⁻⁶ of that: the
#: candidates of the benchmark sets gain about 0.4–12 units.
HARTIGAN_BIN_RATIO = 0.25
HARTIGAN_TOP_GAIN = 16.0
#: A batch of moves that leaves a cluster with less than this fraction of
#: its weight counts as emptying it (sums of weights carry rounding).
EMPTIED_FRACTION = 1e-9


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


def hartigan_edges(inertia: float, total_weight: float, n_clusters: int) -> np.ndarray:
    """Descending gain thresholds of the Hartigan pass's bins, shape (B − 1,).

    Gain unit u = (inertia / W) / (W / K): the mean cost of a row over the
    mean cluster weight, the order of the extra cost a boundary row pays for
    staying in its cluster, N_i/(N_i − w) − 1 ≈ w / N_i times its distance.
    Edges HARTIGAN_TOP_GAIN · u · ratioᵇ, b = 0 … B − 2.
    """
    unit = inertia / total_weight / (total_weight / n_clusters) if total_weight > 0 else 0.0
    return HARTIGAN_TOP_GAIN * unit * HARTIGAN_BIN_RATIO ** np.arange(HARTIGAN_BINS - 1)


def moved_cost_change(
    N: np.ndarray, S: np.ndarray, M: np.ndarray, dN: np.ndarray, dS: np.ndarray
) -> float:
    """Exact k-means cost of the partition after a batch of moves, minus the
    inertia at the centres the moves were computed at.

    With the statistics of one pass about a reference point c (``S_k`` =
    Σ w (x − c) over cluster k, centres ``M`` = m − c), the cost of a
    partition at its own means is Σ w ‖x − c‖² − Σ_k ‖S_k‖² / N_k, so the
    change needs no pass over the data:

        Σ_k −N'_k ‖S'_k / N'_k − M_k‖² − 2 dS_k · M_k + dN_k ‖M_k‖²

    with N' = N + dN, S' = S + dS (each cluster's term is its moved rows'
    Σ ±w (‖x − m_k‖² − ‖x − c‖²) less the distance of its new mean to its
    centre). Unlike the sum of the single-row gains Δ it is exact for moves
    that share clusters. The k-means cost at the moved means (every row to
    its nearest) is at most this partition cost, so a negative value
    guarantees a lower inertia, up to rounding.

    Returns +inf when the moves would empty a cluster (:data:`EMPTIED_FRACTION`).
    """
    N2 = N + dN
    if np.any((N > 0) & (N2 <= EMPTIED_FRACTION * N)):
        return np.inf
    full = N2 > 0
    mean2 = (S[full] + dS[full]) / N2[full, None]
    Mf = M[full]
    spread = N2[full] * ((mean2 - Mf) ** 2).sum(axis=1)
    cross = -2.0 * np.einsum("kd,kd->k", dS[full], Mf) + dN[full] * (Mf**2).sum(axis=1)
    return float((cross - spread).sum())


def hartigan_moves(
    N: np.ndarray,
    S: np.ndarray,
    M: np.ndarray,
    dN: np.ndarray,
    dS: np.ndarray,
    moved: np.ndarray,
) -> tuple[int, float]:
    """How many gain bins of moves to apply after a pass, and the exact cost change.

    The options are Lloyd's update alone (p = 0: the new centres are the
    means of the pass's nearest-centre clusters) and Lloyd's update plus the
    moves of the top p gain bins (largest single-row gains first); the one
    with the lowest :func:`moved_cost_change` wins (ties: fewer moves). Not
    simply all the moves: each is computed as if alone, and applied together
    their gains interact (two rows leaving one cluster, a row joining a
    cluster another row left); a prefix drops the small gains an
    interaction may undo. At a Lloyd fixed point p = 0 changes nothing, so
    a move is made only when it lowers the cost.

    Parameters
    ----------
    N, S : Lloyd statistics of the pass, about a reference point c
    M : ndarray of shape (K, d), the pass's centres minus c
    dN : ndarray of shape (B, K)
    dS : ndarray of shape (B, K, d)
    moved : ndarray of shape (B,), candidates per bin

    Returns
    -------
    p : int, bins of moves to apply (0: Lloyd's update only)
    change : float, exact cost of the chosen partition at its means minus the
        pass's inertia (≤ 0)
    """
    best, best_change = 0, moved_cost_change(N, S, M, np.zeros_like(N), np.zeros_like(S))
    for p in range(1, dN.shape[0] + 1):
        if moved[p - 1] == 0:  # the same moves as the prefix before
            continue
        change = moved_cost_change(N, S, M, dN[:p].sum(axis=0), dS[:p].sum(axis=0))
        if change < best_change:
            best, best_change = p, change
    return best, best_change


def moved_centers(
    N: np.ndarray, S: np.ndarray, M: np.ndarray, dN: np.ndarray, dS: np.ndarray
) -> np.ndarray:
    """Means (about c) of the clusters after the moves; a cluster without
    weight keeps its centre. Shape (K, d)."""
    N2 = N + dN
    out = M.copy()
    full = N2 > 0
    out[full] = (S[full] + dS[full]) / N2[full, None]
    return out
