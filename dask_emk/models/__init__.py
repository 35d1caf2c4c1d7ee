"""The estimators: GaussianMixture, KMeans, AnnealedGaussianMixture, their
seeding and their xarray export, thin layers over the engine."""
