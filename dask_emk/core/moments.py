"""Per-feature counts, means and variances of a block, NaN ignored, merged exactly.

A block's statistics are, per feature, the number of non-NaN values, their
total weight, their weighted mean and M2 = Σ w (x − mean)² (two passes over
the block, which is in memory). Blocks are merged by Chan, Golub and
LeVeque's pairwise update, exact in real arithmetic and stable in floating
point, where a sum of squares minus n·mean² cancels catastrophically for
data far from zero (temperatures in kelvin, say). Means are kept as a
reference value (a value of the data) plus an offset from it: a mean of 1e6
held whole carries an error of 1e-10, which the update's δ² term turns into
relative errors of 1e-12 in the variance of data spread by 6; the offsets
are of the data's spread, their errors of its order times eps.

numpy only: this is numeric core, no Dask.
"""

from __future__ import annotations

import numpy as np

from dask_emk.core.layout import StatsLayout


def moments_layout(n_features: int) -> StatsLayout:
    """Layout of a block's statistics: ``nonfinite`` (±inf values) and per feature
    ``count`` (non-NaN values), ``weight`` (their total weight), the mean as
    ``ref`` + ``offset``, and ``m2``."""
    d = (n_features,)
    names = ("count", "weight", "ref", "offset", "m2")
    return StatsLayout({"nonfinite": (), **dict.fromkeys(names, d)})


def moments_block(X: np.ndarray, weight: np.ndarray | None, layout: StatsLayout) -> np.ndarray:
    """Statistics of one block (n, d), NaN values left out feature by feature.

    Returns
    -------
    ndarray of shape (1, layout.size)
    """
    X = np.asarray(X, dtype=np.float64)
    finite = np.isfinite(X)
    nonfinite = np.count_nonzero(~finite) - np.count_nonzero(np.isnan(X))
    w = finite if weight is None else finite * np.asarray(weight, dtype=np.float64)[:, None]
    total = w.sum(axis=0, dtype=np.float64)
    first = X[np.argmax(finite, axis=0), np.arange(X.shape[1])] if X.shape[0] else 0.0
    ref = np.where(finite.any(axis=0), first, 0.0)
    Y = np.where(finite, X - ref, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.where(total > 0, (w * Y).sum(axis=0) / total, 0.0)
    m2 = (w * (Y - offset) ** 2).sum(axis=0)
    stats = {"nonfinite": nonfinite, "count": finite.sum(axis=0), "weight": total}
    return layout.pack(stats | {"ref": ref, "offset": offset, "m2": m2})


def merge_moments(rows: np.ndarray, layout: StatsLayout) -> np.ndarray:
    """Merge packed block statistics (r, size) into one row (1, size), in row order.

    Chan's update: with δ = mean_b − mean_a and W = W_a + W_b,
    mean = mean_a + δ W_b / W (in ``offset``) and M2 = M2_a + M2_b + δ² W_a W_b / W.
    Associative, and its output is an input again (a tree of merges).
    """
    parts = layout.unpack_rows(rows)
    acc = {name: values[0].copy() for name, values in parts.items()}
    for i in range(1, rows.shape[0]):
        b = {name: values[i] for name, values in parts.items()}
        empty = acc["weight"] <= 0  # no reference yet: take b's
        for name in ("ref", "offset"):
            acc[name] = np.where(empty, b[name], acc[name])
        w_a, total = acc["weight"], acc["weight"] + b["weight"]
        share = np.divide(b["weight"], total, out=np.zeros_like(total), where=total > 0)
        delta = (b["ref"] - acc["ref"]) + (b["offset"] - acc["offset"])
        acc["m2"] = acc["m2"] + b["m2"] + delta**2 * w_a * share
        acc["offset"] = acc["offset"] + delta * share
        acc["weight"] = total
        acc["count"] = acc["count"] + b["count"]
        acc["nonfinite"] = acc["nonfinite"] + b["nonfinite"]
    return layout.pack(acc)
