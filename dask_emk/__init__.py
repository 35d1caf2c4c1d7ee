"""dask_emk: Gaussian mixtures by EM and k-means on chunked, out-of-core data."""

from dask_emk._version import __version__
from dask_emk.models.anneal import AnnealedGaussianMixture
from dask_emk.models.dpmeans import DPMeans
from dask_emk.models.gmm import GaussianMixture
from dask_emk.models.ic import GaussianMixtureIC
from dask_emk.models.kmeans import KMeans
from dask_emk.models.preprocess import StandardScaler

__all__ = [
    "AnnealedGaussianMixture",
    "DPMeans",
    "GaussianMixture",
    "GaussianMixtureIC",
    "KMeans",
    "StandardScaler",
    "__version__",
]
