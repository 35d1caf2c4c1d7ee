"""Fitted models as labelled ``xarray.Dataset``s (written with to_zarr/to_netcdf)."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from dask_emk._version import __version__
from dask_emk.core.covariance import COVARIANCE_TYPES, MATRIX_DIMS


def fit_attributes(estimator) -> dict:
    """Every constructor parameter as a netCDF/zarr-safe attribute.

    Scalars stay scalars; arrays and other objects are stored as JSON text so
    the attributes survive both to_zarr and to_netcdf.
    """
    attrs = {"dask_emk_version": __version__, "model": type(estimator).__name__}
    for name, value in estimator.get_params(deep=False).items():
        if value is None:
            attrs[name] = "None"
        elif isinstance(value, (bool, np.bool_)):
            attrs[name] = str(bool(value))
        elif isinstance(value, (int, float, str, np.integer, np.floating)):
            attrs[name] = value.item() if isinstance(value, np.generic) else value
        elif isinstance(value, np.ndarray):
            attrs[name] = json.dumps(value.tolist())
        else:
            attrs[name] = repr(value)
    return attrs


def feature_coords(estimator) -> np.ndarray:
    """Feature labels seen in fit (xarray input) or 0..d-1."""
    names = getattr(estimator, "feature_names_in_", None)
    return (
        np.asarray(names, dtype=str) if names is not None else np.arange(estimator.n_features_in_)
    )


def mixture_dataset(gm) -> xr.Dataset:
    """Dataset of a fitted GaussianMixture.

    Variables: ``weights(component)``, ``means(component, feature)``,
    ``covariances`` with dims by covariance type (``feature_row`` and
    ``feature_col`` for matrices), ``lower_bound(iteration)``; attributes hold
    every fit parameter, the package version and convergence flags.
    """
    cov_dims = COVARIANCE_TYPES[gm.covariance_type].dims
    features = feature_coords(gm)
    coords = {
        "component": np.arange(gm.n_components),
        "feature": features,
        "iteration": np.arange(1, len(gm.lower_bounds_) + 1),
    }
    coords.update((dim, features) for dim in cov_dims if dim in MATRIX_DIMS)
    ds = xr.Dataset(
        {
            "weights": (("component",), gm.weights_),
            "means": (("component", "feature"), gm.means_),
            "covariances": (cov_dims, gm.covariances_),
            "lower_bound": (("iteration",), np.asarray(gm.lower_bounds_, dtype=np.float64)),
        },
        coords=coords,
    )
    ds.attrs.update(fit_attributes(gm))
    ds.attrs.update(
        converged=str(bool(gm.converged_)),
        n_iter=int(gm.n_iter_),
        final_lower_bound=float(gm.lower_bound_),
    )
    return ds


def kmeans_dataset(km) -> xr.Dataset:
    """Dataset of a fitted KMeans.

    Variables: ``centers(cluster, feature)``, ``sizes(cluster)`` (weight of
    each cluster at the final centres), ``inertia(iteration)`` (at the start
    of every Lloyd iteration); attributes hold every fit parameter, the
    package version, ``n_iter`` and the final ``inertia``.
    """
    ds = xr.Dataset(
        {
            "centers": (("cluster", "feature"), km.cluster_centers_),
            "sizes": (("cluster",), np.asarray(km.cluster_weights_, dtype=np.float64)),
            "inertia": (("iteration",), np.asarray(km.inertia_history_, dtype=np.float64)),
        },
        coords={
            "cluster": np.arange(km.n_clusters),
            "feature": feature_coords(km),
            "iteration": np.arange(1, len(km.inertia_history_) + 1),
        },
    )
    ds.attrs.update(fit_attributes(km))
    ds.attrs.update(n_iter=int(km.n_iter_), final_inertia=float(km.inertia_))
    return ds


def anneal_dataset(model) -> xr.Dataset:
    """Dataset of a fitted AnnealedGaussianMixture, its annealing path included.

    Variables: the final ``cluster_centers(cluster, feature)`` and
    ``cluster_weights(cluster)``, and every variable of ``model.path_`` (dims
    ``step``, ``component``, ``feature``, ``event``); attributes hold every
    fit parameter, the package version, ``sigma2``, ``inertia``, ``n_iter``,
    ``n_full_passes`` and ``stop_reason``.
    """
    final = xr.Dataset(
        {
            "cluster_centers": (("cluster", "feature"), model.cluster_centers_),
            "cluster_weights": (("cluster",), np.asarray(model.weights_, dtype=np.float64)),
        },
        coords={"cluster": np.arange(model.n_components), "feature": feature_coords(model)},
    )
    ds = xr.merge([model.path_, final], combine_attrs="drop")
    ds.attrs.update(fit_attributes(model))
    ds.attrs.update(
        sigma2=float(model.sigma2_),
        inertia=float(model.inertia_),
        n_iter=int(model.n_iter_),
        n_full_passes=int(model.n_full_passes_),
        stop_reason=str(model.stop_reason_),
        event_kind=model.path_.attrs["event_kind"],
    )
    return ds
