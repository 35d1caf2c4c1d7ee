"""
Regimes in gridded data: land mask and area weights
===================================================

``dask_emk.pipeline.generate.write_grid_zarr`` writes a small gridded store with
known truth: three variables on (time, lat, lon), regimes in spatially coherent
regions drifting east, a land mask (NaN) and scattered gaps. The Dataset is fitted
as it is stored: ``nan_policy='omit'`` leaves land and gaps out, and
``sample_weight`` weighs each grid point by its area, cos(lat).
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from dask_emk import GaussianMixture
from dask_emk.pipeline.generate import random_mixture, write_grid_zarr

store = Path(tempfile.mkdtemp()) / "grid.zarr"
truth = random_mixture(3, 4, seed=1)
write_grid_zarr(store, (6, 45, 90), truth, land=0.3, gaps=0.03, seed=1)
stored = xr.open_zarr(store, consolidated=False)
ds = stored[["x0", "x1", "x2"]]  # the features; the store also holds the truth
print(ds)

# %%
# Area weights on (lat): broadcast over time and lon, matched to the data by label.
area = np.cos(np.deg2rad(ds.lat))
gm = GaussianMixture(4, covariance_type="full", nan_policy="omit", random_state=0)
gm.fit(ds, sample_weight=area)
labels = gm.predict(ds)  # lazy DataArray on (time, lat, lon), -1 on land
print(labels.dims, gm.n_iter_, "iterations")

# %%
# The label map of the first time step against the true regimes (labels are
# arbitrary: the fitted components are matched to the true ones by their means).
order = np.argmin(((gm.means_[:, None] - truth.means[None]) ** 2).sum(-1), axis=1)
fitted = labels.isel(time=0).compute()
matched = xr.where(fitted >= 0, order[fitted.clip(0)], np.nan)
true = stored["labels"].isel(time=0).compute()
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True, layout="constrained")
for ax, field, title in zip(axes, (true.where(true >= 0), matched),
                            ("true regimes", "GaussianMixture(4), nan_policy='omit'"),
                            strict=True):
    field.plot(ax=ax, cmap="tab10", vmin=0, vmax=9, add_colorbar=False)
    ax.set_title(title)
plt.show()
