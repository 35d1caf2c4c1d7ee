"""Checks shared by the estimators: scalar parameters and fitted feature counts."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .io import InputData, as_input


def check_int(name: str, value, minimum: int) -> None:
    """Raise a ValueError unless ``value`` is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def check_non_negative(name: str, value) -> None:
    """Raise a ValueError unless ``value`` is a real number (not a bool) >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.")


def validate_features(estimator, X, *, reset: bool) -> InputData:
    """Convert X (:func:`dask_emk.io.as_input`) and check it against the fit.

    With ``reset`` (in ``fit``) record ``n_features_in_`` and, for xarray
    input with string feature labels, ``feature_names_in_``; otherwise the
    estimator must be fitted and X must have the same number of features.

    Raises
    ------
    ValueError
        X has a different number of features than the data seen in fit.
    """
    data = as_input(X)
    if reset:
        estimator.n_features_in_ = data.n_features
        labels = data.feature_labels
        if labels is not None and labels.dtype.kind in "OU":
            estimator.feature_names_in_ = np.asarray(labels, dtype=object)
        elif hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
        return data
    check_is_fitted(estimator)
    if data.n_features != estimator.n_features_in_:
        raise ValueError(
            f"X has {data.n_features} features, but {type(estimator).__name__} is "
            f"expecting {estimator.n_features_in_} features as input; pass data with "
            "the features the model was fitted on."
        )
    return data
