"""Per-feature counts, means and variances of a block, NaN ignored, merged exactly.

A block's statistics are, per feature, the number of non-NaN values, their
total weight, their weighted mean and M2 = Σ w (x − mean)² (two passes over
the block, which is in memory). Blocks are merged by Chan, Golub and
LeVeque's pairwise update, exact in real arithmetic and stable in floating
point, where a sum of squares minus n·mean² cancels catastrophically for
data far from zero (temperatures in kelvin, say).

numpy only: this is numeric core, no Dask.
"""

from __future__ import annotations

import numpy as np

from dask_emk.core.layout import StatsLayout


def moments_layout(n_features: int) -> StatsLayout:
    """Layout of a block's statistics: ``nonfinite`` (±inf values) and per feature
    ``count`` (non-NaN values), ``weight`` (their total weight), ``mean`` and ``m2``."""
    d = (n_features,)
    return StatsLayout({"nonfinite": (), "count": d, "weight": d, "mean": d, "m2": d})


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
    values = np.where(finite, X, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(total > 0, (w * values).sum(axis=0) / total, 0.0)
    m2 = (w * (values - mean) ** 2).sum(axis=0)
    return layout.pack(
        {
            "nonfinite": nonfinite,
            "count": finite.sum(axis=0),
            "weight": total,
            "mean": mean,
            "m2": m2,
        }
    )


def merge_moments(rows: np.ndarray, layout: StatsLayout) -> np.ndarray:
    """Merge packed block statistics (r, size) into one row (1, size), in row order.

    Chan's update: with δ = mean_b − mean_a and W = W_a + W_b,
    mean = mean_a + δ W_b / W and M2 = M2_a + M2_b + δ² W_a W_b / W.
    Associative, and its output is an input again (a tree of merges).
    """
    parts = layout.unpack_rows(rows)
    acc = {name: values[0].copy() for name, values in parts.items()}
    for i in range(1, rows.shape[0]):
        w_a, w_b = acc["weight"], parts["weight"][i]
        total = w_a + w_b
        share = np.divide(w_b, total, out=np.zeros_like(total), where=total > 0)
        delta = parts["mean"][i] - acc["mean"]
        acc["m2"] = acc["m2"] + parts["m2"][i] + delta**2 * w_a * share
        acc["mean"] = acc["mean"] + delta * share
        acc["weight"] = total
        acc["count"] = acc["count"] + parts["count"][i]
        acc["nonfinite"] = acc["nonfinite"] + parts["nonfinite"][i]
    return layout.pack(acc)
