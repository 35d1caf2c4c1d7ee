"""DPMeans: the fixed point, the objective, the λ search, a numpy reference, the pipeline."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from helpers import CountComputes
from pipeline_helpers import assert_one_line_error, invoke, open_results
from sklearn.exceptions import ConvergenceWarning

from dask_emk import DPMeans
from dask_emk.models.dpmeans import CANDIDATES
from dask_emk.pipeline import config
from dask_emk.pipeline.config import PipelineError

CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [5.0, 20.0]])


def blobs(n_per=300, spread=0.5, seed=0) -> np.ndarray:
    """Five round blobs 10 apart, within-blob spread ``spread``, shuffled."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(c, spread, size=(n_per, 2)) for c in CENTRES])
    return X[rng.permutation(X.shape[0])]


def squared_distances(X, centres) -> np.ndarray:
    return ((X[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)


def reference_dpmeans(X, w, penalty, max_iter=300) -> np.ndarray:
    """Kulis & Jordan's DP-means in batch form, plain numpy, for comparison.

    Start: one centre at the weighted mean. Each iteration: nearest centre
    for every row; the CANDIDATES rows with the largest min(w, 1)·distance²
    are taken in decreasing order, each opening a centre at itself while
    still above λ against every centre opened in the pass and every cluster's
    new mean, and only one per cluster; empty clusters close; centres move to
    the weighted means. Stop when nothing opens, closes or moves.
    """
    w = np.ones(X.shape[0]) if w is None else w
    d = X.shape[1]
    centres = (w @ X / w.sum())[None, :]
    for _ in range(max_iter):
        dist = squared_distances(X, centres)
        labels = dist.argmin(axis=1)
        key = np.minimum(w, 1) * dist.min(axis=1)
        order = np.lexsort((-np.arange(X.shape[0]), -key))[:CANDIDATES]
        K = centres.shape[0]
        mass = np.bincount(labels, weights=w, minlength=K)
        sums = np.stack([np.bincount(labels, weights=w * X[:, j], minlength=K) for j in range(d)])
        near = list((sums / np.where(mass > 0, mass, 1)).T[mass > 0])
        opened, split = [], set()
        for i in order:
            if key[i] <= penalty:
                break
            if (
                labels[i] in split
                or np.minimum(w[i], 1) * ((np.asarray(near) - X[i]) ** 2).sum(1).min() <= penalty
            ):
                continue
            split.add(labels[i])
            near.append(X[i])
            labels[i] = K + len(opened)
            opened.append(i)
        K += len(opened)
        mass = np.bincount(labels, weights=w, minlength=K)
        sums = np.stack([np.bincount(labels, weights=w * X[:, j], minlength=K) for j in range(d)])
        new = (sums / np.where(mass > 0, mass, 1)).T[mass > 0]
        if not opened and new.shape == centres.shape and np.allclose(new, centres, 0, 1e-12):
            return new
        centres = new
    raise AssertionError("the reference did not converge")


def check_fixed_point(model, X, w, penalty):
    """Labels nearest, every row within √λ (min(w,1) scaled), centres the weighted
    means of their rows, objective_ = Σ w‖x − μ‖² + λK recomputed in numpy."""
    w = np.ones(X.shape[0]) if w is None else w
    centres = np.asarray(model.cluster_centers_, dtype=np.float64)
    dist = squared_distances(X, centres)
    labels = np.asarray(model.labels_)
    np.testing.assert_array_equal(labels, dist.argmin(axis=1))
    own = dist[np.arange(X.shape[0]), labels]
    assert (np.minimum(w, 1) * own <= penalty).all()
    for k in range(centres.shape[0]):
        rows = labels == k
        assert rows.any()
        np.testing.assert_allclose(
            centres[k], w[rows] @ X[rows] / w[rows].sum(), rtol=0, atol=1e-10
        )
    K = centres.shape[0]
    assert model.n_clusters_ == K
    np.testing.assert_allclose(model.objective_, (w * own).sum() + penalty * K, rtol=1e-12)
    np.testing.assert_allclose(model.cluster_weights_, np.bincount(labels, weights=w), rtol=1e-12)
    history = np.asarray(model.objective_history_)
    assert history[-1] == pytest.approx(model.objective_, rel=1e-12)
    assert (np.diff(history) <= 1e-12 * history[:-1]).all(), history


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_fit_ends_at_the_fixed_point(lazy, weighted):
    X = blobs(spread=1.0)
    rng = np.random.default_rng(1)
    w = rng.uniform(0.2, 3.0, X.shape[0]) if weighted else None
    penalty = 6.0  # below the spread of the blobs' tails: several centres per blob
    Xin = da.from_array(X, chunks=400) if lazy else X
    win = da.from_array(w, chunks=400) if lazy and weighted else w
    model = DPMeans(penalty=penalty, tol=0).fit(Xin, sample_weight=win)
    assert model.n_clusters_ > len(CENTRES)
    model.labels_ = np.asarray(model.labels_)
    check_fixed_point(model, X, w, penalty)
    np.testing.assert_array_equal(np.asarray(model.predict(Xin)), model.labels_)


def test_same_centres_as_a_numpy_reference_and_as_dask_input():
    X = blobs(n_per=120, spread=1.0, seed=3)
    w = np.random.default_rng(2).uniform(0.3, 2.0, X.shape[0])
    for weight in (None, w):
        expected = reference_dpmeans(X, weight, 15.0)
        model = DPMeans(penalty=15.0, tol=0).fit(X, sample_weight=weight)
        np.testing.assert_allclose(model.cluster_centers_, expected, rtol=0, atol=1e-10)
        lazy = DPMeans(penalty=15.0, tol=0).fit(
            da.from_array(X, chunks=97),
            sample_weight=None if weight is None else da.from_array(w, 97),
        )
        np.testing.assert_allclose(
            lazy.cluster_centers_, model.cluster_centers_, rtol=0, atol=1e-10
        )


def test_penalty_between_spread_and_separation_finds_the_blobs():
    X = blobs()
    # A blob spans ~4 (squared 16); a row of one blob is ~8 from the next (squared 64).
    # (Above ~50 one centre midway between two blobs 10 apart holds both within √λ:
    # a fixed point with 4 clusters.)
    for penalty in (25.0, 40.0):
        model = DPMeans(penalty=penalty).fit(X)
        assert model.n_clusters_ == len(CENTRES), penalty
        nearest = squared_distances(CENTRES, model.cluster_centers_).min(axis=1)
        assert (nearest < 0.1**2).all(), nearest
    assert DPMeans(penalty=1e4).fit(X).n_clusters_ == 1


def test_n_clusters_finds_a_penalty_that_gives_it():
    X = blobs(spread=1.0)
    for K in (1, 2, 3, 5, 6, 8, 12):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            model = DPMeans(n_clusters=K).fit(X)
        assert model.n_clusters_ == K
        check_fixed_point(model, X, None, model.penalty_)
        # The fit found is one of the runs tried, at the λ it reports.
        assert {"penalty": model.penalty_, "n_clusters": K, "capped": False} in [
            {k: run[k] for k in ("penalty", "n_clusters", "capped")}
            for run in model.penalty_search_
        ]
        # K(λ) jumps 2 → 4 and 5 → 7 here (before: n_clusters=3 and 6 warned and
        # returned 2 and 5): a run opening up to K clusters gets past the jump.
        capped = [run["n_clusters"] for run in model.penalty_search_ if run["capped"]]
        assert capped == ([K] if K in (3, 6) else [])
    # K = 1: the bracket's top, the largest squared distance to the mean.
    top = ((X - X.mean(axis=0)) ** 2).sum(axis=1).max()
    assert DPMeans(n_clusters=1).fit(X).penalty_ == pytest.approx(top, rel=1e-8)
    lazy = DPMeans(n_clusters=5).fit(da.from_array(X, chunks=300))
    eager = DPMeans(n_clusters=5).fit(X)
    # The same centres; rounding of the sums may open tied rows in another order.
    np.testing.assert_allclose(
        np.sort(lazy.cluster_centers_, axis=0),
        np.sort(eager.cluster_centers_, axis=0),
        atol=1e-10,
    )


def test_a_count_reached_by_opening_one_centre_per_cluster_per_pass():
    # Three equal groups on an equilateral triangle around the mean: every row is
    # equally far from it (16). Opening one centre per cluster per pass, a corner
    # opens and the other two stay together (3.46² = 12 from their midpoint): for
    # λ in (12, 16) K = 2 is a fixed point, and the search finds it.
    corners = np.array(
        [[np.cos(a), np.sin(a)] for a in (0.5, 0.5 + 2 * np.pi / 3, 0.5 + 4 * np.pi / 3)]
    )
    X = np.repeat(corners * 4.0, 10, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = DPMeans(n_clusters=2).fit(X)
    assert model.n_clusters_ == 2 and 12.0 < model.penalty_ < 16.0
    check_fixed_point(model, X, None, model.penalty_)


@pytest.mark.parametrize(
    "X",
    [
        np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]] * 4),
        np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]),
        np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]),
    ],
    ids=["equal-copies", "unequal-copies", "unequal-spacing"],
)
def test_more_clusters_than_distinct_points_returns_the_points_and_warns(X):
    # Before: λ went down to rounding level and a run returned an empty duplicate centre.
    with pytest.warns(ConvergenceWarning, match=r"No penalty found with n_clusters=5"):
        model = DPMeans(n_clusters=5).fit(X)
    distinct = np.unique(X, axis=0)
    assert model.n_clusters_ == len(distinct)
    np.testing.assert_allclose(
        np.unique(np.round(model.cluster_centers_, 12) + 0.0, axis=0), distinct, atol=1e-12
    )
    assert (model.cluster_weights_ > 0).all()
    check_fixed_point(model, X, None, model.penalty_)


def test_integer_weights_are_repeated_rows():
    X = blobs(n_per=15, spread=1.0, seed=5)  # repeated: fewer rows than CANDIDATES
    counts = np.random.default_rng(0).integers(1, 4, X.shape[0])
    weighted = DPMeans(penalty=12.0, tol=0).fit(X, sample_weight=counts.astype(float))
    repeated = DPMeans(penalty=12.0, tol=0).fit(np.repeat(X, counts, axis=0))
    np.testing.assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_, atol=1e-10)
    np.testing.assert_allclose(weighted.objective_, repeated.objective_, rtol=1e-12)


def test_one_pass_per_iteration_and_nan_rows_omitted():
    X = blobs()
    counter = CountComputes()
    with counter:
        model = DPMeans(penalty=40.0).fit(da.from_array(X, chunks=500))
    # One row read as reference point, the mean (one pass, with the moments), then
    # one pass per iteration; labels stay lazy.
    assert counter.count - 1 == model.n_passes_ == model.n_iter_ + 1
    holed = X.copy()
    holed[::7, 1] = np.nan
    omitted = DPMeans(penalty=40.0, nan_policy="omit").fit(holed)
    kept = DPMeans(penalty=40.0).fit(X[np.isfinite(holed).all(axis=1)])
    np.testing.assert_allclose(omitted.cluster_centers_, kept.cluster_centers_, atol=1e-10)
    assert (omitted.labels_[::7] == -1).all()


@pytest.mark.parametrize(
    "params, match",
    [
        (
            {"penalty": 1.0, "n_clusters": 2},
            r"^DPMeans takes penalty .* or n_clusters .*, got both; pass one \(or neither",
        ),
        (
            {"penalty": 0.0},
            r"^penalty must be a positive finite number \(λ, the price of a cluster\) or None, "
            r"got 0\.0\.$",
        ),
        ({"n_clusters": 2, "init": [[0.0, 0.0]]}, r"^init applies with penalty only"),
        (
            {"penalty": 1.0, "init": [[0.0, 0.0, 0.0]]},
            r"^init must have shape \(k, n_features\) = \(k, 2\)",
        ),
        ({"n_clusters": 500}, r"^n_samples=40 should be >= n_clusters=500; lower n_clusters\.$"),
    ],
)
def test_errors_name_the_problem_and_the_fix(params, match):
    X = np.random.default_rng(0).normal(size=(40, 2))
    with pytest.raises(ValueError, match=match):
        DPMeans(**params).fit(X)


def test_init_start_and_export():
    X = blobs()
    start = np.array([[30.0, 30.0], [-20.0, 5.0]])  # far off: both close, the rows open anew
    model = DPMeans(penalty=60.0, init=start, tol=0).fit(X)
    check_fixed_point(model, X, None, 60.0)
    ds = model.to_xarray()
    np.testing.assert_array_equal(ds["means"].values, model.cluster_centers_)
    np.testing.assert_array_equal(ds["objective"].values, model.objective_history_)
    np.testing.assert_array_equal(ds["n_distinct"].values, model.n_clusters_history_)
    assert ds.attrs["fitted_penalty"] == 60.0 and ds.attrs["final_objective"] == model.objective_
    assert ds["weights"].sum() == pytest.approx(1.0)


@pytest.mark.slow
def test_cli_and_pipeline_runs(tmp_path):
    store = tmp_path / "g.zarr"
    assert invoke("generate", store, "--n", 6000, "--d", 2, "--k", 3, "--chunk-rows", 2000,
                  "--separation", 12).exit_code == 0  # fmt: skip
    out = tmp_path / "r.zarr"
    result = invoke("fit", f"{store}/X", "--model", "dpmeans", "--k", 3, "--out", out,
                    "--scheduler", "sync", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = open_results(out)
    assert ds.attrs["model"] == "DPMeans" and ds.sizes["component"] == 3
    assert ds["history_n_clusters"].values[-1] == 3
    assert (np.diff(ds["history_objective"].values) <= 0).all()
    assert (tmp_path / "r.convergence.png").exists()
    other = ("--out", tmp_path / "o.zarr")
    assert_one_line_error(
        invoke("fit", f"{store}/X", "--model", "kmeans", "--k", 2, "--penalty", 3, *other),
        "--penalty does not apply to --model kmeans",
    )
    assert_one_line_error(
        invoke("fit", f"{store}/X", "--model", "kmeans", *other), "--model kmeans needs --k"
    )
    assert_one_line_error(
        invoke("fit", f"{store}/X", "--model", "dpmeans", *other),
        "--model dpmeans needs exactly one of --penalty (λ) or --k",
    )


def test_pipeline_model_section():
    raw = {"input": {"store": "x.zarr"}, "output": {"results": "r.zarr"}}
    cfg = config.validate(dict(raw, model={"type": "dpmeans", "penalty": 4}))
    params = config.estimator_params(cfg.model)
    assert params["penalty"] == 4.0 and params["n_clusters"] is None
    with pytest.raises(PipelineError, match=r"needs exactly one of penalty .* or n_components"):
        config.validate(dict(raw, model={"type": "dpmeans"}))
    with pytest.raises(PipelineError, match=r"\[output\] responsibilities is not available"):
        config.validate(dict(raw, model={"type": "dpmeans", "penalty": 4},
                             output={"results": "r.zarr", "responsibilities": True}))  # fmt: skip


def test_max_iter_warns_and_keeps_the_last_pass_consistent():
    X = blobs(spread=1.0)
    with pytest.warns(ConvergenceWarning, match=r"did not reach its fixed point in max_iter=3"):
        model = DPMeans(penalty=20.0, max_iter=3).fit(X)
    # The centres returned are those of the last pass: its labels and objective.
    dist = squared_distances(X, model.cluster_centers_)
    np.testing.assert_array_equal(model.labels_, dist.argmin(axis=1))
    K = model.n_clusters_
    assert model.objective_ == pytest.approx(dist.min(axis=1).sum() + 20.0 * K, rel=1e-12)
    assert model.n_clusters_history_[-1] == K and model.n_iter_ == 3


def six_blobs(seed):
    """Six unit-spread 3-D blobs at least 15 apart, shuffled; rows and blob labels."""
    rng = np.random.default_rng(seed)
    while True:
        centres = rng.uniform(-30, 30, size=(6, 3))
        if squared_distances(centres, centres)[~np.eye(6, dtype=bool)].min() >= 15.0**2:
            break
    y = rng.integers(0, 6, 3000)
    return centres[y] + rng.normal(size=(3000, 3)), y


@pytest.mark.parametrize("seed", [0, 6, 10, 14])
def test_well_separated_blobs_open_one_cluster_each(seed):
    # Before: 7 or 8 clusters in 19 of 20 such draws (centres opened at the far tails
    # of one blob while a centre holding the rows of several drifted into it).
    from sklearn.metrics import adjusted_rand_score

    X, y = six_blobs(seed)
    model = DPMeans(penalty=8.0**2).fit(X)
    assert model.n_clusters_ == 6
    assert adjusted_rand_score(y, model.labels_) == 1.0
    check_fixed_point(model, X, None, 64.0)


def overlapping_blobs(n=20_000, d=9, k=5, seed=0):
    """Standardised correlated Gaussian blobs that overlap (a stand-in for gridded data)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = np.empty((n, d))
    for j, mean in enumerate(rng.normal(scale=1.5, size=(k, d))):
        A = rng.normal(size=(d, d)) / np.sqrt(d) * rng.uniform(0.5, 1.5)
        X[y == j] = mean + rng.standard_normal(((y == j).sum(), d)) @ A.T
    return (X - X.mean(axis=0)) / X.std(axis=0)


def test_default_fit_on_overlapping_data_ends_at_its_fixed_point():
    # Before: tol=1e-4 stopped 0.04-0.07 short of the means, and λ = 4-32 on such
    # data ran out of max_iter=300.
    X = overlapping_blobs()
    model = DPMeans(penalty=32.0, max_iter=2000).fit(X)
    check_fixed_point(model, X, None, 32.0)  # every step lowers Σ D² + λK
    assert model.n_iter_ < 2000


def test_no_argument_fits_with_the_data_spread_as_penalty():
    X = blobs()
    w = np.random.default_rng(4).uniform(0.5, 2.0, X.shape[0])
    model = DPMeans().fit(X, sample_weight=w)
    mean = w @ X / w.sum()
    spread = w @ ((X - mean) ** 2).sum(axis=1) / w.sum()
    assert model.penalty_ == pytest.approx(spread, rel=1e-12)
    check_fixed_point(model, X, w, model.penalty_)


def test_n_clusters_costs_a_few_fits():
    X = overlapping_blobs(n=5000, d=4, seed=1)
    for K in (3, 6, 12):
        model = DPMeans(n_clusters=K, max_iter=2000).fit(X)
        assert model.n_clusters_ == K
        check_fixed_point(model, X, None, model.penalty_)
        # Warm-started runs, λ interpolated in log K (before: λ/4 steps, then
        # bisection to 1e-4 with every run at tol).
        assert len(model.penalty_search_) <= 12, model.penalty_search_
