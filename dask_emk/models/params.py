"""The estimators' parameters: one table per estimator, one check for all.

Every constructor parameter of :class:`~dask_emk.GaussianMixture`,
:class:`~dask_emk.KMeans`, :class:`~dask_emk.AnnealedGaussianMixture` and
:class:`~dask_emk.DPMeans` has
an entry below saying what it may hold; :func:`validate_params` checks them
all at the start of ``fit`` and raises a ValueError naming the parameter, the
value and what is allowed. A bool is never a number here (``True`` is not
the integer 1). Rules between parameters (``variance`` needs
``covariance_type='shared'``, the shapes of initial arrays) and between
parameters and the data stay with the estimators, after the table.

The pipeline's ``[model]`` and ``[anneal]`` fields take their kinds, ranges
and allowed values from these tables (:mod:`dask_emk.pipeline.config`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.estep_options import ESTEP_PATHS, EStepOptions
from dask_emk.engine.options import MISSING_CHUNKS, NAN_POLICIES


class Spec:
    """What one parameter may hold; subclasses say which values and in which words."""

    allow_none: bool = False

    def accepts(self, value) -> bool:
        return (value is None and self.allow_none) or (value is not None and self._accepts(value))

    def describe(self) -> str:
        """What is allowed, to follow 'must be', e.g. 'an integer >= 1 or None'."""
        return self._text() + (" or None" if self.allow_none else "")

    def check(self, name: str, value) -> None:
        """Raise a ValueError naming ``name``, ``value`` and what is allowed."""
        if not self.accepts(value):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}{self._hint(value)}.")

    def _accepts(self, value) -> bool:
        raise NotImplementedError

    def _text(self) -> str:
        raise NotImplementedError

    def _hint(self, value) -> str:
        return ""


@dataclass(frozen=True)
class Integer(Spec):
    """An integer (not a bool) >= ``min``."""

    min: int
    allow_none: bool = False

    def _accepts(self, value) -> bool:
        integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return integer and value >= self.min

    def bounds(self) -> str:
        """The range alone, e.g. '>= 1'."""
        return f">= {self.min}"

    def _text(self) -> str:
        return f"an integer {self.bounds()}"


@dataclass(frozen=True)
class Real(Spec):
    """A real number (not a bool) with bounds: ``ge`` (>=), ``gt`` (>), ``lt`` (<).

    NaN is never inside bounds; ``lt=np.inf`` asks for a finite number.
    ``why`` is said after the allowed range in the error.
    """

    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    allow_none: bool = False
    why: str = ""

    def _accepts(self, value) -> bool:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return False
        return bool(
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.lt is None or value < self.lt)
        )

    def bounds(self) -> str:
        """The range alone, e.g. '> 0 and < 1' or '> 0 and finite'."""
        parts = [(">=", self.ge), (">", self.gt), ("<", self.lt)]
        text = [f"{op} {bound:g}" for op, bound in parts if bound is not None and bound != np.inf]
        return " and ".join(text + (["finite"] if self.lt == np.inf else []))

    def _text(self) -> str:
        if (self.ge, self.gt, self.lt) == (0, None, None):
            text = "a non-negative number"
        elif (self.ge, self.gt, self.lt) == (None, 0, np.inf):
            text = "a positive finite number"
        elif self.ge is None and self.gt is not None and self.lt is not None:
            text = f"a number strictly between {self.gt:g} and {self.lt:g}"
        else:
            text = f"a number {self.bounds()}"
        return f"{text} ({self.why})" if self.why else text


@dataclass(frozen=True)
class Options(Spec):
    """One of a few strings."""

    values: tuple[str, ...]

    def _accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.values

    def _text(self) -> str:
        return repr(self.values[0]) if len(self.values) == 1 else f"one of {self.values}"


@dataclass(frozen=True)
class OptionList(Spec):
    """A non-empty list (or tuple) of distinct strings out of ``values``."""

    values: tuple[str, ...]

    def _accepts(self, value) -> bool:
        if not isinstance(value, (list, tuple)) or not value:
            return False
        strings = all(isinstance(v, str) and v in self.values for v in value)
        return strings and len(set(value)) == len(value)

    def _text(self) -> str:
        return f"a non-empty list of distinct values out of {self.values}"


@dataclass(frozen=True)
class ArrayLike(Spec):
    """An array or something numpy makes one of (list, tuple, number; not a string).

    Only the kind is checked here; shapes and values need the data (the
    estimator checks them at fit). ``shape`` says the shape in words.
    """

    shape: str = ""
    allow_none: bool = False

    def _accepts(self, value) -> bool:
        if isinstance(value, (str, bytes, bool, np.bool_, dict)):
            return False
        return isinstance(value, (numbers.Real, list, tuple)) or hasattr(value, "__array__")

    def _text(self) -> str:
        return f"an array of shape {self.shape}" if self.shape else "an array"


@dataclass(frozen=True)
class Boolean(Spec):
    def _accepts(self, value) -> bool:
        return isinstance(value, (bool, np.bool_))

    def _text(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class Function(Spec):
    allow_none: bool = False

    def _accepts(self, value) -> bool:
        return callable(value)

    def _text(self) -> str:
        return "a callable"


@dataclass(frozen=True)
class Instance(Spec):
    """An instance of ``kind``, described as ``text``."""

    kind: type
    text: str

    def _accepts(self, value) -> bool:
        return isinstance(value, self.kind)

    def _text(self) -> str:
        return self.text


@dataclass(frozen=True)
class RandomState(Spec):
    """What :func:`sklearn.utils.check_random_state` takes, but not a bool."""

    allow_none: bool = True

    def _accepts(self, value) -> bool:
        if isinstance(value, bool):
            return False
        # imported here, as the input checks below: the tables are read without
        # scikit-learn or Dask (dask-emk --help, pipeline errors)
        from sklearn.utils import check_random_state

        try:
            check_random_state(value)
        except (TypeError, ValueError):
            return False
        return True

    def bounds(self) -> str:
        """The range of an integer seed."""
        return "in [0, 2**32 - 1]"

    def describe(self) -> str:
        return f"None, an integer {self.bounds()} or a numpy.random.RandomState"

    def _hint(self, value) -> str:
        if not isinstance(value, np.random.Generator):
            return ""
        return (
            " (a numpy Generator is not accepted, as in scikit-learn: pass an integer "
            "seed, e.g. int(rng.integers(2**32)))"
        )


@dataclass(frozen=True)
class Either(Spec):
    """Any of several specs (``n_init='auto'`` or an integer, say)."""

    choices: tuple[Spec, ...]

    def _accepts(self, value) -> bool:
        return any(spec.accepts(value) for spec in self.choices)

    def _text(self) -> str:
        return " or ".join(spec.describe() for spec in self.choices)


@dataclass(frozen=True)
class InputOption(Spec):
    """``nan_policy``, ``feature_dim`` or ``sample_dims``: how X is read.

    The rule is the input layer's own (:func:`dask_emk.engine.inputs.check_input_options`),
    written once there; this spec applies it to one parameter.
    """

    name: str

    def _accepts(self, value) -> bool:
        from dask_emk.engine.inputs import check_input_options

        try:
            check_input_options(**{**INPUT_OPTION_DEFAULTS, self.name: value})
        except ValueError:
            return False
        return True

    @property
    def allow_none(self) -> bool:
        return INPUT_OPTION_DEFAULTS[self.name] is None

    def check(self, name: str, value) -> None:
        from dask_emk.engine.inputs import check_input_options

        check_input_options(**{**INPUT_OPTION_DEFAULTS, self.name: value})

    def _text(self) -> str:
        return {"nan_policy": f"one of {NAN_POLICIES}", "feature_dim": "a dimension name"}.get(
            self.name, "a dimension name or a list of distinct dimension names"
        )


def validate_params(estimator) -> None:
    """Check every parameter of ``estimator`` against its class's table.

    Raises
    ------
    ValueError
        The first parameter whose value the table does not allow, named with
        the value and what is allowed.
    """
    params = estimator.get_params(deep=False)
    for name, spec in type(estimator)._parameter_specs.items():
        spec.check(name, params[name])


# ------------------------------------------------------------------ tables
#: Initialisations of GaussianMixture (``init_params``) and KMeans (``init``).
GMM_INITS = ("kmeans", "k-means||", "k-means++", "random", "random_from_data")
KMEANS_INITS = ("k-means||", "k-means++", "random")
#: KMeans ``algorithm``: scikit-learn's names; both run Lloyd (same result).
KMEANS_ALGORITHMS = ("lloyd", "elkan")

NON_NEGATIVE = Real(ge=0)
POSITIVE_FINITE = Real(gt=0, lt=np.inf)
OPTIONAL_POSITIVE_FINITE = Real(gt=0, lt=np.inf, allow_none=True)
SPLIT_EVERY = Integer(2, allow_none=True)  # 1 never reduces: dask loops forever
VERBOSE = Integer(0)
CALLBACK = Function(allow_none=True)
#: ``cache``: keep the fit's rows in memory between passes (dask_emk.engine.cache).
CACHE = Either((Options(("auto",)), Boolean()))
INPUT_OPTION_DEFAULTS = {"nan_policy": "raise", "feature_dim": None, "sample_dims": None}
#: How X is read: its layout and NaN (the input layer's rule), a missing chunk file.
INPUT_OPTIONS: dict[str, Spec] = {name: InputOption(name) for name in INPUT_OPTION_DEFAULTS}
INPUT_OPTIONS["missing_chunks"] = Options(MISSING_CHUNKS)

GAUSSIAN_MIXTURE: dict[str, Spec] = {
    "n_components": Integer(1),
    "covariance_type": Options(tuple(COVARIANCE_TYPES)),
    "tol": NON_NEGATIVE,
    "reg_covar": NON_NEGATIVE,
    "max_iter": Integer(0),
    "n_init": Integer(1),
    "init_params": Options(GMM_INITS),
    "weights_init": ArrayLike("(n_components,)", allow_none=True),
    "means_init": ArrayLike("(n_components, n_features)", allow_none=True),
    "precisions_init": ArrayLike("given by covariance_type", allow_none=True),
    "random_state": RandomState(),
    "warm_start": Boolean(),
    "verbose": VERBOSE,
    "verbose_interval": Integer(1),
    "variance": OPTIONAL_POSITIVE_FINITE,
    "split_every": SPLIT_EVERY,
    "callback": CALLBACK,
    "accelerate": Boolean(),
    **INPUT_OPTIONS,
    "estep": Either((Options(ESTEP_PATHS), Instance(EStepOptions, "an EStepOptions"))),
    "cache": CACHE,
}

KMEANS: dict[str, Spec] = {
    "n_clusters": Integer(1),
    "init": Either((Options(KMEANS_INITS), ArrayLike("(n_clusters, n_features)"), Function())),
    "n_init": Either((Options(("auto",)), Integer(1))),
    "max_iter": Integer(1),
    "tol": NON_NEGATIVE,
    "random_state": RandomState(),
    "copy_x": Boolean(),
    "algorithm": Options(KMEANS_ALGORITHMS),
    "oversampling_factor": NON_NEGATIVE,
    "init_max_iter": Integer(1, allow_none=True),
    "split_every": SPLIT_EVERY,
    "verbose": VERBOSE,
    "callback": CALLBACK,
    **INPUT_OPTIONS,
    "cache": CACHE,
}

#: GaussianMixtureIC: ``covariance_type='all'`` means these, scikit-learn's four.
SKLEARN_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
IC_CRITERIA = ("bic", "aic")

GAUSSIAN_MIXTURE_IC: dict[str, Spec] = {
    "min_components": Integer(1),
    "max_components": Integer(1),
    "covariance_type": Either(
        (Options((*COVARIANCE_TYPES, "all")), OptionList(tuple(COVARIANCE_TYPES)))
    ),
    "criterion": Options(IC_CRITERIA),
    **{
        name: GAUSSIAN_MIXTURE[name]
        for name in ("tol", "reg_covar", "max_iter", "n_init", "init_params", "random_state",
                     "verbose", "verbose_interval", "split_every", "callback", "accelerate")
    },  # fmt: skip
    **INPUT_OPTIONS,
    "estep": GAUSSIAN_MIXTURE["estep"],
    "cache": CACHE,
}

ANNEALED_GAUSSIAN_MIXTURE: dict[str, Spec] = {
    "n_components": Integer(1),
    "cooling": Real(gt=0, lt=1, why="σ² is multiplied by it each step"),
    "sigma2_start": OPTIONAL_POSITIVE_FINITE,
    "sigma2_stop": OPTIONAL_POSITIVE_FINITE,
    "max_split_factor": Real(ge=1),
    "max_iter_per_step": Integer(1),
    "tol": NON_NEGATIVE,
    "sample_size": Integer(1),
    "random_state": RandomState(),
    "n_lloyd_max_iter": Integer(1),
    "hartigan_max_passes": Integer(0),
    "split_every": SPLIT_EVERY,
    "verbose": VERBOSE,
    **INPUT_OPTIONS,
    "estep": GAUSSIAN_MIXTURE["estep"],
    "cache": CACHE,
}

DPMEANS: dict[str, Spec] = {
    "penalty": Real(gt=0, lt=np.inf, allow_none=True, why="λ, the price of a cluster"),
    "n_clusters": Integer(1, allow_none=True),
    "init": ArrayLike("(k, n_features)", allow_none=True),
    "max_iter": Integer(1),
    "tol": NON_NEGATIVE,
    "random_state": RandomState(),
    "split_every": SPLIT_EVERY,
    "verbose": VERBOSE,
    "callback": CALLBACK,
    **INPUT_OPTIONS,
    "cache": CACHE,
}
