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
    G, m_norms, index_bits, margin, Y, means, w, start, rows, N, S, moments, far
):
    """Nearest centre of each row of Y from G = Y (−2 M)ᵀ; adds to N and S.

    Rows are the block's rows ``start`` onwards; ``w``, ``rows``, ``moments``
    and ``far`` are the block's and ``margin`` the screen's (see
    :func:`lloyd_rows`). Returns (Σ w ‖y − m‖², number of non-finite rows).
    A non-finite row gets label 0, distance NaN and adds nothing.
    """
    n, K = G.shape
    d = Y.shape[1]
    low = (np.int64(1) << index_bits) - 1
    labels, dist = rows
    ysum, ysq = moments
    far_dist, far_label, far_row = far
    a, b, t, R = margin
    inertia = 0.0
    nonfinite = 0
    for i in range(n):
        yy = 0.0
        for j in range(d):
            yy += Y[i, j] * Y[i, j]
        if not np.isfinite(yy):
            nonfinite += 1
            if labels.shape[0]:
                labels[start + i] = 0
                dist[start + i] = np.nan
            continue
        # argmin as a min over int64 keys, which vectorises (a compare-and-
        # select chain over floats does not; 2x faster per row at K = 16):
        # the float64's bits mapped to a signed integer of the same order,
        # its lowest ``index_bits`` bits replaced by k. Any near-minimum
        # will do: the margin below decides whether it is proven.
        smallest = np.int64(0x7FFFFFFFFFFFFFFF)
        overflow = False
        for k in range(K):
            v = m_norms[k] + np.float64(G[i, k])
            overflow |= not np.isfinite(v)
            bits = np.float64(v).view(np.int64)
            bits ^= (bits >> 63) & np.int64(0x7FFFFFFFFFFFFFFF)  # negatives: reverse order
            smallest = min(smallest, (bits & ~low) | k)
        label = smallest & low
        ny = np.sqrt(yy)
        # Another centre whose screened value is within the margin, or a GEMM
        # overflow, means the row is rechecked with exact distances.
        threshold = m_norms[label] + np.float64(G[i, label]) + (
            a * ny + b * (ny + R) * (ny + R) + t * (1.0 + ny + R))
        close = 0
        for k in range(K):
            close += np.int64(m_norms[k] + np.float64(G[i, k]) <= threshold) * (k != label)
        if overflow or close:
            label = _recheck(Y[i], means, m_norms, G[i], label, threshold)
        wi = w[start + i] if w.shape[0] else 1.0
        dot = 0.0
        for j in range(d):
            S[label, j] += wi * Y[i, j]
            dot += Y[i, j] * means[label, j]
        N[label] += wi
        # ‖y‖² − 2 y·m + ‖m‖² from float64 values only (as precise as a float64
        # GEMM): the same bits for either dtype; ‖y − m‖² in a fixed order for
        # every row made the kernel slower than main's (benchmarks/RESULTS.md).
        squared = max(yy - 2.0 * dot + m_norms[label], 0.0)
        for j in range(ysum.shape[0]):
            ysum[j] += Y[i, j]
            ysq[j] += Y[i, j] * Y[i, j]
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


@compiled(fastmath=False)  # explicit: a callee inherits its caller's flags otherwise
def _distance(y, m):  # pragma: no cover - compiled
    """‖y − m‖² in float64, in one fixed order (no fast-math: the same bits on
    every call, whatever the caller's flags): the distance that decides a
    row's near ties. Eight partial sums in the order of numpy's pairwise sum
    of d ≤ 128 squares: ``((y - m) ** 2).sum()`` to the bit."""
    d = y.shape[0]
    full = d - d % 8
    lanes = np.zeros(8)
    for j in range(full):
        e = y[j] - m[j]
        lanes[j % 8] += e * e
    total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + (
        (lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    for j in range(full, d):
        e = y[j] - m[j]
        total += e * e
    return total


@compiled(fastmath=False)
def _recheck(y, means, m_norms, g, label, threshold):  # pragma: no cover - compiled
    """Nearest centre by :func:`_distance` among ``label`` and the centres whose
    screened value m_norms[k] + g[k] is not above ``threshold`` (all of them
    when it is inf or a value is NaN); ties go to the lowest k.
    """
    best_label = -1
    best = np.inf
    for k in range(means.shape[0]):
        if k == label or not (m_norms[k] + np.float64(g[k]) > threshold):
            acc = _distance(y, means[k])
            if best_label < 0 or acc < best:
                best, best_label = acc, k
    return best_label


@compiled(fastmath=SAFE_FAST_MATH)
def lloyd_rows(X, origin, means, margin, w, rows, N, S, moments, far, buffers):  # pragma: no cover
    """One Lloyd assignment of a block of rows, in cache-sized sub-blocks.

    Rows are shifted by ``origin`` in float64, screened by one distance GEMM
    in X's dtype per sub-block (float32 rows: a float32 GEMM, half the bytes
    and flops), and every row whose best screened centre is not ahead of
    another by ``margin`` is rechecked with exact float64 distances; so the
    label is always the nearest centre by :func:`_distance` (first on ties),
    whatever the dtype (bound: docs/NUMERICS.md, "The k-means screen").
    Distances are ‖y‖² − 2 y·m + ‖m‖² from float64 values; everything
    accumulates in float64. Outputs a caller does not need are
    passed empty and skipped.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32 or float64, C-contiguous
    origin : ndarray of shape (d,), float64
        Reference point subtracted from every row.
    means : ndarray of shape (K, d), float64
        Centres minus ``origin``.
    margin : tuple (a, b, t, R) of floats
        A row is rechecked unless every other centre's screened value exceeds
        the best's by a ‖y‖ + b (‖y‖ + R)² + t (1 + ‖y‖ + R)
        (:func:`dask_emk.core.assign.screen_margin`).
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
    buffers : tuple (Y, Ys, G) of shapes (r, d) float64, (r, d) and (r, K) in
        X's dtype; r rows make a sub-block. Ys may be Y itself (float64 X).

    Returns
    -------
    inertia : float
    nonfinite : int
    """
    n, d = X.shape
    buffer, screen, products = buffers
    sub_rows = buffer.shape[0]
    narrow = screen.ctypes.data != buffer.ctypes.data
    neg2_mt = np.ascontiguousarray((-2.0 * means.T).astype(X.dtype))
    m_norms = np.zeros(means.shape[0])
    for k in range(means.shape[0]):
        for j in range(d):
            m_norms[k] += means[k, j] * means[k, j]
    index_bits = 0
    while (1 << index_bits) < means.shape[0]:
        index_bits += 1
    inertia = 0.0
    nonfinite = 0
    for start in range(0, n, sub_rows):
        stop = min(start + sub_rows, n)
        Y, Ys = buffer[: stop - start], screen[: stop - start]
        for i in range(stop - start):
            for j in range(d):
                Y[i, j] = np.float64(X[start + i, j]) - origin[j]
            if narrow:
                for j in range(d):
                    Ys[i, j] = Y[i, j]
        G = products[: stop - start]
        np.dot(Ys, neg2_mt, G)  # into a reused buffer: a fresh one is page-faulted in
        part, bad = _assign_rows(G, m_norms, index_bits, margin, Y, means, w, start, rows, N,
                                 S, moments, far)  # fmt: skip
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
