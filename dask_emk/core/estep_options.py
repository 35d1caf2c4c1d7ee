"""The E-step options: a value that travels with a pass's parameters.

Kept apart from the kernels (:mod:`dask_emk.core.mixture`) so the parameter
tables (:mod:`dask_emk.models.params`) read them without importing numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from dask_emk.core.blocks import SUB_BLOCK_BYTES

#: The E-step paths an estimator's ``estep`` parameter names (:class:`EStepOptions`).
ESTEP_PATHS = ("auto", "dense", "sparse")

#: Values of :attr:`EStepOptions.screen_float32`.
SCREEN_FLOAT32_CHOICES = ("auto", "never", "always")


@dataclass(frozen=True)
class EStepOptions:
    """How the E-steps of a pass are computed: a value that travels with the
    parameters (:attr:`MixtureParams.estep`), so every worker sees it.

    Every choice gives the same statistics to rounding (docs/NUMERICS.md);
    they differ in speed, and in the last bits.

    Attributes
    ----------
    path : {'auto', 'dense', 'sparse'}
        'auto': a sub-block takes the sparse E-step where a probe of its first
        rows says that pays (:func:`dask_emk.core.sparse.sparse_plan`);
        'dense': every sub-block takes the dense E-step; 'sparse': every
        sub-block takes the sparse one whatever it costs (one with a
        non-finite row, or with K = 1, is still dense).
    screen_float32 : {'auto', 'never', 'always'}
        Whether the sparse E-step's screen of all pairs may run in float32
        where its error bound allows (:func:`dask_emk.core.candidates._screened_bounds`):
        where the work is large enough to pay ('auto'), never, or whatever
        the work ('always').
    sub_block_bytes : int
        Size of a dense sub-block (:func:`mixture_sub_blocks`); small ones
        add the statistics up over many sub-blocks.
    prune_nats : float
        The sparse E-step skips a pair below e^-prune_nats / K of its row's
        best (:func:`dask_emk.core.candidates.candidate_pairs`): 37 keeps all
        skipped ones below e^-37 ≈ 0.4 ε of the row's total; less skips more
        pairs but changes the last digits (the tests cut it to show that).
    exact_features : int
        Candidates come from the exact log-densities of all pairs where the
        features Φ number at most this many times d, else from the bound
        metric (:func:`dask_emk.core.candidates.exact_candidates`): exact
        arithmetic on every pair against looser bounds from one distance GEMM.
    max_directions : int
        Directions of small eigenvalue a full component's bound corrects for
        (:class:`dask_emk.core.candidates.BoundMetric`): fewer candidates for
        spread components against one more product per direction and row.
    screen_slack : float
        Largest error, in nats, of a float32 sub-block of the screen
        (:func:`dask_emk.core.candidates._screened_bounds`); above it the
        sub-block is screened in float64. Each nat widens the candidates'
        window by two: a faster screen against more candidates.
    wide_features : int
        Feature count (q + d) from which the dense E-step's GEMM writes (n, K)
        and transposes it (:func:`dask_emk.core.mixture.weighted_log_prob`):
        BLAS's faster orientation for many features against one copy.
    """

    path: str = "auto"
    screen_float32: str = "auto"
    sub_block_bytes: int = SUB_BLOCK_BYTES
    prune_nats: float = 37.0
    exact_features: int = 3
    max_directions: int = 3
    screen_slack: float = 0.5
    wide_features: int = 64

    def __post_init__(self) -> None:
        if self.path not in ESTEP_PATHS:
            raise ValueError(f"estep must be one of {ESTEP_PATHS}, got {self.path!r}.")
        if self.screen_float32 not in SCREEN_FLOAT32_CHOICES:
            raise ValueError(
                f"screen_float32 must be one of {SCREEN_FLOAT32_CHOICES}, "
                f"got {self.screen_float32!r}."
            )
        for name, least in (("sub_block_bytes", 1), ("exact_features", 0),
                            ("max_directions", 0), ("wide_features", 0)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
        if not _real(self.prune_nats) or not math.isfinite(self.prune_nats):
            raise ValueError(f"prune_nats must be a finite number, got {self.prune_nats!r}.")
        if not _real(self.screen_slack) or not self.screen_slack >= 0:
            raise ValueError(f"screen_slack must be a number >= 0, got {self.screen_slack!r}.")

    @staticmethod
    def of(estep: str | EStepOptions) -> EStepOptions:
        """The options of an estimator's ``estep`` parameter: a path of
        :data:`ESTEP_PATHS` (the other options at their defaults) or options."""
        return estep if isinstance(estep, EStepOptions) else EStepOptions(path=estep)


def _real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


#: The options of a pass that names none.
DEFAULT_ESTEP = EStepOptions()
