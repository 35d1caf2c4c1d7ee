"""Start-up and first-fit costs of dask-emk, each in a fresh interpreter (issue 26).

Start-up: ``dask-emk --help``, ``--version`` and a pipeline with a misspelt
key (rejected with exit code 1), beside ``python -c "import dask"`` as the
floor, run ``--runs`` times each, interleaved, for every checkout given with
``--root`` (its path goes first on PYTHONPATH). Reported: median wall time
median CPU time (user + system: less sensitive to a loaded machine than the
wall time) and median peak RSS of the process (``os.wait4``'s rusage, per child).

First fit (``--fits``): a fresh interpreter starts a ``LocalCluster(2)`` and
fits KMeans then GaussianMixture on 2,000 × 2 rows twice, with an empty
numba cache folder (cold) and then again with the folder the cold run filled
(warm disk cache); reported: cluster start, each fit's time.

    python benchmarks/bench_startup.py --root /work/main --root . --runs 15
    python benchmarks/bench_startup.py --root . --fits
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MISSPELT = """
[input]
store = "data.zarr"
array = "X"
[model]
type = "gmm"
n_componets = 4
[output]
results = "results.zarr"
"""

CLI = "import sys; from dask_emk.__main__ import main; sys.argv[0] = 'dask-emk'; main()"


def cases(pipeline: Path) -> dict[str, list[str]]:
    """Name -> the interpreter's arguments (``dask-emk ARGS`` is the console script's code)."""
    return {
        "import dask (floor)": ["-c", "import dask"],
        "dask-emk --help": ["-c", CLI, "--help"],
        "dask-emk --version": ["-c", CLI, "--version"],
        "dask-emk run misspelt.toml": ["-c", CLI, "run", str(pipeline)],
    }


def run_once(
    args: list[str], root: Path, env: dict | None = None
) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS in MiB, output, CPU seconds) of one fresh interpreter."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(root)}
    start = time.perf_counter()
    proc = subprocess.Popen(  # cwd: `python -c` puts it first on sys.path
        [sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=tempfile.gettempdir(),
    )
    out = proc.stdout.read()
    _, _, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
    proc.returncode = 0  # reaped above
    cpu = usage.ru_utime + usage.ru_stime
    return time.perf_counter() - start, usage.ru_maxrss / 1024, out.decode(), cpu


def startup(roots: list[Path], runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Path(tmp) / "misspelt.toml"
        pipeline.write_text(MISSPELT)
        table = cases(pipeline)
        times = {(root, name): [] for root in roots for name in table}
        rss = {key: [] for key in times}
        cpu = {key: [] for key in times}
        for _ in range(runs):
            for name, args in table.items():
                for root in roots:  # interleaved: load changes hit every variant alike
                    wall, peak, out, seconds = run_once(args, root)
                    if name.endswith("toml") and "n_componets" not in out:
                        raise SystemExit(f"unexpected output of {name}: {out}")
                    times[root, name].append(wall)
                    rss[root, name].append(peak)
                    cpu[root, name].append(seconds)
    print("| checkout | command | median s | min s | median CPU s | median peak RSS MiB | runs |")
    print("|---|---|---|---|---|---|---|")
    for (root, name), walls in times.items():
        print(
            f"| {root} | `{name}` | {statistics.median(walls):.3f} | {min(walls):.3f} "
            f"| {statistics.median(cpu[root, name]):.3f} "
            f"| {statistics.median(rss[root, name]):.0f} | {len(walls)} |"
        )


FITS = """
import json, logging, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
t0 = time.perf_counter()
import numpy as np
from distributed import Client, LocalCluster
from dask_emk import GaussianMixture, KMeans
imported = time.perf_counter()
X = np.random.default_rng(0).normal(size=(2000, 2))
X[:1000] += 8
out = {"import": imported - t0}
with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \\
        Client(cluster):
    out["cluster"] = time.perf_counter() - imported
    for rep in ("first", "warm"):
        for name, model in (("kmeans", KMeans(3, random_state=0)),
                            ("gmm", GaussianMixture(3, random_state=0))):
            start = time.perf_counter()
            model.fit(X)
            out[f"{name} {rep}"] = time.perf_counter() - start
print(json.dumps(out))
"""


def fits(root: Path, runs: int) -> None:
    for run in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            for state in ("cold", "warm disk"):
                env = {"XDG_CACHE_HOME": cache, "NUMBA_CACHE_DIR": ""}  # "": unset
                wall, peak, out, _ = run_once(["-c", FITS], root, env)
                figures = json.loads(out.strip().splitlines()[-1])
                said = [line for line in out.splitlines() if "compiling kernels" in line]
                print(run, state, json.dumps({k: round(v, 2) for k, v in figures.items()}),
                      f"total {wall:.1f} s", said)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, action="append", required=True)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--fits", action="store_true", help="first fits, not start-up")
    args = parser.parse_args()
    roots = [root.resolve() for root in args.root]
    if args.fits:
        for root in roots:
            fits(root, args.runs)
    else:
        startup(roots, args.runs)


if __name__ == "__main__":
    main()
