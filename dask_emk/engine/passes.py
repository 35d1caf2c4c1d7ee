"""One-pass statistics for k-means and seeding, how their rows combine, and k-means' rows.

Most statistics add up; a few are lists of the m largest keys with rows
attached (the farthest points of a k-means pass, sampled rows of a seeding
pass). :func:`merge_packed` is the ``combine`` given to
:func:`dask_emk.engine.reduction.reduce_pass`: it adds the additive parts of a stack of
packed rows and merges their top-m lists with :func:`dask_emk.core.assign.merge_top`.
The per-row outputs of a fitted k-means (labels, distances) live here too, so
that a worker running them never imports the estimators or scikit-learn.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from dask_emk.core import assign, blocks, hartigan, marginal, seeding
from dask_emk.core.assign import merge_top
from dask_emk.core.kernels import COMPLETE, BlockKernels, block_kernels
from dask_emk.core.layout import StatsLayout
from dask_emk.core.nan_policy import NanPolicy
from dask_emk.engine import reduction
from dask_emk.engine.batch import Pass

FAR_LIST = (("far_dist", ("far_label", "far_weight", "far_x")),)
SAMPLE_LIST = (("key", ("x",)),)


def merge_packed(rows: np.ndarray, layout: StatsLayout, tops: tuple) -> np.ndarray:
    """Combine stacked packed rows (r, size) into one (1, size) row.

    Parameters
    ----------
    rows : ndarray of shape (r, layout.size)
        Block rows in block order.
    layout : StatsLayout
    tops : tuple of (key_name, value_names)
        Each top-m list: keys of shape (m,) or (s, m) for s independent
        streams, and values with the same leading shape.
    """
    parts = layout.unpack_rows(rows)
    listed = {name for key, values in tops for name in (key, *values)}
    out = {name: arr.sum(axis=0) for name, arr in parts.items() if name not in listed}
    for key, values in tops:
        keys = parts[key]
        if keys.ndim == 2:
            merged = merge_top(keys, *(parts[v] for v in values))
        else:
            streams = [
                merge_top(keys[:, s], *(parts[v][:, s] for v in values))
                for s in range(keys.shape[1])
            ]
            merged = [np.stack(col) for col in zip(*streams, strict=True)]
        out[key] = merged[0]
        out.update(zip(values, merged[1:], strict=True))
    return layout.pack(out)


def assign_layout(
    n_clusters: int, n_features: int, n_far: int, moments: bool, gaps: bool = False
) -> StatsLayout:
    """Packed layout of :func:`dask_emk.core.assign.assign_stats` (with ``gaps``,
    of :func:`dask_emk.core.marginal.assign_stats`)."""
    K, d, m = n_clusters, n_features, n_far
    shapes = {"nonfinite": (), "count": (), "inertia": (), "N": (K,), "S": (K, d)}
    if gaps:
        shapes["Nf"] = (K, d)
    if moments:
        shapes.update(ysum=(d,), ysq=(d,), **({"obs": (d,)} if gaps else {}))
    shapes.update(far_dist=(m,), far_label=(m,), far_weight=(m,), far_x=(m, d))
    return StatsLayout(shapes)


def assign_block(
    X, weight, centers, origin, n_far, moments, layout, kernels: BlockKernels = COMPLETE
) -> np.ndarray:
    """Packed Lloyd statistics of one block (the engine's block function)."""
    return layout.pack(kernels.assign_stats(X, weight, centers, origin, n_far, moments))


def assign_request(
    centers, origin, n_far=0, moments=False, kernels: BlockKernels = COMPLETE,
    complete_rows=False,
) -> Pass:  # fmt: skip
    """The request of a Lloyd pass at ``centers`` (arguments as :func:`assign_pass`;
    ``kernels`` as :func:`dask_emk.core.kernels.block_kernels` gives them,
    ``complete_rows`` as :class:`dask_emk.engine.batch.Pass`)."""
    layout = assign_layout(centers.shape[0], centers.shape[1], n_far, moments, kernels.gaps)
    combine = partial(merge_packed, layout=layout, tops=FAR_LIST)
    args = (centers, origin, n_far, moments, layout, kernels)
    return Pass(layout, assign_block, args, combine, complete_rows)


def assign_pass(
    X, weight, centers, origin, n_far=0, moments=False, split_every=None,
    nan_policy=NanPolicy.RAISE,
) -> dict:  # fmt: skip
    """One pass: summed Lloyd statistics with merged farthest rows (one compute).

    Parameters
    ----------
    X : ndarray or dask array of shape (n, d)
    weight : ndarray or dask array of shape (n,), or None
    centers : ndarray of shape (K, d), float64
    origin : ndarray of shape (d,), the fixed reference point
    n_far : int
    moments : bool
    nan_policy : NanPolicy
        'omit' leaves out rows holding NaN; 'marginalize' takes NaN entries
        as missing coordinates.

    Returns
    -------
    dict, see :func:`dask_emk.core.assign.assign_stats`; raises ValueError when
    the data holds NaN or infinity.
    """
    request = assign_request(centers, origin, n_far, moments, block_kernels(nan_policy))
    return _run(X, weight, request, split_every, nan_policy)


def _run(X, weight, request: Pass, split_every, nan_policy: NanPolicy) -> dict:
    return reduction.run_pass(
        X, weight, request.layout, request.block_fn, *request.args, split_every=split_every,
        combine=request.combine, nan_policy=nan_policy, complete_rows=request.complete_rows,
    )  # fmt: skip


def costliest_block(X, weight, centers, origin, n_far, moments, layout) -> np.ndarray:
    """Packed DP-means statistics of one block (the engine's block function)."""
    return layout.pack(assign.costliest_stats(X, weight, centers, origin, n_far, moments))


def costliest_pass(
    X, weight, centers, origin, n_far, moments=False, split_every=None,
    nan_policy=NanPolicy.RAISE,
) -> dict:  # fmt: skip
    """:func:`assign_pass` keeping the rows that DP-means would open first (one compute).

    The kept rows are ranked by :func:`dask_emk.core.assign.opening_key`,
    min(w, 1) ‖x − c‖², which is the distance without weights; ``far_dist``
    holds that key. Arguments and returns as :func:`assign_pass`.
    """
    layout = assign_layout(centers.shape[0], centers.shape[1], n_far, moments)
    return reduction.run_pass(
        X, weight, layout, costliest_block, centers, origin, n_far, moments, layout,
        split_every=split_every, combine=partial(merge_packed, layout=layout, tops=FAR_LIST),
        nan_policy=nan_policy,
    )  # fmt: skip


def seed_block(X, weight, rows, centers, trials, origin, n_keep, seed, scale, layout):
    """Packed seeding statistics of one block (a row-keyed block function)."""
    stats = seeding.seed_stats(X, weight, rows, centers, trials, origin, n_keep, seed, scale)
    return layout.pack(stats)


def seed_request(centers, trials, origin, n_keep, seed, scale=None, complete_rows=False) -> Pass:
    """The request of a seeding pass (arguments as :func:`seed_pass`;
    ``complete_rows`` as :class:`dask_emk.engine.batch.Pass`)."""
    s, d = max(trials.shape[0], 1), origin.shape[0]
    layout = StatsLayout(
        {"nonfinite": (), "potential": (s,), "key": (s, n_keep), "x": (s, n_keep, d)}
    )
    args = (centers, trials, origin, n_keep, seed, scale, layout)
    combine = partial(merge_packed, layout=layout, tops=SAMPLE_LIST)
    return Pass(layout, reduction.RowKeyed(seed_block), args, combine, complete_rows)


def seed_pass(
    X, weight, centers, trials, origin, n_keep, seed, scale=None, split_every=None,
    nan_policy=NanPolicy.RAISE,
) -> dict:
    """One seeding pass (one compute): potentials and sampled rows per stream.

    See :func:`dask_emk.core.seeding.seed_stats` for the arguments; returns
    ``potential`` (s,), ``key`` (s, n_keep) descending and ``x`` (s, n_keep, d)
    merged over all blocks; rows holding NaN are never drawn when ``nan_policy``
    allows NaN. Raises ValueError when the data holds NaN/inf (inf only, then).
    """
    request = seed_request(
        centers, trials, origin, n_keep, seed, scale, complete_rows=nan_policy.allows_nan
    )
    return _run(X, weight, request, split_every, nan_policy)


def hartigan_layout(n_clusters: int, n_features: int, n_bins: int) -> StatsLayout:
    """Packed layout of :func:`dask_emk.core.hartigan.hartigan_stats` (all parts add)."""
    K, d, B = n_clusters, n_features, n_bins
    return StatsLayout(
        {"nonfinite": (), "count": (), "inertia": (), "N": (K,), "S": (K, d), "dN": (B, K),
         "dS": (B, K, d), "gain": (B,), "moved": (B,)}
    )  # fmt: skip


def hartigan_block(X, weight, centers, mass, origin, edges, layout) -> np.ndarray:
    """Packed Hartigan statistics of one block (the engine's block function)."""
    return layout.pack(hartigan.hartigan_stats(X, weight, centers, mass, origin, edges))


def hartigan_pass(
    X, weight, centers, mass, origin, edges, split_every=None, nan_policy=NanPolicy.RAISE
) -> dict:
    """One pass (one compute): Lloyd sums at ``centers`` and the binned Hartigan moves.

    See :func:`dask_emk.core.hartigan.hartigan_stats` for the arguments and the
    returned statistics, summed over all blocks. Raises ValueError when the
    data holds NaN or infinity.
    """
    layout = hartigan_layout(centers.shape[0], centers.shape[1], edges.shape[0] + 1)
    return reduction.run_pass(
        X, weight, layout, hartigan_block, centers, mass, origin, edges, layout,
        split_every=split_every, nan_policy=nan_policy,
    )  # fmt: skip


# ------------------------------------------------- k-means rows (predict, transform)
def nearest_center_rows(
    X, centers: np.ndarray, origin: np.ndarray, kernels: BlockKernels = COMPLETE
) -> np.ndarray:
    """Nearest centre per row, shape (n,) int32 (as in the Lloyd passes).

    With ``kernels.gaps``, by the distance over observed coordinates; rows with no
    observed coordinate get :data:`dask_emk.core.blocks.LABEL_FILL`.
    """
    if kernels.gaps:
        return _with_gaps(X, lambda Xk: marginal.nearest(Xk, centers, origin)[0], np.int32)
    return assign.lloyd_assign(X, None, centers, origin)[1].astype(np.int32)


def distance_rows(
    X, centers: np.ndarray, origin: np.ndarray, kernels: BlockKernels = COMPLETE
) -> np.ndarray:
    """Euclidean distance of each row to each centre, shape (n, K) (over
    observed coordinates with ``kernels.gaps``; NaN for rows with none)."""
    if kernels.gaps:
        def distances(Xk):
            Y, seen = marginal.shifted_observed(Xk, origin)
            return np.sqrt(marginal.masked_distances(Y, seen, centers - origin))

        return _with_gaps(X, distances, X.dtype, centers.shape[0])
    Y = blocks.shift_block(X, origin)
    return np.sqrt(blocks.squared_distances(Y, centers - origin))


def _with_gaps(X, fn, dtype, n_out=None) -> np.ndarray:
    """``fn`` on the rows with an observed coordinate; the fill value on the others."""
    keep, _ = marginal.usable_rows(X)
    fill = blocks.LABEL_FILL if np.dtype(dtype).kind in "iu" else np.nan
    out = np.full(X.shape[:1] + (() if n_out is None else (n_out,)), fill, dtype=dtype)
    out[keep] = fn(X[keep])
    return out
