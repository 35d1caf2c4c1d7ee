"""Shared data and initial parameters for the estimator tests."""

from __future__ import annotations

import warnings

import numpy as np
from dask.callbacks import Callback
from sklearn.exceptions import ConvergenceWarning

SK_TYPES = ("full", "tied", "diag", "spherical")


class CountComputes(Callback):
    """Counts graph executions (one ``start`` per dask compute)."""

    def __init__(self):
        super().__init__(start=self._start)
        self.count = 0

    def _start(self, dsk):
        self.count += 1


def blobs(n=1000, d=3, K=3, seed=0, spread=1.0, offset=0.0):
    """Well separated but overlapping Gaussian clusters, float64 (n, d)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(K, d))
    sizes = np.diff(np.linspace(0, n, K + 1).astype(int))
    parts = []
    for k, m in enumerate(sizes):
        A = rng.normal(size=(d, d)) * 0.5 + np.eye(d)
        parts.append(centers[k] + spread * rng.normal(size=(m, d)) @ A)
    X = np.vstack(parts) + offset
    return X[rng.permutation(n)]


def init_params(X, K, ct, seed=1):
    """weights_init, means_init, precisions_init (scikit-learn shapes) near the data."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    means = X[rng.choice(n, K, replace=False)] + 0.1 * rng.normal(size=(K, d))
    weights = rng.dirichlet(np.full(K, 5.0))
    cov = np.cov(X.T) / K + 0.2 * np.eye(d)
    prec = np.linalg.inv(cov)
    scales = rng.uniform(0.7, 1.5, size=K)
    precisions = {
        "full": np.stack([prec * s for s in scales]),
        "tied": prec,
        "diag": np.outer(scales, 1.0 / np.diag(cov)),
        "spherical": scales / np.diag(cov).mean(),
        "shared": 1.0 / np.diag(cov).mean(),
    }[ct]
    return {"weights_init": weights, "means_init": means, "precisions_init": precisions}


def fit_quiet(model, *args, **kwargs):
    """Fit, ignoring ConvergenceWarning only (other warnings still surface)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(*args, **kwargs)


def assert_params_close(a, b, rtol=1e-6, atol=0.0):
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_allclose(
            np.asarray(getattr(a, name), dtype=np.float64),
            np.asarray(getattr(b, name), dtype=np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=name,
        )
