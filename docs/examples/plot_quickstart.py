"""
Quick start: fit, save, predict
===============================

A full-covariance Gaussian mixture fitted by EM on a chunked Dask array, saved
as xarray/zarr, read back and used to predict. Each EM iteration is one pass
over the chunks and one Dask compute.
"""

import tempfile
from pathlib import Path

import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.patches import Ellipse

from dask_emk import GaussianMixture

rng = np.random.default_rng(0)
means = np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 5.0], [6.0, 6.0]])
X_np = np.concatenate([rng.multivariate_normal(m, [[1.0, 0.4], [0.4, 0.8]], 5_000) for m in means])
X = da.from_array(rng.permutation(X_np), chunks=(4_000, 2))  # 5 blocks of rows

gm = GaussianMixture(4, covariance_type="full", random_state=0).fit(X)
print(f"{gm.n_iter_} iterations, converged={gm.converged_}, lower bound {gm.lower_bound_:.4f}")

# %%
# Save the model in the results schema and read it back.
folder = Path(tempfile.mkdtemp())
gm.to_xarray().to_zarr(folder / "model.zarr", mode="w")
params = xr.open_zarr(folder / "model.zarr")
print(params["means"].values.round(2))

# %%
# ``predict`` on a dask array is lazy; compute the labels to draw them.
labels = gm.predict(X)
print(type(labels).__name__, labels.shape)
rows, labels = X.compute(), labels.compute()
fig, ax = plt.subplots(figsize=(5, 5))
ax.scatter(rows[:, 0], rows[:, 1], c=labels, s=2, cmap="tab10")
for mean, cov in zip(gm.means_, gm.covariances_, strict=True):
    values, vectors = np.linalg.eigh(cov)
    angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
    for n_std in (1, 2):
        w, h = 2 * n_std * np.sqrt(values[::-1])
        ax.add_patch(Ellipse(mean, w, h, angle=angle, fill=False, color="k", lw=1))
ax.set(title="GaussianMixture(4): labels and 1σ, 2σ ellipses", xlabel="x0", ylabel="x1")
plt.show()
