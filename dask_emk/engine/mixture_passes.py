"""Block functions of Gaussian-mixture passes: what a Dask worker runs for
GaussianMixture, GaussianMixtureIC, the annealing and their predictions.

They live in the engine, not beside the estimator, because a worker imports
the module of every function it unpickles: importing
:mod:`dask_emk.models.gmm` would load scikit-learn into each worker process
(~50 MiB RSS) just to call a numpy kernel.
"""

from __future__ import annotations

import numpy as np

from dask_emk.core import assign, blocks, estep, marginal, mixture
from dask_emk.core.kernels import COMPLETE, BlockKernels
from dask_emk.core.layout import StatsLayout


def mixture_block(
    X, weight, params: mixture.MixtureParams, layout: StatsLayout, kernels: BlockKernels = COMPLETE
):
    """Packed E-step statistics of one block (the engine's block function)."""
    return layout.pack(kernels.estep_stats(X, weight, params))


def resp_block(
    X, weight, rows, rule: tuple, origin, covariance_type, layout: StatsLayout,
    kernels: BlockKernels = COMPLETE,
):  # fmt: skip
    """Packed statistics for initial responsibilities given by ``rule`` (a
    row-keyed block function: ``rows`` are the block's global row indices).

    ``rule`` is ``("nearest", centers)`` for hard assignment to centres or
    ``("random", seed, K)`` for uniform random responsibilities, drawn per
    row (:func:`dask_emk.core.blocks.row_uniforms`).
    """
    if rule[0] == "nearest" and kernels.gaps:
        labels, _ = marginal.nearest(X, rule[1], origin)
        resp = assign.one_hot(labels, rule[1].shape[0])
    elif rule[0] == "nearest":
        labels, _ = assign.nearest(blocks.shift_block(X, origin), rule[1] - origin)
        resp = assign.one_hot(labels, rule[1].shape[0])
    else:
        resp = np.ascontiguousarray(blocks.row_uniforms(rows, rule[1], rule[2]).T)
        resp /= resp.sum(axis=1, keepdims=True)
    return layout.pack(kernels.resp_stats(X, weight, resp, origin, covariance_type))


def log_prob_rows(
    X, params: mixture.MixtureParams, kernels: BlockKernels = COMPLETE
) -> np.ndarray:
    """log p(x) per row (of the observed features, with gaps), shape (n,)."""
    return kernels.mixture_rows(X, params, "log_prob")


def resp_rows(
    X, params: mixture.MixtureParams, kernels: BlockKernels = COMPLETE
) -> np.ndarray:
    """Responsibilities per row, shape (n, K)."""
    return kernels.mixture_rows(X, params, "resp")


def most_probable_rows(
    X, params: mixture.MixtureParams, kernels: BlockKernels = COMPLETE
) -> np.ndarray:
    """Most probable component per row, shape (n,)."""
    return kernels.mixture_rows(X, params, "label")


# ------------------------------------------------- the annealing's passes
def moments_block(X, weight, origin: np.ndarray, layout: StatsLayout) -> np.ndarray:
    """Packed n, Σ(x−c), Σ(x−c)(x−c)ᵀ of one block (a K=1 full E-step)."""
    d = X.shape[1]
    params = mixture.MixtureParams(origin[None, :], np.zeros(1), np.eye(d)[None], "full", origin)
    return layout.pack(estep.estep_stats(X, weight, params))


def anneal_block(X, weight, params: mixture.MixtureParams, layout: StatsLayout) -> np.ndarray:
    """Packed :func:`dask_emk.core.estep.anneal_stats` of one block."""
    return layout.pack(estep.anneal_stats(X, weight, params))
