"""How NaN in the input is read: the estimators' ``nan_policy`` as one value.

Imports nothing but :mod:`enum`, so the pipeline's configuration can check a
policy without loading the numeric stack (:mod:`dask_emk.engine.options`).
"""

from __future__ import annotations

from enum import Enum


class NanPolicy(Enum):
    """The estimators' ``nan_policy`` (after scipy's), made from the user's string once
    (:meth:`parse`, in :func:`dask_emk.engine.inputs.as_input`) and carried on the
    input and the passes.

    RAISE: NaN is an error. OMIT: rows holding NaN take no part in any
    statistic and get NaN outputs. MARGINALIZE: NaN entries are missing
    features, marginalised by the kernels (:mod:`dask_emk.core.marginal`).
    ±inf is an error under every policy.
    """

    RAISE = "raise"
    OMIT = "omit"
    MARGINALIZE = "marginalize"

    @classmethod
    def parse(cls, value: str | NanPolicy) -> NanPolicy:
        """The policy named by ``value``; ValueError naming the choices otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str) and value in NAN_POLICIES:
            return cls(value)
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {value!r}.")

    @property
    def allows_nan(self) -> bool:
        """NaN is no error (only ±inf is): 'omit' and 'marginalize'."""
        return self is not NanPolicy.RAISE

    @property
    def omits_rows(self) -> bool:
        """Rows holding NaN take no part in any statistic ('omit')."""
        return self is NanPolicy.OMIT

    @property
    def marginalizes(self) -> bool:
        """NaN entries are gaps the kernels marginalise ('marginalize')."""
        return self is NanPolicy.MARGINALIZE


#: The user's spellings of :class:`NanPolicy`, in its order.
NAN_POLICIES = tuple(policy.value for policy in NanPolicy)
