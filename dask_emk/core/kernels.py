"""The block kernels of one reading of NaN, as one value a pass carries.

Complete rows go to :mod:`~dask_emk.core.estep` and :mod:`~dask_emk.core.assign`;
rows whose NaN entries are gaps (``nan_policy='marginalize'``) to
:mod:`~dask_emk.core.marginal`. A fit picks its kernels once
(:func:`block_kernels`) and passes them in its block function's arguments,
so a worker calls what the client chose (functions pickle by name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dask_emk.core import assign, estep, marginal
from dask_emk.core.nan_policy import NanPolicy


@dataclass(frozen=True)
class BlockKernels:
    """The functions a block of rows needs, for one reading of NaN.

    Attributes
    ----------
    gaps : bool
        NaN entries are gaps: the statistics also hold the masses of the
        observed features (``Nf``, ``obs``), and nearest centres and
        distances are over observed coordinates.
    estep_stats, resp_stats, mixture_rows : callable
        The E-step statistics, the statistics of given responsibilities and
        the per-row mixture outputs (as :mod:`dask_emk.core.estep`).
    assign_stats : callable
        The Lloyd statistics (as :func:`dask_emk.core.assign.assign_stats`).
    """

    gaps: bool
    estep_stats: Callable
    resp_stats: Callable
    mixture_rows: Callable
    assign_stats: Callable


#: Kernels of rows without NaN (NaN rows are refused or left out before them).
COMPLETE = BlockKernels(
    False, estep.estep_stats, estep.resp_stats, estep.mixture_rows, assign.assign_stats
)
#: Kernels that marginalise NaN entries (:mod:`dask_emk.core.marginal`).
WITH_GAPS = BlockKernels(
    True, marginal.estep_stats, marginal.resp_stats, marginal.mixture_rows, marginal.assign_stats
)


def block_kernels(nan_policy: NanPolicy) -> BlockKernels:
    """The kernels of the passes of a fit under ``nan_policy``."""
    return WITH_GAPS if nan_policy.marginalizes else COMPLETE
