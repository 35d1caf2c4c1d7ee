"""Sphinx directives ``pipeline-fields``: the pipeline TOML fields, from the tables
:mod:`dask_emk.pipeline.config` validates with, so the page cannot drift from the code;
and ``fit-options``: the ``dask-emk fit`` options made from the same tables
(:func:`dask_emk.pipeline.fit_options.fit_options`), with the help ``--help`` shows.

Model and ``[anneal]`` fields take their kinds, allowed values and defaults
from the estimators' parameter tables (:mod:`dask_emk.models.params`) and their
descriptions from the estimators' numpydoc Parameters sections; a field that
the annotated example (``pipelines/README.md``) does not mention is a warning,
an error in the ``-W`` build.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from numpydoc.docscrape import ClassDoc
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from dask_emk.pipeline import config, fit_options

logger = logging.getLogger(__name__)

#: Sections of plain fields: (section, table); model and anneal fields come from estimators.
PLAIN = [
    ("input", config.INPUT_FIELDS),
    ("input.generate", config.GENERATE_FIELDS),
    ("input.photo", config.PHOTO_FIELDS),
    ("preprocess", config.PREPROCESS_FIELDS),
    ("scheduler", config.SCHEDULER_FIELDS),
    ("output", config.OUTPUT_FIELDS),
    ("[predict]", config.PREDICT_FIELDS),  # an array of tables: [[predict]]
]


def kind_text(kind) -> str:
    """A field's kind as written in the table: its allowed strings, or a TOML type."""
    if isinstance(kind, tuple):
        return " | ".join(f'``"{value}"``' for value in kind)
    return kind or "(any)"


def default_text(default) -> str:
    if default is None:
        return "—"
    if isinstance(default, bool):
        return f"``{str(default).lower()}``"
    if isinstance(default, str):
        return f'``"{default}"``'
    return f"``{default!r}``"


def estimator_docs(estimator) -> dict[str, str]:
    """Parameter name -> its description's first sentence, from the numpydoc docstring."""
    docs = {}
    for param in ClassDoc(estimator, config={})["Parameters"]:
        text = " ".join(" ".join(param.desc).split())
        for name in param.name.split(","):
            docs[name.strip()] = text.split(". ")[0].rstrip(".") + "." if text else ""
    return docs


def table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    """RST list-table lines."""
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return lines + [""]


def plain_tables() -> list[str]:
    lines = []
    for section, fields in PLAIN:
        rows = [(f"``{key}``", kind_text(kind), default_text(default))
                for key, (kind, default) in fields.items()]  # fmt: skip
        lines += table(f"[{section}]", rows, ("key", "kind", "default"))
    return lines


def estimator_table(title: str, estimator, names: dict, fields: dict) -> list[str]:
    specs = config.field_specs(estimator, names)
    cls = estimator.load() if isinstance(estimator, config.LazyEstimator) else estimator
    docs = estimator_docs(cls)
    path = f"{cls.__module__.rsplit('.', 2)[0]}.{cls.__name__}"
    rows = []
    for key, (kind, default) in fields.items():
        param = names.get(key, key)
        # a pipeline's named options (init adds "anneal"); else the parameter's range
        allowed = kind_text(kind) if isinstance(kind, tuple) else specs[key].describe()
        sets = f":class:`~{path}` ``{param}``"
        rows.append((f"``{key}``", allowed, default_text(default), sets, docs.get(param, "")))
    return table(title, rows, ("key", "allowed", "default", "sets", "description"))


def model_tables() -> list[str]:
    common = [(f"``{key}``", kind_text(kind), default_text(default))
              for key, (kind, default) in config.COMMON_MODEL.items()]  # fmt: skip
    lines = table("[model], every type", common, ("key", "kind", "default"))
    for kind, (estimator, names) in config.MODELS.items():
        lines += estimator_table(
            f'[model] type = "{kind}"', estimator, names, config.MODEL_FIELDS[kind]
        )
    anneal = config.AnnealedGaussianMixture
    lines += estimator_table("[anneal]", anneal, config.ANNEAL_PARAMETERS, config.anneal_fields())
    return lines


def fit_options_table() -> list[str]:
    """The ``dask-emk fit`` options: the field each sets, what it takes, its help."""
    rows = []
    for option in fit_options.fit_options():
        kinds = option.kind if option.models else (option.kind,)
        kind = " | ".join(dict.fromkeys(kind_text(k) for k in kinds))
        if option.models and len(set(kinds)) > 1:
            kind = "(per model type, see the fields)"
        models = ", ".join(option.models) if option.models else "all"
        rows.append((f"``{option.flag}``", f"``[{option.section}] {option.key}``", kind,
                     models, option.help()))  # fmt: skip
    return table("dask-emk fit", rows, ("option", "sets", "kind", "model types", "help"))


class FitOptions(SphinxDirective):
    """Every ``dask-emk fit`` option that sets a pipeline field: ``.. fit-options::``."""

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        lines = StringList(fit_options_table(), source="fit-options")
        self.state.nested_parse(lines, self.content_offset, container)
        return container.children


def unmentioned(readme: Path) -> list[str]:
    """Fields of the tables that the annotated example never names."""
    text = readme.read_text(encoding="utf-8")
    keys = {key for _, fields in PLAIN for key in fields} | set(config.COMMON_MODEL)
    keys |= {key for fields in config.MODEL_FIELDS.values() for key in fields}
    return sorted(key for key in keys if key not in text)


class PipelineFields(SphinxDirective):
    """Every pipeline field in tables: ``.. pipeline-fields::``."""

    def run(self) -> list[nodes.Node]:
        readme = Path(self.env.srcdir).parent / "pipelines" / "README.md"
        for key in unmentioned(readme):
            logger.warning(f"pipeline field {key!r} is not described in {readme}",
                           location=self.get_location())  # fmt: skip
        container = nodes.container()
        lines = StringList(plain_tables() + model_tables(), source="pipeline-fields")
        self.state.nested_parse(lines, self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("pipeline-fields", PipelineFields)
    app.add_directive("fit-options", FitOptions)
    return {"parallel_read_safe": True, "version": "1"}
