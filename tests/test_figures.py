"""The figures say what they show: legends, units, scales and titles (rendered with Agg)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from dask_emk import AnnealedGaussianMixture  # noqa: E402
from dask_emk.pipeline import figures  # noqa: E402
from dask_emk.pipeline.fits import Iteration  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    matplotlib.pyplot.close("all")


def two_blobs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [6.0, 1.0]])
    labels = rng.integers(0, 2, n)
    X = means[labels] + rng.normal(size=(n, 2)) * [1.0, 0.5]
    covariances = np.array([np.diag([1.0, 0.25])] * 2)
    return X, labels, means, covariances


def legend_labels(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_clusters_plot_has_a_legend_equal_axes_and_visible_points(tmp_path):
    X, labels, means, cov = two_blobs(272)
    fig = figures.plot_clusters(X, labels, means, cov, None, ("x", "y"), units="data units")
    ax = fig.axes[0]
    counts = [f"component {k} ({(labels == k).sum()} points)" for k in (0, 1)]
    assert legend_labels(ax) == [*counts, "means", "1σ ellipses", "2σ ellipses"]
    assert ax.get_aspect() == 1.0
    assert ax.get_xlabel() == "x (data units)" and ax.get_ylabel() == "y (data units)"
    # 272 points: large and nearly opaque; 20,000: small and see-through.
    scatter = ax.collections[0]
    assert scatter.get_sizes()[0] >= 10 and scatter.get_alpha() >= 0.8
    assert figures.point_style(20_000) == (1.0, pytest.approx(np.sqrt(0.1)))
    # Each component in its colour, the one the other figures give it.
    for k in (0, 1):
        rgb = ax.collections[k].get_facecolor()[0][:3]
        np.testing.assert_allclose(rgb, figures.colour(k)[:3])
    # Two components × (1σ, 2σ): full widths 2σ and 4σ along the larger axis (σ = 1).
    # and 1σ and 2σ along the smaller (σ = 0.5).
    sizes = sorted((p.width, p.height) for p in ax.patches)
    np.testing.assert_allclose(sizes, [(2, 1), (2, 1), (4, 2), (4, 2)])
    path = figures.plot_clusters(X, labels, means, cov, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_convergence_plot_is_log_scale_with_model_and_tol_in_the_title():
    values = [-5.0, -4.2, -4.05, -4.01, -4.0099]
    history = [Iteration(i + 1, v, v - values[i - 1] if i else np.inf, 0.1)
               for i, v in enumerate(values)]  # fmt: skip
    fig = figures.plot_convergence(history, "lower_bound", None, model="GaussianMixture",
                                   tol=1e-3, units="data units")  # fmt: skip
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "iteration"
    # The final value as the console prints it (8 digits), with its units.
    assert ax.get_title() == (
        "GaussianMixture convergence, tol 0.001, final lower bound -4.0099\n(data units)"
    )
    assert legend_labels(ax) == ["|change of lower bound|", "tol = 0.001"]
    x, y = ax.lines[0].get_data()
    np.testing.assert_allclose(x, [2, 3, 4, 5])  # the first iteration has no change
    np.testing.assert_allclose(y, np.abs(np.diff(values)))
    ticks = ax.xaxis.get_major_locator().tick_values(1, 5)
    np.testing.assert_array_equal(ticks, np.round(ticks))


def test_anneal_path_is_titled_and_coloured_like_the_clusters():
    X, _, _, _ = two_blobs(2_000, seed=1)
    model = AnnealedGaussianMixture(2, random_state=0).fit(X)
    fig = figures.plot_anneal_path(model.path_, None, model.means_)
    ax = fig.axes[0]
    assert ax.get_title().startswith("annealing path: ")
    # Each line ends nearest the final mean whose colour it has.
    offsets = model.path_["means"].values
    for j, line in enumerate(ax.lines):
        finite = np.isfinite(offsets[:, j]).all(axis=1)
        last = offsets[finite][-1, j]
        k = int(np.argmin(((model.means_ - last) ** 2).sum(axis=1)))
        np.testing.assert_allclose(matplotlib.colors.to_rgba(line.get_color()), figures.colour(k))
    colours = {matplotlib.colors.to_hex(line.get_color()) for line in ax.lines}
    assert colours == {matplotlib.colors.to_hex(figures.colour(k)) for k in (0, 1)}


def test_label_map_tells_land_from_omitted_points_in_degrees():
    lat, lon = np.arange(-10.0, 10.0, 5), np.arange(0.0, 30.0, 10)
    data = np.arange(12, dtype=float).reshape(4, 3)
    data[0, 0] = np.nan  # land: every variable missing
    gap = data.copy()
    gap[1, 1] = np.nan  # one variable missing: left out of the fit
    X = xr.Dataset({"a": (("lat", "lon"), data), "b": (("lat", "lon"), gap)},
                   coords={"lat": lat, "lon": lon})  # fmt: skip
    labels = xr.DataArray(np.where(np.isnan(gap), np.nan, data % 3), dims=("lat", "lon"),
                          coords={"lat": lat, "lon": lon})  # fmt: skip
    land = figures.missing_everywhere(X, None)
    assert land.values.sum() == 1 and bool(land.values[0, 0])
    ax = figures.plot_label_map(labels, None, land).axes[0]
    assert legend_labels(ax) == ["component 0", "component 1", "component 2",
                                 "no data (land)", "omitted (NaN)"]  # fmt: skip
    assert ax.get_xlabel() == "longitude (°E)" and ax.get_ylabel() == "latitude (°N)"
