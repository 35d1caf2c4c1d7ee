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
another, Rᵀ Φ = [Σ r y², Σ r y, Σ r o]. The M-step maximises EM's bound for
the responsibilities exactly: per component and feature the mean over the
observed entries (mass ``Nf``), the variances from the same masked sums
(:func:`masked_estimate`). Its σ² → 0 limit is k-means on observed
coordinates (:func:`assign_stats`).

Matrix blocks (full, tied), after Ghahramani & Jordan (1994). The observed
part is N(x_o; μ_o, Σ_oo); the M-step takes the missing part's conditional
expectation x̂_m = μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o) and adds its conditional
covariance Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om to the second moments. A block's rows are
grouped by missingness pattern and Σ_oo is factorised once per pattern and
component (:func:`_pattern_rows`, compiled). Cost: O(P K d³) for P distinct
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
from dask_emk.core.mixture import MixtureParams

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


def pattern_groups(seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by missingness pattern.

    Returns
    -------
    order : ndarray of shape (n,), the rows sorted by pattern
    starts : ndarray of shape (P + 1,); pattern p's rows are ``order[starts[p]:starts[p + 1]]``
    """
    packed = np.packbits(seen.astype(bool), axis=1)
    keys = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    change = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    return order, np.concatenate([[0], change, [ordered.shape[0]]]).astype(np.int64)


# ------------------------------------------------- diagonal and scalar blocks
def feature_precisions(params: MixtureParams) -> np.ndarray:
    """Precision of each component and feature, (K, d), for non-matrix blocks."""
    K, d = params.means.shape
    prec = params.precisions_cholesky**2
    return np.broadcast_to(prec if prec.ndim == 2 else prec[:, None], (K, d))


def masked_features(Y: np.ndarray, seen: np.ndarray, scratch: Scratch | None = None):
    """Φ = [Y², Y, seen], shape (n, 3d) (module docstring)."""
    n, d = Y.shape
    phi = buffer(scratch, "phi", (n, 3 * d))
    np.multiply(Y, Y, out=phi[:, :d])
    phi[:, d : 2 * d] = Y
    phi[:, 2 * d :] = seen
    return phi


def masked_coefficients(params: MixtureParams) -> np.ndarray:
    """A (3d, K) with log N(y_o | μ_o, Σ_oo) = Φ(y) · A[:, k] for diagonal Σ."""
    P, M = feature_precisions(params), params.shifted_means
    per_feature = 0.5 * np.log(P) - 0.5 * _LOG_2PI - 0.5 * P * M * M
    return np.concatenate([-0.5 * P, P * M, per_feature], axis=1).T


def _diag_responsibilities(Y, seen, params, scratch):
    """(log p(y_o) (n,), responsibilities (K, n), Φ) of non-matrix blocks."""
    phi = masked_features(Y, seen, scratch)
    out = buffer(scratch, "weighted", (params.means.shape[0], Y.shape[0]))
    weighted = np.matmul(masked_coefficients(params).T, phi.T, out=out)
    weighted += params.log_weights[:, None]
    top = weighted.max(axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        weighted -= top
        np.exp(weighted, out=weighted)
        total = weighted.sum(axis=0)
        weighted /= total
    return top + np.log(total), weighted, phi


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
@compiled()
def _forward(L, b, n, out):  # pragma: no cover - compiled
    """Solve L z = b (L lower triangular n × n) into out[:n]."""
    for i in range(n):
        s = b[i]
        for j in range(i):
            s -= L[i, j] * out[j]
        out[i] = s / L[i, i]


@compiled()
def _pattern_rows(  # pragma: no cover - compiled
    Y, seen, order, starts, M, Sigma, log_w, w, want, lpn, resp, N, S, Q, imputed
):
    """Matrix-block E-step of rows grouped by pattern (:func:`pattern_groups`).

    Y (n, d) shifted rows (0 in the gaps), seen (n, d) mask, M (K, d) shifted
    means, Sigma (K or 1, d, d) covariances, log_w (K,), w (n,) weights.
    ``want`` = (stats, rows, impute): adds N (K,), S (K, d) and Q (K, d, d)
    about M (conditional covariance included); writes lpn (n,) and resp
    (n, K); writes the conditional expectation of each row into ``imputed``.
    """
    n, d = Y.shape
    K = M.shape[0]
    pooled = Sigma.shape[0] == 1
    L = np.zeros((K, d, d))
    G = np.zeros((K, d, d))  # Σ_mo L⁻ᵀ: x̂_m − μ_m = G z with L z = x_o − μ_o
    C = np.zeros((K, d, d))  # conditional covariance Σ_mm − G Gᵀ
    const = np.zeros(K)
    oi, mi = np.zeros(d, np.int64), np.zeros(d, np.int64)
    sub, col = np.zeros((d, d)), np.zeros(d)
    diff, z, e = np.zeros((K, d)), np.zeros((K, d)), np.zeros(d)
    ld, r, mass = np.zeros(K), np.zeros(K), np.zeros(K)
    for p in range(starts.shape[0] - 1):
        first = order[starts[p]]
        no, nm = 0, 0
        for j in range(d):
            if seen[first, j] > 0.0:
                oi[no] = j
                no += 1
            else:
                mi[nm] = j
                nm += 1
        for k in range(1 if pooled else K):
            for a in range(no):
                for b in range(no):
                    sub[a, b] = Sigma[k, oi[a], oi[b]]
            chol = np.linalg.cholesky(np.ascontiguousarray(sub[:no, :no]))
            L[k, :no, :no] = chol
            logdet = 0.0
            for a in range(no):
                logdet += math.log(chol[a, a])
            const[k] = -0.5 * no * math.log(2.0 * math.pi) - logdet
            for b in range(nm):
                for a in range(no):
                    col[a] = Sigma[k, oi[a], mi[b]]
                _forward(chol, col, no, e)
                for a in range(no):
                    G[k, b, a] = e[a]
            for a in range(nm):
                for b in range(nm):
                    s = Sigma[k, mi[a], mi[b]]
                    for c in range(no):
                        s -= G[k, a, c] * G[k, b, c]
                    C[k, a, b] = s
        mass[:] = 0.0
        for t in range(starts[p], starts[p + 1]):
            i = order[t]
            top = -np.inf
            for k in range(K):
                f = 0 if pooled else k
                for a in range(no):
                    diff[k, a] = Y[i, oi[a]] - M[k, oi[a]]
                _forward(L[f], diff[k], no, z[k])
                maha = 0.0
                for a in range(no):
                    maha += z[k, a] * z[k, a]
                ld[k] = log_w[k] + const[f] - 0.5 * maha
                top = max(top, ld[k])
            total = 0.0
            for k in range(K):
                r[k] = math.exp(ld[k] - top)
                total += r[k]
            for k in range(K):
                r[k] /= total
            if want[1]:
                lpn[i] = top + math.log(total)
                for k in range(K):
                    resp[i, k] = r[k]
            if want[2]:
                for a in range(nm):
                    x = 0.0
                    for k in range(K):
                        f = 0 if pooled else k
                        g = 0.0
                        for c in range(no):
                            g += G[f, a, c] * z[k, c]
                        x += r[k] * (M[k, mi[a]] + g)
                    imputed[i, mi[a]] = x
            if not want[0]:
                continue
            for k in range(K):
                wr = w[i] * r[k]
                if wr == 0.0:
                    continue
                f = 0 if pooled else k
                for a in range(no):
                    e[oi[a]] = diff[k, a]
                for a in range(nm):
                    g = 0.0
                    for c in range(no):
                        g += G[f, a, c] * z[k, c]
                    e[mi[a]] = g
                N[k] += wr
                mass[k] += wr
                for a in range(d):
                    S[k, a] += wr * e[a]
                    for b in range(a + 1):
                        Q[k, a, b] += wr * e[a] * e[b]
        if want[0]:
            for k in range(K):
                f = 0 if pooled else k
                for a in range(nm):
                    for b in range(nm):
                        if mi[b] <= mi[a]:
                            Q[k, mi[a], mi[b]] += mass[k] * C[f, a, b]
    if want[0]:
        for k in range(K):
            for a in range(d):
                for b in range(a):
                    Q[k, b, a] = Q[k, a, b]


def _matrix_pass(Y, seen, weight, params: MixtureParams, want: tuple, imputed=None):
    """Run :func:`_pattern_rows` on one block; returns (lpn, resp (K, n), N, S, Q)."""
    n, d = Y.shape
    K = params.means.shape[0]
    ctype = COVARIANCE_TYPES[params.covariance_type]
    chol = params.precisions_cholesky.reshape(-1, d, d)
    Sigma = np.linalg.inv(chol @ np.swapaxes(chol, -1, -2))
    Sigma = 0.5 * (Sigma + np.swapaxes(Sigma, -1, -2))
    order, starts = pattern_groups(seen)
    w = np.ones(n) if weight is None else np.ascontiguousarray(weight, dtype=np.float64)
    lpn, resp = np.empty(n if want[1] else 0), np.empty((n, K) if want[1] else (0, K))
    N, S, Q = np.zeros(K), np.zeros((K, d)), np.zeros((K, d, d))
    out = np.empty((0, d)) if imputed is None else imputed
    with np.errstate(all="ignore"):
        log_w = params.log_weights.astype(np.float64)
    _pattern_rows(np.ascontiguousarray(Y), np.ascontiguousarray(seen), order, starts,
                  np.ascontiguousarray(params.shifted_means), np.ascontiguousarray(Sigma),
                  log_w, w, want, lpn, resp, N, S, Q, out)  # fmt: skip
    if ctype.pooled:
        Q = Q.sum(axis=0)
    return lpn, resp.T, N, S, Q


# ------------------------------------------------------------- the kernels
def estep_stats(X: np.ndarray, weight: np.ndarray | None, params: MixtureParams) -> dict:
    """E-step statistics of one block with gaps (:func:`dask_emk.core.mixture.estep_stats`).

    Returns
    -------
    dict with ``n``, ``loglik`` (of the observed features), ``nonfinite``
    and ``N``, ``S``, ``Q`` about the current means as the complete-data
    E-step; non-matrix blocks also ``Nf`` (K, d), the responsibility mass
    over each feature's observed entries.
    """
    keep, n_inf = usable_rows(X)
    X, weight = X[keep], None if weight is None else np.asarray(weight)[keep]
    ctype = COVARIANCE_TYPES[params.covariance_type]
    K, d = params.means.shape
    M = params.shifted_means
    if ctype.block == "matrix":
        Y, seen = shifted_observed(X, params.origin)
        lpn, _, N, S, Q = _matrix_pass(Y, seen, weight, params, (True, True, False))
        stats = {"N": N, "S": S, "Q": Q}
    else:
        raw, N, lpn, scratch = np.zeros((K, 3 * d)), np.zeros(K), [], Scratch()
        for rows in sub_blocks(X.shape[0], 3 * d + K):
            Y, seen = shifted_observed(X[rows], params.origin, scratch)
            part, resp, phi = _diag_responsibilities(Y, seen, params, scratch)
            if weight is not None:
                resp = resp * weight[rows][None, :]
            raw += resp @ phi
            N += resp.sum(axis=1)
            lpn.append(part.copy())
        lpn = np.concatenate(lpn) if lpn else np.zeros(0)
        stats = masked_central(raw, N, M, params.covariance_type)
    finite = np.isfinite(lpn)
    loglik = lpn[finite].sum() if weight is None else lpn[finite] @ weight[finite]
    w_total = float(X.shape[0]) if weight is None else float(weight.sum())
    nonfinite = n_inf + int((~finite).sum())
    stats.update(n=np.float64(w_total), loglik=np.float64(loglik), nonfinite=np.float64(nonfinite))
    return stats


def resp_stats(X, weight, resp, origin, covariance_type: str) -> dict:
    """Masked statistics about ``origin`` for given responsibilities (initialisation).

    Non-matrix types only: a matrix type starts from diagonal covariances
    (the gaps' conditional moments need a covariance to start from).

    Parameters
    ----------
    resp : ndarray of shape (n, K)
    """
    keep, n_inf = usable_rows(X)
    X, resp = X[keep], resp[keep]
    weight = None if weight is None else np.asarray(weight)[keep]
    K, d = resp.shape[1], X.shape[1]
    Y, seen = shifted_observed(X, origin)
    wr = resp.T if weight is None else resp.T * weight[None, :]
    raw = wr @ masked_features(Y, seen)
    stats = masked_central(raw, wr.sum(axis=1), np.zeros((K, d)), covariance_type)
    w_total = float(X.shape[0]) if weight is None else float(weight.sum())
    stats.update(n=np.float64(w_total), loglik=np.float64(0.0), nonfinite=np.float64(n_inf))
    return stats


def mixture_rows(X: np.ndarray, params: MixtureParams, kind: str) -> np.ndarray:
    """Per-row outputs of one block given its observed features
    (:func:`dask_emk.core.mixture.mixture_rows`): log p(x_o), responsibilities
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
    Y, seen = shifted_observed(X, params.origin)
    if COVARIANCE_TYPES[params.covariance_type].block == "matrix":
        lpn, resp, *_ = _matrix_pass(Y, seen, None, params, (False, True, False))
        return lpn, resp
    lpn, resp, _ = _diag_responsibilities(Y, seen, params, None)
    return lpn, resp


def impute_rows(X: np.ndarray, params: MixtureParams) -> np.ndarray:
    """X with each missing entry replaced by E[x_m | x_o] under the mixture.

    Non-matrix blocks: Σ_k r_k μ_km (the features are independent given the
    component). Matrix blocks: Σ_k r_k (μ_km + Σ_mo Σ_oo⁻¹ (x_o − μ_o)).
    A row with no observed feature gets the mixture mean Σ_k π_k μ_k.
    """
    out = np.array(X, dtype=np.float64)
    keep, _ = usable_rows(X)
    Y, seen = shifted_observed(out[keep], params.origin)
    if COVARIANCE_TYPES[params.covariance_type].block == "matrix":
        imputed = Y.copy()
        _matrix_pass(Y, seen, None, params, (False, False, True), imputed)
    else:
        _, resp, _ = _diag_responsibilities(Y, seen, params, None)
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
