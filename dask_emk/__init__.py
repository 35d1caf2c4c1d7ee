"""dask_emk: Gaussian mixtures by EM and k-means on chunked, out-of-core data."""

from ._version import __version__
from .anneal import AnnealedGaussianMixture
from .gmm import GaussianMixture
from .kmeans import KMeans

__all__ = ["AnnealedGaussianMixture", "GaussianMixture", "KMeans", "__version__"]
