"""Run a validated pipeline: input → (anneal) → model → results store → figures.

Order matters for "a failed run writes nothing": everything that can be
checked without computing (config, matplotlib: missing, it is a warning and
no plots; the input store, the scheduler spec, every output path against the
rule of :mod:`dask_emk.pipeline.outputs`) is checked first; then the results
path is locked and the leftovers of an interrupted run are cleaned up; then
the scheduler is started or reached, and
only then is data generated or results written.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import xarray as xr

from dask_emk._logging import STEPS_LOGGER
from dask_emk.engine.locations import bucket_of, is_url, normalize_location, storage_options
from dask_emk.engine.progress import PassProgress, watch_passes
from dask_emk.engine.storage import endpoint_errors
from dask_emk.models import export
from dask_emk.models.persist import load
from dask_emk.models.preprocess import StandardScaler
from dask_emk.pipeline import figures
from dask_emk.pipeline.checkpoint import (
    Checkpoint,
    InputRecord,
    checkpoint_path,
    fingerprint_pass,
    input_identity,
)
from dask_emk.pipeline.compare import fitted_parameters, truth_table
from dask_emk.pipeline.config import (
    Pipeline,
    PipelineError,
    Section,
    config_key,
    estimator_params,
)
from dask_emk.pipeline.fits import (
    FitOutcome,
    anneal_outcome,
    fit_anneal,
    fit_dpmeans,
    fit_gmm,
    fit_gmm_ic,
    fit_kmeans,
    format_iteration,
    gmm_init_from_anneal,
)
from dask_emk.pipeline.outputs import CHECKPOINT, GENERATED, PLOT, RESULTS, check_output, claim
from dask_emk.pipeline.predict import Planned, plan, write_planned
from dask_emk.pipeline.results import (
    fitted_model,
    model_dataset,
    per_sample_dataset,
    requested_outputs,
    truth_dataset,
    write_results,
)
from dask_emk.pipeline.scheduler import parse_scheduler, use_scheduler
from dask_emk.pipeline.sources import Source, check_input, open_source

#: The run's stages (scheduler, input, fit, export, plots), each with its time.
log = logging.getLogger("dask_emk")
#: One line per iteration (pass) of the fit.
steps_log = logging.getLogger(STEPS_LOGGER)


def run_pipeline(
    cfg: Pipeline,
    *,
    toml_text: str | None = None,
    resume: bool = False,
    echo: Callable[[str], None] = print,
    results_name: str = "output.results",
    passes: PassProgress | None = None,
) -> Path | str:
    """Run ``cfg`` (from :func:`dask_emk.pipeline.config.validate`); return the results path.

    Parameters
    ----------
    cfg : Pipeline
        The validated pipeline.
    toml_text : str, optional
        The pipeline file's text, stored verbatim in the results' attributes.
    resume : bool
        Continue from the checkpoint beside the results, if there is one.
    echo : callable
        Where the comparison with the truth goes (the run's answer, stdout).
        Progress is logged: the stages with their times on the ``dask_emk``
        logger, every iteration on ``dask_emk.steps`` (the CLI shows both,
        ``-q`` only warnings).
    results_name : str
        How the user named the results path (``--out`` for ``dask-emk fit``),
        for the messages that refuse it.
    passes : PassProgress, optional
        Told of the tasks of every pass of the fit as they finish (the CLI's
        progress bar, :mod:`dask_emk.engine.progress`); None says nothing.

    Returns
    -------
    Path or str
        The results store's path (or URL).
    """
    with storage_options(locations_options(cfg)):
        if cfg.model is None:
            return run_predictions(cfg)
        return _run_pipeline(cfg, toml_text, resume, echo, results_name, passes)


def results_under(cfg: Pipeline, out: str) -> Pipeline:
    """``cfg`` writing under the folder ``out`` (``dask-emk run --out DIR``).

    The pipeline's ``[output] results``, a relative path, is taken relative to
    ``out`` (a local folder or an object-store URL) instead of the current
    directory; the checkpoint and the figures follow, as they are written beside
    the results. Inputs (``[input.generate] path`` too) stay where they are.

    Raises
    ------
    PipelineError
        ``[output] results`` is absolute or a URL: it names its place already.
    """
    if cfg.output is None:
        raise PipelineError(
            f"--out {out} places a fit's results, but this pipeline only predicts (no "
            "[model]); drop --out, and give each [[predict]] its out."
        )
    results = cfg.output.results
    if is_url(results) or Path(results).is_absolute():
        raise PipelineError(
            f"--out {out} places the pipeline's relative [output] results, but results = "
            f"{results!r} names its own place; drop --out, or make results relative."
        )
    placed = f"{out.rstrip('/')}/{results}" if is_url(out) else str(Path(out) / results)
    return cfg.replace(output=cfg.output.replace(results=placed))


def locations_options(cfg: Pipeline) -> dict[str, dict | None]:
    """The ``storage_options`` of [input], [output] and each [[predict]] store, keyed by
    the locations they serve.

    The results' key is their name without ``.zarr``: it prefixes the store,
    its lock and checkpoint (``r.zarr.*``) and its plots (``r.*.png``). The
    tables of [input] and [output] also serve their bucket (checked before
    writing); the output's, when input and output share one. A [[predict]]
    entry's serves its store alone: its out and model file, often in
    another bucket, take the environment's (or the results' bucket's).
    """
    inputs, out = cfg.input, cfg.output
    options = {}
    if inputs is not None:  # predict-only: no [input], no [output]
        made = inputs.generate or inputs.photo
        source = inputs.store or (made.path if made is not None else None)
        results = normalize_location(out.results).removesuffix(".zarr")
        for place, table in [(source, inputs.storage_options), (results, out.storage_options)]:
            if place and is_url(place):
                options.update({bucket_of(place): table, place: table})
    for entry in cfg.predict:
        if is_url(entry.store):
            options[entry.store] = entry.storage_options
    return options


def _run_pipeline(cfg, toml_text, resume, echo, results_name, passes) -> Path | str:
    out = cfg.output
    if out.plots:
        try:
            figures.require_matplotlib()
        except figures.MissingMatplotlib as exc:  # plots are extras: the fit still runs
            log.warning("warning: skipping the plots: %s", exc)
            out = out.replace(plots=False)
            cfg = cfg.replace(output=out)
    checked = check_input(cfg.input)
    if checked is not None:
        _map_slice(out, checked)
    parse_scheduler(cfg.scheduler.address)
    results, companions = check_outputs(cfg, resume, results_name)
    predicted = check_predictions(cfg, results)
    store = input_identity(cfg.input.as_dict())
    checkpoint = Checkpoint(results, config_key(cfg), resume, out.checkpoint, store)
    with (
        claim(results, RESULTS, where=results_name, companions=companions) as notes,
        claim_all(predicted) as predict_notes,
        use_scheduler(cfg.scheduler.address, log.info),
    ):
        for note in notes + predict_notes:  # what an earlier run left, taken over or restored
            log.warning("results: %s", note)
        source = open_source(cfg.input, log.info)
        log.info("input: %s", source.description)
        map_slice = _map_slice(out, source)
        checkpoint.check_input(InputRecord.of(store, source.data.array))
        start = time.perf_counter()
        with (
            checkpoint.watch_content() as watch,  # the first pass fingerprints the input
            watch_passes(passes),
        ):
            scaler = fit_scaler(cfg, source)
            fitted = source if scaler is None else replace(source, X=scaler.transform(source.X))
            outcome, anneal = fit_model(cfg, fitted, checkpoint, scaler)
            if watch.fingerprint is None and checkpoint.expected_fingerprint is not None:
                fingerprint_pass(source.data.array)  # resumed with the fit done: no pass made
        fit_seconds = time.perf_counter() - start
        log.info(_summary(outcome, fit_seconds, scaler))
        start = time.perf_counter()
        groups = _groups(anneal, source, scaler)
        root = _root_dataset(cfg, outcome, source, toml_text, fit_seconds, scaler)
        model = fitted_model(outcome, scaler)
        per_sample = per_sample_dataset(model, source.X, requested_outputs(out.as_dict()))
        # The other stores' inputs checked against the model before anything is written.
        planned = [(target, plan_entry(entry, model, results))
                   for target, entry in zip(predicted, cfg.predict, strict=True)]  # fmt: skip
        with endpoint_errors(source.X):  # the export reads the input again (labels, ...)
            write_results(results, root, groups, per_sample, model)
        outputs = ", ".join(["root", *groups, *(per_sample or {})])
        log.info("export: %s (%s) in %.1f s", results, outputs, time.perf_counter() - start)
        write_predictions(planned)
        if out.plots:
            start = time.perf_counter()
            drawn = draw_figures(results, outcome, anneal, source, map_slice, scaler)
            log.info("plots: %s in %.1f s", ", ".join(map(str, drawn)), time.perf_counter() - start)
    if source.truth is not None:
        lines, _ = truth_table(outcome.model, source.truth, scaler)
        echo("fitted vs truth:")
        for line in lines:
            echo("  " + line)
    return results


# ------------------------------------------------------------------ [[predict]]
#: How messages name the output of a [[predict]] entry.
PREDICT_OUT = "[[predict]] out"


def check_predictions(cfg: Pipeline, results: Path | str | None = None) -> list[Path | str]:
    """Check each [[predict]] out against the output rule, before any work; its model file
    too (loaded). The out may not be (or hold) a store the run reads, nor its results."""
    given = (cfg.input.store, cfg.input.csv) if cfg.input is not None else ()
    reads = [path for path in given if path is not None]
    targets = []
    for entry in cfg.predict:
        inputs = [*reads, entry.store, *(p for p in (entry.model, results) if p is not None)]
        targets.append(check_output(entry.out, RESULTS, where=PREDICT_OUT, inputs=inputs))
        if entry.model is not None:
            load(entry.model)  # a file that does not load fails now, not after the fit
    return targets


@contextmanager
def claim_all(targets: list[Path | str]) -> Iterator[list[str]]:
    """Hold the locks of every [[predict]] out (:func:`claim`); the notes of all."""
    with ExitStack() as stack:
        notes = []
        for target in targets:
            notes += stack.enter_context(claim(target, RESULTS, where=PREDICT_OUT))
        yield notes


def plan_entry(entry: Section, fitted, results: Path | str | None) -> Planned:
    """The lazy outputs of one [[predict]] entry: with its model file, or the ``fitted``
    model (the one written to ``results``, which the root's ``model_file`` names)."""
    model = fitted if entry.model is None else load(entry.model)
    layout = {"feature_dim": entry.feature_dim, "sample_dims": entry.sample_dims}
    return plan(model, str(results if entry.model is None else entry.model), entry.store,
                array=entry.array, outputs=tuple(entry.outputs), variables=entry.variables,
                missing_chunks=entry.missing_chunks, layout=layout)  # fmt: skip


def write_predictions(planned: list[tuple[Path | str, Planned]]) -> None:
    """Write each planned [[predict]] store in turn, timed like the run's other stages."""
    for target, one in planned:
        start = time.perf_counter()
        write_planned(target, PREDICT_OUT, one, echo=log.info)
        log.info("predict: %s in %.1f s", target, time.perf_counter() - start)


def run_predictions(cfg: Pipeline) -> Path | str:
    """A predict-only pipeline: each [[predict]] store written with its model file; the
    last one's path. Every out and model file is checked before the scheduler starts."""
    targets = check_predictions(cfg)
    parse_scheduler(cfg.scheduler.address)
    with claim_all(targets) as notes, use_scheduler(cfg.scheduler.address, log.info):
        for note in notes:
            log.warning("predict: %s", note)
        planned = [(target, plan_entry(entry, None, None))
                   for target, entry in zip(targets, cfg.predict, strict=True)]  # fmt: skip
        write_predictions(planned)
    return targets[-1]


def check_outputs(cfg: Pipeline, resume: bool, results_name: str) -> tuple[Path | str, list]:
    """Check every path the run writes against the output rule, before any work.

    Returns
    -------
    (results path, [(checkpoint or plot path, kind), ...] written beside it)
    """
    inputs = [path for path in (cfg.input.store, cfg.input.csv) if path is not None]
    for key, made in (("generate", cfg.input.generate), ("photo", cfg.input.photo)):
        if made is not None:
            check_output(made.path, GENERATED, where=f"input.{key}.path")
            inputs.append(made.path)
    out = cfg.output
    results = check_output(out.results, RESULTS, where=results_name, inputs=inputs)
    companions = []
    if out.checkpoint or resume:
        companions.append((checkpoint_path(results), CHECKPOINT))
    if out.plots:
        companions += [(path, PLOT) for path in figures.figure_paths(results).values()]
    for path, kind in companions:
        check_output(path, kind, where=results_name, inputs=inputs)
    return results, companions


def fit_model(cfg: Pipeline, source: Source, checkpoint: Checkpoint, scaler=None) -> tuple:
    """The pipeline's fit: optional annealing stage, then the model, resumable;
    its lines give lower bounds in the data's units (``scaler``: see :func:`shown`).

    Returns
    -------
    (FitOutcome of the final model, fitted AnnealedGaussianMixture or None)
    """
    model_cfg = cfg.model
    X, kind = source.X, model_cfg.type

    def progress(stage, it):
        objective = {"kmeans": "inertia", "dpmeans": "objective"}.get(stage, "lower_bound")
        steps_log.info(format_iteration(stage, objective, shown(it, objective, scaler)))

    anneal = None
    if cfg.anneal is not None:
        params = {**cfg.anneal.given(), **source.options}
        start = time.perf_counter()
        anneal = fit_anneal(X, params, checkpoint, source.weights)
        log.info("anneal: %d means, %d passes over the data, %.1f s", anneal.means_.shape[0],
                 anneal.n_full_passes_, time.perf_counter() - start)  # fmt: skip
    if kind == "anneal":
        return anneal_outcome(anneal), anneal
    params = {**estimator_params(model_cfg), **source.options}
    if kind == "dpmeans":
        return fit_dpmeans(X, params, checkpoint, progress, source.weights), anneal
    if kind == "gmm-ic":
        return fit_gmm_ic(X, params, checkpoint, progress, source.weights), anneal
    if kind == "kmeans":
        if params["init"] == "anneal":
            params["init"] = np.asarray(anneal.means_, np.float64)
        return fit_kmeans(X, params, checkpoint, progress, source.weights), anneal
    init = params.pop("init_params")
    if init == "anneal":
        n = source.data.n_samples
        params.update(gmm_init_from_anneal(anneal, model_cfg.covariance_type, n))
    else:
        params["init_params"] = "k-means||" if init == "kmeans" else init
    return fit_gmm(X, params, checkpoint, progress, source.weights), anneal


def fit_scaler(cfg: Pipeline, source: Source) -> StandardScaler | None:
    """The StandardScaler of ``[preprocess] standardize``, fitted in one pass (else None).

    Not checkpointed: refitting it on resume costs one pass and gives the
    same statistics.
    """
    if not cfg.preprocess.standardize:
        return None
    dims = {key: source.options[key] for key in ("feature_dim", "sample_dims")}
    start = time.perf_counter()
    scaler = StandardScaler(**dims).fit(source.X, sample_weight=source.weights)
    stats = zip(scaler.mean_, scaler.scale_, strict=True)
    scales = ", ".join(f"{m:.4g} ± {s:.4g}" for m, s in stats)
    log.info("standardize: mean ± scale per feature: %s (%.1f s)", scales,
             time.perf_counter() - start)  # fmt: skip
    return scaler


def _map_slice(out: Section, source: Source) -> dict | None:
    """Where the label map of gridded labels is drawn (checked now, before the fit);
    None when there is none to draw."""
    if not (out.plots and out.labels and source.gridded):
        return None
    return figures.label_map_slice(source.data.grid, out.map_slice)


def draw_figures(
    results: Path | str,
    outcome: FitOutcome,
    anneal,
    source: Source,
    map_slice: dict | None,
    scaler=None,
) -> list[Path | str]:
    """Convergence curve, annealing path (if any), 2-D clusters (if d == 2), the label
    map of gridded input at ``map_slice`` (and a photograph's quantised image); the
    clusters in the data's units (labels of the model fitted behind ``scaler``)."""
    paths = figures.figure_paths(results)
    history = [shown(it, outcome.objective, scaler) for it in outcome.history]
    model_name, tol = type(outcome.model).__name__, getattr(outcome.model, "tol", None)
    units = export.objective_units(outcome.objective, scaler is not None)
    drawn = [
        figures.plot_convergence(history, outcome.objective, paths["convergence"],
                                 outcome.n_clusters, model_name, tol, units)  # fmt: skip
    ]
    model = outcome.model
    if anneal is not None:
        # The path in the fitted units, coloured by the final model's means in them.
        fitted_means = fitted_parameters(model, None)[1]
        drawn.append(figures.plot_anneal_path(anneal.path_, paths["path"], fitted_means))
    if outcome.search is not None:
        drawn.append(figures.plot_criteria(outcome.search.criteria_, paths["criterion"]))
    _, means, covariances = fitted_parameters(model, scaler)
    if map_slice is not None:
        labels = figures.read_labels(results)
        land = figures.missing_everywhere(source.X, source.options.get("feature_dim"))
        drawn.append(figures.plot_label_map(labels.isel(map_slice), paths["labels"],
                                            land.isel(map_slice)))  # fmt: skip
        if source.photo:
            drawn.append(figures.save_quantised(labels, means, paths["quantised"]))
    if source.data.n_features == 2:
        X2 = figures.subsample_rows(source.data.array)
        X2 = X2[np.isfinite(X2).all(axis=1)]
        labels = np.asarray(model.predict(X2 if scaler is None else scaler.transform(X2)))
        names = source.data.feature_labels
        names = ("x0", "x1") if names is None else names
        drawn.append(
            figures.plot_clusters(X2, labels, means, covariances, paths["clusters"], names)
        )
    return drawn


def _root_dataset(cfg, outcome, source, toml_text, fit_seconds, scaler=None) -> xr.Dataset:
    root = model_dataset(outcome, scaler)
    root.attrs.update(
        export.schema_attrs(
            export.RESULTS,
            pipeline_json=json.dumps(redacted(cfg.as_dict()), sort_keys=True),
            pipeline_toml=redact_text(toml_text or "", cfg.as_dict()),
            input=source.description,
            n_samples=source.data.n_samples,
            fit_seconds=float(fit_seconds),
        )
    )
    return root


#: Parts of storage_options keys that name a credential (``key``, ``secret``,
#: ``token``, ``aws_secret_access_key``, ``password``, ...): redacted in the results.
SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "auth",
                "session", "signature", "private")  # fmt: skip
REDACTED = "<redacted>"


def redacted(cfg: dict) -> dict:
    """``cfg`` with every credential-like value of a storage_options table replaced."""

    def scrub(value, secret: bool = False):
        if isinstance(value, dict):
            return {k: scrub(v, secret or _is_secret(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v, secret) for v in value]
        return REDACTED if secret else value

    out = copy.deepcopy(cfg)
    for section in [out.get("input"), out.get("output"), *out.get("predict", [])]:
        if section and section.get("storage_options"):
            section["storage_options"] = scrub(section["storage_options"])
    return out


def redact_text(text: str, cfg: dict) -> str:
    """The pipeline file's text with the values :func:`redacted` hides replaced too."""
    for value in _secrets(cfg, redacted(cfg)):
        # The value as a TOML string, basic (escaped as JSON escapes it) or literal:
        # a short secret is not replaced inside other text.
        for spelling in (json.dumps(value), f"'{value}'"):
            text = text.replace(spelling, f'"{REDACTED}"')
    return text


def _secrets(original, scrubbed) -> list[str]:
    """The string values of ``original`` that ``scrubbed`` replaced."""
    if isinstance(original, dict):
        return [s for k in original for s in _secrets(original[k], scrubbed[k])]
    if isinstance(original, list):
        return [s for o, r in zip(original, scrubbed, strict=True) for s in _secrets(o, r)]
    secret = scrubbed == REDACTED and isinstance(original, str) and original != REDACTED
    return [original] if secret and original else []


def _is_secret(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in SECRET_WORDS)


def _groups(anneal, source: Source, scaler=None) -> dict[str, xr.Dataset]:
    groups = {}
    if anneal is not None:
        # Its path stays in the standardised units the annealing ran in.
        groups["anneal"] = anneal.to_xarray() if scaler is None else scaler.original_units(anneal)
        groups["anneal_path"] = anneal.path_
    if source.truth is not None:
        groups["truth"] = truth_dataset(source.truth)
    return groups


def shown(it, objective: str, scaler=None):
    """The iteration ``it`` as every output shows it: a lower bound of a model fitted
    behind ``scaler`` (standardised data) as the mean log density in the data's
    units, like the results store (:func:`dask_emk.pipeline.results.model_dataset`),
    ``show`` and the plots; other objectives as fitted."""
    if scaler is None or objective != "lower_bound":
        return it
    return replace(it, value=float(scaler.original_log_density(it.value)))


#: What the objectives are, after their value in the summary line.
UNITS = {"lower_bound": export.OBJECTIVE_UNITS["lower_bound"]}


def _summary(outcome: FitOutcome, seconds: float, scaler=None) -> str:
    last = outcome.history[-1] if outcome.history else None
    last = last and shown(last, outcome.objective, scaler)
    units = UNITS.get(outcome.objective)
    value = f", {outcome.objective.replace('_', ' ')} {last.value:.8g}" if last else ""
    value += f" ({units})" if last and units else ""
    state = "converged" if outcome.converged else "NOT converged (raise max_iter or tol)"
    return f"fit: {len(outcome.history)} iterations in {seconds:.1f} s, {state}{value}"
