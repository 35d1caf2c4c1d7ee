"""Hard assignment kernels: nearest centre, Lloyd sums, the farthest rows
(k-means passes; numpy and the compiled loops only)."""

from __future__ import annotations

import numpy as np

from dask_emk.core import blocks, loops
from dask_emk.core.blocks import squared_distances


def nearest(Y: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest row of M for each row of Y.

    Returns
    -------
    labels : ndarray of shape (n,), int64
    min_dist : ndarray of shape (n,)
    """
    dist = squared_distances(Y, M)
    labels = dist.argmin(axis=1)
    return labels, dist[np.arange(Y.shape[0]), labels]


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    """Hard responsibilities (n, k) from integer labels (n,)."""
    resp = np.zeros((labels.shape[0], k))
    resp[np.arange(labels.shape[0]), labels] = 1.0
    return resp


def assign_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    centers: np.ndarray,
    origin: np.ndarray,
    n_far: int,
    moments: bool = False,
) -> dict:
    """Lloyd statistics of one block: nearest centre and what the update needs.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    centers : ndarray of shape (K, d)
        Current centres (float64).
    origin : ndarray of shape (d,)
        Fixed reference point; rows and centres are shifted by it.
    n_far : int
        m, how many rows farthest from their centre to keep (for relocating
        empty clusters).
    moments : bool
        Also return the unweighted ``ysum`` and ``ysq`` (d,) of the shifted
        rows (the data variance behind scikit-learn's tolerance).

    Returns
    -------
    dict with ``nonfinite`` (rows holding NaN/inf, left out of the rest),
    ``count`` (number of finite rows), ``inertia`` (Σ w ‖x − c‖²), ``N`` (K,)
    weight per cluster, ``S`` (K, d) Σ w (x − origin) per cluster, the
    farthest rows ``far_dist``, ``far_label``, ``far_weight`` (m,) and
    ``far_x`` (m, d) (unshifted, float64), sorted by :func:`farthest_order`,
    padded with ``far_dist = -inf``; with ``moments`` also ``ysum``, ``ysq``.
    """
    X, _, _, out = lloyd_assign(X, weight, centers, origin, moments, n_far=n_far, rows=False)
    # Rows are kept unshifted so a relocated centre is exactly a data point.
    far_row = out.pop("far_row")
    kept = far_row[far_row >= 0]
    out["far_weight"] = np.zeros(n_far)
    out["far_weight"][: kept.size] = 1.0 if weight is None else np.asarray(weight)[kept]
    out["far_x"] = np.zeros((n_far, X.shape[1]))
    out["far_x"][: kept.size] = X[kept]
    out.update(count=X.shape[0] - out["nonfinite"])
    return out


def screen_margin(
    means: np.ndarray, dtype: type[np.floating] | np.dtype
) -> tuple[float, float, float, float]:
    """Coefficients of the margin by which a row's best screened centre must
    lead every other one for its label to be proven (:func:`loops.lloyd_rows`).

    The margin of a row y is a ‖y‖ + b (‖y‖ + R)² + t (1 + ‖y‖ + R): twice
    the screen's error plus twice the exact distance's, with room for the
    threshold's own rounding. Derivation: docs/NUMERICS.md, "The k-means screen".

    Parameters
    ----------
    means : ndarray of shape (K, d), float64
        Centres minus ``origin``.
    dtype : the GEMM's dtype (float32 or float64)

    Returns
    -------
    (a, b, t, R) : floats, R ≥ max_k ‖m_k‖
    """
    d = means.shape[1]
    u_screen, u = np.finfo(dtype).eps / 2, np.finfo(np.float64).eps / 2
    R = float(np.sqrt(np.max(np.einsum("kj,kj->k", means, means), initial=0.0))) * (1 + 2**-40)
    return (8 * (d + 3) * u_screen * R, (6 * d + 26) * u, 16 * d * float(np.finfo(dtype).tiny), R)


def lloyd_assign(
    X: np.ndarray,
    weight: np.ndarray | None,
    centers: np.ndarray,
    origin: np.ndarray,
    moments: bool = False,
    n_far: int = 0,
    rows: bool = True,
):
    """Nearest centre of every row and the per-cluster sums (compiled loop).

    Rows are shifted by ``origin`` in float64 and screened by a distance GEMM
    in their own dtype (float32 rows: a float32 GEMM, half the bytes and
    flops of float64); a row whose nearest centre the screen cannot prove is
    rechecked with exact float64 distances (:func:`screen_margin`). So every
    label is the nearest centre by the float64 ‖y − m‖² (numpy's sum, first
    on ties) and float32 storage of values gives the float64 fit, bit for
    bit; distances are ‖y‖² − 2 y·m + ‖m‖² in float64, everything is summed in
    float64.

    Parameters
    ----------
    moments : bool
        Also sum the finite rows' unweighted ``ysum`` and ``ysq``.
    n_far : int
        m, how many finite rows farthest from their centre to keep.
    rows : bool
        Return the per-row labels and distances (False skips writing them).

    Returns
    -------
    X : ndarray of shape (n, d), the block, C-ordered, float32 or float64
    labels : ndarray of shape (n,), intp, or None without ``rows``
    min_dist : ndarray of shape (n,), ‖x − c‖² (NaN on non-finite rows), or None
    stats : dict with ``N`` (K,), ``S`` (K, d) about ``origin``, ``inertia``
        and ``nonfinite``; with ``moments`` also the finite rows' unweighted
        ``ysum`` and ``ysq`` (d,) about ``origin``; the ``n_far`` farthest
        rows' ``far_dist``, ``far_label`` and ``far_row`` (m,)
        (their index in the block), ordered by :func:`farthest_order`
        (farthest first, later rows first among ties), padded with
        ``far_dist = -inf`` and ``far_label = far_row = -1``
    """
    n, K, d = X.shape[0], centers.shape[0], X.shape[1]
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    X = np.ascontiguousarray(X, dtype=dtype)
    origin = np.asarray(origin, dtype=np.float64)
    means = np.ascontiguousarray(centers - origin, dtype=np.float64)
    w = np.empty(0) if weight is None else np.ascontiguousarray(weight, dtype=np.float64)
    per_row = n if rows else 0
    labels, min_dist = np.empty(per_row, dtype=np.intp), np.empty(per_row)
    N, S = np.zeros(K), np.zeros((K, d))
    ysum, ysq = np.zeros(d if moments else 0), np.zeros(d if moments else 0)
    far = (
        np.full(n_far, -np.inf),
        np.full(n_far, -1, dtype=np.intp),
        np.full(n_far, -1, dtype=np.intp),
    )
    sub_rows = min(max(64, blocks.SUB_BLOCK_BYTES // (8 * max(d, K))), max(n, 1))
    scratch = blocks.thread_scratch("lloyd")
    Y = scratch.get("Y", (sub_rows, d))
    buffers = (Y, Y if dtype == np.float64 else scratch.get("Ys", (sub_rows, d), dtype),
               scratch.get("G", (sub_rows, K), dtype))  # fmt: skip
    inertia, nonfinite = loops.lloyd_rows(
        X, origin, means, screen_margin(means, dtype), w, (labels, min_dist), N, S,
        (ysum, ysq), far, buffers,
    )  # fmt: skip
    stats = {"N": N, "S": S, "inertia": inertia, "nonfinite": nonfinite}
    if moments:
        stats.update(ysum=ysum, ysq=ysq)
    stats.update(far_dist=far[0][::-1], far_label=far[1][::-1], far_row=far[2][::-1])
    return (X, labels, min_dist, stats) if rows else (X, None, None, stats)


def farthest_order(dist: np.ndarray) -> np.ndarray:
    """Indices sorting ``dist`` descending, later positions first among ties.

    scikit-learn relocates empty clusters to the farthest points in
    decreasing distance; ``np.argpartition`` breaks its ties toward later
    samples, so do we (rows are kept in data order through the reduction).
    """
    position = np.arange(dist.shape[0])
    return np.lexsort((-position, -dist))


def merge_top(keys: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Merge top-m lists from several blocks into one.

    Parameters
    ----------
    keys : ndarray of shape (r, m)
        Each row sorted descending (block order along r, earliest first).
    *values : ndarrays of shape (r, m, ...)
        Carried along with the keys.

    Returns
    -------
    keys (m,) and each value (m, ...): the m largest keys, descending, ties
    resolved toward later blocks (as within a block).
    """
    r, m = keys.shape
    # Later blocks first, then a stable sort: among equal keys the later
    # block (and within it the later row) wins, as in farthest_order.
    flat = keys[::-1].reshape(-1)
    order = np.argsort(-flat, kind="stable")[:m]
    return (flat[order],) + tuple(v[::-1].reshape((r * m,) + v.shape[2:])[order] for v in values)


def opening_key(dist: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """DP-means' test value of each row: min(w, 1) · ‖x − c‖² (opens when > λ).

    A row of weight w ≥ 1 stands for w copies of one point (scikit-learn's
    meaning of weights): the first copy opens a cluster when farther than √λ,
    as an unweighted row does. A lighter row must pay the price λ of a
    cluster on its own, w ‖x − c‖² > λ, or opening there could raise the
    objective Σ w ‖x − c‖² + λK.
    """
    return dist if weight is None else np.minimum(weight, 1.0) * dist


def costliest_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    centers: np.ndarray,
    origin: np.ndarray,
    n_far: int,
    moments: bool = False,
) -> dict:
    """:func:`assign_stats` with the kept rows ranked by :func:`opening_key` (DP-means).

    Without weights the key is the distance, so this is :func:`assign_stats`;
    ``far_dist`` then holds the key. Same returns, same tie order
    (:func:`farthest_order`).
    """
    if weight is None:
        return assign_stats(X, None, centers, origin, n_far, moments)
    X, labels, dist, out = lloyd_assign(X, weight, centers, origin, moments)
    weight = np.asarray(weight, dtype=np.float64)
    key = opening_key(dist, weight)
    finite = np.flatnonzero(np.isfinite(key))
    m = min(n_far, finite.size)
    if m:
        # Only the rows at or above the m-th largest key need sorting (ties kept).
        kth = np.partition(key[finite], finite.size - m)[finite.size - m]
        finite = finite[key[finite] >= kth]
    kept = finite[farthest_order(key[finite])[:m]]
    out.pop("far_row")
    out["far_dist"] = np.full(n_far, -np.inf)
    out["far_label"] = np.full(n_far, -1.0)
    out["far_weight"] = np.zeros(n_far)
    out["far_x"] = np.zeros((n_far, X.shape[1]))
    if m:
        out["far_dist"][:m] = key[kept]
        out["far_label"][:m] = labels[kept]
        out["far_weight"][:m] = weight[kept]
        out["far_x"][:m] = X[kept]
    out.update(count=X.shape[0] - out["nonfinite"])
    return out
