"""dask_emk: Gaussian mixtures by EM and k-means on chunked, out-of-core data."""

from ._version import __version__
from .gmm import GaussianMixture

__all__ = ["GaussianMixture", "__version__"]
