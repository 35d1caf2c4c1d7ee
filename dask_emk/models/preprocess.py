"""StandardScaler: NaN-aware, out-of-core standardisation that keeps the input's structure.

Features in different units (sea-surface temperature in °C, salinity in PSU)
weigh in a Gaussian mixture or k-means by their spread: standardise them
first. The scaler is fitted in one pass over the data (one Dask compute),
NaN values left out feature by feature; ``transform`` gives back what it was
given (numpy, lazy dask, a Dataset or N-D DataArray on the same grid), and
:meth:`StandardScaler.original_units` reports a model fitted on scaled data
in the data's own units.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import xarray as xr
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from dask_emk.core.covariance import COVARIANCE_TYPES, MATRIX_DIMS
from dask_emk.core.moments import merge_moments, moments_block, moments_layout
from dask_emk.engine.inputs import (
    LAYOUT_ATTR,
    InputData,
    as_input,
    as_sample_weight,
    float_dtype,
)
from dask_emk.engine.reduction import reduce_pass
from dask_emk.engine.stored import feature_variables
from dask_emk.models.base import SavesModelFile
from dask_emk.models.params import INPUT_OPTIONS, SPLIT_EVERY, Boolean, Spec, validate_params
from dask_emk.models.validation import check_features


# auto_wrap_output_keys=None: no set_output. Output follows the input (numpy,
# dask, xarray); scikit-learn's pandas wrapping failed inside xarray on a Dataset.
class StandardScaler(
    OneToOneFeatureMixin, TransformerMixin, SavesModelFile, BaseEstimator,
    auto_wrap_output_keys=None,
):  # fmt: skip
    """Standardise features to zero mean and unit variance, NaN-aware and out of core.

    As scikit-learn's ``StandardScaler`` (population variance, near-constant
    features get scale 1, NaN values left out of each feature's statistics
    and kept as NaN by ``transform``), for every input the estimators take:
    numpy, dask, pandas, zarr, and gridded xarray (a Dataset whose variables
    are the features, an N-D DataArray with a ``feature_dim``). Fitted in one
    pass (one Dask compute): per block, each feature's count, weighted mean
    and sum of squared deviations, merged exactly block by block (Chan's
    update), so data far from zero loses no precision.

    ``transform`` and ``inverse_transform`` return the input's type and
    structure: numpy in, numpy out; dask in, lazy dask out; a Dataset or
    DataArray in, the same with the same dims and coordinates (each Dataset
    variable scaled by its own features' statistics), lazy for lazy data.
    It goes in front of any of the estimators in a scikit-learn ``Pipeline``,
    and :meth:`original_units` gives their fitted parameters back in the
    data's units. It has no ``set_output``: its output is of its input's
    kind, and scikit-learn's ``transform_output`` setting does not apply.

    Parameters
    ----------
    with_mean : bool, default True
        Subtract the mean.
    with_std : bool, default True
        Divide by the standard deviation.
    feature_dim, sample_dims : str or list of str, optional
        How xarray input is read, as for the estimators. The xarray output of
        ``transform`` records the sample dims used in its attribute
        ``dask_emk_sample_dims``, which the estimators read when given no
        ``feature_dim`` or ``sample_dims`` of their own: in a ``Pipeline``,
        the layout is given once, to the scaler.
    split_every : int, optional
        Fan-in of the tree reduction of the fitting pass.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,) or None
        Weighted mean of each feature's non-NaN values (None when
        ``with_mean`` and ``with_std`` are both False).
    var_ : ndarray of shape (n_features,) or None
        Their variance (ddof 0); None without ``with_std``.
    scale_ : ndarray of shape (n_features,) or None
        ``sqrt(var_)``, 1 for (near-)constant features; None without ``with_std``.
    n_samples_seen_ : ndarray of shape (n_features,)
        Non-NaN values of each feature (int), or their total sample weight.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Feature labels of xarray or pandas input, when they are strings.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(0, 1, (100, 2)), rng.normal(8, 1, (100, 2))])
    >>> from dask_emk import StandardScaler
    >>> scaler = StandardScaler().fit(X)
    >>> scaler.mean_.round(2), scaler.scale_.round(2)
    (array([3.9 , 4.02]), array([4.09, 4.05]))
    >>> scaler.transform(X).std(axis=0).round(6)
    array([1., 1.])

    In a scikit-learn Pipeline on a gridded Dataset ``ds``, with the model's
    parameters back in the data's units:

    >>> from sklearn.pipeline import Pipeline
    >>> pipe = Pipeline([("scale", StandardScaler()),
    ...                  ("gmm", GaussianMixture(3, nan_policy="omit"))])  # doctest: +SKIP
    >>> labels = pipe.fit(ds).predict(ds)  # a DataArray on ds's grid  # doctest: +SKIP
    >>> pipe["scale"].original_units(pipe["gmm"])  # doctest: +SKIP
    """

    _parameter_specs: ClassVar[dict[str, Spec]] = {
        "with_mean": Boolean(),
        "with_std": Boolean(),
        "feature_dim": INPUT_OPTIONS["feature_dim"],
        "sample_dims": INPUT_OPTIONS["sample_dims"],
        "split_every": SPLIT_EVERY,
    }

    def __init__(
        self, *, with_mean=True, with_std=True, feature_dim=None, sample_dims=None,
        split_every=None,
    ):  # fmt: skip
        self.with_mean = with_mean
        self.with_std = with_std
        self.feature_dim = feature_dim
        self.sample_dims = sample_dims
        self.split_every = split_every

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _input(self, X) -> InputData:
        # NaN is data here (left out feature by feature); ±inf still raises.
        return as_input(
            X, nan_policy="omit", feature_dim=self.feature_dim, sample_dims=self.sample_dims
        )

    def fit(self, X: Any, y: object = None, sample_weight: Any = None) -> Self:
        """Compute each feature's mean and standard deviation in one pass.

        Parameters
        ----------
        X : array-like, dask array, xarray Dataset or DataArray, zarr array or store path
            Shape (n_samples, n_features), or gridded xarray data.
        y : None
            Ignored (scikit-learn's signature).
        sample_weight : array-like of shape (n_samples,), optional
            Weights of the samples (for gridded X a DataArray on its sample dims).

        Returns
        -------
        self
            The fitted scaler.

        Raises
        ------
        ValueError
            Bad parameters or input, ±inf in X, or a feature without a non-NaN
            value of positive weight.
        """
        validate_params(self)
        data = check_features(self, self._input(X), reset=True)
        weight = as_sample_weight(sample_weight, data)
        layout = moments_layout(data.n_features)
        vector = reduce_pass(
            data.array, weight, moments_block, layout.size, layout,
            split_every=self.split_every, combine=partial(merge_moments, layout=layout),
        )  # fmt: skip
        stats = layout.unpack(vector)
        self._check_stats(stats, data)
        self._set_stats(stats, weighted=weight is not None)
        return self

    def _check_stats(self, stats: dict, data: InputData) -> None:
        if stats["nonfinite"] > 0:
            raise ValueError(
                f"X contains infinity in {int(stats['nonfinite'])} value(s); StandardScaler "
                "leaves out NaN values only: remove or clip the infinite values."
            )
        empty = np.flatnonzero(stats["weight"] <= 0)
        if empty.size:
            names = empty if data.feature_labels is None else data.feature_labels[empty]
            raise ValueError(
                f"Feature(s) {list(names.tolist())[:10]} of X hold no value that is not NaN "
                "(with positive sample weight); drop them before standardising."
            )

    def _set_stats(self, stats: dict, weighted: bool) -> None:
        n = stats["weight"] if weighted else stats["count"].astype(np.int64)
        self.n_samples_seen_ = n
        mean = stats["ref"] + stats["offset"]
        self.mean_ = mean if self.with_mean or self.with_std else None
        self.var_ = self.scale_ = None
        if self.with_std:
            self.var_ = stats["m2"] / stats["weight"]
            # scikit-learn's test for a feature indistinguishable from a constant.
            eps = np.finfo(np.float64).eps
            constant = self.var_ <= n * eps * self.var_ + (n * mean * eps) ** 2
            self.scale_ = np.where(constant, 1.0, np.sqrt(self.var_))

    # ------------------------------------------------------------ transforms
    def transform(self, X: Any) -> Any:
        """Standardise X: ``(x − mean_) / scale_``, NaN staying NaN.

        Parameters
        ----------
        X : array-like, dask array, xarray Dataset or DataArray, zarr array or store path
            Samples of the fitted features, shape (n_samples, n_features), or
            gridded xarray data laid out as at fit.

        Returns
        -------
        ndarray, dask array or xarray
            The input's kind: ndarray (numpy or pandas input), a lazy dask array
            (dask or zarr input), or xarray with X's dims and coordinates.
        """
        return self._apply(X, inverse=False)

    def inverse_transform(self, X: Any) -> Any:
        """Scale back to the data's units: ``x · scale_ + mean_`` (same kinds as :meth:`transform`).

        Also turns fitted means or centres (n_components, n_features) into
        the data's units.

        Parameters
        ----------
        X : array-like, dask array or xarray, shape (n_samples, n_features)
            Standardised data, or fitted means or centres (n_components, n_features).

        Returns
        -------
        ndarray, dask array or xarray
            X in the data's units, of X's kind.
        """
        return self._apply(X, inverse=True)

    def _offset_factor(self) -> tuple[np.ndarray, np.ndarray]:
        """The shift and the scale this scaler applies (0 and 1 where switched off)."""
        d = self.n_features_in_
        offset = self.mean_ if self.with_mean else np.zeros(d)
        factor = self.scale_ if self.with_std else np.ones(d)
        return offset, factor

    def _apply(self, X, inverse: bool):
        check_is_fitted(self)
        given = self._input(X)
        data = check_features(self, given, reset=False)  # columns in the fitted order
        offset, factor = self._offset_factor()
        if isinstance(X, (xr.Dataset, xr.DataArray)):
            order = self._order(given)  # X is scaled as it is: its features in its order
            offset, factor = offset[order], factor[order]
            out = _on_grid(X, given.grid.dims, offset, factor, inverse)
            # The next step of a Pipeline reads the output with this layout (sample_dims once).
            return out.assign_attrs({LAYOUT_ATTR: list(given.grid.dims)})
        dtype = data.array.dtype
        return _affine(data.array, offset.astype(dtype), factor.astype(dtype), inverse)

    def _order(self, data: InputData) -> np.ndarray:
        """For each feature of ``data``, its index among the fitted features."""
        fitted = getattr(self, "_feature_labels", None)
        if fitted is None or data.feature_labels is None:
            return np.arange(data.n_features)
        return pd.Index(fitted).get_indexer(data.feature_labels)

    # ------------------------------------------------------- original units
    def original_units(self, model: BaseEstimator) -> xr.Dataset:
        """``model.to_xarray()`` in the data's units, for a model fitted on ``transform``'s output.

        Means and centres become ``means · scale_ + mean_``; covariances
        S Σ S with ``S = diag(scale_)`` (a ``spherical`` covariance becomes a
        ``diag`` one, ``shared`` a diagonal ``tied`` one, recorded in the
        variable's ``covariance_type`` attribute); mean log-likelihoods
        (``lower_bound``) are densities in the data's units (shifted by
        ``−Σ log scale_``). ``inertia`` and weights stay as they are (inertia is
        a distance in standardised units). The scaler's ``scaler_mean`` and
        ``scaler_scale`` are added.

        Parameters
        ----------
        model : fitted GaussianMixture, KMeans or AnnealedGaussianMixture
            Fitted on this scaler's output (same features).

        Returns
        -------
        xarray.Dataset
            The model's parameters in the data's units, with ``scaler_mean``
            and ``scaler_scale``.
        """
        check_is_fitted(self)
        check_is_fitted(model)
        if model.n_features_in_ != self.n_features_in_:
            raise ValueError(
                f"{type(model).__name__} has {model.n_features_in_} features, this scaler "
                f"{self.n_features_in_}; pass the model fitted on this scaler's output."
            )
        offset, factor = self._offset_factor()
        ds = model.to_xarray()
        ds["means"] = ds["means"] * factor + offset
        if "covariances" in ds:
            ds = _rescaled_covariances(ds, model, factor)
        if "lower_bound" in ds:
            ds["lower_bound"] = self.original_log_density(ds["lower_bound"])
        if "final_lower_bound" in ds.attrs:
            ds.attrs["final_lower_bound"] = self.original_log_density(ds.attrs["final_lower_bound"])
        return ds.assign(scaler_mean=("feature", offset), scaler_scale=("feature", factor))

    def original_log_density(self, values: Any) -> Any:
        """Log densities of standardised data as densities in the data's units.

        A density of ``z = (x − mean_) / scale_`` is one of x times
        ``Π 1 / scale_`` (the Jacobian): ``log p(x) = log p(z) − Σ log scale_``.

        Parameters
        ----------
        values : float or array
            Log densities of standardised data (``score_samples``, lower bounds).

        Returns
        -------
        float or array
            ``values − Σ log scale_``, of the kind of ``values``.
        """
        check_is_fitted(self)
        return values - float(np.log(self._offset_factor()[1]).sum())


def _affine(values, offset, factor, inverse: bool):
    """(values − offset) / factor, or its inverse values · factor + offset (any array type)."""
    return values * factor + offset if inverse else (values - offset) / factor


def _on_grid(X, samples: tuple, offset: np.ndarray, factor: np.ndarray, inverse: bool):
    """:func:`_affine` of xarray X, its features' statistics broadcast by dim name.

    The statistics of each variable (Dataset) or of the feature dim (N-D
    DataArray) become small DataArrays on its non-sample dims, so X keeps its
    dims, coordinates, chunks and laziness.
    """
    if isinstance(X, xr.DataArray):
        return _scale_variable(X, samples, offset, factor, inverse)
    scaled, start = {}, 0
    for name in feature_variables(X):  # the features' order, as the rows were read
        var = X[name]
        size = int(np.prod([n for d, n in var.sizes.items() if d not in samples]))
        part = slice(start, start + size)
        scaled[name] = _scale_variable(var, samples, offset[part], factor[part], inverse)
        start += size
    return X.assign(scaled)


def _scale_variable(var: xr.DataArray, samples: tuple, offset, factor, inverse: bool):
    """One variable: features along its non-sample dims, C order (as the input's rows)."""
    levels = [d for d in var.dims if d not in samples]
    shape = tuple(var.sizes[d] for d in levels)
    dtype = float_dtype(np.dtype(var.dtype))

    def stat(values):
        return xr.DataArray(values.reshape(shape).astype(dtype), dims=levels)

    out = _affine(var, stat(offset), stat(factor), inverse)
    if inverse:
        return out
    # A standardised field is not in the data's units: it must not claim them.
    return out.copy(deep=False, data=None).drop_attrs(deep=False).assign_attrs(
        {k: v for k, v in var.attrs.items() if k not in ("units", "standard_name")}
    )


def _rescaled_covariances(ds: xr.Dataset, model, factor: np.ndarray) -> xr.Dataset:
    """``covariances`` of ``ds`` for data multiplied by ``factor`` (the table's rule)."""
    fitted = COVARIANCE_TYPES[model.covariance_type]
    kind, cov = fitted.rescaled(ds["covariances"].values, factor)
    features = ds["feature"].values
    ds = ds.drop_vars(["covariances", *(d for d in MATRIX_DIMS if d in ds.coords)])
    if kind.block == "matrix":
        ds = ds.assign_coords(dict.fromkeys(MATRIX_DIMS, features))
    return ds.assign(
        covariances=xr.DataArray(cov, dims=kind.dims, attrs={"covariance_type": kind.name})
    )
