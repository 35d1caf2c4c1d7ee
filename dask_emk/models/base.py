"""What the estimators share: the parameter table, the checked start of ``fit``,
and the named outputs of a transform to distances (``set_output``)."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Self

import dask.array as da
import numpy as np
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin

from dask_emk.engine.batch import Batch
from dask_emk.engine.inputs import InputData, as_sample_weight
from dask_emk.engine.reduction import compute_one
from dask_emk.models.params import Spec, validate_params
from dask_emk.models.validation import validate_features

#: dtype of every estimator's labels (``labels_``, ``predict``, ``fit_predict``;
#: numpy, dask or xarray): int32, scikit-learn's KMeans labels (its
#: ``test_k_means.py`` builds labels as int32; its GaussianMixture returns
#: argmax's int64, which no test of its own checks). Half the size of int64
#: for gridded label maps, and K never nears 2**31.
LABEL_DTYPE = np.dtype(np.int32)


class SavesModelFile:
    """Mixin: :meth:`save` to a model file, which :func:`dask_emk.load` reads back."""

    def save(self, path: str | os.PathLike) -> None:
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

    #: Fitted attributes that are sums of sample weights (an inertia, cluster
    #: masses; ``owner.name`` for one of a fitted sub-estimator): the fit runs
    #: on rescaled weights (:func:`ratio_weights`), and these are given back
    #: in the units of the weights passed.
    _weight_sums: ClassVar[tuple[str, ...]] = ()

    #: False where a weight is a count whose scale changes the fit (DP-means:
    #: scaling the weights scales λ), so the weights are used as passed.
    _weights_are_ratios: ClassVar[bool] = True

    def fit(self, X: Any, y: object = None, sample_weight: Any = None) -> Self:
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
            of) its sample dims. Only their ratios matter (:func:`ratio_weights`),
            except where a weight is a count (DPMeans).

        Returns
        -------
        self
            The fitted estimator.
        """
        validate_params(self)
        data = self._fit_input(X)
        self._check_parameters(data)
        weight, exponent = as_sample_weight(sample_weight, data), 0
        if self._weights_are_ratios:
            weight, exponent = ratio_weights(weight, data.n_samples)
        if not data.is_lazy:
            check_observed_features(data)  # in memory: one cheap look before any pass
        try:
            self._fit(X, data, weight)
        except ValueError as exc:
            # Lazy data: only a fit that ran out of rows under the NaN policy
            # pays the pass that tells a feature never observed from other causes.
            if data.is_lazy and "nan_policy" in str(exc):
                check_observed_features(data)
            raise
        self._unscale_weight_sums(exponent)
        return self

    def _unscale_weight_sums(self, exponent: int) -> None:
        """Give :attr:`_weight_sums` back in the weights passed (times 2**exponent)."""
        for path in self._weight_sums if exponent else ():
            *owners, name = path.split(".")
            owner = self
            for step in owners:
                owner = getattr(owner, step)
            setattr(owner, name, _times_power_of_two(getattr(owner, name), exponent))

    def _fit_input(self, X: Any) -> InputData:
        """X converted, its features recorded (a warm start keeps the fitted ones)."""
        return validate_features(self, X, reset=True)

    def _batch(self, data: InputData, weight: Any) -> Batch:
        """The batch that runs the fit's passes over ``data``, reading it
        through the fit's cache (``cache``: the rows kept during the run)."""
        return Batch(
            data.array, weight, self.split_every, nan_policy=data.nan_policy, cache=self.cache
        )

    def _check_parameters(self, data: InputData) -> None:
        raise NotImplementedError

    def _fit(self, X: Any, data: InputData, weight: Any) -> None:
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

    def _in_memory_output(self, out: Any) -> Any:
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


def _times_power_of_two(value: Any, exponent: int) -> Any:
    """``value`` (float, list or array) times 2**exponent, exactly, in its own type."""
    scaled = np.ldexp(np.asarray(value, dtype=np.float64), exponent)
    if isinstance(value, list):
        return scaled.tolist()
    return float(scaled) if isinstance(value, float) else scaled.astype(np.asarray(value).dtype)


def ratio_weights(weight: Any, n_samples: int) -> Any:
    """Sample weights as ratios: ``weight`` times 2**-e, with the mean brought into [1, 2).

    Only the weights' proportions may change a fit: weights that sum to
    1e-300 must fit as their unscaled ratios do, where absolute floors (the
    M-step's 10·eps on each mass) would otherwise dominate. A power of two is
    exact, so weights of mean in [1, 2) (all ones among them) are unchanged
    to the bit, and a sum of weights is given back exactly (``np.ldexp(s, e)``).

    Parameters
    ----------
    weight : ndarray or dask array of shape (n_samples,), or None
        Checked weights (:func:`dask_emk.engine.inputs.as_sample_weight`).
    n_samples : int

    Returns
    -------
    (weights, e): the rescaled weights (None stays None) and the exponent e.

    Raises
    ------
    ValueError
        If the weights' total is zero or not finite in float64.
    """
    if weight is None:
        return None, 0
    lazy = isinstance(weight, da.Array)
    with np.errstate(over="ignore"):  # an overflowing total is refused below
        total = float(compute_one(weight.sum(), optimize_graph=True) if lazy else weight.sum())
    if not np.isfinite(total) or total <= 0:
        raise ValueError(
            f"sample_weight sums to {total} in float64; weights are ratios: divide them "
            "by a common factor (e.g. their largest) so that they sum to a finite, positive number."
        )
    exponent = int(np.frexp(total / n_samples)[1]) - 1
    if exponent == 0:
        return weight, 0
    return (da.ldexp(weight, -exponent) if lazy else np.ldexp(weight, -exponent)), exponent


def check_observed_features(data: InputData) -> None:
    """Refuse features that hold only NaN under ``nan_policy`` 'omit' or 'marginalize'.

    'omit' would leave out every row, 'marginalize' has no value to estimate
    the feature from: either fit fails later with an error about too few
    rows. Reads lazy data once (:func:`dask_emk.engine.reduction.compute_one`).

    Raises
    ------
    ValueError
        Naming the features (index, and label where X has them).
    """
    if not data.nan_policy.allows_nan:
        return
    X = data.array
    empty = da.isnan(X).all(axis=0) if data.is_lazy else np.isnan(X).all(axis=0)
    never = np.flatnonzero(compute_one(empty, optimize_graph=True) if data.is_lazy else empty)
    if never.size == 0:
        return
    labels = data.feature_labels
    named = [f"{j} ({labels[j]!r})" if labels is not None else str(j) for j in never.tolist()]
    consequence = (
        "leaves out every row" if data.nan_policy.omits_rows else "has no value to fit them from"
    )
    raise ValueError(
        f"Feature(s) {', '.join(named)} of X hold only NaN: nan_policy={data.nan_policy.value!r} "
        f"{consequence}; drop them from X (or give them values)."
    )
