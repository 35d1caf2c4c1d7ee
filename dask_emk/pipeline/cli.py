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
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click

# Only light modules at the top (the config reads the parameter tables, not the
# estimators): --help, --version and a pipeline error answer without loading
# numba, scikit-learn, xarray or Dask's arrays (issue 26; benchmarks/bench_startup.py).
from dask_emk._version import __version__
from dask_emk.pipeline.config import MODELS, load_pipeline, model_fields, validate

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
def main() -> None:
    """Gaussian mixtures and k-means on out-of-core zarr data with Dask."""
    _show_log()


class _EchoHandler(logging.Handler):
    """Log records as lines on the current stderr (click's, under its test runner too),
    each after the time of day; ``quiet`` (``-q``): warnings and errors only."""

    quiet = False

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def filter(self, record: logging.LogRecord) -> bool:
        return (not self.quiet or record.levelno >= logging.WARNING) and bool(
            super().filter(record)
        )

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _show_log(quiet: bool = False) -> None:
    """Show the ``dask_emk`` logger's INFO lines (e.g. "compiling kernels …") through one
    handler; ``quiet``: its warnings only."""
    logger = logging.getLogger("dask_emk")
    handler = next((h for h in logger.handlers if isinstance(h, _EchoHandler)), None)
    if handler is None:
        handler = _EchoHandler()
        logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:  # each command: a test may have reset it
        logger.setLevel(logging.INFO)
    handler.quiet = quiet


@main.command()
@click.argument("out")
@click.option("--n", "n", type=click.IntRange(min=1), default=None, help="Rows (not with --grid).")
@click.option("--d", "d", type=click.IntRange(min=1), required=True, help="Features.")
@click.option("--k", "k", type=click.IntRange(min=1), required=True, help="Components.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32")
@click.option("--separation", type=float, default=6.0, show_default=True)
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
@_fail_cleanly
def run(pipeline, scheduler, resume, quiet, no_plots) -> None:
    """Run a PIPELINE.toml (see pipelines/README.md), or an example shipped with
    dask-emk by name: quickstart, faithful, photo, large."""
    cfg, text = load_pipeline(pipeline)
    _run(cfg, text, scheduler, resume, quiet, no_plots, "output.results")


@main.command()
@click.argument("input_path", metavar="INPUT")
@click.option("--model", type=click.Choice(list(MODELS)), default="gmm")
@click.option(
    "--k", "n_components", type=click.IntRange(min=1), default=None,
    help="Components (clusters); gmm-ic: the largest number tried. Required, except "
    "for dpmeans given --penalty.",
)  # fmt: skip
@click.option(
    "--min-components", type=click.IntRange(min=1), default=None,
    help="gmm-ic only: the smallest number of components tried. Default: 1.",
)  # fmt: skip
@click.option(
    "--penalty", type=click.FloatRange(min=0, min_open=True), default=None,
    help="dpmeans only: λ, the price of a cluster in squared data units (rows farther "
    "than √λ from every centre open one); instead of --k, which makes it find λ.",
)  # fmt: skip
@click.option(
    "--out", required=True, help="RESULTS.zarr, a path or URL (replaced only if dask-emk wrote it)"
)
@click.option(
    "--covariance-type",
    type=click.Choice(model_fields("gmm-ic", defaults=False)["covariance_type"][0]),
    default=None,
    help="gmm and gmm-ic ('all': gmm-ic only, the four scikit-learn types). Default: full.",
)
@click.option("--init", default=None, help="Seeding / init (model-specific; 'anneal' too).")
@click.option("--tol", type=click.FloatRange(min=0), default=None)
@click.option("--max-iter", type=click.IntRange(min=1), default=None)
@click.option("--random-state", type=int, default=0, show_default=True)
@click.option("--labels/--no-labels", default=True, show_default=True)
@click.option("--responsibilities", is_flag=True)
@click.option("--log-density", is_flag=True)
@click.option("--scheduler", default=None, help=SCHEDULER_HELP)
@click.option("--resume", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
@click.option("--no-plots", is_flag=True)
@_fail_cleanly
def fit(input_path, model, n_components, out, scheduler, resume, quiet, no_plots, **opts) -> None:
    """One-off fit of INPUT (store.zarr/ARRAY, store.zarr or a .csv file; paths or URLs)."""
    raw = {
        "input": _input_section(input_path),
        "model": _model_section(model, n_components, opts),
        "output": {
            "results": str(out),
            "labels": opts["labels"],
            "responsibilities": opts["responsibilities"],
            "log_density": opts["log_density"],
        },
    }
    cfg = validate(raw, source="dask-emk fit")
    _run(cfg, None, scheduler, resume, quiet, no_plots, "--out")


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
@click.option("--missing-chunks", type=click.Choice(["raise", "fill"]), default="raise",
              show_default=True,
              help="A missing chunk file: an error, or read as fill values.")  # fmt: skip
@click.option("--scheduler", default="local", show_default=True, help=SCHEDULER_HELP)
@_fail_cleanly
def predict(model_path, input_path, out, responsibility, log_density, impute, variables,
            missing_chunks, scheduler) -> None:  # fmt: skip
    """Apply MODEL (a model file, or the results of fit/run) to INPUT, writing OUT.zarr.

    INPUT is what fit reads: store.zarr/ARRAY (rows × features) or an xarray
    store of the model's variables (on a grid, with gaps as the model's
    nan_policy allows); a path or URL. OUT holds `label` (and the options'
    outputs) on INPUT's grid, chunk by chunk.
    """
    from dask_emk.pipeline.predict import predict_store

    section = _input_section(input_path)
    if "csv" in section:
        raise ValueError("dask-emk predict reads zarr stores; write the CSV to a zarr store first.")
    flags = {"responsibility": responsibility, "log_density": log_density, "imputed": impute}
    predict_store(
        model_path, section["store"], out, array=section.get("array"),
        outputs=("label", *(name for name, on in flags.items() if on)),
        variables=variables.split(",") if variables else None,
        missing_chunks=missing_chunks, scheduler=scheduler, echo=click.echo,
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

    _show_log(quiet)
    if scheduler is not None:
        cfg = cfg.replace(scheduler=cfg.scheduler.replace(address=scheduler))
    if no_plots and cfg.output is not None:  # a predict-only pipeline draws none
        cfg = cfg.replace(output=cfg.output.replace(plots=False))
    run_pipeline(cfg, toml_text=text, resume=resume, echo=click.echo, results_name=results_name)


#: ``dask-emk fit`` options that set a [model] field of the same name.
MODEL_OPTIONS = ("init", "tol", "max_iter", "covariance_type", "penalty", "min_components")


def _model_section(model: str, n_components: int | None, opts: dict) -> dict:
    """[model] for ``dask-emk fit``; an option the model does not take is an error."""
    if model == "dpmeans" and (n_components is None) == (opts["penalty"] is None):
        raise ValueError("--model dpmeans needs exactly one of --penalty (λ) or --k; give one.")
    if n_components is None and model != "dpmeans":
        raise ValueError(f"--model {model} needs --k (the number of components); add it.")
    raw = {"type": model, "random_state": opts["random_state"]}
    if n_components is not None:
        raw["n_components"] = n_components
    for key in MODEL_OPTIONS:
        if opts[key] is None:
            continue
        fields = model_fields(model, defaults=False)
        if key not in fields:
            takes = [f"--{k.replace('_', '-')}" for k in MODEL_OPTIONS if k in fields]
            hint = f"it takes {', '.join(takes)}" if takes else "set it in a pipeline's [anneal]"
            raise ValueError(
                f"--{key.replace('_', '-')} does not apply to --model {model} ({hint}); drop it."
            )
        raw[key] = opts[key]
    return raw


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
