"""
Colour quantisation of a photograph with clouds
===============================================

scikit-learn's sample image ``china.jpg`` as a (y, x, band) DataArray, with 5%
of its pixels set to NaN ("clouds"). ``KMeans(nan_policy='omit')`` finds 16
colours from the other pixels; the labels come back on the image's grid, -1
under the clouds. (``dask-emk run photo`` does the same on the full image.)
"""

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from sklearn.datasets import load_sample_image

from dask_emk import KMeans

image = load_sample_image("china.jpg")[::2, ::2] / 255.0  # 214 × 320 pixels
rng = np.random.default_rng(0)
clouded = image.copy()
clouded[rng.random(image.shape[:2]) < 0.05] = np.nan
photo = xr.DataArray(clouded, dims=("y", "x", "band"), coords={"band": ["r", "g", "b"]})
photo = photo.chunk({"y": 64})  # lazy, in row bands: the labels come back lazy too

km = KMeans(16, init="k-means++", nan_policy="omit", feature_dim="band", random_state=0)
km.fit(photo)
labels = km.predict(photo).compute()  # DataArray on (y, x); -1 under the clouds
print(labels.dims, labels.shape, int((labels == -1).sum()), "clouded pixels")

# %%
# Each pixel in its centre's colour, clouds white.
quantised = km.cluster_centers_[labels.values.clip(0)]
quantised[labels.values < 0] = 1.0
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
for ax, picture, title in zip(axes, (np.nan_to_num(clouded, nan=1.0), quantised),
                              ("with 5% clouds", "16 colours (KMeans, nan_policy='omit')"),
                              strict=True):
    ax.imshow(picture)
    ax.set(title=title, xticks=[], yticks=[])
plt.show()
