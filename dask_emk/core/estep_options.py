"""The E-step options: a value that travels with a pass's parameters.

Kept apart from the kernels (:mod:`dask_emk.core.mixture`) so the parameter
tables (:mod:`dask_emk.models.params`) read them without importing numba.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """

    path: str = "auto"
    screen_float32: str = "auto"
    sub_block_bytes: int = SUB_BLOCK_BYTES

    def __post_init__(self) -> None:
        if self.path not in ESTEP_PATHS:
            raise ValueError(f"estep must be one of {ESTEP_PATHS}, got {self.path!r}.")
        if self.screen_float32 not in SCREEN_FLOAT32_CHOICES:
            raise ValueError(
                f"screen_float32 must be one of {SCREEN_FLOAT32_CHOICES}, "
                f"got {self.screen_float32!r}."
            )
        if (
            isinstance(self.sub_block_bytes, bool)
            or not isinstance(self.sub_block_bytes, int)
            or (self.sub_block_bytes < 1)
        ):
            raise ValueError(
                f"sub_block_bytes must be an integer >= 1, got {self.sub_block_bytes!r}."
            )

    @staticmethod
    def of(estep: str | EStepOptions) -> EStepOptions:
        """The options of an estimator's ``estep`` parameter: a path of
        :data:`ESTEP_PATHS` (the other options at their defaults) or options."""
        return estep if isinstance(estep, EStepOptions) else EStepOptions(path=estep)


#: The options of a pass that names none.
DEFAULT_ESTEP = EStepOptions()
