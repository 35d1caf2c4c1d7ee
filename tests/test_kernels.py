"""Block kernels against a plain numpy reference that builds the full n×K
responsibilities explicitly (scipy densities + logsumexp)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from dask_emk.core import blocks, estep, hartigan, mixture
from dask_emk.core.mstep import precision_cholesky

TYPES = ("full", "tied", "diag", "spherical", "shared")


def make_params(ct, K, d, rng, *, offset=0.0, scale=1.0):
    """Random parameters; returns the kernel params and dense (K, d, d) covariances."""
    means = offset + scale * rng.normal(size=(K, d)) * 3
    weights = rng.dirichlet(np.ones(K) * 3)
    if ct == "full":
        A = rng.normal(size=(K, d, d))
        cov = scale**2 * (A @ A.transpose(0, 2, 1) / d + 0.5 * np.eye(d))
        dense = cov
    elif ct == "tied":
        A = rng.normal(size=(d, d))
        cov = scale**2 * (A @ A.T / d + 0.5 * np.eye(d))
        dense = np.broadcast_to(cov, (K, d, d))
    elif ct == "diag":
        cov = scale**2 * rng.uniform(0.3, 2.0, size=(K, d))
        dense = np.stack([np.diag(c) for c in cov])
    elif ct == "spherical":
        cov = scale**2 * rng.uniform(0.3, 2.0, size=K)
        dense = cov[:, None, None] * np.eye(d)
    else:
        cov = np.asarray(scale**2 * 1.3)
        dense = np.broadcast_to(cov * np.eye(d), (K, d, d))
    chol = precision_cholesky(cov, ct)
    if ct == "shared":
        chol = np.full(K, float(chol))
    params = mixture.MixtureParams(
        means=means,
        log_weights=np.log(weights),
        precisions_cholesky=chol,
        covariance_type=ct,
        origin=weights @ means,
    )
    return params, np.asarray(dense), weights


def reference_stats(X, weight, means, weights, dense_cov, ct):
    """Plain numpy: full (n, K) responsibilities, then the sums the E-step kernels accumulate."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    K = means.shape[0]
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    logp = np.column_stack(
        [
            np.log(weights[k]) + multivariate_normal(means[k], dense_cov[k]).logpdf(X).reshape(n)
            for k in range(K)
        ]
    )
    lpn = logsumexp(logp, axis=1)
    resp = np.exp(logp - lpn[:, None])
    wr = resp * w[:, None]
    D = X[:, None, :] - means[None, :, :]  # (n, K, d)
    out = {
        "n": w.sum(),
        "loglik": (w * lpn).sum(),
        "N": wr.sum(axis=0),
        "S": np.einsum("nk,nkd->kd", wr, D),
    }
    if ct == "full":
        out["Q"] = np.einsum("nk,nki,nkj->kij", wr, D, D)
    elif ct == "tied":
        out["Q"] = np.einsum("nk,nki,nkj->ij", wr, D, D)
    elif ct == "diag":
        out["Q"] = np.einsum("nk,nkd->kd", wr, D**2)
    else:
        out["Q"] = np.einsum("nk,nkd->k", wr, D**2)
    return out, resp


def assert_stats_close(got, want, rtol=1e-9, atol_scale=1e-9):
    for name in ("n", "loglik", "N", "S", "Q"):
        g, w = np.asarray(got[name]), np.asarray(want[name])
        assert g.shape == w.shape, name
        atol = atol_scale * max(1.0, float(np.abs(w).max(initial=0.0)))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def sample_block(rng, n, d, params, dense_cov, weights):
    comp = rng.choice(len(weights), size=n, p=weights)
    X = np.empty((n, d))
    for k in range(len(weights)):
        idx = comp == k
        X[idx] = rng.multivariate_normal(params.means[k], dense_cov[k], idx.sum())
    return X


@pytest.mark.parametrize("ct", TYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sub_block_bytes", [None, 64])  # 64: dense sub-blocks of 64 rows
@pytest.mark.parametrize("row_major_gemm", [False, True])
def test_estep_stats_matches_reference(ct, weighted, dtype, sub_block_bytes, row_major_gemm):
    rng = np.random.default_rng(hash((ct, weighted, str(dtype))) % 2**32)
    K, d, n = 3, 4, 400
    params, dense, weights = make_params(ct, K, d, rng)
    # Both orientations of the E-step GEMM (chosen by the number of features).
    options = dataclasses.replace(params.estep, wide_features=0 if row_major_gemm else 10**9)
    if sub_block_bytes:
        options = dataclasses.replace(options, path="dense", sub_block_bytes=sub_block_bytes)
    params = dataclasses.replace(params, estep=options)
    X = sample_block(rng, n, d, params, dense, weights).astype(dtype)
    w = rng.uniform(0, 3, size=n) if weighted else None
    got = estep.estep_stats(X, w, params)
    want, _ = reference_stats(X, w, params.means, weights, dense, ct)
    assert_stats_close(got, want)
    assert got["nonfinite"] == 0
    for name in ("N", "S", "Q", "loglik"):
        assert np.asarray(got[name]).dtype == np.float64


@pytest.mark.parametrize("ct", TYPES)
@pytest.mark.parametrize("sub_block_bytes", [None, 64])
def test_resp_stats_are_moments_about_the_center(ct, sub_block_bytes):
    """Initialisation statistics for given responsibilities vs plain numpy."""
    options = mixture.EStepOptions(sub_block_bytes=sub_block_bytes or blocks.SUB_BLOCK_BYTES)
    rng = np.random.default_rng(4)
    X, w = rng.normal(size=(300, 3)) + 5.0, rng.uniform(0, 2, 300)
    resp = rng.dirichlet(np.ones(4), size=300)
    origin = X[:10].mean(axis=0)
    got = estep.resp_stats(X, w, resp, origin, ct, options)
    Y, wr = X - origin, resp * w[:, None]
    second = np.einsum("nk,ni,nj->kij", wr, Y, Y)
    Q = {
        "full": second,
        "tied": second.sum(axis=0),
        "diag": np.einsum("kii->ki", second),
        "spherical": np.einsum("kii->k", second),
        "shared": np.einsum("kii->k", second),
    }[ct]
    np.testing.assert_allclose(got["N"], wr.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got["S"], wr.T @ Y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["Q"], Q, rtol=1e-12, atol=1e-12)
    assert got["n"] == pytest.approx(w.sum(), rel=1e-12) and got["nonfinite"] == 0


@pytest.mark.parametrize("ct", TYPES)
def test_estep_stats_independent_of_center(ct):
    rng = np.random.default_rng(1)
    params, dense, weights = make_params(ct, 3, 3, rng)
    X = sample_block(rng, 200, 3, params, dense, weights)
    a = estep.estep_stats(X, None, params)
    moved = mixture.MixtureParams(
        params.means, params.log_weights, params.precisions_cholesky, ct, params.origin + 7.5
    )
    b = estep.estep_stats(X, None, moved)
    assert_stats_close(b, a)


def test_integer_weights_equal_repeated_rows():
    rng = np.random.default_rng(2)
    params, dense, weights = make_params("full", 3, 3, rng)
    X = sample_block(rng, 150, 3, params, dense, weights)
    reps = rng.integers(0, 4, size=150)
    a = estep.estep_stats(X, reps.astype(float), params)
    b = estep.estep_stats(np.repeat(X, reps, axis=0), None, params)
    assert_stats_close(a, b)


@pytest.mark.parametrize("ct", TYPES)
def test_large_offset_float32_keeps_precision(ct):
    rng = np.random.default_rng(3)
    K, d = 2, 3
    params, dense, weights = make_params(ct, K, d, rng, offset=1e4)
    X = sample_block(rng, 500, d, params, dense, weights).astype(np.float32)
    got = estep.estep_stats(X, None, params)
    # Reference in float64 on the exact float32 values, with the offset removed first
    # (exact in float64), so the reference itself loses nothing.
    want, _ = reference_stats(
        X.astype(np.float64) - 1e4, None, params.means - 1e4, weights, dense, ct
    )
    assert_stats_close(got, want, rtol=1e-8, atol_scale=1e-8)


def test_tiny_shared_variance_gives_hard_finite_responsibilities():
    rng = np.random.default_rng(4)
    K, d, n = 4, 3, 600
    scale = 50.0
    X = rng.normal(scale=scale, size=(n, d))
    means = X[rng.choice(n, K, replace=False)]
    sigma2 = 1e-12 * scale**2
    params = mixture.MixtureParams(
        means=means,
        log_weights=np.log(np.full(K, 1.0 / K)),
        precisions_cholesky=np.full(K, 1.0 / np.sqrt(sigma2)),
        covariance_type="shared",
        origin=means.mean(axis=0),
    )
    got = estep.estep_stats(X, None, params)
    for name in ("loglik", "N", "S", "Q"):
        assert np.all(np.isfinite(got[name])), name
    dist = ((X[:, None, :] - means[None]) ** 2).sum(axis=2)
    labels = dist.argmin(axis=1)
    resp = np.eye(K)[labels]
    np.testing.assert_array_equal(got["N"], np.bincount(labels, minlength=K))
    D = X[:, None, :] - means[None]
    np.testing.assert_allclose(got["S"], np.einsum("nk,nkd->kd", resp, D), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(got["Q"], np.einsum("nk,nkd->k", resp, D**2), rtol=1e-9)
    # loglik is the hard-assignment Gaussian log-density (log-sum-exp is dominated by one term)
    dmin = dist.min(axis=1)
    ref_ll = np.sum(np.log(1.0 / K) - 0.5 * d * np.log(2 * np.pi * sigma2) - 0.5 * dmin / sigma2)
    np.testing.assert_allclose(got["loglik"], ref_ll, rtol=1e-9)


@pytest.mark.parametrize("ct", TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_nonfinite_rows_counted_and_excluded(ct, weighted):
    rng = np.random.default_rng(5)
    params, dense, weights = make_params(ct, 3, 3, rng)
    X = sample_block(rng, 200, 3, params, dense, weights)
    w = rng.uniform(0.5, 2, size=200) if weighted else None
    bad = np.array([3, 17, 150, 199])
    Xbad = X.copy()
    Xbad[3, 0] = np.nan
    Xbad[17, 2] = np.inf
    Xbad[150, 1] = -np.inf
    Xbad[199, :] = np.nan
    got = estep.estep_stats(Xbad, w, params)
    assert got["nonfinite"] == 4
    keep = np.setdiff1d(np.arange(200), bad)
    want, _ = reference_stats(
        X[keep], None if w is None else w[keep], params.means, weights, dense, ct
    )
    assert_stats_close(got, want)


@pytest.mark.parametrize("ct", TYPES)
def test_empty_block(ct):
    rng = np.random.default_rng(6)
    K, d = 3, 2
    params, _, _ = make_params(ct, K, d, rng)
    for w in (None, np.empty(0)):
        got = estep.estep_stats(np.empty((0, d), dtype=np.float32), w, params)
        assert got["n"] == 0 and got["loglik"] == 0 and got["nonfinite"] == 0
        np.testing.assert_array_equal(got["N"], np.zeros(K))
        np.testing.assert_array_equal(got["S"], np.zeros((K, d)))
        q_shape = {"full": (K, d, d), "tied": (d, d), "diag": (K, d)}.get(ct, (K,))
        np.testing.assert_array_equal(got["Q"], np.zeros(q_shape))


@pytest.mark.parametrize("ct", TYPES)
def test_responsibilities_match_reference(ct):
    rng = np.random.default_rng(7)
    params, dense, weights = make_params(ct, 3, 4, rng)
    X = sample_block(rng, 100, 4, params, dense, weights)
    lpn, resp, _ = mixture.responsibilities(blocks.shift_block(X, params.origin), params)
    want, ref_resp = reference_stats(X, None, params.means, weights, dense, ct)
    np.testing.assert_allclose(resp.T, ref_resp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(lpn.sum(), want["loglik"], rtol=1e-12)


@pytest.mark.parametrize("ct", TYPES)
def test_block_larger_than_one_sub_block(ct):
    # estep_stats walks a big block in cache-sized sub-blocks and adds them up
    rng = np.random.default_rng(8)
    K, d = 3, 2
    params, dense, weights = make_params(ct, K, d, rng)
    width = mixture.n_quadratic(d, ct) + d + K
    n = 2 * len(range(*blocks.sub_blocks(10**9, width)[0].indices(10**9))) + 37
    assert len(blocks.sub_blocks(n, width)) == 3
    X = sample_block(rng, n, d, params, dense, weights)
    X[n // 2, 0] = np.nan
    w = rng.uniform(0, 2, size=n)
    got = estep.estep_stats(X, w, params)
    keep = np.isfinite(X).all(axis=1)
    want, _ = reference_stats(X[keep], w[keep], params.means, weights, dense, ct)
    assert got["nonfinite"] == 1
    assert_stats_close(got, want)


# ---------------------------------------------------------------- Hartigan
def hartigan_reference(X, w, C, mass, edges):
    """Plain numpy: every row's best single move, one row and one cluster at a time."""
    K, d, B = C.shape[0], C.shape[1], edges.shape[0] + 1
    origin = C.mean(axis=0)
    out = {"N": np.zeros(K), "S": np.zeros((K, d)), "inertia": 0.0, "dN": np.zeros((B, K)),
           "dS": np.zeros((B, K, d)), "gain": np.zeros(B), "moved": np.zeros(B)}  # fmt: skip
    for x, wt in zip(X, w, strict=True):
        dist = [float(((x - c) ** 2).sum()) for c in C]
        i = int(np.argmin(dist))
        out["N"][i] += wt
        out["S"][i] += wt * (x - origin)
        out["inertia"] += wt * dist[i]
        if mass[i] - wt <= 0:
            continue
        best, to = 0.0, None
        for j in range(K):
            if j == i or mass[j] <= 0:
                continue
            delta = mass[j] / (mass[j] + wt) * dist[j] - mass[i] / (mass[i] - wt) * dist[i]
            if delta < best:
                best, to = delta, j
        if to is None:
            continue
        b = int(np.sum(edges > -best))
        out["gain"][b] += best
        out["moved"][b] += 1
        out["dN"][b, to] += wt
        out["dN"][b, i] -= wt
        out["dS"][b, to] += wt * (x - origin)
        out["dS"][b, i] -= wt * (x - origin)
    return out


def hartigan_case(seed=0):
    """Overlapping blobs (many boundary candidates), a row alone in its cluster
    (never moved), uneven weights; masses those of the nearest-centre clusters."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(c, 0.8, size=(40, 2)) for c in ((0, 0), (1.5, 0), (0, 1.5))])
    X = np.concatenate([X, [[9.0, 9.0]]])
    w = rng.uniform(0.2, 3.0, size=X.shape[0])
    C = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5], [9.0, 9.0]])
    mass = np.bincount(((X[:, None] - C[None]) ** 2).sum(-1).argmin(axis=1), weights=w)
    return X, w, C, mass


@pytest.mark.parametrize("chunk", [181, 50, 7, 1])
def test_hartigan_stats_match_numpy(chunk):
    X, w, C, mass = hartigan_case()
    edges = 0.05 * 0.25 ** np.arange(5)
    ref = hartigan_reference(X, w, C, mass, edges)
    assert ref["moved"].sum() >= 3 and np.count_nonzero(ref["moved"]) >= 2  # several bins used
    origin = C.mean(axis=0)
    parts = [hartigan.hartigan_stats(X[s : s + chunk], w[s : s + chunk], C, mass, origin, edges)
             for s in range(0, X.shape[0], chunk)]  # fmt: skip
    got = {key: sum(p[key] for p in parts) for key in ref}
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-10, atol=1e-10, err_msg=key)
    assert sum(p["count"] for p in parts) == X.shape[0]


def test_hartigan_stats_without_weights_and_nonfinite_rows():
    X, _, C, _ = hartigan_case(seed=5)
    mass = np.bincount(((X[:, None] - C[None]) ** 2).sum(-1).argmin(axis=1), minlength=4)
    edges = 0.05 * 0.25 ** np.arange(5)
    ref = hartigan_reference(X, np.ones(X.shape[0]), C, mass.astype(float), edges)
    assert ref["moved"].sum() >= 1
    bad = np.concatenate([X[:5], [[np.nan, 0.0]], X[5:]])
    got = hartigan.hartigan_stats(bad, None, C, mass.astype(float), C.mean(axis=0), edges)
    assert got["nonfinite"] == 1 and got["count"] == X.shape[0]
    for key in ("N", "S", "dN", "dS", "gain", "moved"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-10, atol=1e-10, err_msg=key)
