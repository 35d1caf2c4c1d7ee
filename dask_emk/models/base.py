"""What the three estimators share: the parameter table and the checked start of ``fit``."""

from __future__ import annotations

from typing import ClassVar

from sklearn.base import BaseEstimator

from dask_emk.engine.inputs import InputData, as_sample_weight
from dask_emk.models.params import Spec, validate_params
from dask_emk.models.validation import validate_features


class ChunkedEstimator(BaseEstimator):
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
        y : None
            Ignored (scikit-learn's signature).
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weights of the samples, used in every pass (seeding,
            iterations and the objective); for gridded X a DataArray on (some
            of) its sample dims.

        Returns
        -------
        self
            The fitted estimator.
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
