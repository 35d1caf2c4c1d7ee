"""float32 rows are screened by a float32 distance GEMM and only the rows it
cannot decide are rechecked in float64 (core/assign.lloyd_assign,
core/loops.lloyd_rows): labels, distances and sums must be those of the same
values stored as float64, and the labels numpy's float64 argmin."""

import numpy as np
import pytest

from dask_emk.core import assign, loops


def numpy_nearest(X, centers, origin):
    """Plain numpy: float64 distances about ``origin`` and their argmin (first on ties)."""
    Y = X.astype(np.float64) - origin
    d2 = ((Y[:, None, :] - (centers - origin)[None]) ** 2).sum(-1)
    return d2.argmin(axis=1), d2.min(axis=1)


def assert_dtype_invariant(X32, centers, origin, weight=None):
    """float32 rows and their float64 copy: one result, numpy's argmin."""
    kw = {"moments": True, "n_far": 7}
    _, lab32, dist32, st32 = assign.lloyd_assign(X32, weight, centers, origin, **kw)
    X64 = X32.astype(np.float64)
    _, lab64, dist64, st64 = assign.lloyd_assign(X64, weight, centers, origin, **kw)
    np.testing.assert_array_equal(lab32, lab64)
    np.testing.assert_array_equal(dist32, dist64)
    for name in ("N", "S", "inertia", "ysum", "ysq", "far_dist", "far_label", "far_row"):
        np.testing.assert_array_equal(st32[name], st64[name], err_msg=name)
    expect, expect_dist = numpy_nearest(X32, centers, origin)
    np.testing.assert_array_equal(lab32, expect)
    # distances: ‖y‖² − 2 y·m + ‖m‖² in float64, to float64 rounding of ‖y‖² + ‖m‖²
    scale = (np.linalg.norm(X32.astype(np.float64) - origin, axis=1) + np.linalg.norm(
        centers - origin, axis=1).max()) ** 2  # fmt: skip
    assert np.all(np.abs(dist32 - expect_dist) <= 1e-13 * scale)
    used = st32["N"] > 0
    centres32 = st32["S"][used] / st32["N"][used, None]
    np.testing.assert_array_equal(centres32, st64["S"][used] / st64["N"][used, None])
    return lab32


def near_ties(rng, d, n, offset, gap):
    """Rows on the bisector of two centres, moved off it by ±gap ‖c1 − c0‖
    (a float32 rounding or less), around a common ``offset``."""
    centers = offset + rng.standard_normal((5, d))
    centers[2:] += 100.0  # bystanders, never nearest
    c0, c1 = centers[0], centers[1]
    mid = (c0 + c1) / 2
    normal = (c1 - c0) / np.linalg.norm(c1 - c0)
    # directions within the bisector plane, so the two distances stay equal
    side = rng.standard_normal((n, d))
    side -= np.outer(side @ normal, normal)
    shift = rng.choice([-1.0, 0.0, 1.0], n) * gap * np.linalg.norm(c1 - c0)
    X = mid + 0.3 * side + shift[:, None] * normal
    return X.astype(np.float32), centers


@pytest.mark.parametrize("d", [1, 2, 3, 7, 8, 17, 32, 64])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_near_ties_get_the_float64_label(d, offset):
    # Half the rows are within float32 rounding of a tie: a float32 GEMM alone
    # gets many of them wrong, the recheck must not.
    rng = np.random.default_rng(d)
    X, centers = near_ties(rng, d, 2000, offset, gap=2e-7)
    origin = centers.mean(axis=0)
    labels = assert_dtype_invariant(X, centers, origin)
    assert set(np.unique(labels)) <= {0, 1}
    if offset == 0:  # (about 1e4, float32 storage rounds the rows off the tie)
        assert set(np.unique(labels)) == {0, 1}  # both sides of the tie are taken
        # The data is adversarial: a float32 distance GEMM alone mislabels rows.
        Y, M = X - origin.astype(np.float32), (centers - origin).astype(np.float32)
        screened = ((M * M).sum(1) - 2 * Y @ M.T).argmin(axis=1)
        assert (screened != labels).sum() > 20


def test_exact_ties_go_to_the_first_centre_in_float32():
    # Dyadic rows and centres: every distance exact, exact ties everywhere
    # (duplicated centres too), also about a large common offset.
    rng = np.random.default_rng(3)
    centers = rng.integers(-4, 5, (11, 4)) / 4.0
    centers[8:] = centers[:3]
    X = (rng.integers(-5, 6, (3000, 4)) / 4.0).astype(np.float32)
    for offset in (0.0, 2048.0):
        labels = assert_dtype_invariant(X + np.float32(offset), centers + offset,
                                        np.full(4, offset))  # fmt: skip
        assert np.all(labels < 8)


def test_no_origin_shift_and_weights_and_far_rows():
    # Rows near 1e4 with the origin at 0: the float32 screen's error grows
    # with ‖y‖ ‖m‖, so many rows are rechecked; weighted, with NaN rows.
    rng = np.random.default_rng(7)
    X, centers = near_ties(rng, 16, 3000, 1e4, gap=1e-6)
    X[[5, 900]] = np.nan
    weight = rng.uniform(0.5, 2.0, X.shape[0])
    finite = np.isfinite(X).all(axis=1)
    _, lab32, _, st32 = assign.lloyd_assign(X, weight, centers, np.zeros(16), n_far=5)
    _, lab64, _, st64 = assign.lloyd_assign(X.astype(np.float64), weight, centers, np.zeros(16),
                                            n_far=5)  # fmt: skip
    np.testing.assert_array_equal(lab32[finite], lab64[finite])
    np.testing.assert_array_equal(lab32[finite], numpy_nearest(X[finite], centers, 0.0)[0])
    for name in ("N", "S", "inertia", "nonfinite", "far_dist", "far_row"):
        np.testing.assert_array_equal(st32[name], st64[name], err_msg=name)
    assert st32["nonfinite"] == 2


def test_float32_screen_overflow_is_rechecked():
    # Finite float32 rows whose float32 GEMM overflows (|y·m| > 3e38).
    rng = np.random.default_rng(9)
    centers = rng.uniform(-1, 1, (4, 3)) * 2e19
    X = (centers[rng.integers(0, 4, 500)] * (1 + 1e-3 * rng.standard_normal((500, 3))))
    assert_dtype_invariant(X.astype(np.float32), centers, np.zeros(3))


def test_exact_distance_is_numpys_sum_after_the_lloyd_loop_compiled_it():
    # The recheck's distance is compiled as a callee of fast-math loops; it
    # must keep its own fixed order (numba lets a callee inherit the caller's
    # flags unless set), or two workers could break a near tie differently.
    rng = np.random.default_rng(2)
    assert_dtype_invariant(*near_ties(rng, 9, 200, 0.0, gap=2e-7), np.zeros(9))
    for d in (3, 9, 33):
        Y, m = rng.standard_normal((300, d)), rng.standard_normal(d)
        got = np.array([loops._distance(y, m) for y in Y])
        np.testing.assert_array_equal(got, ((Y - m) ** 2).sum(axis=1))
