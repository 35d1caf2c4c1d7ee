"""One export schema: every model, the annealing path, the results store and the
generator's truth use the names, dims and meanings of ``export.SCHEMA``, and
docs/SCHEMA.md is that table."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import xarray as xr
from pipeline_helpers import ROOT, invoke, matched_errors, open_results, to_toml

from dask_emk import AnnealedGaussianMixture, DPMeans, GaussianMixture, KMeans
from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.models import export
from dask_emk.models.export import ATTRIBUTE, DIMENSION, SCHEMA, VARIABLE, schema_names

K = 3
#: Dims of ``covariances`` for covariance_type='full', the default here.
FULL = {"covariances": ("component", *export.MATRIX_DIMS)}


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    return np.vstack([rng.normal(c, 1.0, size=(150, 2)) for c in centres])


@pytest.fixture(scope="module")
def fitted(X) -> dict:
    return {
        export.GMM: GaussianMixture(K, random_state=0).fit(X),
        export.KMEANS: KMeans(K, random_state=0).fit(X),
        export.ANNEAL: AnnealedGaussianMixture(K, random_state=0).fit(X),
        export.DPMEANS: DPMeans(n_clusters=K).fit(X),
    }


def expected_values(place: str, model) -> dict:
    """Each exported variable as the fitted attribute it holds."""
    if place == export.GMM:
        return {
            "weights": model.weights_,
            "means": model.means_,
            "covariances": model.covariances_,
            "lower_bound": model.lower_bounds_,
        }
    if place == export.KMEANS:
        sizes = model.cluster_weights_
        return {
            "weights": sizes / sizes.sum(),
            "means": model.cluster_centers_,
            "sizes": sizes,
            "inertia": model.inertia_history_,
        }
    if place == export.DPMEANS:
        sizes = model.cluster_weights_
        return {
            "weights": sizes / sizes.sum(),
            "means": model.cluster_centers_,
            "sizes": sizes,
            "objective": model.objective_history_,
            "n_distinct": model.n_clusters_history_,
        }
    return {
        "weights": model.weights_,
        "means": model.cluster_centers_,
        "sizes": model.kmeans_.cluster_weights_,
    }


def assert_follows_schema(ds: xr.Dataset, place: str, *, exact: bool = True, dims=FULL) -> None:
    """The variables of ``ds`` (all of them if ``exact``) and their dims are those the
    table lists for ``place``; ``dims`` gives them where they depend on settings."""
    documented = schema_names(place, VARIABLE)
    names = set(ds.data_vars)
    assert names == set(documented) if exact else names <= set(documented), names
    for name in names:
        want = dims.get(name, documented[name].dims)
        assert ds[name].dims == want, (name, ds[name].dims, want)
        assert set(want) <= set(schema_names(place, DIMENSION)), (name, want)


# ---------------------------------------------------------------- the table
def test_table_has_one_row_per_name_and_place_and_only_documented_dims():
    seen = set()
    for row in SCHEMA:
        for place in row.where:
            assert (row.kind, row.name, place) not in seen, (row.name, place)
            seen.add((row.kind, row.name, place))
            if row.kind == VARIABLE and row.dims is not None:
                assert set(row.dims) <= set(schema_names(place, DIMENSION)), (row.name, place)
    assert all(p in export.PLACES for row in SCHEMA for p in row.where)


def test_schema_doc_is_the_table():
    """docs/SCHEMA.md lists exactly the names the code exports (regenerate it if this fails)."""
    assert (ROOT / "docs" / "SCHEMA.md").read_text() == export.schema_markdown()
    text = export.schema_markdown()
    for row in SCHEMA:
        assert f"| `{row.name}` |" in text


def test_readmes_name_variables_as_the_table_does():
    """Every `name(dims)` the docs write with a documented dim is a row of the table."""
    rows = {(row.name, row.dims) for row in SCHEMA if row.kind == VARIABLE}
    dims = {row.name for row in SCHEMA if row.kind == DIMENSION}
    found = []
    pages = [ROOT / "README.md", ROOT / "pipelines" / "README.md", *(ROOT / "docs").rglob("*.md")]
    for readme in pages:
        for name, inside in re.findall(r"`(\w+)\(([\w,\s]*)\)`", readme.read_text()):
            named = tuple(part.strip() for part in inside.split(",") if part.strip())
            if set(named) & dims:
                found.append(name)
                assert (name, named) in rows, (str(readme.relative_to(ROOT)), name, named)
    assert {"weights", "means", "sizes"} <= set(found)


def test_undocumented_name_is_refused():
    with pytest.raises(RuntimeError, match="'centers' is not in the export schema for KMeans"):
        export.schema_dataset(export.KMEANS, {"centers": np.zeros((2, 2))}, {})
    with pytest.raises(RuntimeError, match="'inertia' is not in the export schema for path"):
        export.schema_attrs(export.PATH, inertia=1.0)


# ------------------------------------------------------------- model exports
@pytest.mark.parametrize("place", export.MODELS)
def test_to_xarray_holds_the_documented_names_and_the_fitted_values(fitted, place):
    model = fitted[place]
    ds = model.to_xarray()
    assert_follows_schema(ds, place)
    for name, want in expected_values(place, model).items():
        np.testing.assert_allclose(ds[name].values, np.asarray(want, np.float64), rtol=1e-6)
    params = set(model.get_params(deep=False))
    attrs = set(schema_names(place, ATTRIBUTE)) - {"<each constructor parameter>"}
    assert set(ds.attrs) == attrs | params
    assert ds.attrs["model"] == place
    np.testing.assert_array_equal(ds["component"].values, np.arange(K))
    np.testing.assert_array_equal(ds["feature"].values, [0, 1])


def test_same_data_same_names_across_models(fitted):
    """The fits of the same data find the same clusters, stored alike."""
    exports = [fitted[place].to_xarray() for place in export.MODELS]
    order = [np.argsort(ds["means"].values[:, 0] + 10 * ds["means"].values[:, 1]) for ds in exports]
    ref = exports[0]["means"].values[order[0]]
    for ds, o in zip(exports, order, strict=True):
        assert ds["means"].dims == ("component", "feature") and ds["weights"].dims == ("component",)
        np.testing.assert_allclose(ds["means"].values[o], ref, atol=0.05)
        np.testing.assert_allclose(ds["weights"].values[o], 1 / 3, atol=0.01)


@pytest.mark.parametrize("covariance_type", list(COVARIANCE_TYPES))
def test_covariances_take_the_dims_of_their_type(X, covariance_type):
    gm = GaussianMixture(K, covariance_type=covariance_type, random_state=0).fit(X)
    ds = gm.to_xarray()
    dims = COVARIANCE_TYPES[covariance_type].dims
    assert_follows_schema(ds, export.GMM, dims={"covariances": dims})
    np.testing.assert_array_equal(ds["covariances"].values, gm.covariances_)
    for dim in set(dims) & set(export.MATRIX_DIMS):
        np.testing.assert_array_equal(ds[dim].values, ds["feature"].values)


def test_annealing_path_follows_the_schema(fitted):
    path = fitted[export.ANNEAL].path_
    assert_follows_schema(path, export.PATH)
    assert set(path.attrs) == set(schema_names(export.PATH, ATTRIBUTE))


def test_feature_labels_carry_into_every_model(X):
    labelled = xr.DataArray(X, dims=("sample", "feature"), coords={"feature": ["u", "v"]})
    for model in (GaussianMixture(K, random_state=0), KMeans(K, random_state=0)):
        assert list(model.fit(labelled).to_xarray()["feature"].values) == ["u", "v"]
    assert list(KMeans(K, random_state=0).fit(labelled).transform(labelled).dims) == [
        "sample",
        "component",
    ]


# -------------------------------------------------------- the results store
MODEL_SECTIONS = {
    "gmm": {"type": "gmm", "n_components": K, "covariance_type": "full", "init": "anneal"},
    "kmeans": {"type": "kmeans", "n_components": K, "init": "anneal"},
    "anneal": {"type": "anneal", "n_components": K},
}
PLACE_OF = {"gmm": export.GMM, "kmeans": export.KMEANS, "anneal": export.ANNEAL}


@pytest.fixture(scope="module", params=list(MODEL_SECTIONS))
def run(request, tmp_path_factory):
    """A small `dask-emk run` of each model type on generated data (sync scheduler)."""
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    cfg = {
        "input": {"generate": {"path": str(folder / "data.zarr"), "n": 6000, "d": 2, "k": K,
                               "chunk_rows": 2000, "seed": 3}},
        "anneal": {"sample_size": 2000},
        "model": MODEL_SECTIONS[kind],
        "scheduler": {"address": "sync"},
        "output": {"results": str(folder / "r.zarr"), "labels": True,
                   "responsibilities": kind != "kmeans", "log_density": kind == "gmm",
                   "plots": False, "checkpoint": False},
    }  # fmt: skip
    (folder / "p.toml").write_text(to_toml(cfg))
    result = invoke("run", folder / "p.toml", "-q")
    assert result.exit_code == 0, result.output
    return kind, folder


def test_results_store_uses_the_schema(run):
    kind, folder = run
    place, results = PLACE_OF[kind], folder / "r.zarr"
    root = open_results(results)
    model_names = set(schema_names(place, VARIABLE)) - {"lower_bound", "inertia"}
    assert model_names <= set(root.data_vars)
    assert_follows_schema(root[sorted(model_names)], place, exact=False)
    assert_follows_schema(root.drop_vars(model_names), export.RESULTS, exact=False)
    assert {"label", "history_change", "history_seconds"} <= set(root.data_vars)
    assert root.sizes["iteration"] == root.attrs["n_iter"] and root.attrs["model"] == place
    assert set(schema_names(export.RESULTS, ATTRIBUTE)) <= set(root.attrs)
    anneal, path = open_results(results, "anneal"), open_results(results, "anneal_path")
    assert_follows_schema(anneal, export.ANNEAL)
    assert_follows_schema(path, export.PATH)
    truth = open_results(results, "truth")
    assert_follows_schema(truth, export.TRUTH)
    mean_err, weight_err, _ = matched_errors(results)
    assert mean_err < 0.1 and weight_err < 0.02
    if kind == "anneal":
        final = ["means", "weights", "sizes"]
        xr.testing.assert_equal(root[final], anneal[final])


def test_generated_store_follows_the_schema_and_matches_the_truth_group(run):
    _, folder = run
    generated = xr.open_zarr(folder / "data.zarr", consolidated=False)
    assert_follows_schema(generated, export.GENERATED)
    truth = open_results(folder / "r.zarr", "truth")
    for name in truth.data_vars:
        np.testing.assert_array_equal(generated[name].values, truth[name].values)
    assert set(generated.attrs) == set(schema_names(export.GENERATED, ATTRIBUTE))


def shown_json(path) -> dict:
    """`dask-emk show --json PATH`, parsed."""
    shown = invoke("show", path, "--json")
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.output)


def test_show_lists_the_same_names_for_every_model(run):
    kind, folder = run
    info = shown_json(folder / "r.zarr")
    root = open_results(folder / "r.zarr")
    rows = info["components"]
    np.testing.assert_allclose([r["mean"] for r in rows], root["means"].values, rtol=1e-6)
    np.testing.assert_allclose([r["weight"] for r in rows], root["weights"].values, rtol=1e-6)
    assert ("size" in rows[0]) == (kind != "gmm") and not info["earlier_names"]
    text = invoke("show", folder / "r.zarr").output
    header = next(line.split() for line in text.splitlines() if line.startswith("component"))
    columns = ["component", "weight", *(["size"] if kind != "gmm" else []), "mean", "0", "mean"]
    assert header[:-1] == columns and "{" not in text  # a table, no dict reprs


@pytest.mark.parametrize("run", ["kmeans", "anneal"], indirect=True)  # GM names did not change
def test_show_reads_a_store_of_the_earlier_names(run, tmp_path):
    """Stores written before the schema (KMeans `centers` along `cluster`, the
    annealed root holding its path) still show their parameters, with a note."""
    kind, folder = run
    root = open_results(folder / "r.zarr").load()
    if kind == "kmeans":
        old = root.rename({"means": "centers", "component": "cluster"}).drop_vars("weights")
        stored = ["centers"]
    else:
        path = open_results(folder / "r.zarr", "anneal_path").load()
        final = root[["means", "weights"]].rename(
            {"means": "cluster_centers", "weights": "cluster_weights", "component": "cluster"}
        )
        old = xr.merge([path, final], combine_attrs="drop").assign_attrs(root.attrs)
        stored = ["cluster_weights", "cluster_centers"]
    old.to_zarr(tmp_path / "old.zarr", consolidated=False, zarr_format=3)
    info = shown_json(tmp_path / "old.zarr")
    assert [name.split()[0] for name in info["earlier_names"]] == stored
    # The final means (along `cluster`), not the path's (along `step`).
    np.testing.assert_allclose([r["mean"] for r in info["components"]], root["means"].values,
                               rtol=1e-6)  # fmt: skip
    assert "names of an earlier dask_emk" in invoke("show", tmp_path / "old.zarr").output
