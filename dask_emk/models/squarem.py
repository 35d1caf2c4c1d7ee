"""SQUAREM-accelerated EM as a step generator (``GaussianMixture(accelerate=True)``).

A cycle from a point p whose EM step F(p) is known (with its lower bound):

1. one pass at F(p): the lower bound there and F(F(p));
2. the S3 jump q from p, F(p), F(F(p)) (:func:`dask_emk.core.squarem.extrapolate`);
3. one pass at F(F(p)) and q together (one read of the data, two models
   of the batch): q is kept if its lower bound is finite and at least the one
   of F(F(p)), else F(F(p)) is: the monotone safeguard. The kept point is
   the next cycle's p, and its EM step came with the pass.

Every pass is one iteration of the fit: its lower bound is that of the
point kept, never below the previous one (EM does not decrease it and the
safeguard keeps the better of the two). The steplength's bound grows ×4
whenever a step reaches it and shrinks ×4 when a jump at it is refused, as
in the SQUAREM package (``step.max0 = 1``, ``mstep = 4``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dask_emk.core.kernels import block_kernels
from dask_emk.core.squarem import STEP_FACTOR, extrapolate, from_vector, to_vector
from dask_emk.engine.batch import Steps

if TYPE_CHECKING:
    from dask_emk.core.layout import StatsLayout
    from dask_emk.core.mstep import GaussianState
    from dask_emk.engine.inputs import InputData
    from dask_emk.models.gmm import GaussianMixture, _Progress


def squarem_steps(
    gm: GaussianMixture, data: InputData, state: GaussianState, layout: StatsLayout,
    progress: _Progress,
) -> Steps:
    """Accelerated EM iterations from ``state``; returns the last M-step's state.

    ``gm`` is the GaussianMixture (its ``_em_request`` and ``_m_step``),
    ``progress`` records each pass (``_Progress`` of :mod:`dask_emk.models.gmm`).
    """
    ct, max_iter, kernels = gm.covariance_type, gm.max_iter, block_kernels(data.nan_policy)
    if max_iter == 0:
        return state
    stats = yield gm._em_request(state, layout, kernels)
    point, step = state, gm._m_step(stats, state, data)  # p and F(p)
    if progress.record(stats, step):
        return step
    step_max = 1.0
    while progress.n_iter < max_iter:
        stats = yield gm._em_request(step, layout, kernels)
        step2 = gm._m_step(stats, step, data)  # F(F(p))
        if progress.record(stats, step2) or progress.n_iter >= max_iter:
            return step2
        p = to_vector(point, ct)
        jump, alpha = extrapolate(p, to_vector(step, ct), to_vector(step2, ct), step_max)
        trial = _state_or_none(jump, step2, gm) if alpha > 1.0 else None
        if trial is None:
            point, step = step, step2  # a plain EM step: F(F(p)) needs its pass next
        else:
            plain, jumped = yield [
                gm._em_request(step2, layout, kernels), gm._em_request(trial, layout, kernels)
            ]
            kept = _kept_jump(gm, trial, jumped, plain, data)
            if kept is None:
                if alpha == step_max:
                    step_max = max(1.0, step_max / STEP_FACTOR)
                alpha = 1.0
                point, step, stats = step2, gm._m_step(plain, step2, data), plain
            else:
                (point, step), stats = kept, jumped
            if progress.record(stats, step):
                break
        if alpha == step_max:
            step_max *= STEP_FACTOR
    return step


def _state_or_none(
    vector: np.ndarray, like: GaussianState, gm: GaussianMixture
) -> GaussianState | None:
    """The jump as a GaussianState, or None if it is not a usable mixture."""
    if not np.all(np.isfinite(vector)):
        return None
    try:
        return from_vector(vector, like, gm.covariance_type, gm.reg_covar)
    except ValueError:
        return None


def _kept_jump(
    gm: GaussianMixture, trial: GaussianState, jumped: dict, plain: dict, data: InputData
) -> tuple[GaussianState, GaussianState] | None:
    """(jump, its EM step) if the safeguard keeps the jump, else None."""
    if not _better(jumped, plain):
        return None
    try:
        return trial, gm._m_step(jumped, trial, data)
    except ValueError:  # the jump's M-step is degenerate: take EM's
        return None


def _better(jumped: dict, plain: dict) -> bool:
    """The monotone safeguard: the jump's lower bound is finite and >= the EM step's.

    A jump that makes some row's likelihood underflow to zero leaves that
    row out of its sums (counted in ``nonfinite``): refused too.
    """
    bound = jumped["loglik"] / jumped["n"]
    if not np.isfinite(bound) or jumped["nonfinite"] > plain["nonfinite"]:
        return False
    return bool(bound >= plain["loglik"] / plain["n"])
