"""Compiled row loops (numba): the k-means assignment, full-covariance features,
the sparse E-step's bounds and pair loops.

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
"""

from __future__ import annotations

import numpy as np

from dask_emk.core._numba import compiled

_SAFE_FAST_MATH = {"reassoc", "contract"}


@compiled(fastmath=_SAFE_FAST_MATH)
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


@compiled(fastmath=_SAFE_FAST_MATH)
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


#: t of the bounds' (a ± η)² ≤ (1 ± t) a² ± η² / t (any t in (0, 1)).
BOUND_T = 2.0**-26


@compiled(fastmath=_SAFE_FAST_MATH)
def pair_bounds(  # pragma: no cover - compiled
    G, yy, mm, ny, nm, eta, peak, low, high, rel_err, directions, upper
):
    """Bounds on every log-density from the GEMM G = Z [Nᵀ, V] of rows Z
    and means N in the bound metric, and the metric's directions V
    (:class:`dask_emk.core.mixture.BoundMetric`).

    With a = ‖ẑ − ν̂‖ (a² within e = rel_err (‖ẑ‖² + ‖ν̂‖²) of
    D̂ = ‖ẑ‖² + ‖ν̂‖² − 2 G) and the exact metric distance ‖x‖ within
    η_ik = eta (‖y_i‖ + ‖μ_k‖) of a, ‖x‖² lies in
    [D_lo, D_hi] = [(1 − t) max(D̂ − e, 0) − η² / t, (1 + t) (D̂ + e) + 2 η² / t]
    ((a ± η)² ≤ (1 ± t) a² ± η² / t, t = BOUND_T), and each log-density in
    [peak_k − ½ high_k D_hi, peak_k − ½ low_k max(D_lo, 0)].

    A component with directions v_c also has the upper bound
    peak_k − ½ (low2_k D_lo − Σ_c a_c (|p̂_c| + e_c)²) with p̂_c = G_ic − along_c:
    v_c · x is off from p̂_c by at most
    e_c = vnorm (η_ik + (d + 2) ε (‖ẑ‖ + ‖ν̂‖)) + ε |p̂_c| (the metric's
    error as above, γ_d for the GEMM's and for along_c's dot product, the
    subtraction's rounding); the few roundings of the bound itself, with
    its cancellation, are covered by subtracting 8 ε of its two terms.

    Parameters
    ----------
    G : ndarray of shape (n, K + R)
    yy, ny : ndarray of shape (n,), ‖ẑ‖² and the Euclidean ‖y‖
    mm, nm, peak, low, high : ndarray of shape (K,)
    eta, rel_err : float
    directions : tuple (starts, along, coef, low2, vnorm) of the metric
    upper : ndarray of shape (n, K), written: the upper bounds

    Returns
    -------
    lower : ndarray of shape (n,), the best lower bound of each row
    guess : ndarray of shape (n,), intp: the component of largest
        (upper + lower) bound, the likely best
    finite : bool
        False if a row is not finite or a bound overflowed (then nothing
        else is to be used).
    """
    n = G.shape[0]
    K = peak.shape[0]
    starts, along, coef, low2, vnorm = directions
    t = BOUND_T
    inv_t = 1.0 / BOUND_T  # exact: a power of two
    eps = 2.220446049250313e-16
    gamma = 0.5 * rel_err  # (d + 3) ε: at least the (d + 2) ε of the dot products
    lower = np.empty(n)
    guess = np.zeros(n, dtype=np.intp)
    sm = np.sqrt(mm)
    soft = np.array([k for k in range(K) if starts[k + 1] > starts[k]], dtype=np.intp)
    d_lo = np.empty(K)
    lo = np.empty(K)
    half_low, half_high = 0.5 * low, 0.5 * high
    # e and η at their largest over the components: looser by nothing that
    # matters, and the inner loop is then a few FMAs that vectorise.
    mm_max, nm_max = mm.max(), nm.max()
    for i in range(n):
        if not np.isfinite(yy[i]):
            return lower, guess, False
        err = rel_err * (yy[i] + mm_max)
        h = eta * (ny[i] + nm_max)
        h2 = h * h * inv_t
        a, b = yy[i] - err, yy[i] + err
        for k in range(K):
            g = mm[k] - 2.0 * G[i, k]
            d_lo[k] = max((1.0 - t) * (a + g) - h2, 0.0)
            upper[i, k] = peak[k] - half_low[k] * d_lo[k]
            lo[k] = peak[k] - half_high[k] * ((1.0 + t) * (b + g) + 2.0 * h2)
        sz = np.sqrt(yy[i])
        for k in soft:
            base = vnorm * (h + gamma * (sz + sm[k]))
            s = 0.0
            for c in range(starts[k], starts[k + 1]):
                p = abs(G[i, K + c] - along[c])
                q = p + base + eps * p
                s += coef[c] * q * q
            m = low2[k] * d_lo[k]
            m -= s + 8.0 * eps * (m + s)
            upper[i, k] = min(upper[i, k], peak[k] - 0.5 * max(m, 0.0))
        best = -np.inf
        middle = -np.inf
        choice = 0  # in a local, not stored to guess[i] at each step (25% faster)
        for k in range(K):
            best = max(best, lo[k])
            if upper[i, k] + lo[k] > middle:
                middle = upper[i, k] + lo[k]
                choice = k
        guess[i] = choice
        if not np.isfinite(best):
            return lower, guess, False
        lower[i] = best
    return lower, guess, True


@compiled()
def group_rows(labels, K):  # pragma: no cover - compiled
    """(offsets, rows) of the pairs (i, labels[i]) in the component-major
    layout of :func:`select_pairs` (rows ascending within a component)."""
    counts = np.zeros(K + 1, dtype=np.intp)
    for i in range(labels.shape[0]):
        counts[labels[i] + 1] += 1
    offsets = np.cumsum(counts)
    rows = np.empty(labels.shape[0], dtype=np.intp)
    fill = offsets[:K].copy()
    for i in range(labels.shape[0]):
        rows[fill[labels[i]]] = i
        fill[labels[i]] += 1
    return offsets, rows


#: Relative rounding allowance of the comparison in :func:`select_pairs`.
_COMPARE_SLACK = 8.0 * np.finfo(np.float64).eps


@compiled(fastmath=_SAFE_FAST_MATH)
def select_pairs(upper, floor, margin, rows_buffer):  # pragma: no cover - compiled
    """The pairs whose upper bound reaches their row's floor − margin (with a
    relative allowance for the rounding of the bounds' few operations).

    Parameters
    ----------
    upper : ndarray of shape (n, K)
    floor : ndarray of shape (n,), a lower bound on each row's best log-density
    margin : float
    rows_buffer : ndarray of shape (K, n), intp, overwritten

    Returns
    -------
    offsets : ndarray of shape (K + 1,), intp
        Component k's rows are ``rows[offsets[k]:offsets[k + 1]]``, ascending.
    rows : ndarray of shape (n_pairs,), intp
    """
    n, K = upper.shape
    counts = np.zeros(K + 1, dtype=np.intp)
    for i in range(n):
        for k in range(K):
            slack = _COMPARE_SLACK * (abs(upper[i, k]) + abs(floor[i]))
            # Written always, kept by advancing the count: no branch.
            rows_buffer[k, counts[k + 1]] = i
            counts[k + 1] += upper[i, k] + slack >= floor[i] - margin
    return _component_major(counts, rows_buffer)


@compiled(fastmath=_SAFE_FAST_MATH)
def _exact_floor(top, ny, scale, rel, margin):  # pragma: no cover - compiled
    """The least ℓ̂ a pair of a row may have and be kept by :func:`select_exact`
    (the derivation is there), for the row's ``top`` and ‖y‖ ``ny``."""
    h = ny + scale[1]
    a = scale[0] * h * h + rel * scale[2]
    t = top - rel * abs(top) - 2.0 * a - margin
    t -= _COMPARE_SLACK * (abs(t) + abs(top) + margin)
    return t / (1.0 + rel) if t >= 0 else t / (1.0 - rel)


@compiled()
def _component_major(counts, rows_buffer):  # pragma: no cover - compiled
    """(offsets, rows) of the pairs whose rows are the first counts[k + 1]
    entries of rows_buffer[k] for each component k."""
    offsets = np.cumsum(counts)
    rows = np.empty(offsets[-1], dtype=np.intp)
    for k in range(counts.shape[0] - 1):
        rows[offsets[k] : offsets[k + 1]] = rows_buffer[k, : counts[k + 1]]
    return offsets, rows


@compiled(fastmath=_SAFE_FAST_MATH)
def select_exact(log_dens, top, ny, scale, rel, margin, rows_buffer):  # pragma: no cover
    """:func:`select_pairs` from computed log-densities ℓ̂ (K, n) of all pairs,
    each within e_ik = A_i + rel |ℓ̂_ik| of the exact value, where
    A_i = scale[0] (ny_i + scale[1])² + rel scale[2].

    A pair is kept when its upper bound ℓ̂ + e reaches its row's lower bound
    top − A − rel |top| minus ``margin``: ℓ̂ + rel |ℓ̂| ≥ t_i, i.e. ℓ̂ at
    least t_i / (1 + rel) or t_i / (1 − rel) by the sign of t_i (the left
    side increases with ℓ̂); a relative allowance covers these few roundings.

    Parameters
    ----------
    log_dens : ndarray of shape (K, n)
    top : ndarray of shape (n,), finite: max_k ℓ̂_ik
    ny : ndarray of shape (n,), ‖y‖
    scale : ndarray of shape (3,): the largest (q + 2d + 8) ε tr P_k, the
        largest ‖μ_k‖, the largest finite |peak_k|
    rel, margin : float
    rows_buffer : ndarray of shape (K, n), intp, overwritten

    Returns
    -------
    offsets, rows : as :func:`select_pairs`
    """
    K, n = log_dens.shape
    floor = np.empty(n)
    for i in range(n):
        floor[i] = _exact_floor(top[i], ny[i], scale, rel, margin)
    counts = np.zeros(K + 1, dtype=np.intp)
    for k in range(K):
        c = 0
        buf = rows_buffer[k]
        row = log_dens[k]
        for i in range(n):
            buf[c] = i
            c += row[i] >= floor[i]
        counts[k + 1] = c
    return _component_major(counts, rows_buffer)


@compiled()
def gather_pairs(log_dens, offsets, rows, out):  # pragma: no cover - compiled
    """out[p] = log_dens[k, rows[p]] over the pairs p of each component k."""
    for k in range(offsets.shape[0] - 1):
        for p in range(offsets[k], offsets[k + 1]):
            out[p] = log_dens[k, rows[p]]


@compiled()
def pair_top(offsets, rows, log_dens, n):  # pragma: no cover - compiled
    """Each row's largest log-density over its candidate pairs (layout of
    :func:`select_pairs`) and its component, lowest on ties (as argmax).

    Returns
    -------
    top : ndarray of shape (n,)
    label : ndarray of shape (n,), intp
    """
    top = np.full(n, -np.inf)
    label = np.zeros(n, dtype=np.intp)
    for k in range(offsets.shape[0] - 1):
        for p in range(offsets[k], offsets[k + 1]):
            i = rows[p]
            if log_dens[p] > top[i]:
                top[i] = log_dens[p]
                label[i] = k
    return top, label


@compiled(fastmath=_SAFE_FAST_MATH)
def _weighted_distance(y, m, prec):  # pragma: no cover - compiled
    """Σ_j prec_j (y_j − m_j)² (prec of length 1: prec_0 Σ_j (y_j − m_j)²).
    Fast-math lets the sum vectorise; each difference is one subtraction,
    which reassociation cannot split (the shift y = x − origin is formed
    by the caller, without fast-math)."""
    acc = 0.0
    if prec.shape[0] == 1:
        for j in range(y.shape[0]):
            diff = y[j] - m[j]
            acc += diff * diff
        return acc * prec[0]
    for j in range(y.shape[0]):
        diff = y[j] - m[j]
        acc += prec[j] * diff * diff
    return acc


@compiled()
def pair_log_densities(X, origin, order, component, rows, M, prec, peak, out):  # pragma: no cover
    """out[p] = peak_k − ½ Σ_j prec[k, j] (y_j − m_kj)² over the pairs p,
    y = x − origin in float64 (as ``np.subtract(X, origin, dtype=float64)``);
    ``prec`` is (K, d), or (K, 1) for one variance per component. Diagonal
    and scalar blocks only.

    Walks the pairs in the row order of :func:`row_major` (``order``,
    ``component``), so X is read once, front to back, and each row shifted
    once: component by component, the rows' gaps defeat the prefetcher."""
    d = X.shape[1]
    y = np.empty(d)
    last = -1
    for p in order:
        i, k = rows[p], component[p]
        if i != last:
            for j in range(d):
                y[j] = np.float64(X[i, j]) - origin[j]
            last = i
        out[p] = peak[k] - 0.5 * _weighted_distance(y, M[k], prec[k])


@compiled()
def row_major(offsets, rows, n):  # pragma: no cover - compiled
    """The pairs in row order: (order, component), order a permutation of the
    pairs sorted by row (stable) and component[p] the component of pair p.
    The moment loops walk Y once in this order instead of once per component
    with gaps, which the hardware prefetcher does not follow."""
    counts = np.zeros(n + 1, dtype=np.intp)
    component = np.empty(rows.shape[0], dtype=np.intp)
    for k in range(offsets.shape[0] - 1):
        for p in range(offsets[k], offsets[k + 1]):
            counts[rows[p] + 1] += 1
            component[p] = k
    start = np.cumsum(counts)
    order = np.empty(rows.shape[0], dtype=np.intp)
    for p in range(rows.shape[0]):
        order[start[rows[p]]] = p
        start[rows[p]] += 1
    return order, component


@compiled()
def pair_moments(X, origin, order, component, rows, wr, N, SY, second):  # pragma: no cover
    """Add Σ wr, Σ wr y and Σ wr y² (per feature if ``second`` is (K, d), summed
    over features if it is (K, 1)) over the pairs, y = x − origin in float64,
    in the order of :func:`row_major`. The two cases
    are separate loops, so the inner one over features vectorises."""
    d = X.shape[1]
    scalar = second.shape[1] == 1
    y = np.empty(d)
    for p in order:
        k, w = component[p], wr[p]
        x, sy, sq = X[rows[p]], SY[k], second[k]
        for j in range(d):
            y[j] = np.float64(x[j]) - origin[j]
        N[k] += w
        if scalar:
            acc = 0.0
            for j in range(d):
                sy[j] += w * y[j]
                acc += y[j] * y[j]
            sq[0] += w * acc
        else:
            for j in range(d):
                wy = w * y[j]
                sy[j] += wy
                sq[j] += wy * y[j]


@compiled()
def metric_rows(X, origin, w, Z):  # pragma: no cover - compiled
    """Z = (x − origin) ∘ w of rows X (n, d) of any float dtype, in float64
    with numpy's roundings (the shift as ``np.subtract(X, origin,
    dtype=float64)``, then the product), in one pass over X: no shifted copy.

    Returns
    -------
    zz : ndarray of shape (n,), ‖z‖²
    ny : ndarray of shape (n,), ‖x − origin‖
    """
    n, d = X.shape
    zz = np.empty(n)
    ny = np.empty(n)
    for i in range(n):
        a = 0.0
        b = 0.0
        for j in range(d):
            y = np.float64(X[i, j]) - origin[j]
            z = y * w[j]
            Z[i, j] = z
            a += z * z
            b += y * y
        zz[i] = a
        ny[i] = np.sqrt(b)
    return zz, ny


@compiled()
def merge_likely(offsets, rows, guess, position):  # pragma: no cover - compiled
    """Candidate pairs (layout of :func:`select_pairs`) reordered so that each
    component's pairs start with those of the rows it is the guess of.

    Parameters
    ----------
    offsets, rows : the candidates
    guess : ndarray of shape (n,), intp, each row's likely component
    position : ndarray of shape (n,), intp, the index of row i's likely pair

    Returns
    -------
    rows : ndarray of shape (n_pairs,), reordered within each component
    source : ndarray of shape (n_pairs,), intp: the likely pair's index, or -1
    first : ndarray of shape (K,), intp: how many of component k's pairs are likely ones
    """
    K = offsets.shape[0] - 1
    merged = np.empty_like(rows)
    source = np.empty(rows.shape[0], dtype=np.intp)
    first = np.zeros(K, dtype=np.intp)
    for k in range(K):
        c = offsets[k]
        for p in range(offsets[k], offsets[k + 1]):
            if guess[rows[p]] == k:
                merged[c] = rows[p]
                source[c] = position[rows[p]]
                c += 1
        first[k] = c - offsets[k]
        for p in range(offsets[k], offsets[k + 1]):
            if guess[rows[p]] != k:
                merged[c] = rows[p]
                source[c] = -1
                c += 1
    return merged, source, first


# ------------------------------------------- matrix blocks, a chunk of pairs at a time
# Full covariance spends d(d+1)/2 products per pair twice: the quadratic form,
# then the second moments. A pair at a time, those loops are scalar and bound
# by loads and stores; GEMMs per component need a gathered copy of the rows.
# Here each component's pairs go through in chunks of a few hundred: the
# chunk's rows are shifted into a transposed buffer, one pair a column, and
# the arithmetic runs along the columns of pairs, where it vectorises, with
# a few rows of U or of the moments at a time held in registers. The shift
# is a function without fast-math (module docstring); the arithmetic on the
# shifted copy takes ``_SAFE_FAST_MATH``: only its sums are reordered, and
# their rounding bounds (Higham's γ) hold in any order.


@compiled()
def _chunk_pairs(d):  # pragma: no cover - compiled
    """Pairs per chunk: a multiple of 8 lanes, the (d, chunk) buffer at most 64 KB."""
    return min(256, max(64, 8192 // d // 8 * 8))


@compiled(fastmath=False)
def _shifted_chunk(X, origin, mean, rows, raw, out):  # pragma: no cover - compiled
    """out[j, q] = (x_j − origin_j) − mean_j of x = X[rows[q]] in float64 (the
    two roundings of ``np.subtract(X, origin, dtype=float64) − mean``): the
    pairs as columns; ``mean`` zero gives the shifted rows.

    The rows are first copied as they are into ``raw`` (chunk, d), X's
    dtype, then shifted column by column: 2x faster than writing the
    transposed buffer straight from X.
    """
    d = X.shape[1]
    for q in range(rows.shape[0]):
        i = rows[q]
        for j in range(d):
            raw[q, j] = X[i, j]
    for j in range(d):
        shift, center = origin[j], mean[j]
        for q in range(rows.shape[0]):
            out[j, q] = (np.float64(raw[q, j]) - shift) - center


@compiled()
def _column_blocks(U):  # pragma: no cover - compiled
    """U's columns in blocks of four, (⌈d/4⌉, d, 4), zero-padded past the last
    column, and the rows each block needs, tops (⌈d/4⌉,): one past the last
    row holding a non-zero in its columns. For the upper-triangular Cholesky
    factors that skips the zeros below the diagonal without assuming them."""
    d, width = U.shape
    blocks = np.zeros(((width + 3) // 4, d, 4))
    tops = np.zeros(blocks.shape[0], dtype=np.intp)
    for c in range(width):
        for r in range(d):
            blocks[c // 4, r, c % 4] = U[r, c]
            if U[r, c] != 0.0:
                tops[c // 4] = max(tops[c // 4], r + 1)
    return blocks, tops


@compiled(fastmath=_SAFE_FAST_MATH)
def _column_norms(diffT, blocks, tops, count, Z, out):  # pragma: no cover - compiled
    """out[q] = ‖uᵀ U‖² of the first ``count`` columns u of diffT (d, chunk),
    U in the blocks of :func:`_column_blocks` (the rows past a block's top
    are zero there, so their products are left out).

    Four columns of uᵀ U at a time (work space Z, (4, chunk)) from four rows
    of diffT at a time: 16 products per four loads and stores of Z.
    """
    out[:count] = 0.0
    z0, z1, z2, z3 = Z[0], Z[1], Z[2], Z[3]
    for block in range(blocks.shape[0]):
        Ub, top = blocks[block], tops[block]
        Z[:, :count] = 0.0
        r = 0
        while r + 4 <= top:
            a0, a1, a2, a3 = diffT[r], diffT[r + 1], diffT[r + 2], diffT[r + 3]
            # In locals: loaded once, not after every store to Z.
            u00, u01, u02, u03 = Ub[r, 0], Ub[r, 1], Ub[r, 2], Ub[r, 3]
            u10, u11, u12, u13 = Ub[r + 1, 0], Ub[r + 1, 1], Ub[r + 1, 2], Ub[r + 1, 3]
            u20, u21, u22, u23 = Ub[r + 2, 0], Ub[r + 2, 1], Ub[r + 2, 2], Ub[r + 2, 3]
            u30, u31, u32, u33 = Ub[r + 3, 0], Ub[r + 3, 1], Ub[r + 3, 2], Ub[r + 3, 3]
            for q in range(count):
                x0, x1, x2, x3 = a0[q], a1[q], a2[q], a3[q]
                z0[q] += x0 * u00 + x1 * u10 + x2 * u20 + x3 * u30
                z1[q] += x0 * u01 + x1 * u11 + x2 * u21 + x3 * u31
                z2[q] += x0 * u02 + x1 * u12 + x2 * u22 + x3 * u32
                z3[q] += x0 * u03 + x1 * u13 + x2 * u23 + x3 * u33
            r += 4
        for last in range(r, top):
            a0 = diffT[last]
            u00, u01, u02, u03 = Ub[last, 0], Ub[last, 1], Ub[last, 2], Ub[last, 3]
            for q in range(count):
                x0 = a0[q]
                z0[q] += x0 * u00
                z1[q] += x0 * u01
                z2[q] += x0 * u02
                z3[q] += x0 * u03
        for q in range(count):
            out[q] += z0[q] * z0[q] + z1[q] * z1[q] + z2[q] * z2[q] + z3[q] * z3[q]


@compiled(fastmath=_SAFE_FAST_MATH)
def _outer_sums(yT, w, count, wyT, S, k, N, SY):  # pragma: no cover - compiled
    """Add Σ w to N[k], Σ w y to SY[k] and Σ w y yᵀ to the upper triangle
    (and some entries below it) of S (d, d) over the first ``count`` columns
    y of yT (d, chunk), weights w; nothing to S if it has no rows.

    wyT (d, chunk) is work space. Products as dot products along the pairs,
    a 4 × 4 block of them per sweep: 16 products per eight loads.
    """
    d = yT.shape[0]
    N[k] += w[:count].sum()
    for a in range(d):
        s = 0.0
        for q in range(count):
            wyT[a, q] = w[q] * yT[a, q]
            s += wyT[a, q]
        SY[k, a] += s
    if S.shape[0] == 0:
        return
    if d < 4:
        for a in range(d):
            for b in range(a, d):
                s = 0.0
                for q in range(count):
                    s += wyT[a, q] * yT[b, q]
                S[a, b] += s
        return
    last = d - 4  # blocks start at most here: they overlap near the end
    for a0 in range(0, d, 4):
        a = min(a0, last)
        w0, w1, w2, w3 = wyT[a], wyT[a + 1], wyT[a + 2], wyT[a + 3]
        for b0 in range(a0, d, 4):
            b = min(b0, last)
            y0, y1, y2, y3 = yT[b], yT[b + 1], yT[b + 2], yT[b + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = 0.0
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = 0.0
            for q in range(count):
                v0, v1, v2, v3 = w0[q], w1[q], w2[q], w3[q]
                e0, e1, e2, e3 = y0[q], y1[q], y2[q], y3[q]
                s00 += v0 * e0
                s01 += v0 * e1
                s02 += v0 * e2
                s03 += v0 * e3
                s10 += v1 * e0
                s11 += v1 * e1
                s12 += v1 * e2
                s13 += v1 * e3
                s20 += v2 * e0
                s21 += v2 * e1
                s22 += v2 * e2
                s23 += v2 * e3
                s30 += v3 * e0
                s31 += v3 * e1
                s32 += v3 * e2
                s33 += v3 * e3
            block = ((s00, s01, s02, s03), (s10, s11, s12, s13),
                     (s20, s21, s22, s23), (s30, s31, s32, s33))  # fmt: skip
            # Near the end the blocks overlap: each entry is added once,
            # by the block whose start is its own.
            for t in range(4):
                for u in range(4):
                    if a + t >= a0 and b + u >= b0 and b + u >= a + t:
                        S[a + t, b + u] += block[t][u]


@compiled()
def pair_log_densities_matrix(X, origin, offsets, rows, M, U, peak, out):  # pragma: no cover
    """out[p] = peak_k − ½ ‖(y − m_k) U_k‖² over the pairs p of each component
    k (layout of :func:`select_pairs`), y − m_k as :func:`_shifted_chunk`; U
    is (K, d, d), or (1, d, d) pooled (tied)."""
    d = X.shape[1]
    chunk = _chunk_pairs(d)
    diffT = np.empty((d, chunk))
    raw = np.empty((chunk, d), X.dtype)
    Z = np.empty((4, chunk))
    norms = np.empty(chunk)
    for k in range(offsets.shape[0] - 1):
        blocks, tops = _column_blocks(U[k if U.shape[0] > 1 else 0])
        for start in range(offsets[k], offsets[k + 1], chunk):
            stop = min(start + chunk, offsets[k + 1])
            _shifted_chunk(X, origin, M[k], rows[start:stop], raw, diffT)
            _column_norms(diffT, blocks, tops, stop - start, Z, norms)
            for p in range(start, stop):
                out[p] = peak[k] - 0.5 * norms[p - start]


@compiled()
def pair_moments_matrix(X, origin, offsets, rows, wr, N, SY, second):  # pragma: no cover
    """Add Σ wr, Σ wr y and the upper triangle of Σ wr y yᵀ (``np.triu_indices``
    order; ``second`` may have no columns) over the pairs of each component
    (layout of :func:`select_pairs`), y = x − origin as :func:`_shifted_chunk`."""
    d = X.shape[1]
    if second.shape[1] == 0:
        _first_moments(X, origin, offsets, rows, wr, N, SY)
        return
    chunk = _chunk_pairs(d)
    zero = np.zeros(d)
    yT = np.empty((d, chunk))
    raw = np.empty((chunk, d), X.dtype)
    wyT = np.empty((d, chunk))
    S = np.empty((d, d))
    for k in range(offsets.shape[0] - 1):
        S[...] = 0.0
        for start in range(offsets[k], offsets[k + 1], chunk):
            stop = min(start + chunk, offsets[k + 1])
            _shifted_chunk(X, origin, zero, rows[start:stop], raw, yT)
            _outer_sums(yT, wr[start:stop], stop - start, wyT, S, k, N, SY)
        c = 0
        for a in range(d):
            for b in range(a, d):
                second[k, c] += S[a, b]
                c += 1


@compiled(fastmath=False)
def _first_moments(X, origin, offsets, rows, wr, N, SY):  # pragma: no cover - compiled
    """Add Σ wr and Σ wr y only, pair by pair (the row's features in a
    vectorised update of SY[k]: no transposed chunks needed), y = x − origin
    as :func:`_shifted_chunk`."""
    d = X.shape[1]
    for k in range(offsets.shape[0] - 1):
        for p in range(offsets[k], offsets[k + 1]):
            i, w = rows[p], wr[p]
            N[k] += w
            for j in range(d):
                SY[k, j] += w * (np.float64(X[i, j]) - origin[j])


#: Codes of the blocks of :func:`screen_features`: 'scalar', 'diagonal', 'matrix'.
BLOCK_CODES = {"scalar": 0, "diagonal": 1, "matrix": 2}


@compiled(fastmath=_SAFE_FAST_MATH)
def screen_features(X, origin, code, start, phi, ny):  # pragma: no cover - compiled
    """Features Φ (as :func:`dask_emk.core.mixture.quadratic_features`)
    of rows ``start:start + m`` of X, in phi's dtype, and
    their ‖y‖.

    y = x − origin is formed in float64 and rounded once to phi's dtype
    (ỹ, relative error ≤ u + u64 + u u64); the quadratic terms are products
    of two ỹ rounded once more, or for the scalar block ‖ỹ‖² summed in
    float64 (exact products) and rounded once. Fast-math is safe here (and
    lets the sums of squares vectorise): the shift is a single subtraction
    per feature, which reassociation cannot split.

    Parameters
    ----------
    X : ndarray of shape (n, d), any float dtype
    origin : ndarray of shape (d,), float64
    code : int, :data:`BLOCK_CODES` of the covariance type's block
    start : int
    phi : ndarray of shape (m, q + d), float32 or float64, written
    ny : ndarray of shape (n,), float64; rows start:start + m written
    """
    d = X.shape[1]
    q = phi.shape[1] - d
    for r in range(phi.shape[0]):
        i = start + r
        f = phi[r]
        s = 0.0
        for j in range(d):
            y = np.float64(X[i, j]) - origin[j]
            s += y * y
            f[q + j] = y
        ny[i] = np.sqrt(s)
        if code == 0:
            t = 0.0
            for j in range(d):
                yt = np.float64(f[q + j])
                t += yt * yt
            f[0] = t
        elif code == 1:
            for j in range(d):
                f[j] = f[q + j] * f[q + j]
        else:
            c = 0
            for a in range(d):
                for b in range(a, d):
                    f[c] = f[q + a] * f[q + b]
                    c += 1


@compiled(fastmath=_SAFE_FAST_MATH)
def _select_screened(  # pragma: no cover - compiled
    G, start, bias, peak, ny, scale, rel, margin, found, kept
):
    """Rows start:start + m of :func:`screen_pairs` from G (m, K): ℓ̂ = G +
    bias (clipped at the peak, as the dense E-step), kept as
    :func:`select_exact` keeps them, A_i = scale[0] (ny_i + scale[1])² +
    rel scale[2]. Appends each kept pair's row, component and ℓ̂ to
    ``found`` (the ℓ̂ if its array is not empty) from index ``kept`` on;
    returns the new count, or -1 if a row's best is not finite."""
    m, K = G.shape
    pair_rows, pair_comps, values = found
    v = np.empty(K + 7)
    v[K:] = -np.inf
    c = kept
    for r in range(m):
        # Written to vectorise: no max() chain, whose NaN rules forbid it;
        # instead G is checked finite, then four interleaved maxima.
        bad = 0
        for k in range(K):
            g = np.float64(G[r, k])
            bad += not abs(g) < np.inf
            u = g + bias[k]
            v[k] = u if u < peak[k] else peak[k]
        if bad:
            return -1
        t0 = t1 = t2 = t3 = -np.inf
        for k in range(0, K, 4):
            t0 = v[k] if v[k] > t0 else t0
            t1 = v[k + 1] if v[k + 1] > t1 else t1
            t2 = v[k + 2] if v[k + 2] > t2 else t2
            t3 = v[k + 3] if v[k + 3] > t3 else t3
        top = max(max(t0, t1), max(t2, t3))
        if not np.isfinite(top):
            return -1
        floor = _exact_floor(top, ny[start + r], scale, rel, margin)
        # Few pairs are kept: components in groups of 8, skipping a group
        # whose largest ℓ̂ is below the floor (one vectorised test).
        for g in range(0, K, 8):
            most = v[g]
            for k in range(g + 1, g + 8):
                most = v[k] if v[k] > most else most
            if most < floor:
                continue
            for k in range(g, min(g + 8, K)):
                if v[k] >= floor:
                    pair_rows[c] = start + r
                    pair_comps[c] = k
                    if values.shape[0]:
                        values[c] = v[k]
                    c += 1
    return c


@compiled()
def screen_pairs(  # pragma: no cover - compiled
    X, origin, code, coefficients, bias, peak, bounds, margin, buffers
):
    """Candidate pairs of rows X from their log-densities ℓ̂ = Φ(y) · A + bias
    of all pairs, computed in cache-sized sub-blocks in float32 where the
    sub-block's own error bound allows it, else in float64
    (:func:`dask_emk.core.mixture._screened_bounds` proves both bounds).

    Parameters
    ----------
    X : ndarray of shape (n, d), any float dtype
    origin : ndarray of shape (d,), float64
    code : int, :data:`BLOCK_CODES`
    coefficients : tuple (A32, A64) of shape (q + d, K), C-contiguous,
        float32 (empty (0, K) when float32 is not allowed) and float64
    bias, peak : ndarray of shape (K,), float64
    bounds : tuple (scale32, scale64, rel, slack32): the :func:`select_exact`
        error scales of each precision; a sub-block goes float32 when
        scale32[0] (max ‖y‖ + scale32[1])² ≤ slack32
    margin : float
    buffers : tuple (phi32, phi64, G32, G64, ny, pair_rows, pair_comps,
        values): flat (m (q + d),) and (m K,) of each dtype for sub-blocks
        of m rows, (n,) float64, (n K,) intp twice and (n K,) float64 (or
        (0,): values not wanted)

    Returns
    -------
    offsets, rows : as :func:`select_pairs`
    log_dens : ndarray of shape (n_pairs,), float64: the pairs' ℓ̂ if values
        were wanted and no sub-block went float32, else empty
    finite : bool, False if a row's best log-density is not finite (then
        nothing else is to be used)
    """
    A32, A64 = coefficients
    scale32, scale64, rel, slack32 = bounds
    phi32, phi64, G32, G64, ny, pair_rows, pair_comps, values = buffers
    found = (pair_rows, pair_comps, values)
    n = X.shape[0]
    K = bias.shape[0]
    nf = A64.shape[0]
    m = phi64.shape[0] // nf
    kept = 0
    n32 = 0
    for start in range(0, n, m):
        stop = min(start + m, n)
        small = A32.shape[0] > 0
        if small:
            f32 = phi32[: nf * (stop - start)].reshape(stop - start, nf)
            screen_features(X, origin, code, start, f32, ny)
            most = 0.0
            for i in range(start, stop):
                most = max(most, ny[i])
            h = most + scale32[1]
            small = scale32[0] * h * h <= slack32
        if small:
            G = G32[: K * (stop - start)].reshape(stop - start, K)
            np.dot(f32, A32, G)
            kept = _select_screened(G, start, bias, peak, ny, scale32, rel, margin,
                                    found, kept)  # fmt: skip
            n32 += stop - start
        else:
            f64 = phi64[: nf * (stop - start)].reshape(stop - start, nf)
            screen_features(X, origin, code, start, f64, ny)
            G = G64[: K * (stop - start)].reshape(stop - start, K)
            np.dot(f64, A64, G)
            kept = _select_screened(G, start, bias, peak, ny, scale64, rel, margin,
                                    found, kept)  # fmt: skip
        if kept < 0:
            return np.zeros(K + 1, dtype=np.intp), np.zeros(0, dtype=np.intp), np.zeros(0), False
    # Component-major (rows ascending within a component): a counting sort.
    offsets = np.zeros(K + 1, dtype=np.intp)
    for p in range(kept):
        offsets[pair_comps[p] + 1] += 1
    offsets = np.cumsum(offsets)
    fill = offsets[:K].copy()
    rows = np.empty(kept, dtype=np.intp)
    log_dens = np.empty(kept if values.shape[0] and n32 == 0 else 0)
    for p in range(kept):
        k = pair_comps[p]
        rows[fill[k]] = pair_rows[p]
        if log_dens.shape[0]:
            log_dens[fill[k]] = values[p]
        fill[k] += 1
    return offsets, rows, log_dens, True
