"""Missing values marginalised (``nan_policy='marginalize'``): per-block kernels.

A NaN entry is a missing feature of its row; the row takes part with the
features it has. Every kernel here works on one block in memory (numpy and
numba only) and returns what its complete-data counterpart in
:mod:`dask_emk.core.mixture` or :mod:`dask_emk.core.assign` returns, plus
``Nf`` where the update needs per-feature masses, so the statistics stay
additive per block and one pass makes one iteration.

Rows with no observed feature take no part in any statistic and get NaN
outputs (label :data:`LABEL_FILL`); ±inf is never a missing value but an
error (counted in ``nonfinite``).

Diagonal and scalar blocks (diag, spherical, shared). A component's density
of the observed features is the product of their one-dimensional densities,
so with Y the shifted rows with 0 in the gaps and seen the 0/1 mask of observed
entries, the E-step is one GEMM of Φ = [Y², Y, seen] (n, 3d) and its statistics
another, Rᵀ Φ = [Σ r y², Σ r y, Σ r seen]. The M-step maximises EM's bound for
the responsibilities exactly: per component and feature the mean over the
observed entries (mass ``Nf``), the variances from the same masked sums
(:func:`masked_estimate`). Its σ² → 0 limit is k-means on observed
coordinates (:func:`assign_stats`).

Matrix blocks (full, tied), after Ghahramani & Jordan (1994). The observed
part is N(x_o; μ_o, Σ_oo); the M-step takes the missing part's conditional
expectation x̂_m = μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o) and adds its conditional
covariance Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om to the second moments. A block's rows are
grouped by missingness pattern and Σ_oo is factorised once per pattern and
component (:func:`pattern_coefficients`). Cost: O(P K d³) for P distinct
patterns in a block on top of O(n K d²) for its rows; when most rows of a
block have a pattern of their own (d large, many gaps), the factorisations
dominate (about d times the row work) but the result stays exact.
"""

from __future__ import annotations

import math

import numpy as np

from dask_emk.core.assign import farthest_order
from dask_emk.core.blocks import LABEL_FILL, Scratch, buffer, sub_blocks
from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.loops import compiled
from dask_emk.core.mixture import MixtureParams, mixture_sub_blocks, quadratic_features

_LOG_2PI = math.log(2.0 * math.pi)


# ------------------------------------------------------------ the rows kept
def usable_rows(X: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows that take part: at least one observed feature and no ±inf.

    Returns
    -------
    keep : ndarray of shape (n,), bool
    n_infinite : int
        Rows holding ±inf (an error under every policy).
    """
    finite = np.isfinite(X)
    infinite = np.isinf(X).any(axis=1)
    return finite.any(axis=1) & ~infinite, int(infinite.sum())


def shifted_observed(X: np.ndarray, origin: np.ndarray, scratch: Scratch | None = None):
    """(Y, seen): rows shifted by ``origin`` with 0 in the gaps, and the 0/1 mask.

    Returns
    -------
    Y : ndarray of shape (n, d), float64
    seen : ndarray of shape (n, d), float64, 1.0 where observed
    """
    Y = np.subtract(X, origin, out=buffer(scratch, "Y", X.shape), dtype=np.float64)
    missing = np.isnan(Y)
    seen = np.logical_not(missing, out=buffer(scratch, "seen", X.shape), casting="unsafe")
    Y[missing] = 0.0
    return Y, seen


def pattern_groups(seen: np.ndarray, keys: np.ndarray | None = None):
    """Rows grouped by missingness pattern.

    Parameters
    ----------
    seen : ndarray of shape (n, d), nonzero where observed
    keys : ndarray of shape (n,), int64, optional
        The observed features as bits (:func:`_shift_rows`), used for d ≤ 62.

    Returns
    -------
    order : ndarray of shape (n,), the rows sorted by pattern
    starts : ndarray of shape (P + 1,); pattern p's rows are ``order[starts[p]:starts[p + 1]]``
    """
    if keys is None or seen.shape[1] > 62:
        packed = np.packbits(seen.astype(bool), axis=1)
        keys = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
    elif seen.shape[1] <= 16:
        keys = keys.astype(np.uint16)  # numpy's stable sort is a radix sort for these
    order = np.argsort(keys, kind="stable")
    if order.size == 0:  # no rows, no pattern (an all-NaN block keeps none)
        return order, np.zeros(1, dtype=np.int64)
    ordered = keys[order]
    change = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    return order, np.concatenate([[0], change, [ordered.shape[0]]]).astype(np.int64)


# ------------------------------------------------- diagonal and scalar blocks
def feature_precisions(params: MixtureParams) -> np.ndarray:
    """Precision of each component and feature, (K, d), for non-matrix blocks."""
    K, d = params.means.shape
    prec = params.precisions_cholesky**2
    return np.broadcast_to(prec if prec.ndim == 2 else prec[:, None], (K, d))


def masked_coefficients(params: MixtureParams) -> np.ndarray:
    """A (3d, K) with log N(y_o | μ_o, Σ_oo) = Φ(y) · A[:, k] for diagonal Σ."""
    P, M = feature_precisions(params), params.shifted_means
    per_feature = 0.5 * np.log(P) - 0.5 * _LOG_2PI - 0.5 * P * M * M
    return np.concatenate([-0.5 * P, P * M, per_feature], axis=1).T


@compiled(fastmath={"contract"})
def _fill_masked_features(X_t, origin, phi_t, counts):  # pragma: no cover - compiled
    """Φᵀ = [Y², Y, seen]ᵀ (3d, n) of rows X (given as X_t = Xᵀ, (d, n)) in
    one pass (zeros in the gaps and at ±inf); ``counts`` (2, n) += observed
    and infinite entries per row.

    Feature-major, contiguous and branch-free, so the loop over rows
    vectorises (with branches, random gaps cost a mispredicted jump each).
    """
    d, n = X_t.shape
    for j in range(d):
        o = origin[j]
        for i in range(n):
            y = np.float64(X_t[j, i]) - o
            finite = y - y == 0.0  # False for NaN and ±inf
            counts[1, i] += 0.0 if finite or y != y else 1.0
            f = 1.0 if finite else 0.0
            y = y if finite else 0.0
            phi_t[j, i] = y * y
            phi_t[d + j, i] = y
            phi_t[2 * d + j, i] = f
            counts[0, i] += f


@compiled()
def _shift_rows(X, origin, Y, keys):  # pragma: no cover - compiled
    """Y = X − origin with 0 in the gaps; ``keys`` (n,) the bit mask of the
    observed features (of the first 62)."""
    n, d = X.shape
    for i in range(n):
        key = 0
        for j in range(d):
            y = np.float64(X[i, j]) - origin[j]
            finite = y - y == 0.0
            Y[i, j] = y if finite else 0.0
            if finite and j < 62:
                key |= np.int64(1) << j
        keys[i] = key


def masked_features(X: np.ndarray, origin: np.ndarray, scratch: Scratch | None = None):
    """(Φᵀ (3d, n), good (n,)): Φ = [Y², Y, seen] of rows X shifted by
    ``origin`` (module docstring); ``good`` is False for rows with no
    observed feature or with ±inf."""
    n, d = X.shape
    phi_t, counts = buffer(scratch, "phi", (3 * d, n)), np.zeros((2, n))
    X_t = np.empty((d, n), dtype=X.dtype)
    X_t[...] = X.T
    _fill_masked_features(X_t, origin, phi_t, counts)
    return phi_t, (counts[0] > 0) & (counts[1] == 0)


def _diag_sub_block(X, params: MixtureParams, scratch: Scratch | None):
    """(log p(x_o) (n,), responsibilities (K, n), Φᵀ (3d, n), good (n,),
    gaps) of non-matrix blocks; rows not ``good`` have NaN and zero
    responsibilities; ``gaps`` as :func:`_gaps`.

    The GEMM takes the 2d columns [Y², Y] only, with every feature's constant
    term; the constants of the gaps are then taken off entry by entry
    (:func:`_take_gaps`): with a fifth of the entries missing that costs far
    less than d more GEMM columns.
    """
    n, d = X.shape
    phi_t, good = masked_features(X, params.origin, scratch)
    A = masked_coefficients(params)
    weighted = np.matmul(A[: 2 * d].T, phi_t[: 2 * d], out=buffer(scratch, "w", (A.shape[1], n)))
    weighted += (params.log_weights + A[2 * d :].sum(axis=0))[:, None]
    gaps = _gaps(phi_t)
    _take_gaps(gaps, n, np.ascontiguousarray(A[2 * d :].T), weighted)
    lpn, resp = _log_normalise(weighted)
    bad = np.flatnonzero(~good)
    if bad.size:  # rows without observed features, or with ±inf
        lpn[bad], resp[:, bad] = np.nan, 0.0
    return lpn, resp, phi_t, good, gaps


@compiled()
def _take_gaps(gaps, n, per_feature, weighted):  # pragma: no cover - compiled
    """weighted[k, i] −= per_feature[k, j] for every gap j * n + i in ``gaps``."""
    for g in gaps:
        j, i = g // n, g % n
        for k in range(weighted.shape[0]):
            weighted[k, i] -= per_feature[k, j]


@compiled()
def _gap_mass(gaps, n, wr, out):  # pragma: no cover - compiled
    """out[k, j] += wr[k, i] for every gap j * n + i in ``gaps``."""
    for g in gaps:
        j, i = g // n, g % n
        for k in range(wr.shape[0]):
            out[k, j] += wr[k, i]


def _gaps(phi_t: np.ndarray) -> np.ndarray:
    """Flat indices j * n + i of the gaps in the mask rows of Φᵀ (a list, so
    the loops over them have no data-dependent branch to mispredict)."""
    d = phi_t.shape[0] // 3
    return np.flatnonzero(phi_t[2 * d :] == 0.0)


def masked_raw_moments(resp: np.ndarray, phi_t: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Rᵀ Φ (K, 3d) = [Σ r y², Σ r y, Σ r seen]: one GEMM on [Y², Y]; the
    masses Σ r seen as Σ r less the gaps' (:func:`_gap_mass`)."""
    d = phi_t.shape[0] // 3
    raw = np.empty((resp.shape[0], 3 * d))
    np.matmul(resp, phi_t[: 2 * d].T, out=raw[:, : 2 * d])
    gap_mass = np.zeros((resp.shape[0], d))
    _gap_mass(gaps, phi_t.shape[1], np.ascontiguousarray(resp), gap_mass)
    raw[:, 2 * d :] = resp.sum(axis=1)[:, None] - gap_mass
    return raw


def masked_central(raw: np.ndarray, N: np.ndarray, M: np.ndarray, covariance_type: str) -> dict:
    """``N``, ``Nf``, ``S`` and ``Q`` about each c_k (rows of M) from Rᵀ Φ (K, 3d)."""
    d = M.shape[1]
    YY, SY, Nf = raw[:, :d], raw[:, d : 2 * d], raw[:, 2 * d :]
    S = SY - Nf * M
    Q = np.maximum(YY - 2.0 * M * SY + Nf * M * M, 0.0)
    if COVARIANCE_TYPES[covariance_type].block == "scalar":
        Q = Q.sum(axis=1)
    return {"N": N, "Nf": Nf, "S": S, "Q": Q}


def masked_estimate(covariance_type: str, Nf, S, Q, delta, nkf) -> np.ndarray:
    """The masked M-step's covariance (diag, spherical, shared) before ``reg_covar``.

    Each feature's scatter about its new mean from its observed entries only
    (moments about c_k, shifts ``delta`` = S / nkf, masses ``nkf`` = Nf + eps
    (K, d)); a scalar block divides by the number of observed entries.
    """
    block = COVARIANCE_TYPES[covariance_type].block
    if block == "diagonal":
        return (Q - 2.0 * delta * S + Nf * delta**2) / nkf
    scatter = Q - 2.0 * (delta * S).sum(axis=1) + (Nf * delta**2).sum(axis=1)
    if COVARIANCE_TYPES[covariance_type].pooled:
        return np.asarray(scatter.sum() / nkf.sum())
    return scatter / nkf.sum(axis=1)


# --------------------------------------------------------------- matrix blocks
#: Bytes of per-pattern coefficients (T, C, P: K d² each) built at once.
COEFFICIENT_BYTES = 2**23


def pattern_coefficients(patterns: np.ndarray, params: MixtureParams):
    """Per-pattern E- and M-step coefficients of matrix blocks (full, tied).

    With Σ' = Σ on observed pairs and the identity elsewhere, det Σ' = det Σ_oo
    and inv(Σ') with the missing rows and columns zeroed is Σ_oo⁻¹ embedded
    in d × d (P below): one batched inverse for all patterns and components.
    Then on shifted rows y with 0 in the gaps:

    - log π_k N(y_o | μ_o, Σ_oo) = Φ(y) · A[:, k] + b_k, Φ the complete-data
      features (:func:`dask_emk.core.mixture.quadratic_features`), whose
      products with a gap are zero;
    - T = Σ P is [I_oo; Σ_mo Σ_oo⁻¹] embedded, so x̂ − μ = T (y − μ) whatever y
      holds in the gaps, and C = Σ − T Σ is the conditional covariance
      (zero outside the missing × missing block).

    Parameters
    ----------
    patterns : ndarray of shape (G, d), bool, True where observed

    Returns
    -------
    A : (G, q + d, K); b : (G, K); T, C : (G, K or 1, d, d)
    """
    K, d = params.means.shape
    U = params.precisions_cholesky.reshape(-1, d, d)
    Sigma = np.linalg.inv(U @ np.swapaxes(U, -1, -2))
    Sigma = 0.5 * (Sigma + np.swapaxes(Sigma, -1, -2))
    pair = (patterns[:, :, None] & patterns[:, None, :])[:, None]
    embedded = np.where(pair, Sigma[None], np.eye(d))
    P = np.linalg.inv(embedded) * pair
    log_det = np.linalg.slogdet(embedded)[1]
    T = Sigma[None] @ P
    C = Sigma[None] - T @ Sigma[None]
    P = np.broadcast_to(P, (patterns.shape[0], K, d, d))
    M = params.shifted_means
    rows, cols = np.triu_indices(d)
    quad = P[..., rows, cols] * np.where(rows == cols, 1.0, 2.0)
    prec_m = np.einsum("gkij,kj->gki", P, M)
    const = np.einsum("ki,gki->gk", M, prec_m)
    A = -0.5 * np.concatenate([quad, -2.0 * prec_m], axis=-1)
    n_obs = patterns.sum(axis=1)[:, None]
    b = params.log_weights - 0.5 * (n_obs * _LOG_2PI + log_det + const)
    return np.swapaxes(A, 1, 2), b, T, C


def _matrix_pass(X, weight, params: MixtureParams, stats=False, rows=False, impute=False):
    """Matrix-block E-step of rows with at least one observed feature.

    The rows are sorted by missingness pattern (:func:`pattern_groups`), so
    each pattern's rows are slices of cache-sized sub-blocks; per slice the
    E-step and the raw moments are the dense path's two GEMMs with that
    pattern's coefficients (:func:`pattern_coefficients`), and the raw
    moments become moments of x̂ about each mean (conditional covariance
    added) once per pattern.

    Returns
    -------
    dict with ``lpn`` (n,); with ``rows`` ``resp`` (K, n); with ``stats``
    ``N``, ``S``, ``Q`` (moment shape of the type) about the current means;
    with ``impute`` ``imputed`` (n, d), shifted rows with their gaps filled.
    """
    n, d = X.shape
    K, M = params.means.shape[0], params.shifted_means
    Y, keys = np.empty((n, d)), np.empty(n, dtype=np.int64)
    _shift_rows(X, params.origin, Y, keys)
    seen = ~np.isnan(X)
    order, starts = pattern_groups(seen, keys)
    Y, seen = Y[order], seen[order]
    w = None if weight is None else np.asarray(weight, dtype=np.float64)[order]
    pattern = np.repeat(np.arange(starts.shape[0] - 1), np.diff(starts))
    out = {"lpn": np.empty(n)}
    if rows:
        out["resp"] = np.empty((K, n))
    if impute:
        out["imputed"] = Y.copy()
    N, S, Q, scratch = np.zeros(K), np.zeros((K, d)), np.zeros((K, d, d)), Scratch()
    n_patterns = starts.shape[0] - 1
    # Patterns in groups whose coefficients fit in COEFFICIENT_BYTES: memory
    # stays bounded however many patterns a block has.
    group = max(1, COEFFICIENT_BYTES // (24 * K * d * d))
    for g0 in range(0, n_patterns, group):
        g1 = min(n_patterns, g0 + group)
        A, b, T, C = pattern_coefficients(seen[starts[g0:g1]], params)
        raw, mass = np.zeros((g1 - g0, K, A.shape[1])), np.zeros((g1 - g0, K))
        for sub in mixture_sub_blocks(starts[g1] - starts[g0], d, "full", K):
            sub = slice(starts[g0] + sub.start, min(starts[g0] + sub.stop, starts[g1]))
            # The sub-block's patterns: pattern p's rows are [cut[p - first], cut[p - first + 1]).
            first, last = pattern[sub.start], pattern[sub.stop - 1] + 1
            cut = np.clip(starts[first : last + 1], sub.start, sub.stop) - sub.start
            parts = [(p - g0, slice(cut[p - first], cut[p - first + 1]))
                     for p in range(first, last)]  # fmt: skip
            phi = quadratic_features(Y[sub], "full", scratch)
            weighted = buffer(scratch, "weighted", (K, sub.stop - sub.start))
            for j, part in parts:
                np.matmul(A[j].T, phi[part].T, out=weighted[:, part])
                weighted[:, part] += b[j][:, None]
            out["lpn"][sub], resp = _log_normalise(weighted)
            if rows:
                out["resp"][:, sub] = resp
            if impute:
                cond = np.einsum("nkij,knj->kni", T[pattern[sub] - g0], Y[sub][None] - M[:, None])
                filled = np.einsum("kn,kni->ni", resp, cond + M[:, None])
                out["imputed"][sub] = np.where(seen[sub], Y[sub], filled)
            if stats:
                wr = resp if w is None else resp * w[sub]
                for j, part in parts:
                    raw[j] += wr[:, part] @ phi[part]
                    mass[j] += wr[:, part].sum(axis=1)
        if stats:
            _add_conditional_moments(raw, mass, T, C, M, N, S, Q)
    if COVARIANCE_TYPES[params.covariance_type].pooled:
        Q = Q.sum(axis=0)
    out.update(N=N, S=S, Q=Q)
    back = np.empty(n, dtype=np.intp)
    back[order] = np.arange(n)
    for name in ("lpn", "resp", "imputed"):
        if name in out:
            out[name] = out[name][..., back] if name == "resp" else out[name][back]
    return out


def _log_normalise(weighted: np.ndarray):
    """(log Σ_k exp, normalised exp) of log-densities (K, m), in place."""
    top = weighted.max(axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        weighted -= top
        np.exp(weighted, out=weighted)
        total = weighted.sum(axis=0)
        weighted /= total
    return top + np.log(total), weighted


def _add_conditional_moments(raw, mass, T, C, M, N, S, Q) -> None:
    """Add moments of x̂ about each mean, per pattern, to N, S, Q (in place).

    ``raw`` (G, K, q + d) = Σ w r Φ(y) and ``mass`` (G, K) = Σ w r per
    pattern; with D = Σ w r (y − μ)(y − μ)ᵀ: Q += T D Tᵀ + mass C and
    S += T Σ w r (y − μ) (:func:`pattern_coefficients`).
    """
    d = M.shape[1]
    q = raw.shape[2] - d
    rows, cols = np.triu_indices(d)
    YY = np.empty(raw.shape[:2] + (d, d))
    YY[..., rows, cols] = raw[..., :q]
    YY[..., cols, rows] = raw[..., :q]
    SY = raw[..., q:]
    cross = np.einsum("ki,gkj->gkij", M, SY)
    D = YY - cross - np.swapaxes(cross, -1, -2)
    D += mass[..., None, None] * np.einsum("ki,kj->kij", M, M)
    N += mass.sum(axis=0)
    S += np.einsum("gkij,gkj->ki", np.broadcast_to(T, D.shape), SY - mass[..., None] * M)
    Q += (T @ D @ np.swapaxes(T, -1, -2) + mass[..., None, None] * C).sum(axis=0)


# ------------------------------------------------------------- the kernels
def estep_stats(X: np.ndarray, weight: np.ndarray | None, params: MixtureParams) -> dict:
    """E-step statistics of one block with gaps (:func:`dask_emk.core.estep.estep_stats`).

    Returns
    -------
    dict with ``n`` (weight of the rows with an observed feature),
    ``loglik`` (of the observed features), ``nonfinite`` and ``N``, ``S``,
    ``Q`` about the current means as the complete-data E-step; non-matrix
    blocks also ``Nf`` (K, d), the responsibility mass over each feature's
    observed entries.
    """
    weight = None if weight is None else np.asarray(weight, dtype=np.float64)
    K, d = params.means.shape
    lpn = np.full(X.shape[0], np.nan)
    if COVARIANCE_TYPES[params.covariance_type].block == "matrix":
        good, _ = usable_rows(X)
        out = _matrix_pass(X[good], None if weight is None else weight[good], params, stats=True)
        stats, lpn[good] = {name: out[name] for name in ("N", "S", "Q")}, out["lpn"]
    else:
        raw, N, scratch = np.zeros((K, 3 * d)), np.zeros(K), Scratch()
        good = np.empty(X.shape[0], dtype=bool)
        for rows in sub_blocks(X.shape[0], 3 * d + K):
            lpn[rows], resp, phi_t, good[rows], gaps = _diag_sub_block(X[rows], params, scratch)
            if weight is not None:
                resp *= weight[rows][None, :]
            raw += masked_raw_moments(resp, phi_t, gaps)
            N += resp.sum(axis=1)
        stats = masked_central(raw, N, params.shifted_means, params.covariance_type)
    loglik, w_total, nonfinite = _likelihood_totals(X, lpn, weight, good)
    stats.update(n=np.float64(w_total), loglik=np.float64(loglik), nonfinite=np.float64(nonfinite))
    return stats


def _likelihood_totals(X, lpn, weight, good) -> tuple[float, float, int]:
    """(Σ w log p(x_o), Σ w, rows whose log-likelihood is not finite) over
    the rows taking part (``good``), and the rows holding ±inf counted too."""
    if good.all():  # the common case, without copies
        total = lpn.sum() if weight is None else lpn @ weight
        if np.isfinite(total):
            return total, float(lpn.size) if weight is None else float(weight.sum()), 0
    w = good.astype(np.float64) if weight is None else weight * good
    finite = np.isfinite(lpn)
    n_inf = int(np.isinf(X[~good]).any(axis=1).sum())
    return lpn[finite] @ w[finite], float(w.sum()), int((~finite & good).sum()) + n_inf


def resp_stats(X, weight, resp, origin, covariance_type: str) -> dict:
    """Masked statistics about ``origin`` for given responsibilities (initialisation).

    Non-matrix types only: a matrix type starts from diagonal covariances
    (the gaps' conditional moments need a covariance to start from).

    Parameters
    ----------
    resp : ndarray of shape (n, K)
    """
    K, d = resp.shape[1], X.shape[1]
    phi_t, good = masked_features(X, origin)
    w = good if weight is None else np.asarray(weight, dtype=np.float64) * good
    wr = resp.T * w[None, :]
    stats = masked_central(wr @ phi_t.T, wr.sum(axis=1), np.zeros((K, d)), covariance_type)
    n_inf = int(np.isinf(X).any(axis=1).sum())
    stats.update(n=np.float64(w.sum()), loglik=np.float64(0.0), nonfinite=np.float64(n_inf))
    return stats


def mixture_rows(X: np.ndarray, params: MixtureParams, kind: str) -> np.ndarray:
    """Per-row outputs of one block given its observed features
    (:func:`dask_emk.core.estep.mixture_rows`): log p(x_o), responsibilities
    or label; NaN (label :data:`LABEL_FILL`) on rows with no observed feature.
    """
    n, K = X.shape[0], params.means.shape[0]
    keep, _ = usable_rows(X)
    lpn, resp = _responsibilities(X[keep], params)
    if kind == "label":
        out = np.full(n, LABEL_FILL, dtype=np.int64)
        out[keep] = resp.argmax(axis=0)
        return out
    out = np.full((n, K) if kind == "resp" else (n,), np.nan)
    out[keep] = resp.T if kind == "resp" else lpn
    return out


def _responsibilities(X: np.ndarray, params: MixtureParams):
    """(log p(x_o) (n,), responsibilities (K, n)) of rows with observed features."""
    if COVARIANCE_TYPES[params.covariance_type].block == "matrix":
        out = _matrix_pass(X, None, params, rows=True)
        return out["lpn"], out["resp"]
    return _diag_sub_block(X, params, None)[:2]


def impute_rows(X: np.ndarray, params: MixtureParams) -> np.ndarray:
    """X with each missing entry replaced by E[x_m | x_o] under the mixture.

    Non-matrix blocks: Σ_k r_k μ_km (the features are independent given the
    component). Matrix blocks: Σ_k r_k (μ_km + Σ_mo Σ_oo⁻¹ (x_o − μ_o)).
    A row with no observed feature gets the mixture mean Σ_k π_k μ_k.
    """
    out = np.array(X, dtype=np.float64)
    keep, _ = usable_rows(X)
    if COVARIANCE_TYPES[params.covariance_type].block == "matrix":
        imputed = _matrix_pass(out[keep], None, params, impute=True)["imputed"]
    else:
        Y, seen = shifted_observed(out[keep], params.origin)
        resp = _diag_sub_block(out[keep], params, None)[1]
        imputed = np.where(seen > 0, Y, resp.T @ params.shifted_means)
    out[keep] = imputed + params.origin
    empty = ~keep & ~np.isinf(X).any(axis=1)
    out[empty] = np.exp(params.log_weights) @ params.means
    return out.astype(X.dtype, copy=False)


# ------------------------------------------------------------------ k-means
def masked_distances(Y: np.ndarray, seen: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared distances over observed coordinates, (n, K): Σ_j o_j (y_j − c_kj)²."""
    dist = (Y * Y).sum(axis=1)[:, None] - 2.0 * (Y @ C.T) + seen @ (C * C).T
    np.maximum(dist, 0.0, out=dist)
    return dist


def nearest(X: np.ndarray, centers: np.ndarray, origin: np.ndarray):
    """(labels, distances) of rows with gaps to ``centers`` over observed coordinates."""
    Y, seen = shifted_observed(X, origin)
    dist = masked_distances(Y, seen, centers - origin)
    labels = dist.argmin(axis=1)
    return labels, dist[np.arange(X.shape[0]), labels]


def assign_stats(X, weight, centers, origin, n_far: int, moments: bool = False) -> dict:
    """Lloyd statistics of a block with gaps (:func:`dask_emk.core.assign.assign_stats`).

    The nearest centre by the distance over observed coordinates; ``S`` and
    ``Nf`` (K, d) sum each feature over the rows where it is observed, so a
    centre coordinate is the mean of its rows there; the inertia is over
    observed coordinates. Only complete rows are kept as farthest rows (an
    empty cluster is moved onto a whole data point). With ``moments``,
    ``ysum`` and ``ysq`` are over observed entries and ``obs`` (d,) counts them.
    """
    keep, n_inf = usable_rows(X)
    X = X[keep]
    w = np.ones(X.shape[0]) if weight is None else np.asarray(weight, dtype=np.float64)[keep]
    K, d = centers.shape
    labels, dist = nearest(X, centers, origin)
    Y, seen = shifted_observed(X, origin)
    R = np.zeros((K, X.shape[0]))
    R[labels, np.arange(X.shape[0])] = w
    out = {"nonfinite": n_inf, "count": X.shape[0], "inertia": dist @ w, "N": R.sum(axis=1),
           "Nf": R @ seen, "S": R @ Y}  # fmt: skip
    if moments:
        out.update(ysum=Y.sum(axis=0), ysq=(Y * Y).sum(axis=0), obs=seen.sum(axis=0))
    complete = np.flatnonzero(seen.all(axis=1))
    far = complete[farthest_order(dist[complete])[:n_far]]
    pad = n_far - far.size
    out["far_dist"] = np.concatenate([dist[far], np.full(pad, -np.inf)])
    out["far_label"] = np.concatenate([labels[far], np.full(pad, -1)])
    out["far_weight"] = np.concatenate([w[far], np.zeros(pad)])
    out["far_x"] = np.concatenate([X[far], np.zeros((pad, d))])
    return out
