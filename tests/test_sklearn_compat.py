"""scikit-learn estimator conventions: check_estimator, clone, Pipeline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import sklearn
from helpers import assert_params_close, blobs, fit_quiet, init_params
from sklearn.base import clone
from sklearn.cluster import KMeans as SKKMeans
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture as SKGM
from sklearn.pipeline import make_pipeline, make_union
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from dask_emk import AnnealedGaussianMixture, DPMeans, GaussianMixture, GaussianMixtureIC, KMeans
from dask_emk import StandardScaler as ChunkedStandardScaler

# On numpy input every check passes with one component (sparse input is refused with
# a message naming it; object arrays of numbers are converted as scikit-learn does).
NOTHING: dict[str, str] = {}
#: The checks that skip themselves, and why.
SKIPPED = {"check_array_api_input": "skips itself unless SCIPY_ARRAY_API=1"}
# With several components the initialisation is random (rows, seeds or k-means||
# draws), and weighted rows vs repeated rows are different draws; EM itself from the
# same start is weight-equivalent (test_gmm.py::test_integer_weights_equal_repeated_rows).
RANDOM_INIT = {
    "check_sample_weight_equivalence_on_dense_data": (
        "random initialisation draws differ between weighted and repeated rows"
    ),
}
# k-means|| seeding draws rows with per-block generators: weighted rows and repeated
# rows are different draws (Lloyd from the same centres is weight-equivalent).
# scikit-learn marks its own KMeans the same way (its PER_ESTIMATOR_XFAIL_CHECKS).
RANDOM_SEEDING = {
    "check_sample_weight_equivalence_on_dense_data": (
        "k-means|| seeding draws differ between weighted and repeated rows"
    ),
}

@pytest.mark.parametrize(
    "estimator, expected_failed",
    [
        # the six estimators at their defaults
        (GaussianMixture(), NOTHING),
        (GaussianMixtureIC(), NOTHING),
        (KMeans(), RANDOM_SEEDING),
        (AnnealedGaussianMixture(), NOTHING),
        (DPMeans(), NOTHING),
        (ChunkedStandardScaler(), NOTHING),
        # and other settings
        (GaussianMixture(covariance_type="shared", init_params="random"), NOTHING),
        (
            GaussianMixture(2, covariance_type="diag", init_params="random", random_state=0),
            RANDOM_INIT,
        ),
        (
            GaussianMixture(2, covariance_type="tied", init_params="k-means++", random_state=0),
            RANDOM_INIT,
        ),
        (GaussianMixture(2, covariance_type="spherical", random_state=0), RANDOM_INIT),
        (KMeans(2, random_state=0), RANDOM_SEEDING),
        (KMeans(2, algorithm="elkan", copy_x=False, init="k-means++"), RANDOM_SEEDING),
        (AnnealedGaussianMixture(2), NOTHING),
        # scikit-learn's checks set n_clusters, which a penalty= model refuses (one of the two)
        (DPMeans(n_clusters=2), NOTHING),
    ],
    ids=[
        "gmm-default",
        "ic-default",
        "kmeans-default",
        "anneal-default",
        "dpmeans-default",
        "scaler",
        "shared-1",
        "diag-random",
        "tied-kmeans++",
        "spherical-kmeans",
        "kmeans-2",
        "kmeans-elkan-kmeans++",
        "anneal-2",
        "dpmeans-2",
    ],
)
def test_check_estimator(estimator, expected_failed):
    results = check_estimator(
        estimator,
        expected_failed_checks=expected_failed,
        on_skip=None,
        on_fail=None,
    )
    status = {r["check_name"]: r["status"] for r in results}
    failed = {r["check_name"]: repr(r["exception"]) for r in results if r["status"] == "failed"}
    assert not failed, failed
    # the expected failures really fail (else drop them from the list)
    for name in expected_failed:
        assert status[name] == "xfail", (name, status[name])
    skipped = {name for name, s in status.items() if s == "skipped"}
    assert skipped == set(SKIPPED), skipped
    assert len(results) > 40


def test_clone_and_get_params():
    X = blobs(n=600, d=3, K=3, seed=2)
    init = init_params(X, 3, "shared")
    gm = GaussianMixture(3, covariance_type="shared", variance=0.5, split_every=3, **init)
    params = gm.get_params()
    for name in ("variance", "split_every", "means_init", "covariance_type", "warm_start"):
        assert name in params
    twin = clone(gm)
    assert twin is not gm
    assert twin.get_params()["variance"] == 0.5 and twin.get_params()["split_every"] == 3
    np.testing.assert_array_equal(twin.means_init, init["means_init"])
    fit_quiet(gm, X)
    assert not hasattr(clone(gm), "means_")
    fit_quiet(twin, X)
    assert_params_close(twin, gm, rtol=0)
    twin.set_params(variance=None, max_iter=50)
    assert twin.get_params()["variance"] is None and twin.max_iter == 50


def test_pipeline_matches_sklearn():
    X = blobs(n=900, d=4, K=3, seed=3, offset=100.0) * np.array([1.0, 10.0, 0.1, 3.0])
    Xs = StandardScaler().fit_transform(X)
    init = init_params(Xs, 3, "full")
    ours = make_pipeline(StandardScaler(), GaussianMixture(3, max_iter=20, tol=0.0, **init))
    theirs = make_pipeline(StandardScaler(), SKGM(3, max_iter=20, tol=0.0, **init))
    fit_quiet(ours, X)
    fit_quiet(theirs, X)
    assert_params_close(ours[-1], theirs[-1], rtol=1e-6)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.score(X) == pytest.approx(theirs.score(X), rel=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-9)
    # cloning the whole pipeline gives an unfitted copy that refits to the same model
    again = fit_quiet(clone(ours), X)
    assert_params_close(again[-1], ours[-1], rtol=0)


# ----------------------------------------- scikit-learn's KMeans interface, all of it
@pytest.mark.parametrize("algorithm", ["lloyd", "elkan"])
@pytest.mark.parametrize("copy_x", [True, False])
def test_algorithm_and_copy_x_give_sklearns_fit(algorithm, copy_x):
    X = blobs(n=900, d=3, K=4, seed=5, offset=50.0)
    before = X.copy()
    start = X[[0, 300, 600, 899]]
    ours = KMeans(4, init=start, tol=0, algorithm=algorithm, copy_x=copy_x).fit(X)
    theirs = SKKMeans(4, init=start, n_init=1, tol=0, algorithm=algorithm, copy_x=copy_x).fit(X)
    np.testing.assert_array_equal(X, before)  # X is never modified
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-10)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)
    assert ours.n_iter_ == theirs.n_iter_
    assert clone(ours).get_params()["algorithm"] == algorithm


def test_elkan_with_one_cluster_warns_as_sklearn():
    X = blobs(n=200, d=2, K=2, seed=6)
    with pytest.warns(RuntimeWarning, match="algorithm='elkan' doesn't make sense"):
        KMeans(1, algorithm="elkan").fit(X)
    with pytest.raises(ValueError, match=r"^algorithm must be one of \('lloyd', 'elkan'\)"):
        KMeans(2, algorithm="auto").fit(X)


def test_callable_init_is_sklearns():
    X = blobs(n=600, d=2, K=3, seed=7, offset=10.0)
    calls = []

    def rows(X, n_clusters, random_state):
        calls.append(X)
        return X[random_state.choice(X.shape[0], n_clusters, replace=False)]

    ours = KMeans(3, init=rows, n_init=1, random_state=0).fit(X)
    theirs = SKKMeans(3, init=rows, n_init=1, random_state=0).fit(X)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-10)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)
    # ours gets X itself (scikit-learn's copy is centred; the rows drawn are the same)
    np.testing.assert_array_equal(calls[0], X)
    # n_init='auto' is 10 for a callable, as scikit-learn; one call per run, one RandomState
    calls.clear()
    many = KMeans(3, init=rows, random_state=0).fit(X)
    assert len(calls) == many._n_init == SKKMeans(3, init=rows).fit(X)._n_init == 10
    assert many.inertia_ <= ours.inertia_ * (1 + 1e-12)


def test_callable_init_refuses_lazy_input_and_bad_centres():
    X = blobs(n=600, d=2, K=3, seed=7)
    calls = []

    def rows(X, n_clusters, random_state):
        calls.append(X)
        return X[:2]

    with pytest.raises(ValueError, match=r"init is a callable.*X is lazy.*pass init=centres"):
        KMeans(3, init=rows).fit(da.from_array(X, chunks=200))
    assert not calls  # refused before the callable (and any pass)
    with pytest.raises(ValueError, match=r"initial centers \(2, 2\) does not match the number "
                                         r"of clusters 3; pass init of shape"):  # fmt: skip
        KMeans(3, init=rows).fit(X)


def test_feature_names_and_set_output_as_sklearn():
    X = blobs(n=300, d=3, K=3, seed=8)
    df = pd.DataFrame(X, columns=["a", "b", "c"], index=np.arange(300) + 1000)
    start = X[:3]
    ours = KMeans(3, init=start).fit(X)
    theirs = SKKMeans(3, init=start, n_init=1).fit(X)
    assert list(ours.get_feature_names_out()) == list(theirs.get_feature_names_out())
    assert list(ours.get_feature_names_out()) == ["kmeans0", "kmeans1", "kmeans2"]

    table = clone(ours).set_output(transform="pandas").fit(df).transform(df)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["kmeans0", "kmeans1", "kmeans2"]
    pd.testing.assert_index_equal(table.index, df.index)
    np.testing.assert_allclose(table.to_numpy(), theirs.transform(X), rtol=1e-9)
    fitted = clone(ours).set_output(transform="pandas").fit_transform(df)
    pd.testing.assert_frame_equal(fitted, table)

    union = make_union(KMeans(3, init=start), PCA(2)).set_output(transform="pandas")
    their_union = make_union(SKKMeans(3, init=start, n_init=1), PCA(2))
    their_union.set_output(transform="pandas")
    got, want = union.fit_transform(df), their_union.fit_transform(df)
    assert list(got.columns) == list(want.columns) == [
        "kmeans__kmeans0", "kmeans__kmeans1", "kmeans__kmeans2", "pca__pca0", "pca__pca1",
    ]  # fmt: skip
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-9, atol=1e-12)

    dp = make_union(DPMeans(penalty=40.0), PCA(1)).set_output(transform="pandas").fit_transform(df)
    k = dp.shape[1] - 1
    assert list(dp.columns) == [f"dpmeans__dpmeans{i}" for i in range(k)] + ["pca__pca0"]


def test_a_table_output_refuses_lazy_input_and_default_keeps_it_lazy():
    X = blobs(n=300, d=3, K=3, seed=8)
    lazy = da.from_array(X, chunks=100)
    model = KMeans(3, init=X[:3]).fit(X)
    with pytest.raises(ValueError, match=r"transform output 'pandas'.*lazy or gridded Array.*"
                                         r"set_output\(transform='default'\)"):  # fmt: skip
        clone(model).set_output(transform="pandas").fit(X).transform(lazy)
    out = model.transform(lazy)
    assert isinstance(out, da.Array)
    np.testing.assert_allclose(out.compute(), model.transform(X), rtol=1e-12)


def _numbers(text: str) -> tuple[str, list[float]]:
    """``text`` with every number replaced by '#', and the numbers."""
    pattern = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
    return re.sub(pattern, "#", text), [float(v) for v in re.findall(pattern, text)]


@pytest.mark.parametrize("tol", [0.0, 1e-2])
def test_kmeans_verbose_prints_sklearns_lines(tol, capsys):
    X = blobs(n=2000, d=3, K=4, seed=9)
    start = X[:4]
    KMeans(4, init=start, tol=tol, verbose=1).fit(X)
    ours = capsys.readouterr().out
    SKKMeans(4, init=start, n_init=1, tol=tol, verbose=1).fit(X)
    theirs = capsys.readouterr().out
    (our_text, our_values), (their_text, their_values) = _numbers(ours), _numbers(theirs)
    assert our_text == their_text, (ours, theirs)
    assert "Initialization complete" in ours and "Iteration 0, inertia" in ours
    assert ("strict convergence" if tol == 0 else "within tolerance") in ours
    np.testing.assert_allclose(our_values, their_values, rtol=1e-9)


def test_gmm_verbose_prints_sklearns_lines(capsys):
    X = blobs(n=1500, d=2, K=3, seed=10)
    init = init_params(X, 3, "full")
    for verbose in (1, 2):
        fit_quiet(GaussianMixture(3, verbose=verbose, verbose_interval=2, **init), X)
        ours = capsys.readouterr().out
        fit_quiet(SKGM(3, verbose=verbose, verbose_interval=2, **init), X)
        theirs = capsys.readouterr().out
        if verbose == 1:
            assert ours == theirs
            assert ours.startswith("Initialization 0\n  Iteration 2\n")
            assert ours.endswith("Initialization converged.\n")
        else:  # the times differ; the rest is the same
            def untimed(text):
                return re.sub(r"time lapse [\d.]+s", "time lapse #s", text)

            assert untimed(ours) == untimed(theirs)
            assert re.search(r"  Iteration 2\t time lapse [\d.]+s\t ll change -?\d+\.\d{5}\n", ours)
            assert re.search(r"lower bound -?\d+\.\d{5}\.\n$", ours)


# ------------------------------------- scikit-learn's own test files on our estimators
SKLEARN = Path(sklearn.__file__).parent
#: scikit-learn's test file -> (its import line, the line that imports ours instead).
SUITES = {
    "cluster/tests/test_k_means.py": (
        "from sklearn.cluster import KMeans, MiniBatchKMeans, k_means, kmeans_plusplus\n",
        "from sklearn.cluster import MiniBatchKMeans, k_means, kmeans_plusplus\n"
        "from dask_emk import KMeans\n",
    ),
    "mixture/tests/test_gaussian_mixture.py": (
        "from sklearn.mixture import GaussianMixture\n",
        "from dask_emk import GaussianMixture\n",
    ),
}
#: Not run: scikit-learn's estimators only, or input we refuse (sparse: a TypeError naming it).
NOT_OURS = "not minibatch and not sparse and not csr"
#: Tests that fail on purpose, and why (each was run and read).
DELIBERATE = {
    "test_k_means.py::test_sample_weight_init": "calls the private _init_centroids",
    "test_k_means.py::test_sample_weight_zero": "calls the private _init_centroids",
    "test_k_means.py::test_transform": (
        "scikit-learn zeroes the diagonal when X is the centres array itself (X is Y); "
        "ours is sqrt of the GEMM round-off, 6e-8"
    ),
    "test_gaussian_mixture.py::test_check_weights": "our messages name weights_init and the fix",
    "test_gaussian_mixture.py::test_check_means": "our messages name means_init and the fix",
    "test_gaussian_mixture.py::test_check_precisions": "our messages name precisions_init",
    "test_gaussian_mixture.py::test_sample": "n_samples is refused in our table's words",
    "test_gaussian_mixture.py::test_regularisation": "our message also says reg_covar's value",
    "test_gaussian_mixture.py::test_gaussian_mixture_setting_best_params": (
        "reg_covar=0 and a one-point component: our moment M-step refuses a variance "
        "below its round-off (core/mstep), scikit-learn passes on the sign of its own"
    ),
    "test_gaussian_mixture.py::test_gaussian_mixture_precisions_init_diag": (
        "precisions from scikit-learn's KMeans labels; our k-means|| start finds the same "
        "clusters in the other order"
    ),
    "test_gaussian_mixture.py::test_gaussian_mixture_precisions_init[": (
        "calls the private _set_parameters"
    ),
    "test_gaussian_mixture.py::test_gaussian_mixture_all_init_does_not_estimate": (
        "mocks scikit-learn's private _estimate_gaussian_parameters"
    ),
    "test_gaussian_mixture.py::test_score[float32]": (
        "score() averages the log-densities in float64 (the same number for any chunking); "
        "scikit-learn's is the float32 mean of score_samples, 2e-7 away here"
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("suite", list(SUITES))
def test_sklearns_own_tests_pass_on_our_estimators(suite, tmp_path):
    """scikit-learn's test file with only the import changed (float32 cases too), minus
    DELIBERATE."""
    old, new = SUITES[suite]
    source = (SKLEARN / suite).read_text()
    assert source.count(old) == 1, f"scikit-learn's {suite} no longer imports as expected"
    copy = tmp_path / Path(suite).name
    copy.write_text(source.replace(old, new))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not our pyproject's settings
    deselect = [arg for node in DELIBERATE if node.startswith(copy.name)
                for arg in ("--deselect", node)]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "sklearn.conftest", "-q", "-p", "no:cacheprovider",
         "-k", NOT_OURS, *deselect, copy.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(root), "SKLEARN_RUN_FLOAT32_TESTS": "1"},
    )  # fmt: skip
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-5000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= {"test_k_means.py": 92, "test_gaussian_mixture.py": 55}[copy.name], summary
