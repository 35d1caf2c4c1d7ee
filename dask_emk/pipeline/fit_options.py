"""The ``dask-emk fit`` options, made from the pipeline's field tables.

Every option sets one pipeline field (:class:`FitOption`): the [input],
[preprocess] and [model] fields, and the [anneal] ones as ``--anneal-...``,
so the command line, a pipeline and the estimators take the same settings.
The help of an estimator parameter is the first sentence of its docstring
entry, read from the source only when shown (``--help`` stays fast).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

from dask_emk.models import params
from dask_emk.models._docs import fill_text
from dask_emk.pipeline.config import (
    ANNEAL_PARAMETERS,
    COMMON_MODEL,
    COSLAT,
    INPUT_FIELDS,
    MODELS,
    PREPROCESS_FIELDS,
    AnnealedGaussianMixture,
    GaussianMixture,
    LazyEstimator,
    anneal_fields,
    field_specs,
    model_fields,
)

#: One sentence for each field that no estimator parameter describes (a
#: parameter's is the first sentence of the estimator's docstring entry):
#: ``dask-emk fit --help`` and the docs' tables show them.
FIELD_HELP = {
    ("input", "columns"): "CSV input: the columns to fit, in this order (default: all).",
    ("input", "storage_options"): (
        "fsspec options of an object-store location (endpoint, credentials, ...): a table; "
        "on the command line a JSON object, for every URL the command reads or writes."
    ),
    ("input", "variables"): (
        "An xarray store's data variables to fit, the features in name order (default: "
        "all but the weights variable)."
    ),
    ("input", "weights"): (
        "Sample weights of an xarray store: one of its variables on (some of) its sample "
        f"dims, or {COSLAT!r}: cos(latitude) of its latitude dim (found by CF attributes "
        "or name)."
    ),
    ("preprocess", "standardize"): (
        "Fit a StandardScaler (with the sample weights) on the input and the model on its "
        "output; results are reported in the data's units."
    ),
    ("model", "type"): (
        "The estimator: "
        + ", ".join(f"{kind} ({est.__name__})" for kind, (est, _) in MODELS.items())
        + "."
    ),
    ("model", "n_components"): (
        "Components (clusters); gmm-ic: the largest number tried; dpmeans: a target K, "
        "instead of penalty. Required otherwise."
    ),
}
#: CLI names of fields (``--model gmm``, ``--k 3``); others are ``--field-name``, and
#: [anneal] fields ``--anneal-field-name``.
CLI_NAMES = {"type": "model", "n_components": "k"}
#: [anneal] fields that are no option: the run takes them from [model] and [input]
#: (n_components, random_state, how X is read) or shows progress itself (verbose).
ANNEAL_NOT_OPTIONS = ("n_components", "random_state", "verbose", *params.INPUT_OPTIONS)
#: [input] fields that are INPUT itself, or tables of their own: no option.
INPUT_NOT_OPTIONS = ("store", "array", "csv", "generate", "photo")


@dataclasses.dataclass(frozen=True)
class FitOption:
    """A ``dask-emk fit`` option: the pipeline field it sets and what it may hold.

    Attributes
    ----------
    section, key : str
        The field: ``[section] key``.
    kind : Kind or tuple of Kind
        The field's kind; of a [model] field, one per model type in ``models``.
    specs : tuple of Spec
        The estimators' rules for it, one per model type in ``models`` (empty
        for fields that set no parameter).
    models : tuple of str
        The model types that take it ([model] fields beyond the common ones).
    param : str or None
        The estimator parameter whose docstring describes it.
    """

    section: str
    key: str
    kind: Any
    specs: tuple = ()
    models: tuple = ()
    param: str | None = None

    @property
    def name(self) -> str:
        """The option's name without dashes, as click passes it (``max_iter``)."""
        prefix = "anneal_" if self.section == "anneal" else ""
        return prefix + CLI_NAMES.get(self.key, self.key)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def help(self) -> str:
        """One sentence: the field's own, else its parameter's (reads docstrings)."""
        text = FIELD_HELP.get((self.section, self.key))
        if text is None:
            estimator = MODELS[self.models[0]][0] if self.models else GaussianMixture
            estimator = AnnealedGaussianMixture if self.section == "anneal" else estimator
            text = parameter_docs(estimator).get(self.param or self.key, "")
        if self.models and len(self.models) < len(MODELS):
            text = f"{', '.join(self.models)}: {text}"
        return text


def fit_options() -> list[FitOption]:
    """Every ``dask-emk fit`` option that sets a pipeline field, from the field
    tables: [input] (but INPUT itself), [preprocess], [model] of every type, [anneal]."""
    options = [
        FitOption("input", key, kind, param=key if key in params.INPUT_OPTIONS else None)
        for key, (kind, _) in INPUT_FIELDS.items()
        if key not in INPUT_NOT_OPTIONS
    ]
    options += [FitOption("preprocess", key, kind) for key, (kind, _) in PREPROCESS_FIELDS.items()]
    for key, (kind, _) in COMMON_MODEL.items():  # the estimators' rules, where they have one
        rules = [field_specs(estimator, names).get(key) for estimator, names in MODELS.values()]
        options.append(FitOption("model", key, kind, tuple(filter(None, rules)), param=key))
    taken = {option.key for option in options}
    by_key: dict[str, list] = {}
    for kind, (estimator, names) in MODELS.items():
        kind_specs = field_specs(estimator, names)
        for key, (field_kind, _) in model_fields(kind, defaults=False).items():
            if key not in taken:
                by_key.setdefault(key, []).append((kind, field_kind, kind_specs[key], names[key]))
    for key, rows in by_key.items():
        kinds, field_kinds, key_specs, params_named = zip(*rows, strict=True)
        options.append(FitOption("model", key, field_kinds, key_specs, kinds, params_named[0]))
    anneal_specs = field_specs(AnnealedGaussianMixture, ANNEAL_PARAMETERS)
    options += [
        FitOption("anneal", key, kind, (anneal_specs[key],), param=key)
        for key, (kind, _) in anneal_fields(defaults=False).items()
        if key not in ANNEAL_NOT_OPTIONS
    ]
    return options


@functools.cache
def parameter_docs(estimator: LazyEstimator) -> dict[str, str]:
    """Parameter name -> the first sentence of its entry in the estimator's numpydoc
    "Parameters", read from the source (the estimator is not imported) with its
    shared entries filled in, as ``help()`` shows them (:mod:`dask_emk.models._docs`)."""
    source = Path(params.__file__).with_name(f"{estimator.module}.py").read_text(encoding="utf-8")
    node = next(
        node for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == estimator.__name__
    )  # fmt: skip
    return parameter_sentences(fill_text(ast.get_docstring(node) or ""))


def parameter_sentences(doc: str) -> dict[str, str]:
    """Parameter name -> the first sentence of its entry in the numpydoc
    "Parameters" of ``doc``, a cleaned docstring (:func:`inspect.getdoc`)."""
    section = doc.partition("Parameters\n----------\n")[2]
    section = re.split(r"\n\S[^\n]*\n-{3,}\n", section)[0]  # up to the next heading
    docs: dict[str, list[str]] = {}
    names: list[str] = []
    for line in section.splitlines():
        if line and not line[0].isspace():  # "name : type" or "a, b : type"
            names = [name.strip() for name in line.partition(" : ")[0].split(",")]
            docs.update({name: [] for name in names})
        else:
            for name in names:
                docs[name].append(line.strip())
    return {name: _first_sentence(" ".join(lines)) for name, lines in docs.items()}


def _first_sentence(text: str) -> str:
    """The first sentence that says more than the default (numpydoc's type line does)."""
    text = re.sub(r"^Default [^.]*\.\s*", "", " ".join(text.split()))
    return text.split(". ")[0].rstrip(".") + "." if text else ""
