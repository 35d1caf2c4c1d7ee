"""scikit-learn estimator conventions: check_estimator, clone, Pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_params_close, blobs, fit_quiet, init_params
from sklearn.base import clone
from sklearn.mixture import GaussianMixture as SKGM
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from dask_emk import AnnealedGaussianMixture, DPMeans, GaussianMixture, KMeans
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
RANDOM_SEEDING = {
    "check_sample_weight_equivalence_on_dense_data": (
        "k-means|| seeding draws differ between weighted and repeated rows"
    ),
}


@pytest.mark.parametrize(
    "estimator, expected_failed",
    [
        (GaussianMixture(), NOTHING),
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
        (KMeans(), RANDOM_SEEDING),
        (KMeans(2, random_state=0), RANDOM_SEEDING),
        (AnnealedGaussianMixture(), NOTHING),
        (AnnealedGaussianMixture(2), NOTHING),
        # scikit-learn's checks set n_clusters, which a penalty= model refuses (one of the two)
        (DPMeans(n_clusters=2), NOTHING),
        (ChunkedStandardScaler(), NOTHING),
    ],
    ids=[
        "default",
        "shared-1",
        "diag-random",
        "tied-kmeans++",
        "spherical-kmeans",
        "kmeans-default",
        "kmeans-2",
        "anneal-default",
        "anneal-2",
        "dpmeans-2",
        "scaler",
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
