"""Pipelines on gridded data: xarray stores in, outputs on the grid, figures.

The data: ``generate --grid`` stores (variables on (time, lat, lon), land,
regimes with known parameters, scattered gaps), read back against their
truth; scikit-learn's sample photograph with clouds; a store written without
its empty chunks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr
from pipeline_helpers import ROOT, assert_one_line_error, invoke, open_results, to_toml
from scipy.optimize import linear_sum_assignment

from dask_emk import GaussianMixture, KMeans
from dask_emk.engine.storage import MissingChunksError, check_zarr_chunks, checked_xarray
from dask_emk.pipeline.checkpoint import checkpoint_path, read_checkpoint
from dask_emk.pipeline.generate import random_mixture, write_grid_zarr
from dask_emk.pipeline.outputs import png_text

SHAPE, CHUNKS = (4, 16, 24), (2, 8, 12)
K, D = 3, 3
VARIABLES = ["x0", "x1", "x2"]


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    """A generated grid: 3 well separated regimes, 30% land, 5% gaps."""
    path = tmp_path_factory.mktemp("grid") / "grid.zarr"
    truth = random_mixture(D, K, separation=8.0, seed=3)
    write_grid_zarr(path, SHAPE, truth, chunks=CHUNKS, land=0.3, gaps=0.05, seed=3)
    return path


def run(tmp_path, inputs: dict, output: dict | None = None, model: dict | None = None,
        quiet: bool = True):  # fmt: skip
    """``dask-emk run`` of a pipeline on the sync scheduler (``-q``: no progress lines);
    the click Result."""
    cfg = {
        "input": inputs,
        "model": model or {"type": "kmeans", "n_components": K, "init": "k-means++"},
        "scheduler": {"address": "sync"},
        "output": {"results": str(tmp_path / "r.zarr"), "checkpoint": True, **(output or {})},
    }
    path = tmp_path / "p.toml"
    path.write_text(to_toml(cfg))
    return invoke("run", path, *(["--quiet"] if quiet else []))


def fitted_model(results):
    return read_checkpoint(checkpoint_path(results))["stages"]["model"].model


def valid_points(store) -> np.ndarray:
    ds = xr.open_zarr(store, consolidated=False)
    return np.all([np.isfinite(ds[v].values) for v in VARIABLES], axis=0)


# ---------------------------------------------------------------- generate --grid
def test_generate_grid_recovers_its_truth(tmp_path):
    """The stored regimes, land and gaps are what was asked; a fit finds the truth."""
    store = tmp_path / "g.zarr"
    result = invoke("generate", store, "--grid", "6x20x30", "--grid-chunks", "3x10x15",
                    "--d", D, "--k", K, "--separation", 8, "--land", 0.25, "--gaps", 0.04,
                    "--seed", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(store, consolidated=False)
    assert ds["x0"].dims == ("time", "lat", "lon") and ds["x0"].shape == (6, 20, 30)
    assert ds["x0"].chunks == ((3, 3), (10, 10), (15, 15))
    land, labels = ds["land"].values, ds["labels"].values
    assert abs(land.mean() - 0.25) < 0.01
    np.testing.assert_array_equal(np.isnan(labels), np.broadcast_to(land, labels.shape))
    values = np.stack([ds[v].values for v in VARIABLES], axis=-1)
    assert np.isnan(values[:, land]).all()
    ocean = values[:, ~land]
    gaps = np.isnan(ocean).any(axis=-1)
    assert abs(gaps.mean() - 0.04) < 0.01 and (np.isnan(ocean).sum(axis=-1) <= 1).all()
    true_labels = labels[:, ~land][~gaps].astype(int)
    regimes = labels[np.isfinite(labels)].astype(int)
    np.testing.assert_allclose(ds["weights"].values, np.bincount(regimes) / regimes.size)

    gm = GaussianMixture(K, nan_policy="omit", random_state=0).fit(ds[VARIABLES])
    true_means, sd = ds["means"].values, np.sqrt(np.diagonal(ds["covariances"].values, 0, 1, 2))
    cost = ((true_means[:, None] - gm.means_[None]) ** 2).sum(axis=2)
    _, order = linear_sum_assignment(cost)
    assert np.max(np.abs(gm.means_[order] - true_means) / sd) < 0.1
    predicted = gm.predict(ds[VARIABLES]).values[:, ~land][~gaps]
    agree = np.mean(order[true_labels] == predicted)
    assert agree > 0.99, agree


def test_pipeline_generates_a_grid_once_and_compares_with_its_truth(tmp_path):
    gen = {"path": str(tmp_path / "g.zarr"), "grid": "2x12x16", "grid_chunks": "1x6x8",
           "d": 2, "k": 2, "separation": 10.0, "gaps": 0.1}  # fmt: skip
    inputs = {"generate": gen, "nan_policy": "omit"}
    first = run(tmp_path, inputs, {"plots": False}, quiet=False)
    assert first.exit_code == 0, first.output
    assert "generated a 2x12x16 grid" in first.output and "fitted vs truth" in first.output
    truth = open_results(tmp_path / "r.zarr", "truth")
    stored = xr.open_zarr(gen["path"], consolidated=False)
    np.testing.assert_array_equal(truth["means"].values, stored["means"].values)
    assert open_results(tmp_path / "r.zarr")["label"].dims == ("time", "lat", "lon")
    again = run(tmp_path, inputs, {"plots": False}, quiet=False)
    assert "reusing generated" in again.output
    bad = run(tmp_path, {**inputs, "generate": {**gen, "grid": "2x12"}})
    assert_one_line_error(bad, "input.generate.grid must be TIMExLATxLON")


def test_generate_needs_one_size(tmp_path):
    assert_one_line_error(invoke("generate", tmp_path / "g.zarr", "--d", 2, "--k", 2),
                          "--n ROWS or --grid TxLATxLON")  # fmt: skip
    assert_one_line_error(
        invoke("generate", tmp_path / "g.zarr", "--grid", "4x5", "--d", 2, "--k", 2),
        "--grid must be TIMExLATxLON",
    )


# ------------------------------------------------------------ outputs on the grid
SECRETS = {"key": "AKIAEXAMPLEKEY", "secret": "s3cr3t-value",
           "client_kwargs": {"aws_session_token": "token-value"}, "anon": False}  # fmt: skip


def test_pipeline_writes_outputs_on_the_grid(tmp_path, grid_store):
    """Labels, responsibilities and log density on (time, lat, lon) with the input's
    coordinates, equal to the fitted estimator's on the same data; NaN (labels -1
    as _FillValue) exactly at land and gaps; no storage_options secret in the attrs."""
    result = run(
        tmp_path,
        {"store": str(grid_store), "nan_policy": "omit", "storage_options": SECRETS},
        {"responsibilities": True, "log_density": True, "map_slice": {"time": 1},
         "storage_options": SECRETS},
        {"type": "gmm", "n_components": K, "max_iter": 5},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = tmp_path / "r.zarr"
    out, data = open_results(results), xr.open_zarr(grid_store, consolidated=False)
    gm = fitted_model(results)
    assert gm.nan_policy == "omit" and list(gm.feature_names_in_) == VARIABLES
    X = data[VARIABLES]
    labels = gm.predict(X)
    assert labels.attrs["_FillValue"] == -1
    for name, want in (("label", labels.where(labels >= 0)),
                       ("responsibility", gm.predict_proba(X)),
                       ("log_density", gm.score_samples(X))):  # fmt: skip
        assert out[name].dims == want.dims and out[name].dims[:3] == ("time", "lat", "lon")
        for dim in ("time", "lat", "lon"):
            np.testing.assert_array_equal(out[name][dim].values, data[dim].values)
        np.testing.assert_array_equal(out[name].values, want.values)
    omitted = ~valid_points(grid_store)
    np.testing.assert_array_equal(np.isnan(out["label"].values), omitted)
    np.testing.assert_array_equal(np.isnan(out["log_density"].values), omitted)
    stored = zarr.open_group(str(results))["label"]
    assert stored.dtype == np.int32 and out["label"].encoding["_FillValue"] == -1
    assert (stored[...][omitted] == -1).all() and (stored[...][~omitted] >= 0).all()
    assert out["label"].encoding["chunks"] == CHUNKS

    text = out.attrs["pipeline_json"] + out.attrs["pipeline_toml"]
    for secret in ("AKIAEXAMPLEKEY", "s3cr3t-value", "token-value"):
        assert secret not in text
    cfg = json.loads(out.attrs["pipeline_json"])
    assert cfg["input"]["storage_options"] == {
        "key": "<redacted>", "secret": "<redacted>",
        "client_kwargs": {"aws_session_token": "<redacted>"}, "anon": False,
    }  # fmt: skip
    png = (tmp_path / "r.labels.png").read_bytes()
    assert png_text(png)["Software"] == "dask-emk"


@pytest.mark.parametrize(
    ("inputs", "output", "fragment"),
    [
        ({"variables": ["x0", "sst"]}, {}, "input.variables ['sst'] are not data variables"),
        ({"feature_dim": "lat"}, {}, "input.feature_dim applies to one variable"),
        ({"nan_policy": "omit"}, {"map_slice": {"depth": 0}},
         "output.map_slice names 'depth', which is not a sample dim"),
        ({"nan_policy": "omit"}, {"map_slice": {"time": 9}}, "map_slice time = 9 is outside"),
        ({"array": "x0", "variables": ["x0"]}, {}, "[input] variables applies to an xarray store"),
    ],
)  # fmt: skip
def test_bad_gridded_input_is_one_line_before_any_fit(tmp_path, grid_store, inputs, output,
                                                      fragment):  # fmt: skip
    result = run(tmp_path, {"store": str(grid_store), **inputs}, output)
    assert_one_line_error(result, fragment)
    assert "iter" not in result.output and not (tmp_path / "r.zarr").exists()


def test_gaps_without_nan_policy_stop_in_the_first_pass(tmp_path, grid_store):
    result = run(tmp_path, {"store": str(grid_store)}, {"plots": False})
    assert result.exit_code == 1
    assert "Error: Input contains NaN" in result.output and "nan_policy='omit'" in result.output
    assert "`--nan-policy` on the command line" in result.output
    assert not (tmp_path / "r.zarr").exists()


# ------------------------------------------------------------------ missing chunks
@pytest.fixture()
def sparse_store(tmp_path):
    """A Dataset written by xarray's defaults: its all-NaN (land) chunks have no file."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 8, 8, 2)) + np.where(rng.random((4, 8, 8, 1)) < 0.5, 6.0, 0.0)
    values[:, :4, :4] = np.nan  # one (lat, lon) chunk of land at every time
    ds = xr.Dataset({f"v{i}": (("time", "lat", "lon"), values[..., i]) for i in range(2)})
    path = tmp_path / "sparse.zarr"
    ds.chunk({"time": 2, "lat": 4, "lon": 4}).to_zarr(path, consolidated=False, zarr_format=3)
    assert not (path / "v0" / "c" / "0" / "0" / "0").exists()
    return path, values


def test_missing_chunks_raise_names_the_opt_in_and_fill_reads_nan(tmp_path, sparse_store):
    path, values = sparse_store
    inputs = {"store": str(path), "variables": ["v0", "v1"], "nan_policy": "omit"}
    result = run(tmp_path, inputs, {"plots": False}, {"type": "kmeans", "n_components": 2})
    error = result.output.strip().splitlines()[-1]  # raised by the read of that block
    assert result.exit_code == 1 and error.startswith("Error: zarr array")
    for fragment in ("is missing the chunk file in its store", "lat 0-3, lon 0-3)",
                     "grid points that do not exist", "input.missing_chunks = 'fill'"):
        assert fragment in error, error
    gmm = {"type": "gmm", "n_components": 2, "max_iter": 3}
    result = run(tmp_path, {**inputs, "missing_chunks": "fill"},
                 {"plots": False, "log_density": True}, gmm)  # fmt: skip
    assert result.exit_code == 0, result.output
    out = open_results(tmp_path / "r.zarr")
    for name in ("label", "log_density"):
        np.testing.assert_array_equal(np.isnan(out[name].values), np.isnan(values).any(axis=-1))
    # The results' all-NaN chunks of log density are written (the read checks pass).
    check_zarr_chunks(zarr.open_group(str(tmp_path / "r.zarr"))["log_density"])

    ds = xr.open_zarr(path, consolidated=False)[["v0", "v1"]]
    with pytest.raises(MissingChunksError, match="missing_chunks='fill'"):
        KMeans(2, nan_policy="omit").fit(ds)
    km = KMeans(2, nan_policy="omit", random_state=0).fit(checked_xarray(ds, "fill"))
    rows = values.reshape(-1, 2)
    want = KMeans(2, nan_policy="omit", random_state=0).fit(rows[np.isfinite(rows).all(axis=1)])
    np.testing.assert_allclose(np.sort(km.cluster_centers_, axis=0),
                               np.sort(want.cluster_centers_, axis=0), rtol=1e-6)  # fmt: skip


# ---------------------------------------------------------------------- the photo
@pytest.mark.slow
def test_photo_pipeline_quantises_the_image(tmp_path):
    """pipelines/photo.toml (outputs moved): label map and quantised image PNGs; the
    quantised image is the fitted centres at the stored labels, white at the clouds."""
    import tomllib

    from PIL import Image

    cfg = tomllib.loads((ROOT / "pipelines" / "photo.toml").read_text())
    cfg["input"]["photo"]["path"] = str(tmp_path / "photo-data.zarr")
    cfg["output"]["results"] = str(tmp_path / "photo.zarr")
    path = tmp_path / "photo.toml"
    path.write_text(to_toml(cfg))
    result = invoke("run", path, "--quiet")
    assert result.exit_code == 0, result.output
    labels = open_results(tmp_path / "photo.zarr")["label"]
    assert labels.dims == ("y", "x") and labels.shape == (427, 640)
    clouds = np.isnan(labels.values)
    assert clouds.sum() == round(0.05 * 427 * 640)
    image = xr.open_zarr(tmp_path / "photo-data.zarr", consolidated=False)["image"]
    np.testing.assert_array_equal(np.isnan(image.values).all(axis=-1), clouds)
    km = fitted_model(tmp_path / "photo.zarr")
    assert km.n_clusters == 16 and km.nan_policy == "omit"
    png = tmp_path / "photo.quantised.png"
    assert png_text(png.read_bytes())["Software"] == "dask-emk"
    pixels = np.asarray(Image.open(png).convert("RGB"))
    centres = np.clip(np.round(km.cluster_centers_), 0, 255)
    np.testing.assert_array_equal(pixels[~clouds], centres[labels.values[~clouds].astype(int)])
    assert (pixels[clouds] == 255).all()
    assert png_text((tmp_path / "photo.labels.png").read_bytes())["Software"] == "dask-emk"
