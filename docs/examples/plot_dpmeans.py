"""
DP-means against k-means
========================

k-means needs K; DP-means needs λ, the price of a cluster in squared data units:
a row farther than √λ from every centre opens a new one. On data with six
regimes, ``KMeans(4)`` must merge some, while ``DPMeans(penalty=λ)`` finds six
from a distance scale alone.
"""

import matplotlib.pyplot as plt
import numpy as np

from dask_emk import DPMeans, KMeans

rng = np.random.default_rng(6)
centres = rng.uniform(-12, 12, size=(6, 2))
X = np.concatenate([c + 0.8 * rng.standard_normal((1_500, 2)) for c in centres])

dp = DPMeans(penalty=25.0, random_state=0).fit(X)  # clusters at least ~5 apart
km = KMeans(4, random_state=0).fit(X)
print(f"DP-means: {dp.n_clusters_} clusters, objective {dp.objective_:.0f}")
print(f"k-means:  4 clusters, inertia {km.inertia_:.0f}")
# λ sets the scale, not the count: too small splits regimes, too large merges them.
for penalty in (9.0, 25.0, 100.0):
    found = DPMeans(penalty=penalty, random_state=0).fit(X).n_clusters_
    print(f"penalty {penalty:5.0f}: {found} clusters")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
for ax, model, title in zip(axes, (km, dp), ("KMeans(4)", f"DPMeans(penalty=25): "
                                             f"{dp.n_clusters_} clusters"), strict=True):
    ax.scatter(X[:, 0], X[:, 1], c=model.labels_, s=2, cmap="tab10")
    ax.scatter(*model.cluster_centers_.T, c="k", marker="x", s=60)
    ax.set(title=title, xlabel="x0")
axes[0].set_ylabel("x1")
plt.show()
