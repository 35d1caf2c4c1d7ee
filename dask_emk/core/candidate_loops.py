"""Compiled loops of the sparse E-step's candidate selection (numba): the
bounds of every (row, component) pair and the pairs they keep, from the
bound metric's GEMM (:func:`pair_bounds`, :func:`select_pairs`), from the
log-densities of all pairs (:func:`select_exact`) or screened in cache-sized
pieces (:func:`screen_pairs`). Fast-math as in :mod:`dask_emk.core.loops`.

Candidates are laid out component-major: component k's rows are
``rows[offsets[k]:offsets[k + 1]]``, ascending. Why each bound holds:
docs/NUMERICS.md.
"""

from __future__ import annotations

import numpy as np

from dask_emk.core.loops import SAFE_FAST_MATH, compiled

#: t of the bounds' (a ± η)² ≤ (1 ± t) a² ± η² / t (any t in (0, 1)).
BOUND_T = 2.0**-26


@compiled(fastmath=SAFE_FAST_MATH)
def pair_bounds(  # pragma: no cover - compiled
    G, yy, mm, ny, nm, eta, peak, low, high, rel_err, directions, upper
):
    """Bounds on every log-density from the GEMM G = Z [Nᵀ, V] of rows Z
    and means N in the bound metric, and the metric's directions V
    (:class:`dask_emk.core.candidates.BoundMetric`).

    Each log-density lies in [peak_k − ½ high_k D_hi, peak_k − ½ low_k D_lo]
    with [D_lo, D_hi] bounds on the squared metric distance from the GEMM's
    D̂ = ‖ẑ‖² + ‖ν̂‖² − 2 G, widened by its rounding (t = BOUND_T); a component
    with directions v_c also has the upper bound
    peak_k − ½ (low2_k D_lo − Σ_c a_c (|p̂_c| + e_c)²), p̂_c = G_ic − along_c.
    Proof: docs/NUMERICS.md, "The bound metric".

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


@compiled(fastmath=SAFE_FAST_MATH)
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


@compiled(fastmath=SAFE_FAST_MATH)
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


@compiled(fastmath=SAFE_FAST_MATH)
def select_exact(log_dens, top, ny, scale, rel, margin, rows_buffer):  # pragma: no cover
    """:func:`select_pairs` from computed log-densities ℓ̂ (K, n) of all pairs,
    each within e_ik = A_i + rel |ℓ̂_ik| of the exact value, where
    A_i = scale[0] (ny_i + scale[1])² + rel scale[2].

    A pair is kept when its upper bound ℓ̂ + e reaches its row's lower bound
    top − A − rel |top| minus ``margin`` (docs/NUMERICS.md, "Exact log-densities").

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


#: Codes of the blocks of :func:`screen_features`: 'scalar', 'diagonal', 'matrix'.
BLOCK_CODES = {"scalar": 0, "diagonal": 1, "matrix": 2}


@compiled(fastmath=SAFE_FAST_MATH)
def screen_features(X, origin, code, start, phi, ny):  # pragma: no cover - compiled
    """Features Φ (as :func:`dask_emk.core.mixture.quadratic_features`)
    of rows ``start:start + m`` of X, in phi's dtype, and
    their ‖y‖.

    y = x − origin is formed in float64 and rounded once to phi's dtype
    (the rounding the float32 screen's bound counts: docs/NUMERICS.md).
    Fast-math is safe here: the shift is a single subtraction per feature,
    which reassociation cannot split.

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


@compiled(fastmath=SAFE_FAST_MATH)
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
    (:func:`dask_emk.core.candidates._screened_bounds`; docs/NUMERICS.md).

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
