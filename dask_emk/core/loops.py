"""Compiled row loops (numba): the decorator every compiled loop of the core
uses, the k-means assignment and the full-covariance features.

Why compiled: after the one GEMM of distances, numpy needs a separate pass
over the (n, K) distance matrix for every step (add the centre norms, argmin,
gather the minimum, add ‖y‖²) and another over the rows for the per-cluster
sums; one fused loop does all of it while the row is in registers, about 3x
faster than the best numpy sequence (benchmarks/RESULTS.md, k-means section).

Fast-math here is limited to reassociation and FMA contraction (what lets the
row sums vectorise): without ``nnan``/``ninf`` the NaN/inf checks survive,
and adding ``nsz`` to ``reassoc`` was seen to fold away the overflow check
(tests/test_kmeans.py covers it). Loops that shift rows by the reference
point on the fly take no fast-math at all: reassociating (x − o) − m into
x − (o + m) would cost the digits the shift is there to keep.

The sparse E-step's loops are in :mod:`dask_emk.core.candidate_loops`
(bounds and candidate selection) and :mod:`dask_emk.core.pair_loops` (the
arithmetic of the candidate pairs).
"""

from __future__ import annotations

import numpy as np

from dask_emk.core._numba import compiled

#: The fast-math flags the loops may use (module docstring).
SAFE_FAST_MATH = {"reassoc", "contract"}


@compiled(fastmath=SAFE_FAST_MATH)
def _assign_rows(  # pragma: no cover - compiled
    G, m_norms, index_bits, Y, means, w, start, rows, N, S, moments, far
):
    """Nearest centre of each row of Y from G = Y (−2 M)ᵀ; adds to N and S.

    Rows are the block's rows ``start`` onwards; ``w``, ``rows``, ``moments``
    and ``far`` are the block's (see :func:`lloyd_rows`). Returns
    (Σ w ‖y − m‖², number of non-finite rows). A non-finite row gets label 0,
    distance NaN and adds nothing.
    """
    n, K = G.shape
    d = Y.shape[1]
    low = (np.int64(1) << index_bits) - 1
    labels, dist = rows
    ysum, ysq = moments
    far_dist, far_label, far_row = far
    inertia = 0.0
    nonfinite = 0
    for i in range(n):
        yy = 0.0
        for j in range(d):
            y = np.float64(Y[i, j])
            yy += y * y
        if not np.isfinite(yy):
            nonfinite += 1
            if labels.shape[0]:
                labels[start + i] = 0
                dist[start + i] = np.nan
            continue
        # argmin as a min over int64 keys, which vectorises (a compare-and-
        # select chain over floats does not; 2x faster per row at K = 16):
        # the float64's bits mapped to a signed integer of the same order,
        # its lowest ``index_bits`` bits replaced by k, so ties go to the
        # lowest k. Values within 2^(index_bits − 52) relative count as
        # ties, far below the GEMM's own rounding.
        smallest = np.int64(0x7FFFFFFFFFFFFFFF)
        overflow = False
        for k in range(K):
            v = m_norms[k] + np.float64(G[i, k])
            overflow |= not np.isfinite(v)
            bits = np.float64(v).view(np.int64)
            bits ^= (bits >> 63) & np.int64(0x7FFFFFFFFFFFFFFF)  # negatives: reverse order
            smallest = min(smallest, (bits & ~low) | k)
        label = smallest & low
        best = m_norms[label] + G[i, label]
        if overflow:
            # The GEMM overflowed in the data's precision (|y·m| ≳ 1e38 for
            # float32) though the row is finite: redo this row in float64.
            label, squared = _nearest_exact(Y[i], means)
        else:
            squared = max(yy + best, 0.0)
        wi = w[start + i] if w.shape[0] else 1.0
        for j in range(d):
            S[label, j] += wi * np.float64(Y[i, j])
        N[label] += wi
        for j in range(ysum.shape[0]):
            y = np.float64(Y[i, j])
            ysum[j] += y
            ysq[j] += y * y
        if labels.shape[0]:
            labels[start + i] = label
            dist[start + i] = squared
        if far_dist.shape[0] and squared >= far_dist[0]:
            _keep_far(far_dist, far_label, far_row, squared, label, start + i)
        inertia += wi * squared
    return inertia, nonfinite


@compiled()
def _keep_far(far_dist, far_label, far_row, squared, label, row):  # pragma: no cover
    """Insert a row into the m farthest, kept ascending by (distance, row).

    Rows arrive in order, so the new row ranks above every kept row of equal
    distance (later rows first among ties, as
    :func:`dask_emk.core.assign.farthest_order`); it evicts the lowest entry,
    which the caller checked it does not rank below. One comparison per row instead of an
    ``argpartition`` over the block's distances.
    """
    p = 0
    while p + 1 < far_dist.shape[0] and far_dist[p + 1] <= squared:
        far_dist[p], far_label[p], far_row[p] = far_dist[p + 1], far_label[p + 1], far_row[p + 1]
        p += 1
    far_dist[p], far_label[p], far_row[p] = squared, label, row


@compiled()
def _nearest_exact(y, means):  # pragma: no cover - compiled
    label = 0
    best = np.inf
    for k in range(means.shape[0]):
        acc = 0.0
        for j in range(means.shape[1]):
            diff = np.float64(y[j]) - means[k, j]
            acc += diff * diff
        if acc < best:
            best = acc
            label = k
    return label, best


@compiled(fastmath=SAFE_FAST_MATH)
def lloyd_rows(X, origin, means, w, rows, N, S, moments, far, sub_rows):  # pragma: no cover
    """One Lloyd assignment of a block of rows, in cache-sized sub-blocks.

    Rows are shifted by ``origin`` in the data's own dtype (exact when rows
    lie near the centre: Sterbenz), the distances come from one GEMM in that
    dtype per sub-block, and everything accumulates in float64. Outputs a
    caller does not need are passed empty and skipped.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32 or float64, C-contiguous
    origin : ndarray of shape (d,), X's dtype
        Reference point subtracted from every row.
    means : ndarray of shape (K, d), float64
        Centres minus ``origin``.
    w : ndarray of shape (n,) float64, or (0,) for unit weights
    rows : tuple (labels, dist), each of shape (n,) or both (0,), written:
        labels (intp) and ‖y − m‖² (float64, NaN if non-finite) per row
    N : ndarray of shape (K,), float64, added to: Σ w per cluster
    S : ndarray of shape (K, d), float64, added to: Σ w y per cluster
    moments : tuple (ysum, ysq) of shape (d,) or both (0,), float64, added
        to: the unweighted Σ y and Σ y² of the finite rows
    far : tuple (far_dist, far_label, far_row) of shape (m,), float64 /
        intp / intp, initially -inf / -1 / -1: the m finite rows farthest
        from their centre, kept ascending by (distance, row); m may be 0
    sub_rows : int

    Returns
    -------
    inertia : float
    nonfinite : int
    """
    n, d = X.shape
    neg2_mt = np.ascontiguousarray((-2.0 * means.T).astype(X.dtype))
    m_norms = np.zeros(means.shape[0])
    for k in range(means.shape[0]):
        for j in range(d):
            m_norms[k] += means[k, j] * means[k, j]
    index_bits = 0
    while (1 << index_bits) < means.shape[0]:
        index_bits += 1
    buffer = np.empty((max(min(sub_rows, n), 1), d), X.dtype)
    products = np.empty((buffer.shape[0], means.shape[0]), X.dtype)
    inertia = 0.0
    nonfinite = 0
    for start in range(0, n, sub_rows):
        stop = min(start + sub_rows, n)
        Y = buffer[: stop - start]
        for i in range(stop - start):
            for j in range(d):
                Y[i, j] = X[start + i, j] - origin[j]
        G = products[: stop - start]
        np.dot(Y, neg2_mt, G)  # into a reused buffer: a fresh one is page-faulted in
        part, bad = _assign_rows(G, m_norms, index_bits, Y, means, w, start, rows, N, S,
                                 moments, far)  # fmt: skip
        inertia += part
        nonfinite += bad
    return inertia, nonfinite


@compiled()
def upper_products(YT, out):  # pragma: no cover - compiled
    """out[c] = YT[i] * YT[j] for the pairs i ≤ j in ``np.triu_indices`` order.

    Feature-major, so every product is one contiguous vectorised row; numpy
    needs a strided write per pair, and building these features cost as
    much as a GEMM (~4x this loop).

    Parameters
    ----------
    YT : ndarray of shape (d, n), float64, the rows transposed
    out : ndarray of shape (d(d+1)/2 + ..., n), float64; rows 0..q-1 written
    """
    d, n = YT.shape
    col = 0
    for i in range(d):
        a = YT[i]
        for j in range(i, d):
            b = YT[j]
            row = out[col]
            for r in range(n):
                row[r] = a[r] * b[r]
            col += 1
