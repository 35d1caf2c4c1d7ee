"""Compiled loops of the sparse E-step's candidate pairs (numba): their exact
log-densities, each row's best, and the responsibility-weighted moments,
over the component-major layout of
:func:`dask_emk.core.candidate_loops.select_pairs`. Fast-math as in
:mod:`dask_emk.core.loops`.
"""

from __future__ import annotations

import numpy as np

from dask_emk.core.loops import SAFE_FAST_MATH, compiled


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


@compiled(fastmath=SAFE_FAST_MATH)
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


# ------------------------------------------- matrix blocks, a chunk of pairs at a time
# Full covariance spends d(d+1)/2 products per pair twice: the quadratic form,
# then the second moments. A pair at a time, those loops are scalar and bound
# by loads and stores; GEMMs per component need a gathered copy of the rows.
# Here each component's pairs go through in chunks of a few hundred: the
# chunk's rows are shifted into a transposed buffer, one pair a column, and
# the arithmetic runs along the columns of pairs, where it vectorises, with
# a few rows of U or of the moments at a time held in registers. The shift
# is a function without fast-math (module docstring); the arithmetic on the
# shifted copy takes ``SAFE_FAST_MATH``: only its sums are reordered, and
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


@compiled(fastmath=SAFE_FAST_MATH)
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


@compiled(fastmath=SAFE_FAST_MATH)
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
