"""Sphinx configuration of the dask-emk documentation.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (tests/test_docs.py does it,
with warnings as errors). The gallery's examples run at build time.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

import dask_emk  # noqa: E402

project = "dask-emk"
author = "the dask-emk developers"
copyright = "2026, the dask-emk developers"
version = release = dask_emk.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "pipeline_fields",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = [
    "_build", "ARCHITECTURE.md", "NUMERICS.md", "SCHEMA.md", "examples",
]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
# Markdown pages included from the repository (ARCHITECTURE.md, SCHEMA.md, RESULTS.md,
# pipelines/README.md) link to source files that are not pages of the site.
suppress_warnings = ["myst.xref_missing", "myst.header"]

templates_path = ["_templates"]
autosummary_generate = True
autodoc_default_options = {"inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# numpydoc's validation, on for every documented object: every check but those listed
# ("all" minus them; each listed one still fails somewhere). tests/test_docs.py builds
# with -W, so any other failure is an error.
numpydoc_validation_checks = {
    "all",
    "ES01",  # no extended summary (one-line method docstrings)
    "EX01",  # no Examples section (every estimator has one; methods do not)
    "SA01",  # no See Also section
}
# scikit-learn's own docstrings of inherited methods
numpydoc_validation_exclude = {
    r"\.(AnnealedGaussianMixture|DPMeans|StandardScaler)\.fit_transform$",
}

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "abort_on_example_error": True,
    "plot_gallery": "True",
    # "Examples using X" on each API page
    "doc_module": ("dask_emk",),
    "backreferences_dir": "generated/backreferences",
}

html_theme = "pydata_sphinx_theme"
html_title = f"dask-emk {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []
html_show_sourcelink = False
