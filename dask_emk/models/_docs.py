"""The docstring sections the estimators and their methods share, spelled once.

A docstring names a section on a line of its own, ``{X}``, and
:func:`fill_doc` replaces that line by the section's text, indented as the
placeholder was: ``help()``, Sphinx and numpydoc's validation read the full
docstring. A section is one numpydoc Parameters entry, or a sentence of a
Returns description. ``dask-emk fit --help`` reads the estimators' class
docstrings from their source, without importing them, and fills them with
:func:`fill_text`: so this module imports nothing but the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

#: Section name -> its text (a parameter entry: the name line, then the
#: description indented by four spaces).
SECTIONS = {
    "X": (
        "X : array-like, dask array, xarray Dataset or DataArray, zarr array or store path\n"
        "    Samples of the fitted features, shape (n_samples, n_features), or\n"
        "    gridded xarray data laid out as at fit. A Dataset's variables are\n"
        "    taken by the fitted feature names (``feature_names_in_``), in any order."
    ),
    "y": "y : None\n    Ignored (scikit-learn's signature).",
    "sample_weight": (
        "sample_weight : array-like of shape (n_samples,), optional\n"
        "    Non-negative weights of the samples (gridded X: a DataArray on some of\n"
        "    its sample dims)."
    ),
    # The lazy/eager rule of a per-sample output, closing a Returns description.
    "per_sample": (
        "Of the input's kind: numpy for numpy or pandas input; a lazy dask array\n"
        "for dask or zarr input; for xarray input a lazy DataArray on its sample dims."
    ),
    "per_sample_component": (
        "Of the input's kind: numpy for numpy or pandas input; a lazy dask array\n"
        "for dask or zarr input; for xarray input a lazy DataArray on its sample dims\n"
        "(with a ``component`` dim)."
    ),
    "computed": "Computed, for lazy input too (one pass).",
    # How every estimator reads X: entries of the classes' Parameters.
    "feature_dim": (
        "feature_dim : str, optional\n"
        "    The dimension of an N-D DataArray that holds the features (default:\n"
        "    one named ``feature``; for 2-D input the second dimension)."
    ),
    "sample_dims": (
        "sample_dims : str or list of str, optional\n"
        "    The dimensions of xarray input that hold samples (default: every\n"
        "    dimension but the feature dimension; for a Dataset those all its\n"
        "    data variables have). Outputs come back on them."
    ),
    "missing_chunks": (
        "missing_chunks : {'raise', 'fill'}, default='raise'\n"
        "    What reading X from a zarr store does with a missing chunk or shard\n"
        "    file: raise an error naming it (``'raise'``) or read the array's fill\n"
        "    value (``'fill'``, for stores written without empty chunks)."
    ),
    "cache": (
        "cache : {'auto', True, False}, default='auto'\n"
        "    Keep the rows read from a lazy X in memory for the fit's later passes\n"
        "    (seeding included): the first pass reads the store, the others read\n"
        "    the kept rows (on a distributed cluster, on the workers). 'auto'\n"
        "    keeps the first blocks that fit in half the free memory\n"
        "    (:data:`dask_emk.engine.cache.AUTO_SHARE`) and reads the rest on\n"
        "    every pass; True keeps all or refuses before reading; False reads\n"
        "    the store on every pass. The results are the same bit for bit; the\n"
        "    rows are released when the fit ends and never kept by the model."
    ),
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.MULTILINE)


def fill_doc(func: F) -> F:
    """Replace each ``{name}`` line of ``func``'s docstring by ``SECTIONS[name]``.

    Parameters
    ----------
    func : callable
        A function, method or class whose docstring holds placeholder lines.

    Returns
    -------
    callable
        ``func`` itself, its ``__doc__`` filled (left None under ``python -OO``).
    """
    if func.__doc__:
        func.__doc__ = fill_text(func.__doc__)
    return func


def fill_text(doc: str) -> str:
    """``doc`` with each ``{name}`` line replaced by ``SECTIONS[name]``, indented as it.

    Parameters
    ----------
    doc : str
        A docstring, as written or cleaned (:func:`inspect.cleandoc`).

    Returns
    -------
    str
    """
    return _PLACEHOLDER.sub(_section, doc)


def _section(match: re.Match) -> str:
    name = match["name"]
    if name not in SECTIONS:
        raise KeyError(f"no shared docstring section {{{name}}}; the sections: {sorted(SECTIONS)}")
    return "\n".join(match["indent"] + line for line in SECTIONS[name].splitlines())
