"""The ``dask-emk`` command: generate data, run pipelines, one-off fits, show results.

Every expected failure (bad pipeline, missing store, unreachable scheduler,
missing matplotlib, bad data, an output path dask-emk may not write) ends as
a one-line ``Error: ...`` that says what to do, with exit code 1, before
anything is written. Ctrl-C (SIGINT) and SIGTERM end a command with one line
and exit code 128 + the signal number, after releasing its lock; what it was
writing stays under temporary names that the next run removes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import click

# Only light modules at the top (the config reads the parameter tables, not the
# estimators): --help, --version and a pipeline error answer without loading
# numba, scikit-learn, xarray or Dask's arrays (issue 26; benchmarks/bench_startup.py).
from dask_emk._version import __version__
from dask_emk.models.params import Integer, Real
from dask_emk.pipeline.config import (
    BOOL,
    FLOAT,
    INT,
    STR_LIST,
    TABLE,
    PipelineError,
    load_pipeline,
    validate,
)
from dask_emk.pipeline.fit_options import FitOption, fit_options

SCHEDULER_HELP = (
    "sync, threads, processes, local, local:N (LocalCluster with N workers) or "
    "tcp://HOST:PORT (existing cluster). Default: the pipeline's, else a LocalCluster "
    "sized to the machine."
)

FRACTION = click.FloatRange(0, 1, max_open=True)


def _fail_cleanly(func):
    """Turn expected errors into one-line click errors (exit code 1), signals into one line."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with _signals_interrupt():
                return func(*args, **kwargs)
        except _expected_errors() as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None
        except BaseException as exc:
            interrupt = _interrupt_behind(exc)
            if interrupt is None:
                _raise_if_no_room(exc)
                raise
            sig = interrupt.args[0] if interrupt.args else None
            sig = sig if isinstance(sig, signal.Signals) else signal.SIGINT
            click.echo(
                f"Error: interrupted by {sig.name}; rerun the command (with --resume to "
                "continue from the checkpoint): it removes what this run left half-written.",
                err=True,
            )
            sys.stdout.flush()
            sys.stderr.flush()
            # Exit at once: the lock and any cluster were released while the
            # interrupt unwound, and zarr writes still in flight on zarr's own
            # thread would otherwise fail noisily during interpreter shutdown.
            os._exit(128 + sig)

    return wrapper


def _raise_if_no_room(exc: BaseException) -> None:
    """A write that found no room (disk full, quota, ``ulimit -f``) outside the writers
    that name their path: one line, naming the file if the error does."""
    from dask_emk.pipeline.outputs import no_room, no_room_error

    full = no_room(exc)
    if full is not None:
        message = str(no_room_error(full.filename or "a file", full))
        raise click.ClickException(message) from None


def _expected_errors() -> tuple[type[Exception], ...]:
    """ValueError, and MissingMatplotlib once the figures module (which imports
    xarray) is loaded: it cannot have been raised before."""
    figures = sys.modules.get("dask_emk.pipeline.figures")
    return (ValueError,) if figures is None else (ValueError, figures.MissingMatplotlib)


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt ``exc`` is or stems from, else None.

    A signal that arrives while C code runs can surface as another error
    chained to it: numba's dispatcher, interrupted while loading a compiled
    function, raises ``SystemError: ... returned a result with an exception
    set`` (seen in tests/test_kill.py).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM stops a command the way Ctrl-C does: locks are released on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum))

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.group()
@click.version_option(__version__, prog_name="dask-emk")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Gaussian mixtures and k-means on out-of-core zarr data with Dask."""
    ctx.with_resource(_log_shown())


class _EchoHandler(logging.Handler):
    """Log records as lines on the current stderr (click's, under its test runner too),
    each after the time of day; ``quiet`` (``-q``): warnings and errors only."""

    quiet = False
    #: The progress bar drawn on the line below the log (erased before a log line).
    bar: _PassBar | None = None

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def filter(self, record: logging.LogRecord) -> bool:
        return (not self.quiet or record.levelno >= logging.WARNING) and bool(
            super().filter(record)
        )

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar is not None:
            self.bar.erase()
        click.echo(self.format(record), err=True)


class _PassBar:
    """Progress within the passes of a run, on stderr: one line, redrawn on a terminal.

    A pass shows nothing for its first ``delay`` seconds; then "HH:MM:SS pass N:
    done/total tasks, its time (the fit's)", redrawn in place on a terminal at most every
    0.2 s and erased when the pass ends (log lines go above it), or written
    as a line every ``every`` seconds when stderr is a file. ``quiet`` (``-q``)
    draws nothing. A slow worker is a warning, once per worker and run
    (:class:`dask_emk.engine.progress.PassProgress`).
    """

    def __init__(self, quiet: bool, delay: float = 2.0, every: float = 10.0):
        self.quiet, self.delay, self.every = quiet, delay, every
        self.tty = sys.stderr.isatty()
        self.n_pass, self.began, self.pass_began = 0, 0.0, 0.0
        self.drawn: float | None = None
        self.shown, self.warned, self.lock = False, set[str](), threading.Lock()

    def pass_started(self) -> None:
        now = time.perf_counter()
        with self.lock:
            self.began = self.began if self.n_pass else now
            self.n_pass, self.pass_began, self.drawn = self.n_pass + 1, now, None

    def tasks_done(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.quiet or now - self.pass_began < self.delay:
            return
        gap = 0.2 if self.tty else self.every
        with self.lock:
            if self.drawn is not None and now - self.drawn < gap:
                return
            self.drawn = now
            took, fit = now - self.pass_began, now - self.began
            line = (f"{time.strftime('%H:%M:%S')} pass {self.n_pass}: {min(done, total)}/"
                    f"{total} tasks, {took:.1f} s (fit {fit:.0f} s)")  # fmt: skip
            click.echo(f"\r{line}\x1b[K" if self.tty else line, err=True, nl=not self.tty)
            self.shown = self.tty

    def pass_ended(self) -> None:
        self.erase()

    def erase(self) -> None:
        with self.lock:
            if self.shown:
                click.echo("\r\x1b[K", err=True, nl=False)
                self.shown = False

    def slow_worker(self, address: str, seen: str) -> None:
        if address not in self.warned:
            self.warned.add(address)
            logging.getLogger("dask_emk").warning("slow worker %s: %s", address, seen)


@contextlib.contextmanager
def _log_shown():
    """Show the ``dask_emk`` logger's INFO lines (e.g. "compiling kernels …") through one
    handler while a command runs. It goes, and the logger's level is restored, when the
    command ends: run in-process (a test, a notebook), it would print later lines twice."""
    logger = logging.getLogger("dask_emk")
    handler, level = _EchoHandler(), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _show_log(quiet: bool = False, bar: _PassBar | None = None) -> None:
    """The command's log handler (:func:`_log_shown`): ``quiet``, its warnings only;
    ``bar``, the progress line drawn below its lines."""
    for handler in logging.getLogger("dask_emk").handlers:
        if isinstance(handler, _EchoHandler):
            handler.quiet, handler.bar = quiet, bar


@main.command()
@click.argument("out")
@click.option("--n", "n", type=click.IntRange(min=1), default=None, help="Rows (not with --grid).")
@click.option("--d", "d", type=click.IntRange(min=1), required=True, help="Features.")
@click.option("--k", "k", type=click.IntRange(min=1), required=True, help="Components.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Rows per chunk of X (not with --grid).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the mixture and the draws (the same store every time).")  # fmt: skip
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True, help="The stored values' type.")  # fmt: skip
@click.option("--separation", type=float, default=6.0, show_default=True,
              help="Spread of the true means, in units of the components' scale.")  # fmt: skip
@click.option(
    "--grid", default=None, metavar="TxLATxLON",
    help="Gridded data instead of rows: variables x0 … on (time, lat, lon), e.g. 12x90x180.",
)  # fmt: skip
@click.option("--grid-chunks", default=None, metavar="TxLATxLON",
              help="--grid: chunk sizes (default 1xLATxLON).")  # fmt: skip
@click.option("--land", type=FRACTION, default=0.3, show_default=True,
              help="--grid: fraction of (lat, lon) that is land (NaN).")  # fmt: skip
@click.option("--gaps", type=FRACTION, default=0.03, show_default=True,
              help="--grid: fraction of points with one variable NaN.")  # fmt: skip
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing store written by dask-emk generate."
)
@_fail_cleanly
def generate(out, n, d, k, chunk_rows, seed, dtype, separation, grid, grid_chunks, land, gaps,
             overwrite) -> None:  # fmt: skip
    """Write a Gaussian mixture data set to OUT.zarr chunk by chunk, with its truth.

    With --grid: variables on (time, lat, lon) with a land mask, regimes (the
    components) in spatially coherent regions, and scattered gaps.
    """
    from dask_emk.pipeline.generate import (
        parse_grid,
        random_mixture,
        write_grid_zarr,
        write_mixture_zarr,
    )
    from dask_emk.pipeline.outputs import GENERATED, check_output

    if (n is None) == (grid is None):
        raise ValueError("give the size as --n ROWS or --grid TxLATxLON (one of them).")
    shape = parse_grid(grid) if grid else None
    chunks = parse_grid(grid_chunks, "--grid-chunks") if grid_chunks else None
    check_output(out, GENERATED, where="path", replace=overwrite, replace_hint="--overwrite")
    truth = random_mixture(d, k, separation=separation, seed=seed)
    if shape is None:
        path = write_mixture_zarr(
            out, n, truth, chunk_rows=chunk_rows, dtype=dtype, seed=seed, overwrite=overwrite
        )
        click.echo(f"wrote {n:,} × {d} {dtype} rows ({k} components) to {path}/X")
        return
    path = write_grid_zarr(out, shape, truth, chunks=chunks, land=land, gaps=gaps, dtype=dtype,
                           seed=seed, overwrite=overwrite)  # fmt: skip
    click.echo(
        f"wrote {d} {dtype} variables x0 … on (time, lat, lon) = {shape} ({k} regimes, "
        f"{land:.0%} land, {gaps:.0%} gaps) to {path}"
    )


@main.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--scheduler", default=None, help=SCHEDULER_HELP)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside the results.")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress lines (warnings and errors only).",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG figures.")
@click.option(
    "--out", "out", default=None, metavar="DIR",
    help="A folder (path or URL) for the results, their checkpoint and figures: the "
    "pipeline's relative [output] results is taken relative to DIR instead of the "
    "current directory.",
)  # fmt: skip
@_fail_cleanly
def run(pipeline, scheduler, resume, quiet, no_plots, out) -> None:
    """Run a PIPELINE.toml (see pipelines/README.md), or an example shipped with
    dask-emk by name: quickstart, faithful, photo, large."""
    cfg, text = load_pipeline(pipeline)
    name = "output.results"
    if out is not None:
        from dask_emk.pipeline.run import results_under

        cfg, name = results_under(cfg, out), f"--out {out} (output.results)"
    _run(cfg, text, scheduler, resume, quiet, no_plots, name)


class _FieldOption(click.Option):
    """An option that sets a pipeline field (:class:`FitOption`); its help is read
    from the estimators' docstrings only when shown (``--help`` stays fast)."""

    def __init__(self, *args, field: FitOption, **kwargs):
        super().__init__(*args, **kwargs)
        self.field = field

    def get_help_record(self, ctx: click.Context):
        if self.help is None:
            self.help = _plain(self.field.help())
        return super().get_help_record(ctx)


def _plain(text: str) -> str:
    """reST markup (``code``, :class:`~x.Y`) as plain text for the terminal."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", text)
    return text.replace("``", "")


class _Scalar(click.ParamType):
    """A value of mixed kinds (cache: 'auto' | true | false; n_init: 'auto' | 3), as
    TOML would give it; the estimator's table checks it (:func:`validate`)."""

    name = "value"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        for kind in (int, float):
            with contextlib.suppress(ValueError):
                return kind(value)
        return value


class _Names(click.ParamType):
    """A list of names: ``A,B,C``."""

    name = "a,b,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        return [name.strip() for name in value.split(",") if name.strip()]


class _JsonTable(click.ParamType):
    """A table given as a JSON object."""

    name = "json"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            table = json.loads(value)
        except json.JSONDecodeError as exc:
            self.fail(f"not JSON ({exc}); give an object, e.g. '{{\"anon\": true}}'.", param, ctx)
        if not isinstance(table, dict):
            self.fail(f"must be a JSON object, got {value!r}.", param, ctx)
        return table


def _click_type(option: FitOption) -> click.ParamType:
    """The option's type from the field's kind(s) and the estimators' ranges."""
    kinds = option.kind if option.models else (option.kind,)
    if all(isinstance(kind, tuple) for kind in kinds):  # named options: their union
        return click.Choice(list(dict.fromkeys(value for kind in kinds for value in kind)))
    if len(set(kinds)) > 1 or kinds[0] is None:
        return _Scalar()
    kind = kinds[0]
    if kind == STR_LIST:
        return _Names()
    if kind == TABLE:
        return _JsonTable()
    # one range for every model type (n_components: None too for dpmeans, not an option value)
    ranges = {
        (type(s), *(getattr(s, k, None) for k in ("min", "ge", "gt", "lt"))) for s in option.specs
    }
    spec = option.specs[0] if len(ranges) == 1 else None
    if kind == INT:
        return click.IntRange(min=spec.min) if isinstance(spec, Integer) else click.INT
    if kind == FLOAT and isinstance(spec, Real):
        low = spec.gt if spec.gt is not None else spec.ge
        high = spec.lt if spec.lt is not None and spec.lt != float("inf") else None
        return click.FloatRange(min=low, max=high, min_open=spec.gt is not None, max_open=True)
    return click.FLOAT if kind == FLOAT else click.STRING


def _field_options(func=None, *, only: tuple[str, ...] = ()):
    """The options of :func:`fit_options` (``only`` those keys), in their order."""
    if func is None:
        return functools.partial(_field_options, only=only)
    for option in reversed(fit_options()):
        if only and option.key not in only:
            continue
        flag = option.flag
        if option.kind == BOOL or (option.models and set(option.kind) == {BOOL}):
            flag = f"{flag}/--no-{flag[2:]}"
        func = click.option(flag, option.name, type=None if "/" in flag else _click_type(option),
                            default=None, cls=_FieldOption, field=option)(func)  # fmt: skip
    return func


@main.command()
@click.argument("input_path", metavar="INPUT")
@_field_options
@click.option(
    "--out", required=True, help="RESULTS.zarr, a path or URL (replaced only if dask-emk wrote it)."
)
@click.option("--labels/--no-labels", default=True, show_default=True,
              help="Write each sample's label.")  # fmt: skip
@click.option("--responsibilities", is_flag=True,
              help="Also write each sample's component probabilities (mixtures).")  # fmt: skip
@click.option("--log-density", is_flag=True,
              help="Also write each sample's log density (Gaussian mixtures).")  # fmt: skip
@click.option("--scheduler", default=None, help=SCHEDULER_HELP)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines (warnings and errors only).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG figures.")
@_fail_cleanly
def fit(input_path, out, labels, responsibilities, log_density, scheduler, resume, quiet,
        no_plots, **given) -> None:  # fmt: skip
    """One-off fit of INPUT (store.zarr/ARRAY, an xarray store.zarr, or a .csv file;
    paths or URLs), as a pipeline of the same settings would fit it.

    The options before --out set the pipeline fields of their names ([input],
    [preprocess], [model]; --model sets type, --k n_components): see
    pipelines/README.md.
    """
    outputs = {"results": str(out), "labels": labels, "responsibilities": responsibilities,
               "log_density": log_density}  # fmt: skip
    if given["storage_options"] is not None:  # one table for INPUT and --out
        outputs["storage_options"] = given["storage_options"]
    try:
        raw = fit_sections(input_path, given) | {"output": outputs}
        cfg = validate(raw, source="dask-emk fit")
        _run(cfg, None, scheduler, resume, quiet, no_plots, "--out")
    except PipelineError as exc:  # a field's error, named as its option
        raise PipelineError(_in_cli_terms(str(exc))) from None


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input_path", metavar="INPUT")
@click.option(
    "--out", required=True,
    help="OUT.zarr for the outputs, a path or URL (replaced only if dask-emk wrote it).",
)  # fmt: skip
@click.option("--responsibility", is_flag=True,
              help="Also the probability of each component (mixtures).")  # fmt: skip
@click.option("--log-density", is_flag=True, help="Also log p(x) (Gaussian mixtures).")
@click.option("--impute", is_flag=True,
              help="Also the input with its NaN replaced by their conditional mean "
              "(a GaussianMixture).")  # fmt: skip
@click.option("--variables", default=None, metavar="V1,V2,...",
              help="The xarray store's variables to read (default: those the model was "
              "fitted on).")  # fmt: skip
@_field_options(only=("missing_chunks", "storage_options", "feature_dim", "sample_dims"))
@click.option("--scheduler", default="local", show_default=True, help=SCHEDULER_HELP)
@_fail_cleanly
def predict(model_path, input_path, out, responsibility, log_density, impute, variables,
            missing_chunks, storage_options, feature_dim, sample_dims,
            scheduler) -> None:  # fmt: skip
    """Apply MODEL (a model file, or the results of fit/run) to INPUT, writing OUT.zarr.

    INPUT is what fit reads: store.zarr/ARRAY (rows × features) or an xarray
    store of the model's variables (on a grid, with gaps as the model's
    nan_policy allows); a path or URL. OUT holds `label` (and the options'
    outputs) on INPUT's grid, chunk by chunk. --feature-dim and --sample-dims
    default to the dims the model was fitted with: give them when INPUT names
    its dims otherwise.
    """
    from dask_emk.pipeline.predict import predict_store

    with _storage_options((model_path, input_path, str(out)), storage_options):
        section = _input_section(input_path)
        if "csv" in section:
            raise ValueError(
                "dask-emk predict reads zarr stores; write the CSV to a zarr store first."
            )
        flags = {"responsibility": responsibility, "log_density": log_density, "imputed": impute}
        predict_store(
            model_path, section["store"], out, array=section.get("array"),
            outputs=("label", *(name for name, on in flags.items() if on)),
            variables=variables.split(",") if variables else None,
            missing_chunks=missing_chunks or "raise", scheduler=scheduler, echo=click.echo,
            layout={"feature_dim": feature_dim, "sample_dims": sample_dims},
        )  # fmt: skip


@main.command()
@click.argument("results")
@click.option("--json", "as_json", is_flag=True, help="Print it as one JSON object.")
@_fail_cleanly
def show(results, as_json) -> None:
    """Print a summary of a RESULTS.zarr store (a path or an s3:// URL)."""
    from dask_emk.pipeline.show import describe, summary

    if as_json:
        import json

        click.echo(json.dumps(describe(results), indent=2))
        return
    for line in summary(results):
        click.echo(line)


def _run(cfg, text, scheduler, resume, quiet, no_plots, results_name) -> None:
    from dask_emk.pipeline.run import run_pipeline

    bar = _PassBar(quiet)
    _show_log(quiet, bar)
    if scheduler is not None:
        cfg = cfg.replace(scheduler=cfg.scheduler.replace(address=scheduler))
    if no_plots and cfg.output is not None:  # a predict-only pipeline draws none
        cfg = cfg.replace(output=cfg.output.replace(plots=False))
    try:
        run_pipeline(cfg, toml_text=text, resume=resume, echo=click.echo,
                     results_name=results_name, passes=bar)  # fmt: skip
    finally:
        _show_log(quiet)  # the bar goes with its run


def fit_sections(input_path: str, given: dict) -> dict:
    """The [input], [preprocess] and [model] sections ``dask-emk fit INPUT`` with
    the options ``given`` (option name -> value, None where not given) stands for.

    An option the model type does not take is an error naming those it takes.
    """
    model = given["model"] or "gmm"
    if model == "dpmeans" and (given["k"] is None) == (given["penalty"] is None):
        raise ValueError("--model dpmeans needs exactly one of --penalty (λ) or --k; give one.")
    if given["k"] is None and model != "dpmeans":
        raise ValueError(f"--model {model} needs --k (the number of components); add it.")
    options = fit_options()
    annealed = model == "anneal" or given["init"] == "anneal"
    with _storage_options((input_path,), given["storage_options"]):
        raw: dict = {"input": _input_section(input_path), "preprocess": {}, "model": {}}
    if annealed:
        raw["anneal"] = {}
    for option in options:
        value = given[option.name]
        if value is None:
            continue
        if option.models and model not in option.models:
            takes = [o.flag for o in options if model in o.models]
            hint = f"it takes {', '.join(takes)}" if takes else "it takes the --anneal-... options"
            raise ValueError(f"{option.flag} does not apply to --model {model} ({hint}); drop it.")
        if option.section == "anneal" and not annealed:
            raise ValueError(
                f"{option.flag} sets the annealing, which runs with --model anneal or "
                "--init anneal; add one, or drop it."
            )
        raw[option.section][option.key] = value
    return raw


def _in_cli_terms(message: str) -> str:
    """A pipeline error about a field, in the terms of the option that sets it."""
    for option in fit_options():
        for spelling in (f"[{option.section}] {option.key} ", f"{option.section}.{option.key} "):
            message = message.replace(spelling, f"{option.flag} ")
    return message


def _storage_options(locations: tuple[str, ...], table: dict | None):
    """``--storage-options`` (``table``) for the ``locations`` that are URLs and their
    buckets, while the body runs (fit: INPUT while it is looked at; the run sets its own)."""
    from dask_emk.engine.locations import bucket_of, is_url, storage_options

    urls = [location for location in locations if is_url(location)]
    if not table or not urls:
        return contextlib.nullcontext()
    return storage_options({key: table for url in urls for key in (bucket_of(url), url)})


def _input_section(path: str) -> dict:
    """[input] for ``dask-emk fit``: a CSV file, store/array (also
    store/group/array), or a store; a path or a URL."""
    from dask_emk.engine.locations import check_reachable, is_url, location_exists

    if path.endswith(".csv"):
        return {"csv": path}
    path = path.rstrip("/")
    if is_url(path):
        check_reachable(path)
    parent, _, name = path.rpartition("/")
    if parent and not parent.endswith(":/") and location_exists(f"{parent}/zarr.json"):
        return {"store": parent, "array": name}
    return {"store": path}


if __name__ == "__main__":
    main()
