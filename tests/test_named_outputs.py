"""Outputs that read as data: one naming of per-sample outputs everywhere, CF attributes,
consolidated stores that a plain ``xarray.open_zarr`` opens without a warning, one
number for a standardised fit's lower bound, and the fitted-vs-truth table.

References: the estimators' own numpy results on the same data (names and
attributes must not change a value), and a results store written by the
previous version (``tests/data/results_v1.zarr``, per-sample outputs named
``labels``/``responsibilities``), which must still load and show.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner
from pipeline_helpers import to_toml

import dask_emk
from dask_emk import GaussianMixture, KMeans, StandardScaler
from dask_emk.pipeline.cli import main
from dask_emk.pipeline.compare import truth_table
from dask_emk.pipeline.generate import random_mixture, sample_block

V1_RESULTS = Path(__file__).parent / "data" / "results_v1.zarr"


def plain_open(path) -> xr.Dataset:
    """``xarray.open_zarr(path)`` as a user types it, any warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path)


@pytest.fixture(scope="module")
def gridded() -> xr.Dataset:
    """Two variables with units on (time, lat), a gap in one of them."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 10.0], [6.0, 0.0]])
    rows = centres[rng.integers(0, 2, 240)] + rng.normal(size=(240, 2))
    rows[7, 1] = np.nan
    dims, shape = ("time", "lat"), (12, 20)
    return xr.Dataset(
        {name: (dims, rows[:, i].reshape(shape), {"units": "K", "standard_name": "air_temperature"})
         for i, name in enumerate(["t_low", "t_high"])},
        coords={"time": np.arange(12), "lat": np.linspace(-60, 60, 20)},
    ).chunk({"time": 4})  # fmt: skip


def test_api_outputs_are_named_with_cf_attributes(gridded, tmp_path):
    gm = GaussianMixture(2, nan_policy="omit", random_state=0).fit(gridded)
    labels, proba = gm.predict(gridded), gm.predict_proba(gridded)
    density = gm.score_samples(gridded)
    assert (labels.name, proba.name, density.name) == ("label", "responsibility", "log_density")
    assert labels.attrs["flag_meanings"] == "component_0 component_1"
    assert proba.attrs["units"] == "1" and "units" not in density.attrs
    # to_netcdf and to_zarr write them under those names, values unchanged.
    labels.to_netcdf(tmp_path / "labels.nc")
    with xr.open_dataset(tmp_path / "labels.nc") as back:
        got = back["label"].load()
    rows = np.stack([gridded[v].values.ravel() for v in gm.feature_names_in_], axis=1)
    want = gm.predict(rows).astype(float)  # numpy in, numpy out: -1 where omitted
    np.testing.assert_array_equal(got.values.ravel(), np.where(want < 0, np.nan, want))
    assert got.attrs["long_name"] == labels.attrs["long_name"]
    # A standardised field is not in the data's units any more.
    scaled = StandardScaler().fit(gridded).transform(gridded)
    assert "units" not in scaled["t_low"].attrs and "standard_name" not in scaled["t_low"].attrs


@pytest.mark.parametrize("estimator", [GaussianMixture, KMeans])
def test_exports_and_model_files_write_and_open_without_warnings(estimator, gridded, tmp_path):
    model = estimator(2, nan_policy="omit", random_state=0).fit(gridded)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # zarr's own note on the consolidated metadata that xarray writes by default
        # (xarray's choice, and not about our data): every other warning is an error.
        warnings.filterwarnings("ignore", "Consolidated metadata", zarr.errors.ZarrUserWarning)
        model.to_xarray().to_zarr(tmp_path / "export.zarr")  # the README's example
        model.save(tmp_path / "model.zarr")
        dask_emk.save(model, tmp_path / "saved.zarr")
    export = plain_open(tmp_path / "export.zarr")
    assert list(export["feature"].values) == ["t_high", "t_low"]  # by name
    for path in ("model.zarr", "saved.zarr"):
        root = plain_open(tmp_path / path)
        np.testing.assert_array_equal(root["means"].values, model.to_xarray()["means"].values)
        loaded = dask_emk.load(tmp_path / path)
        np.testing.assert_array_equal(loaded.predict(gridded).values, model.predict(gridded).values)


def test_a_results_store_of_the_previous_version_loads_and_shows():
    rng = np.random.default_rng(0)  # the fixture's input, as it was written
    X = np.concatenate([rng.normal(size=(60, 2)), rng.normal(size=(60, 2)) + 5]).astype("float32")
    stored = xr.open_zarr(V1_RESULTS, consolidated=False)
    assert "labels" in stored and "label" not in stored
    model = dask_emk.load(V1_RESULTS)
    np.testing.assert_array_equal(model.predict(X), stored["labels"].values)
    np.testing.assert_allclose(model.predict_proba(X), stored["responsibilities"].values,
                               rtol=1e-12)  # fmt: skip
    shown = CliRunner().invoke(main, ["show", str(V1_RESULTS), "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["per_sample"] == {"label": {"sample": 120},
                                  "responsibility": {"sample": 120, "component": 2},
                                  "log_density": {"sample": 120}}  # fmt: skip
    text = CliRunner().invoke(main, ["show", str(V1_RESULTS)]).stdout
    assert "labels (label), responsibilities (responsibility)" in text


def test_a_standardised_fit_shows_one_lower_bound_everywhere(tmp_path):
    """The console's final line, `show --json`, the results' history and attribute and
    the loaded model agree, in the data's units (the standardised bound differs)."""
    truth = random_mixture(2, 2, seed=4)
    X, _ = sample_block(truth, 600, np.random.default_rng(4))
    X = X * [100.0, 0.01] + [5_000.0, 0.0]  # far from unit scale
    zarr.create_array(tmp_path / "x.zarr", data=X, chunks=(200, 2), zarr_format=3)
    cfg = {"input": {"store": str(tmp_path / "x.zarr")}, "preprocess": {"standardize": True},
           "model": {"type": "gmm", "n_components": 2, "max_iter": 4, "tol": 0.0},
           "scheduler": {"address": "sync"},
           "output": {"results": str(tmp_path / "r.zarr"), "plots": False}}  # fmt: skip
    (tmp_path / "p.toml").write_text(to_toml(cfg))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "p.toml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    console = float(re.search(r"fit: .*lower bound (\S+) \(mean log density per row, data units\)",
                              result.stderr).group(1))  # fmt: skip
    shown = json.loads(CliRunner().invoke(main, ["show", str(tmp_path / "r.zarr"), "--json"])
                       .stdout)["objective"]  # fmt: skip
    root = plain_open(tmp_path / "r.zarr")
    history, attribute = float(root["history_lower_bound"][-1]), root.attrs["final_lower_bound"]
    pipe = dask_emk.load(tmp_path / "r.zarr")
    in_data_units = pipe[0].original_log_density(pipe[-1].lower_bound_)
    assert attribute == history == shown["last"] == pytest.approx(in_data_units, rel=1e-12)
    assert console == pytest.approx(history, rel=1e-7, abs=0)  # printed with 8 digits
    assert abs(pipe[-1].lower_bound_ - history) > 1.0  # the standardised value is another number
    # Labelled with the same units where it is stored and shown.
    units = "mean log density per row, data units"
    assert shown["units"] == units
    assert root["history_lower_bound"].attrs["long_name"] == f"lower bound: {units}"


def test_the_truth_table_numbers_components_as_the_model_does():
    truth = random_mixture(2, 3, separation=8.0, seed=5)
    X, _ = sample_block(truth, 3_000, np.random.default_rng(5))
    for model in (GaussianMixture(3, random_state=1).fit(X), KMeans(3, random_state=1).fit(X)):
        lines, worst = truth_table(model, truth)
        means = getattr(model, "means_", getattr(model, "cluster_centers_", None))
        assert ("max|Δcov|" in lines[0]) == isinstance(model, GaussianMixture)
        rows = [line.split() for line in lines[1:-1]]
        assert [int(r[0]) for r in rows] == [0, 1, 2]  # the model's numbering, in order
        for line, row, mean in zip(lines[1:-1], rows, means, strict=True):
            true_k = int(row[1])
            fitted = re.findall(r"\[([^\]]*)\]", line)[0].split()
            assert fitted == [f"{v:.2f}" for v in mean]  # the fitted mean of that component
            np.testing.assert_allclose(truth.means[true_k], mean, atol=0.3)
            if isinstance(model, GaussianMixture):
                cov = model.covariances_[int(row[0])]
                cov_err = np.max(np.abs(cov - truth.covariances[true_k]))
                assert float(row[-1]) == pytest.approx(cov_err, abs=1e-4)
        assert worst < 0.2
