"""What the estimators share: the parameter table, the checked start of ``fit``,
and the named outputs of a transform to distances (``set_output``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin

from dask_emk.engine.inputs import InputData, as_sample_weight
from dask_emk.models.params import Spec, validate_params
from dask_emk.models.validation import validate_features


class SavesModelFile:
    """Mixin: :meth:`save` to a model file, which :func:`dask_emk.load` reads back."""

    def save(self, path) -> None:
        """Write the fitted model to a new model file (a zarr store) at ``path``.

        ``dask_emk.load(path)`` gives it back, predicting bit for bit as this
        one (:mod:`dask_emk.models.persist` says what the file holds).

        Parameters
        ----------
        path : str or os.PathLike
            A local path or an object-store URL (``s3://``, ``gs://``) where
            nothing exists yet: this writes only new paths
            (``dask_emk.save(model, path, overwrite=True)`` replaces one it wrote).
        """
        from dask_emk.models.persist import save_new

        save_new(self, path)


class ChunkedEstimator(SavesModelFile, BaseEstimator):
    """Base of the estimators: ``fit`` checks everything, then ``_fit`` works.

    A subclass sets ``_parameter_specs`` (its table in
    :mod:`dask_emk.models.params`) and implements ``_check_parameters(data)``
    (rules between parameters and with the data) and ``_fit(X, data, weight)``.
    """

    #: Parameter name -> what it may hold; one entry per constructor parameter.
    _parameter_specs: ClassVar[dict[str, Spec]] = {}

    def fit(self, X, y=None, sample_weight=None):
        """Fit the model to X (the class docstring says how).

        Parameters, input and weights are checked before any pass over the data.

        Parameters
        ----------
        X : array-like, dask array, xarray Dataset or DataArray, zarr array or store path
            Shape (n_samples, n_features), or gridded xarray data
            (:func:`dask_emk.engine.inputs.as_input`).
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights of the samples, used in every pass (seeding,
            iterations and the objective); for gridded X a DataArray on (some
            of) its sample dims.

        Returns
        -------
        self
        """
        validate_params(self)
        data = self._fit_input(X)
        self._check_parameters(data)
        self._fit(X, data, as_sample_weight(sample_weight, data))
        return self

    def _fit_input(self, X) -> InputData:
        """X converted, its features recorded (a warm start keeps the fitted ones)."""
        return validate_features(self, X, reset=True)

    def _check_parameters(self, data: InputData) -> None:
        raise NotImplementedError

    def _fit(self, X, data: InputData, weight) -> None:
        raise NotImplementedError

    def _check_n_samples(self, data: InputData, name: str) -> None:
        """At least one sample per cluster; ``name`` is the parameter counting them."""
        k = getattr(self, name)
        if data.n_samples < k:
            raise ValueError(f"n_samples={data.n_samples} should be >= {name}={k}; lower {name}.")


class CentreDistancesOut(ClassNamePrefixFeaturesOutMixin):
    """Mixin: ``get_feature_names_out`` and ``set_output`` for a transform to centre distances.

    As scikit-learn's ``KMeans``: the i-th output column is the distance to
    the i-th centre, named ``<class name lowercased><i>`` (``kmeans0``, ...),
    so the estimator joins ``make_union`` and ``set_output(transform="pandas")``
    (with scikit-learn's ``TransformerMixin``, which wraps ``transform``).
    A table needs the distances in memory: :meth:`_in_memory_output` refuses
    the lazy or gridded output of lazy or xarray input under such a setting.
    """

    @property
    def _n_features_out(self) -> int:
        return self.cluster_centers_.shape[0]

    def _in_memory_output(self, out):
        """``out`` unchanged, or a ValueError when the output setting asks for a
        table (pandas, polars) and ``out`` is not a numpy array."""
        # The estimator's own set_output, else the global setting (scikit-learn's rule).
        own = getattr(self, "_sklearn_output_config", {})
        container = own.get("transform", get_config()["transform_output"])
        if container == "default" or isinstance(out, np.ndarray):
            return out
        raise ValueError(
            f"transform output {container!r} (set_output or scikit-learn's transform_output) "
            f"makes a table in memory, but this input gives a lazy or gridded "
            f"{type(out).__name__}; pass numpy or pandas input, or use "
            "set_output(transform='default') to keep the input's kind."
        )
