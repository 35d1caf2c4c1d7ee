"""Checks shared by the estimators: fitted features, pickling (parameters: :mod:`.params`)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from dask_emk.engine.inputs import InputData, as_input

#: Fits log the layout of their input here (INFO): samples × features, from which dims.
logger = logging.getLogger("dask_emk")


def validate_features(estimator: Any, X: Any, *, reset: bool) -> InputData:
    """Convert X (:func:`dask_emk.engine.inputs.as_input`) and :func:`check_features`.

    A fit announces its input only when given the user's data: an
    :class:`InputData` comes from an outer fit (the annealing's or DP-means'
    inner KMeans runs), which announced it already.
    """
    announce = not isinstance(X, InputData)
    data = as_input(X, **input_options(estimator))
    return check_features(estimator, data, reset=reset, announce=announce)


def input_options(estimator: Any) -> dict:
    """The estimator's ``nan_policy``, ``feature_dim``, ``sample_dims`` and
    ``missing_chunks`` for :func:`dask_emk.engine.inputs.as_input` (which validates them)."""
    return {
        "nan_policy": getattr(estimator, "nan_policy", "raise"),
        "feature_dim": getattr(estimator, "feature_dim", None),
        "sample_dims": getattr(estimator, "sample_dims", None),
        "missing_chunks": getattr(estimator, "missing_chunks", "raise"),
    }


def check_features(
    estimator: Any, data: InputData, *, reset: bool, announce: bool = True
) -> InputData:
    """Record the features of ``data`` (``reset``, in ``fit``) or check it against them.

    With ``reset`` record ``n_features_in_``, the feature labels of xarray or
    pandas input and, when they are strings, ``feature_names_in_`` (as
    scikit-learn). Otherwise the estimator must be fitted and X must have the
    same number of features; when both the fit and X have feature labels, the
    columns of X are put in the fitted order by label.

    With ``reset`` and ``announce`` the fit logs its input's layout (INFO);
    an outer fit passes ``announce=False`` for the estimators it runs inside.

    Raises
    ------
    ValueError
        X has a different number of features, or other feature labels, than
        the data seen in fit.
    """
    if reset:
        if announce:
            logger.info("%s fitted on %s", type(estimator).__name__, data.describe())
        estimator.n_features_in_ = data.n_features
        labels = data.feature_labels
        estimator._feature_labels = labels
        if labels is not None and all(isinstance(v, str) for v in labels.tolist()):
            estimator.feature_names_in_ = np.asarray(labels, dtype=object)
        elif hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
        return data
    check_is_fitted(estimator)
    fitted = getattr(estimator, "_feature_labels", None)
    if fitted is not None and data.feature_labels is not None:
        order = _fitted_order(estimator, data.feature_labels, fitted)
    if data.n_features != estimator.n_features_in_:
        raise ValueError(
            f"X has {data.n_features} features, but {type(estimator).__name__} is "
            f"expecting {estimator.n_features_in_} features as input; pass data with "
            "the features the model was fitted on."
        )
    if fitted is None or data.feature_labels is None:
        return data
    if (order == np.arange(order.size)).all():
        return data
    return dataclasses.replace(data, array=data.array[:, order], feature_labels=fitted)


def _fitted_order(estimator: Any, labels: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """Where each fitted feature is among ``labels``; raises naming the missing and the new.

    Checked before the count, so that a Dataset lacking a fitted variable or
    holding another one is told which (not only how many features it has).
    """
    order = pd.Index(labels).get_indexer(fitted)
    if (order < 0).any() or labels.size != fitted.size:
        known = set(fitted.tolist())
        unseen = [v for v in labels.tolist() if v not in known]
        missing = [v for v in fitted.tolist() if v not in set(labels.tolist())]
        found = [f"{unseen} not seen in fit"] if unseen else []
        found += [f"{missing} missing" if missing else "none missing"]
        raise ValueError(
            f"X has other feature labels than the data {type(estimator).__name__} was "
            f"fitted on: {', '.join(found)}; pass the features the model was fitted on "
            "(in any order; a Dataset's variables are its features)."
        )
    return order


class NoTrainingDataInPickle:
    """Mixin: pickling (and copying) leaves out ``labels_`` of lazy training data.

    Lazy ``labels_`` (a dask array, or an xarray.DataArray holding one) is a
    graph that refers to the training data, and for an in-memory dask array
    contains it: a pickled model would be as large as its data. The model
    without them predicts the same; :meth:`predict` on the training data
    gives the labels again. numpy ``labels_`` (numpy input) are kept.
    """

    def __getstate__(self) -> object:
        state = super().__getstate__()
        if not isinstance(state.get("labels_", None), (np.ndarray, type(None))):
            state = {key: value for key, value in state.items() if key != "labels_"}
            state["_labels_left_out"] = True
        return state

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: say why labels_ is missing.
        if name == "labels_" and self.__dict__.get("_labels_left_out"):
            raise AttributeError(
                "labels_ of lazy training data is not pickled or copied with the model "
                "(it would hold the data); call predict(X) on the training data instead."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
