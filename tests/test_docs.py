"""The documentation: the docstrings' Examples run as doctests, and (slow) the Sphinx
site builds with warnings as errors (numpydoc validation included), its gallery
executed, with the pages and figures a reader looks for."""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import re
import subprocess
import sys
import time

import pytest
from pipeline_helpers import ROOT

import dask_emk
from dask_emk.models._docs import SECTIONS, fill_doc
from dask_emk.pipeline import config, fit_options

ESTIMATORS = [name for name in dask_emk.__all__ if name != "__version__"]


@pytest.mark.parametrize("name", ESTIMATORS)
def test_docstring_examples_run(name):
    """Every estimator's Examples section runs and prints what it says."""
    obj = getattr(dask_emk, name)
    tests = doctest.DocTestFinder().find(obj, name, globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0
    assert sum(len(t.examples) for t in tests if t.name == name) >= 4  # the class's own


PREDICTORS = [name for name in ESTIMATORS if hasattr(getattr(dask_emk, name), "predict")]


@pytest.mark.parametrize("name", PREDICTORS)
def test_shared_sections_filled(name):
    """Every public method's docstring as help() shows it: no placeholder left, and
    predict's X and lazy/eager rule in the one text of models/_docs.py."""
    cls = getattr(dask_emk, name)
    methods = [getattr(cls, m) for m in dir(cls) if not m.startswith("_")]
    docs = [inspect.getdoc(m) or "" for m in methods if inspect.isfunction(m)]
    assert not [doc for doc in docs if re.search(r"^\s*\{\w+\}\s*$", doc, re.MULTILINE)]
    predict = inspect.getdoc(cls.predict)
    assert SECTIONS["X"] in predict
    assert SECTIONS["per_sample"].splitlines()[0] in predict


#: The class-docstring Parameters entries every estimator shares (models/_docs.py).
SHARED_PARAMETERS = ("feature_dim", "sample_dims", "missing_chunks", "cache")


@pytest.mark.parametrize("kind", sorted(config.MODELS))
def test_shared_parameter_entries_in_help_and_fit_help(kind):
    """The shared entries, spelled once, are filled in the class docstring help()
    shows, and ``dask-emk fit --help`` (which reads the source without importing
    the estimator) takes the same first sentence of every parameter."""
    estimator = config.MODELS[kind][0]
    doc = inspect.getdoc(estimator.load())
    for name in SHARED_PARAMETERS:
        assert SECTIONS[name] in doc
    assert fit_options.parameter_docs(estimator) == fit_options.parameter_sentences(doc)
    cache = fit_options.parameter_docs(estimator)["cache"]
    assert cache.startswith("Keep the rows read from a lazy X in memory for the fit's later")


def test_fill_doc_names_an_unknown_section():
    def method():
        """Summary.

        Parameters
        ----------
        {X}
        {not_a_section}
        """

    with pytest.raises(KeyError, match="not_a_section"):
        fill_doc(method)


@pytest.mark.slow
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("sphinx", "numpydoc", "sphinx_gallery",
                                                  "pydata_sphinx_theme", "myst_parser")),
    reason="the docs tools are not installed (pip install -e '.[test]' or '.[docs]')",
)  # fmt: skip
def test_docs_build(tmp_path):
    out = tmp_path / "html"
    start = time.perf_counter()
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         ROOT / "docs", out],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert build.returncode == 0, build.stdout + build.stderr
    pages = [
        "index.html", "getting_started.html", "api.html", "troubleshooting.html",
        "user_guide/mixtures.html", "user_guide/pipeline_fields.html",
        "design/architecture.html", "auto_examples/index.html",
        *(f"generated/dask_emk.{name}.html" for name in ESTIMATORS),
    ]  # fmt: skip
    missing = [page for page in pages if not (out / page).is_file()]
    assert not missing
    figures = ["quickstart", "colour_quantisation", "gridded_regimes", "bic", "dpmeans",
               "missing_values", "annealing"]  # fmt: skip
    for figure in figures:
        assert (out / "_images" / f"sphx_glr_plot_{figure}_001.png").stat().st_size > 10_000
    # The math is rendered, the parameter tables generated, the API has its Parameters.
    assert "\\sigma^2 \\to 0" in (out / "user_guide/mixtures.html").read_text(encoding="utf-8")
    fields = (out / "user_guide/pipeline_fields.html").read_text(encoding="utf-8")
    assert "oversampling_factor" in fields and "sample_size" in fields
    assert "--n-init" in fields and "--weights" in fields  # the dask-emk fit options
    api = (out / "generated/dask_emk.GaussianMixture.html").read_text(encoding="utf-8")
    assert "The number of mixture components K." in api
    print(f"docs built in {seconds:.0f} s")
