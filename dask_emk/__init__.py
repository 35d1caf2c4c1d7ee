"""dask_emk: Gaussian mixtures by EM and k-means on chunked, out-of-core data.

The estimators are imported on first use (PEP 562): a Dask worker that
unpickles a block function from ``dask_emk.core`` or ``dask_emk.engine``
imports this package first, and importing the estimators here would load
scikit-learn into every worker process (~50 MiB RSS each) for nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from dask_emk._logging import STEPS_LOGGER  # noqa: F401 (public)
from dask_emk._version import __version__

#: Public name -> module that defines it.
_EXPORTS = {
    "AnnealedGaussianMixture": "dask_emk.models.anneal",
    "DPMeans": "dask_emk.models.dpmeans",
    "GaussianMixture": "dask_emk.models.gmm",
    "GaussianMixtureIC": "dask_emk.models.ic",
    "KMeans": "dask_emk.models.kmeans",
    "StandardScaler": "dask_emk.models.preprocess",
    "load": "dask_emk.models.persist",
    "save": "dask_emk.pipeline.results",
}

__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:
    from dask_emk.models.anneal import AnnealedGaussianMixture as AnnealedGaussianMixture
    from dask_emk.models.dpmeans import DPMeans as DPMeans
    from dask_emk.models.gmm import GaussianMixture as GaussianMixture
    from dask_emk.models.ic import GaussianMixtureIC as GaussianMixtureIC
    from dask_emk.models.kmeans import KMeans as KMeans
    from dask_emk.models.persist import load as load
    from dask_emk.models.preprocess import StandardScaler as StandardScaler
    from dask_emk.pipeline.results import save_model as save  # noqa: F401 (in __all__)


#: Public names defined under another name in their module.
_RENAMED = {"save": "save_model"}


def __getattr__(name: str) -> type:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dask_emk' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
