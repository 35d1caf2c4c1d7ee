"""Progress is logged: what runs and how long it took, one number everywhere, -q quiet."""

from __future__ import annotations

import importlib.util
import json
import logging
import re

import numpy as np
import pytest
from click.testing import CliRunner
from pipeline_helpers import open_results, to_toml

from dask_emk import STEPS_LOGGER, AnnealedGaussianMixture
from dask_emk.pipeline.cli import main
from dask_emk.pipeline.scheduler import dashboard

TIME = re.compile(r"^\d\d:\d\d:\d\d ")


def three_blobs(n=3_000, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 2))


def test_annealing_logs_each_step_with_its_variance_and_time(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        model = AnnealedGaussianMixture(3, random_state=0, sample_size=1_000).fit(three_blobs())
    lines = [r.getMessage() for r in caplog.records if r.name == STEPS_LOGGER]
    steps = [line for line in lines if re.match(r"(anneal|harden) step", line)]
    # One line per step of the recorded path, with its σ², its number of means, its time.
    path = model.path_
    assert len(steps) == path.sizes["step"]
    for line, sigma2 in zip(steps, path["sigma2"].values, strict=True):
        assert f"σ² {sigma2:<8.4g}" in line and re.search(r", \d+\.\d\d s$", line), line
    assert any("split" in line for line in steps)
    n_means = np.isfinite(path["means"].values[-1]).all(axis=1).sum()
    assert f"{n_means:3d} means" in steps[-1]
    # The full-data Lloyd run: one line per iteration.
    lloyd = [line for line in lines if line.startswith("lloyd iter")]
    assert len(lloyd) >= 1 and all(re.search(r", \d+\.\d\d s$", line) for line in lloyd)
    assert capsys.readouterr().out == ""  # verbose=0 prints nothing


def test_anneal_verbose_prints_the_logged_lines(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        AnnealedGaussianMixture(3, random_state=0, sample_size=1_000, verbose=1).fit(three_blobs())
    printed = capsys.readouterr().out.splitlines()
    logged = [r.getMessage() for r in caplog.records if r.name == STEPS_LOGGER]
    assert printed == logged and len(printed) > 5


@pytest.fixture
def pipeline(tmp_path):
    def write(standardize: bool, plots: bool = False):
        cfg = {
            "input": {"generate": {"path": str(tmp_path / "data.zarr"), "n": 6000, "d": 2,
                                   "k": 3, "chunk_rows": 1500, "seed": 2}},
            "preprocess": {"standardize": standardize},
            "model": {"type": "gmm", "n_components": 3, "init": "kmeans", "max_iter": 6,
                      "tol": 0.0},
            "scheduler": {"address": "sync"},
            "output": {"results": str(tmp_path / "r.zarr"), "plots": plots},
        }  # fmt: skip
        path = tmp_path / "p.toml"
        path.write_text(to_toml(cfg))
        return path

    return write


def test_run_logs_every_iteration_and_stage_with_times(pipeline, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        result = CliRunner().invoke(main, ["run", str(pipeline(False))], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    iterations = [r.getMessage() for r in caplog.records
                  if r.name == STEPS_LOGGER and "gmm iter" in r.getMessage()]  # fmt: skip
    assert len(iterations) == int(open_results(tmp_path / "r.zarr").attrs["n_iter"]) == 6
    stages = [r.getMessage() for r in caplog.records if r.name == "dask_emk"]
    assert any(re.fullmatch(r"fit: 6 iterations in \d+\.\d s, .*", s) for s in stages), stages
    assert any(re.fullmatch(r"export: .*r\.zarr \(root, truth, label\) in \d+\.\d s", s)
               for s in stages), stages  # fmt: skip
    # On the terminal (stderr): every log line after the time of day; stdout the truth table.
    logged = [line for line in result.stderr.splitlines() if line]
    assert logged and all(TIME.match(line) for line in logged), logged
    assert "gmm iter" not in result.stdout and "fitted vs truth" in result.stdout


def test_quiet_shows_no_progress(pipeline):
    result = CliRunner().invoke(main, ["run", str(pipeline(False)), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and "fitted vs truth" in result.stdout
    again = CliRunner().invoke(main, ["run", str(pipeline(False))], catch_exceptions=False)
    assert "gmm iter" in again.stderr  # -q does not outlive its command


def test_standardized_lower_bound_is_one_number_everywhere(pipeline, tmp_path):
    result = CliRunner().invoke(main, ["run", str(pipeline(True))], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = float(open_results(tmp_path / "r.zarr")["history_lower_bound"].values[-1])
    console = re.search(r"fit: .*lower bound (\S+) \(mean log density per row, data units\)",
                        result.stderr)  # fmt: skip
    last_iteration = re.findall(r"gmm iter +\d+ +lower bound +(\S+)", result.stderr)[-1]
    shown = json.loads(CliRunner().invoke(main, ["show", str(tmp_path / "r.zarr"), "--json"])
                       .stdout)["objective"]  # fmt: skip
    assert shown["units"] == "mean log density per row, data units"
    # Printed with 8 significant digits: equal to that precision, in the data's units
    # (the standardised fit's own bound differs by Σ log scale, far more than that).
    for value in (float(console.group(1)), float(last_iteration), shown["last"]):
        assert value == pytest.approx(stored, rel=1e-7, abs=0)


@pytest.mark.skipif(importlib.util.find_spec("bokeh") is not None, reason="bokeh installed")
def test_no_dashboard_link_without_bokeh():
    line = dashboard("http://127.0.0.1:8787/status")
    assert "http" not in line and "bokeh" in line
    assert dashboard("http://x:8787/status", remote=True) == "dashboard http://x:8787/status"


# ---------------------------------------------------------------- issue 26, item 3 (the rest)
def steps_lines(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == STEPS_LOGGER and r.getMessage().startswith(prefix)]  # fmt: skip


def candidates_requested(X, K: int, seed: int) -> list[int]:
    """The k-means|| candidates each pass of the seeding was asked to use, read from
    its requests (driven here pass by pass): the first row's draw, the rounds, then
    the weighting pass."""
    from dask_emk.engine.batch import batch_pass
    from dask_emk.models.seeding import kmeans_parallel_steps

    steps = kmeans_parallel_steps(X, K, np.random.RandomState(seed))
    counts, request = [], next(steps)
    while True:
        counts.append(request.args[0].shape[0])  # the candidates (seed and assign passes)
        try:
            request = steps.send(batch_pass(X, None, [request])[0])
        except StopIteration:
            return counts


def test_kmeans_parallel_logs_each_round_with_its_candidates(caplog):
    import dask.array as da

    from dask_emk import KMeans

    X = da.from_array(three_blobs(2_000), chunks=500)
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        model = KMeans(3, init="k-means||", n_init=1, random_state=0).fit(X)
    rounds = steps_lines(caplog, "seeding k-means|| round")
    (summary,) = steps_lines(caplog, "seeding k-means||:")
    # What each round's line says it drew equals what the seeding's next pass used.
    # 0 (the draw of the first row), 1 (it), then the candidates after each round.
    requested = candidates_requested(X, 3, 0)
    assert len(rounds) == len(requested) - 2 == 5 and requested[:2] == [0, 1]
    for i, line in enumerate(rounds):
        got = re.fullmatch(r"seeding k-means\|\| round (\d)/5: (\d+) candidates? drawn "
                           r"\((\d+) in all\), \d+\.\d\d s", line)  # fmt: skip
        assert got, line
        assert int(got[1]) == i + 1 and int(got[3]) == requested[i + 2]
        assert int(got[2]) == requested[i + 2] - requested[i + 1]
    assert summary.startswith(f"seeding k-means||: {requested[-1]} candidates weighted")
    assert f"reduced to {model.cluster_centers_.shape[0]} centres, 7 passes over" in summary


def test_kmeans_plusplus_and_random_seedings_say_what_they_drew(caplog):
    from dask_emk import GaussianMixture, KMeans

    X = three_blobs(2_000)
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        KMeans(3, init="k-means++", n_init=1, random_state=0).fit(X)
        GaussianMixture(3, init_params="random_from_data", random_state=0).fit(X)
    (plusplus,) = steps_lines(caplog, "seeding k-means++")
    assert re.fullmatch(r"seeding k-means\+\+: 3 centres, each the best of 3 rows drawn "
                        r"∝ distance², 4 passes over the data, \d+\.\d\d s", plusplus)  # fmt: skip
    (drawn,) = steps_lines(caplog, "seeding random rows")
    assert re.fullmatch(r"seeding random rows: 3 rows drawn, 1 pass over the data, \d+\.\d\d s",
                        drawn)  # fmt: skip


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter=3
@pytest.mark.parametrize("model", ["gmm-ic", "n_init"])
def test_batched_kmeans_parallel_seedings_log_one_line_per_round(caplog, model):
    """Seedings sharing their passes (6 GaussianMixtureIC candidates, 3 n_init runs) say
    each round once for all, with the spread of what they drew; each one's lines are at
    DEBUG, the same lines it logs alone."""
    from dask_emk import GaussianMixtureIC, KMeans
    from dask_emk.models.seeding import kmeans_parallel

    X = three_blobs(900)
    fit, n = (lambda: GaussianMixtureIC(1, 6, max_iter=3, random_state=0).fit(X), 6)
    if model == "n_init":
        fit, n = (lambda: KMeans(3, n_init=3, max_iter=3, random_state=0).fit(X), 3)
    with caplog.at_level(logging.DEBUG, logger="dask_emk"):
        fit()
    info = [r.getMessage() for r in caplog.records
            if r.name == STEPS_LOGGER and r.levelno == logging.INFO]  # fmt: skip
    rounds = [line for line in info if line.startswith("seeding k-means|| round")]
    assert len(rounds) == 5, info
    own = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    own_rounds = [line for line in own if line.startswith("seeding k-means|| round")]
    assert len(own_rounds) == 5 * n
    for i, line in enumerate(rounds, 1):
        got = re.fullmatch(rf"seeding k-means\|\| round {i}/5 \({n} seedings in one pass\): "
                           r"(\d+)(?:–(\d+))? candidates drawn each \((\d+)(?:–(\d+))? in all\), "
                           r"\d+\.\d\d s", line)  # fmt: skip
        assert got, line
        drawn = [int(re.search(r": (\d+) candidates? drawn", own)[1])
                 for own in own_rounds if f"round {i}/5:" in own]  # fmt: skip
        assert (int(got[1]), int(got[2] or got[1])) == (min(drawn), max(drawn))
    (summary,) = [line for line in info if line.startswith("seeding k-means|| (")]
    assert summary.startswith(f"seeding k-means|| ({n} seedings): ") and "7 passes" in summary
    # The first candidate's own lines are those of its seeding alone (the same draws).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        kmeans_parallel(X, 1 if model == "gmm-ic" else 3, np.random.RandomState(0))
    alone = steps_lines(caplog, "seeding k-means|| round")
    strip = re.compile(r", \d+\.\d\d s$")
    assert [strip.sub("", line) for line in alone] == [strip.sub("", line) for line in
                                                        own_rounds[::n]]  # fmt: skip


def test_an_in_process_command_leaves_no_log_handler_behind(tmp_path, capsys):
    """After dask-emk runs in-process (CliRunner, a notebook), the dask_emk logger has
    the handlers and level it had: a later fit's lines are printed once, by the user's."""
    from dask_emk import KMeans

    logger = logging.getLogger("dask_emk")
    before = (list(logger.handlers), logger.level)
    mine = logging.StreamHandler()  # the user's own, on the (captured) stderr
    logger.addHandler(mine)
    try:
        logger.setLevel(logging.INFO)
        for _ in range(2):
            result = CliRunner().invoke(main, ["generate", str(tmp_path / "d.zarr"), "--n",
                                               "500", "--d", "2", "--k", "2", "--overwrite"])
            assert result.exit_code == 0, result.output
        assert (logger.handlers, logger.level) == (before[0] + [mine], logging.INFO)
        capsys.readouterr()
        KMeans(3, n_init=1, random_state=0).fit(three_blobs(500))
        err = capsys.readouterr().err
        assert err.count("seeding k-means|| round 1/5") == 1, err
    finally:
        logger.removeHandler(mine)
        logger.setLevel(before[1])
    assert (logger.handlers, logger.level) == before


def test_gmm_ic_logs_one_line_per_candidate_with_its_criterion(caplog):
    from dask_emk import GaussianMixtureIC

    with caplog.at_level(logging.INFO, logger="dask_emk"):
        ic = GaussianMixtureIC(2, 3, covariance_type=["full", "diag"], random_state=0).fit(
            three_blobs(1_500)
        )
    lines = steps_lines(caplog, "gmm-ic candidate")
    assert len(lines) == ic.criteria_.size == 4
    for line in lines:
        got = re.fullmatch(r"gmm-ic candidate K=(\d) (\w+): BIC (\S+), (\d+) EM iterations, "
                           r"converged, done after \d+\.\d\d s \(candidates share passes\)",
                           line)  # fmt: skip
        assert got, line
        value = float(ic.criteria_.sel(n_components=int(got[1]), covariance_type=got[2]))
        assert float(got[3]) == pytest.approx(value, rel=1e-7)
    best = f"K={ic.n_components_} {ic.covariance_type_}: BIC"
    (line,) = [line for line in lines if best in line]
    assert f", {ic.best_estimator_.n_iter_} EM iterations" in line
    # The candidates' fits do not announce the input again: the search did, once.
    announced = [r.getMessage() for r in caplog.records if "fitted on" in r.getMessage()]
    assert announced == ["GaussianMixtureIC fitted on 1500 samples × 2 features"]


def test_dpmeans_logs_each_run_of_its_search(caplog):
    from dask_emk import DPMeans

    with caplog.at_level(logging.INFO, logger="dask_emk"):
        model = DPMeans(n_clusters=3).fit(three_blobs(1_500))
    lines = steps_lines(caplog, "dpmeans run at λ")
    assert len(lines) == len(model.penalty_search_) >= 2
    for line, run in zip(lines, model.penalty_search_, strict=True):
        assert line.startswith(f"dpmeans run at λ {run['penalty']:.6g}"), line
        assert f": {run['n_clusters']} clusters after {run['n_iter']} passes (" in line


def test_annealing_in_a_pipeline_announces_its_input_once(tmp_path, caplog):
    cfg = {
        "input": {"generate": {"path": str(tmp_path / "d.zarr"), "n": 3000, "d": 2, "k": 3,
                               "chunk_rows": 1000, "seed": 2}},
        "anneal": {"sample_size": 1000},
        "model": {"type": "anneal", "n_components": 3},
        "scheduler": {"address": "sync"},
        "output": {"results": str(tmp_path / "r.zarr"), "plots": False},
    }  # fmt: skip
    path = tmp_path / "p.toml"
    path.write_text(to_toml(cfg))
    with caplog.at_level(logging.INFO, logger="dask_emk"):
        result = CliRunner().invoke(main, ["run", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # Its inner KMeans runs (on the sample, then on the data) say nothing of their input.
    announced = [r.getMessage() for r in caplog.records if "fitted on" in r.getMessage()]
    assert len(announced) == 1 and announced[0].startswith("AnnealedGaussianMixture"), announced
    assert steps_lines(caplog, "lloyd iter")  # while the Lloyd passes ran


def slow_rows(n_blocks: int, seconds: float, on_worker: str | None = None):
    """Rows whose every block takes ``seconds`` to make (a real task of the graph);
    ``on_worker``: only on that distributed worker (the others take 10 ms)."""
    import time

    import dask.array as da

    def make(block):
        if on_worker is not None:
            from distributed import get_worker

            time.sleep(seconds if get_worker().address == on_worker else 0.01)
        else:
            time.sleep(seconds)
        return block

    X = da.from_array(three_blobs(250 * n_blocks), chunks=250)
    return X.map_blocks(make, dtype=X.dtype, meta=np.empty((0, 0)))


def fit_watched(X, bar) -> None:
    """Two passes (one Lloyd iteration, the final assignment) watched by ``bar``."""
    from dask_emk import KMeans
    from dask_emk.engine.progress import watch_passes

    start = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    with watch_passes(bar):
        KMeans(3, init=start, n_init=1, max_iter=1, cache=False).fit(X)


def test_a_long_pass_shows_one_bar_line_and_a_short_or_quiet_one_none(capsys):
    import dask

    from dask_emk.pipeline.cli import _PassBar

    def bar_lines() -> list[str]:  # (a CLI test before may have left its log handler)
        return [line for line in capsys.readouterr().err.splitlines() if " pass " in line]

    slow = slow_rows(8, 0.1)  # passes of ~0.8 s on one thread
    with dask.config.set(scheduler="sync"):
        fit_watched(slow, _PassBar(quiet=False, delay=0.4, every=0.2))
        shown = bar_lines()
        fit_watched(slow, _PassBar(quiet=True, delay=0.4, every=0.2))
        assert bar_lines() == []  # -q
        fit_watched(slow_rows(8, 0.0), _PassBar(quiet=False, delay=0.4, every=0.2))
        assert bar_lines() == []  # passes under the delay
    passes = [re.fullmatch(r"\d\d:\d\d:\d\d pass (\d): (\d+)/(\d+) tasks, \d+\.\d s \(fit \d+ s\)",
                           line) for line in shown]  # fmt: skip
    assert shown and all(passes), shown
    # One bar for the fit: its pass number goes on (1, then 2), the count grows to its total.
    assert sorted({int(p[1]) for p in passes}) == [1, 2]
    assert all(int(p[2]) <= int(p[3]) for p in passes)


@pytest.mark.slow
def test_a_slow_worker_is_named_once(caplog, capsys):
    from distributed import Client, LocalCluster

    from dask_emk.pipeline.cli import _PassBar

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        workers = sorted(client.scheduler_info()["workers"])
        with caplog.at_level(logging.INFO, logger="dask_emk"):
            fit_watched(slow_rows(12, 0.6, on_worker=workers[0]), _PassBar(False, delay=0.4))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(f"slow worker {workers[0]}: its "), warned
    assert "s each (median) against" in warned[0] and workers[1] not in warned[0]
    assert re.search(r"pass \d: \d+/\d+ tasks", capsys.readouterr().err)  # the bar, polled
