"""The E-step of one block: cut into sub-blocks, each computed by the dense
E-step (:mod:`dask_emk.core.mixture`) or the sparse one
(:mod:`dask_emk.core.sparse`), as the pass's
:class:`~dask_emk.core.mixture.EStepOptions` and the sparse E-step's probe
decide; then the block's statistics or per-row outputs. Both paths give the
same statistics to rounding (docs/NUMERICS.md).
"""

from __future__ import annotations

import numpy as np

from dask_emk.core import sparse
from dask_emk.core.blocks import shift_block, sub_blocks, thread_scratch
from dask_emk.core.mixture import (
    DEFAULT_ESTEP,
    EStepOptions,
    MixtureParams,
    add_stats,
    central_moments,
    dense_rows,
    dense_stats,
    mixture_sub_blocks,
    raw_moments,
)


def walk_sub_blocks(X: np.ndarray, params: MixtureParams, covariance_type: str):
    """Yield (rows, plan): a sparse sub-block with its
    :class:`~dask_emk.core.sparse.SparsePlan`, or a dense sub-block (sized by
    :func:`mixture_sub_blocks` for ``covariance_type``'s features) with None."""
    n, d = X.shape
    K = params.means.shape[0]
    scratch = thread_scratch("sparse")
    # Equal parts (not a full step and a sliver): each part costs a probe
    # and K per-component calls whatever its size.
    parts = len(sub_blocks(n, d + K, sparse.SPARSE_SUB_BLOCK_BYTES))
    for outer in sub_blocks(n, 1, 8 * -(-n // parts)):
        Xo = X[outer]
        plan = sparse.sparse_plan(Xo, params, scratch)
        if plan is not None:
            yield outer, plan
            continue
        nbytes = params.estep.sub_block_bytes
        for inner in mixture_sub_blocks(Xo.shape[0], d, covariance_type, K, nbytes):
            stop = min(inner.stop, Xo.shape[0])
            yield slice(outer.start + inner.start, outer.start + stop), None


def estep_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    params: MixtureParams,
    moment_type: str | None = None,
    softness: bool = False,
) -> dict:
    """E-step statistics of one block.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    params : MixtureParams
    moment_type : str, optional
        Covariance type of the second moments ``Q`` (default: that of
        ``params``; the annealing asks for 'full' moments of 'shared'
        responsibilities).
    softness : bool
        Also return ``soft`` = Σ w (1 − max_k r_k), zero once assignments
        are hard.

    Returns
    -------
    dict with ``n`` (Σ w), ``loglik`` (Σ w log p(x)), ``nonfinite`` (number
    of rows whose log-likelihood is not finite, i.e. rows holding NaN/inf;
    they are left out of every other statistic), and ``N``, ``S``, ``Q`` as
    in :func:`~dask_emk.core.mixture.moment_stats` about the current means.
    """
    ct = moment_type or params.covariance_type
    total, scratch = None, thread_scratch("kernel")
    for rows, plan in walk_sub_blocks(X, params, ct):
        w = None if weight is None else weight[rows]
        if plan is None:
            part = dense_stats(X[rows], w, params, ct, softness, scratch)
        else:
            part = sparse.sparse_stats(plan, w, ct, softness)
        total = add_stats(total, part)
    stats = central_moments(total, params.shifted_means, ct)
    extra = ("n", "loglik", "nonfinite") + (("soft",) if softness else ())
    stats.update((name, total[name]) for name in extra)
    return stats


def resp_stats(
    X: np.ndarray,
    weight: np.ndarray | None,
    resp: np.ndarray,
    origin: np.ndarray,
    covariance_type: str,
    estep: EStepOptions = DEFAULT_ESTEP,
) -> dict:
    """Statistics of one block for given responsibilities (initialisation).

    Moments are taken about ``origin`` for every component, so the M-step
    reads means as origin + S/N.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    resp : ndarray of shape (n, K)
    origin : ndarray of shape (d,)
    covariance_type : str
    estep : EStepOptions
        Only its ``sub_block_bytes`` applies (there is no sparse path here).
    """
    n, d = X.shape
    K = resp.shape[1]
    total, scratch = None, thread_scratch("kernel")
    for rows in mixture_sub_blocks(n, d, covariance_type, K, estep.sub_block_bytes):
        Y = shift_block(X[rows], origin, scratch)
        w = None if weight is None else weight[rows]
        total = add_stats(total, raw_moments(Y, resp[rows].T, w, covariance_type, None, scratch))
    stats = central_moments(total, np.zeros((K, d)), covariance_type)
    w_total = float(n) if weight is None else float(weight.sum())
    nonfinite = n - int(np.isfinite(X).all(axis=1).sum())
    stats.update(n=np.float64(w_total), loglik=np.float64(0.0), nonfinite=np.float64(nonfinite))
    return stats


def mixture_rows(X: np.ndarray, params: MixtureParams, kind: str) -> np.ndarray:
    """Per-row outputs of one block, computed in cache-sized sub-blocks.

    Memory stays a small multiple of the block: the features Φ of a whole
    block would be (q + d)/d times its size (70x for full covariance, d=32).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    params : MixtureParams
    kind : {'log_prob', 'resp', 'label'}

    Returns
    -------
    log p(x) (n,), responsibilities (n, K) or the most probable component
    (n,) int64; NaN (label 0) on rows that are not finite.
    """
    n, d = X.shape
    K = params.means.shape[0]
    shape = (n, K) if kind == "resp" else (n,)
    out = np.empty(shape, dtype=np.int64 if kind == "label" else np.float64)
    scratch = thread_scratch("kernel")
    for rows, plan in walk_sub_blocks(X, params, params.covariance_type):
        if plan is None:
            out[rows] = dense_rows(X[rows], params, kind, scratch)
        else:
            sparse.sparse_rows(plan, kind, out[rows])
    return out


def anneal_stats(X: np.ndarray, weight: np.ndarray | None, params: MixtureParams) -> dict:
    """Shared-σ² E-step statistics with full-covariance moments of one block.

    The responsibilities are those of ``params`` (covariance_type 'shared');
    the moments are the 'full' ones of :func:`~dask_emk.core.mixture.moment_stats`, so each
    component's responsibility-weighted covariance (its critical variance is
    the largest eigenvalue) is one M-step away.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    weight : ndarray of shape (n,) or None
    params : MixtureParams with covariance_type 'shared'

    Returns
    -------
    dict with ``n``, ``loglik``, ``nonfinite`` as :func:`estep_stats`, ``N``
    (K,), ``S`` (K, d), ``Q`` (K, d, d) about the current means, and
    ``soft`` = Σ w (1 − max_k r_k), zero once assignments are hard.
    """
    return estep_stats(X, weight, params, moment_type="full", softness=True)
