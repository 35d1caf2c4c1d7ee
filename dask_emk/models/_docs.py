"""The docstring sections the estimators' methods share, spelled once.

A method's docstring names a section on a line of its own, ``{X}``, and
:func:`fill_doc` replaces that line by the section's text, indented as the
placeholder was: ``help()``, Sphinx and numpydoc's validation read the full
docstring. A section is one numpydoc Parameters entry, or a sentence of a
Returns description.
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
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.MULTILINE)


def fill_doc(func: F) -> F:
    """Replace each ``{name}`` line of ``func``'s docstring by ``SECTIONS[name]``.

    Parameters
    ----------
    func : callable
        A function or method whose docstring holds placeholder lines.

    Returns
    -------
    callable
        ``func`` itself, its ``__doc__`` filled (left None under ``python -OO``).
    """
    if func.__doc__:
        func.__doc__ = _PLACEHOLDER.sub(_section, func.__doc__)
    return func


def _section(match: re.Match) -> str:
    name = match["name"]
    if name not in SECTIONS:
        raise KeyError(f"no shared docstring section {{{name}}}; the sections: {sorted(SECTIONS)}")
    return "\n".join(match["indent"] + line for line in SECTIONS[name].splitlines())
