"""GaussianMixtureIC: every (K, covariance type) in shared passes, the best by BIC/AIC."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from helpers import CountComputes, fit_quiet

from dask_emk import GaussianMixture, GaussianMixtureIC

TYPES = ("full", "tied", "diag", "spherical")


@pytest.fixture(scope="module")
def X():
    """4 anisotropic, differently oriented 2-D components (full covariances needed)."""
    rng = np.random.default_rng(0)
    parts = []
    for k, mean in enumerate([[0, 0], [8, 0], [0, 8], [8, 8]]):
        angle = k * np.pi / 4 + 0.3
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        parts.append(mean + rng.normal(size=(250, 2)) @ np.diag([2.5, 0.6]) @ rot.T)
    return rng.permutation(np.vstack(parts))


def sequential(X, ks, types, seed=0, **kw):
    """The candidates fitted alone, one after the other on one RandomState, and their computes."""
    rng = np.random.RandomState(seed)
    fits, counts = {}, {}
    for ct in types:
        for k in ks:
            with CountComputes() as counter:
                fits[k, ct] = fit_quiet(
                    GaussianMixture(k, covariance_type=ct, random_state=rng, **kw), X
                )
            counts[k, ct] = counter.count
    return fits, counts


def test_picks_four_full_components_and_each_criterion_is_the_fit_alone(X):
    ic = fit_quiet(GaussianMixtureIC(1, 7, covariance_type="all", random_state=0), X)
    assert (ic.n_components_, ic.covariance_type_) == (4, "full")
    crit = ic.criteria_
    assert crit.dims == ("n_components", "covariance_type")
    assert crit["n_components"].values.tolist() == list(range(1, 8))
    assert crit["covariance_type"].values.tolist() == list(TYPES)
    assert ic.best_estimator_.bic(X) == pytest.approx(float(crit.min()), rel=1e-12)
    fits, _ = sequential(X, range(1, 8), TYPES)
    for (k, ct), model in fits.items():
        assert float(crit.sel(n_components=k, covariance_type=ct)) == pytest.approx(
            model.bic(X), rel=1e-12
        )
    alone = fits[4, "full"]
    np.testing.assert_array_equal(ic.best_estimator_.means_, alone.means_)
    # Delegation to the best model.
    np.testing.assert_array_equal(ic.predict(X), alone.predict(X))
    np.testing.assert_allclose(ic.predict_proba(X), alone.predict_proba(X), rtol=1e-12)
    assert ic.score(X) == alone.score(X)
    assert ic.aic(X) == alone.aic(X)
    assert ic.to_xarray().equals(alone.to_xarray())  # attrs differ: random_state


def test_aic_and_a_list_of_types(X):
    ic = fit_quiet(GaussianMixtureIC(2, 5, covariance_type=["diag", "tied"],
                                     criterion="aic", random_state=1), X)  # fmt: skip
    fits, _ = sequential(X, range(2, 6), ("diag", "tied"), seed=1)
    aics = {key: m.aic(X) for key, m in fits.items()}
    assert ic.criteria_.name == "aic"
    assert float(ic.criteria_.min()) == pytest.approx(min(aics.values()), rel=1e-12)


def test_sweep_costs_the_computes_of_its_slowest_candidate(X):
    Xd = da.from_array(X, chunks=(200, -1))
    ks, types = range(2, 6), ("full", "spherical")
    with dask.config.set(scheduler="threads"):
        with CountComputes() as counter:
            ic = GaussianMixtureIC(2, 5, covariance_type=list(types), random_state=0)
            fit_quiet(ic, Xd)
        fits, counts = sequential(Xd, ks, types)
    assert counter.count <= 1.3 * max(counts.values()), (counter.count, counts)
    # One pass more than the longest candidate: the criteria of all.
    assert counter.count == max(counts.values()) + 1
    best = fits[ic.n_components_, ic.covariance_type_]
    assert ic.best_estimator_.lower_bounds_ == best.lower_bounds_


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"min_components": 4, "max_components": 3}, "max_components=3 is below min_components=4"),
        ({"covariance_type": ["full", "full"]}, "covariance_type must be .* distinct"),
        ({"covariance_type": "wide"}, "covariance_type must be"),
        ({"criterion": "dic"}, r"criterion must be one of \('bic', 'aic'\)"),
        ({"max_components": 2000}, "n_samples=1000 should be >= max_components=2000"),
    ],
)
def test_errors(X, kw, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixtureIC(**kw).fit(X)


def test_cli_fit_gmm_ic_writes_the_best_model_and_the_criterion_plot(tmp_path):
    from pipeline_helpers import assert_one_line_error, invoke, open_results

    store, out = tmp_path / "d.zarr", tmp_path / "r.zarr"
    assert invoke("generate", store, "--n", 1500, "--d", 2, "--k", 3, "--chunk-rows", 500,
                  "--seed", 2).exit_code == 0  # fmt: skip
    result = invoke("fit", f"{store}/X", "--model", "gmm-ic", "--k", 5, "--min-components", 2,
                    "--covariance-type", "all", "--out", out, "--scheduler", "threads")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.criterion.png").stat().st_size > 0
    assert "2/spherical iter" in result.output  # progress names the candidate
    fitted = open_results(out)
    assert fitted.sizes["component"] == 3
    assert fitted.attrs["covariance_type"] in TYPES
    # --min-components belongs to gmm-ic; 'all' types too.
    bad = invoke("fit", f"{store}/X", "--k", 3, "--min-components", 2, "--out", tmp_path / "x")
    assert_one_line_error(bad, "--min-components does not apply to --model gmm")
    bad = invoke("fit", f"{store}/X", "--k", 3, "--covariance-type", "all", "--out", tmp_path / "y")
    assert_one_line_error(bad, "--covariance-type must be one of")
