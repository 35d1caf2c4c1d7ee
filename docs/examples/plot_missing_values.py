"""
Missing values against dropping rows
====================================

A table of two features with gaps of two kinds: 10% of the entries missing
completely at random (MCAR), and a block where the second feature is missing
whenever the first reads above 4 (a sensor that drops out when another reads
high: missing *at random* given the observed feature, MAR).

``GaussianMixture(nan_policy='marginalize')`` fits every row by the features it
has (EM on the observed-data likelihood). ``nan_policy='omit'`` drops every row
with a gap, as does scikit-learn fitted on the complete rows: both see the same
data, and the block leaves them only the left part of the component it cuts.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse
from scipy.optimize import linear_sum_assignment
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_emk import GaussianMixture

rng = np.random.default_rng(0)
true_means = np.array([[0.0, 0.0], [4.0, 3.0], [1.0, -3.5]])
true_covs = np.array([[[1.0, 0.5], [0.5, 1.0]],
                      [[1.0, -0.4], [-0.4, 0.6]],
                      [[0.8, 0.0], [0.0, 0.5]]])  # fmt: skip
sizes = [2_000, 2_000, 1_500]
X_true = np.concatenate([rng.multivariate_normal(mean, cov, n)
                         for mean, cov, n in zip(true_means, true_covs, sizes, strict=True)])
X = X_true.copy()
X[rng.random(X.shape) < 0.10] = np.nan  # MCAR
block = X_true[:, 0] > 4.0
X[block, 1] = np.nan  # MAR: x1 missing where x0 is high (x0 itself may be missing too)
complete = ~np.isnan(X).any(axis=1)
print(f"{np.isnan(X).mean():.0%} of the entries missing, "
      f"{complete.mean():.0%} of the rows complete")

# %%
# Three fits from the same start: every row by its observed features, the
# complete rows only, and scikit-learn on the complete rows. EM slows down as the
# share of missing information grows: at the default ``tol=1e-3`` the
# marginalised fit stopped after 5 iterations with the cut component's
# correlation at 40% of its value, so all three run to ``tol=1e-6``.
kwargs = dict(covariance_type="full", n_init=3, tol=1e-6, max_iter=500, random_state=0)
marg = GaussianMixture(3, nan_policy="marginalize", **kwargs).fit(X)
omit = GaussianMixture(3, nan_policy="omit", **kwargs).fit(X)
sk = SkGaussianMixture(3, **kwargs).fit(X[complete])


def matched(means):
    """Order of the fitted components that pairs them with the true ones."""
    cost = ((means[:, None] - true_means[None]) ** 2).sum(-1)
    return linear_sum_assignment(cost.T)[1]


errors = {}
for name, model in (("marginalize", marg), ("omit", omit), ("scikit-learn, complete rows", sk)):
    order = matched(model.means_)
    errors[name] = np.sqrt(((model.means_[order] - true_means) ** 2).sum(-1))
    print(f"{name:28s} distance of each fitted mean to the truth: {errors[name].round(3)}")

# %%
# The gaps filled with ``impute`` (E[x_missing | x_observed] under the fitted
# mixture) against the hidden values, and against filling with the observed mean.
filled = marg.impute(X)
gaps = np.isnan(X)
column_mean = np.where(gaps, np.nanmean(X, axis=0), X)
lost = block & ~gaps[:, 0]  # the block's rows that kept x0: their x1 is filled from it
block_x1 = np.stack([np.zeros_like(lost), lost], axis=1)
for where, mask in (("all gaps", gaps), ("x1 in the block", block_x1)):
    rms = {name: np.sqrt(np.mean((values[mask] - X_true[mask]) ** 2))
           for name, values in (("impute", filled), ("column mean", column_mean))}  # fmt: skip
    print(f"RMS error over {where}: impute {rms['impute']:.3f}, "
          f"column mean {rms['column mean']:.3f}")

# %%
# Left: the fitted 2σ ellipses against the truth (black) over the complete rows
# (grey) and the rows that lost x1 in the block (orange ticks at their x0).
# Right: the imputed x1 of the block's rows against the hidden truth.


def ellipse(ax, mean, cov, **style):
    values, vectors = np.linalg.eigh(cov)
    angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
    w, h = 4 * np.sqrt(values[::-1])
    ax.add_patch(Ellipse(mean, w, h, angle=angle, fill=False, **style))


fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
ax = axes[0]
ax.scatter(*X[complete].T, s=2, c="0.75")
ax.plot(X[lost, 0], np.full(lost.sum(), 0.02), "|", color="tab:orange", ms=6, alpha=0.3,
        transform=ax.get_xaxis_transform())
styles = {"truth": dict(color="k", lw=2.5), "marginalize": dict(color="tab:blue", lw=1.5),
          "omit": dict(color="tab:red", lw=1.5),
          "scikit-learn, complete rows": dict(color="tab:green", lw=1.5, ls=":")}  # fmt: skip
fits = {"truth": (true_means, true_covs), "marginalize": (marg.means_, marg.covariances_),
        "omit": (omit.means_, omit.covariances_),
        "scikit-learn, complete rows": (sk.means_, sk.covariances_)}  # fmt: skip
for name, (means, covs) in fits.items():
    for mean, cov in zip(means, covs, strict=True):
        ellipse(ax, mean, cov, **styles[name])
    label = name if name == "truth" else f"{name}: means off by ≤ {errors[name].max():.2f}"
    ax.plot([], [], label=label, **styles[name])
ax.axvline(4.0, color="tab:orange", lw=0.8, ls="--")
ax.set(xlabel="x0", ylabel="x1", title="2σ ellipses; x1 missing right of the dashed line")
ax.legend(loc="upper left", fontsize=8)

ax = axes[1]
ax.scatter(X_true[lost, 1], filled[lost, 1], s=3, alpha=0.5, label="impute")
ax.scatter(X_true[lost, 1], column_mean[lost, 1], s=3, alpha=0.5, c="0.5", label="column mean")
lims = [X_true[lost, 1].min(), X_true[lost, 1].max()]
ax.plot(lims, lims, "k--", lw=1)
ax.set(xlabel="hidden x1", ylabel="filled x1",
       title=f"x1 in the block: RMS error {rms['impute']:.2f} (impute), "
             f"{rms['column mean']:.2f} (mean)")  # fmt: skip
ax.legend(loc="upper left", fontsize=8)
plt.show()
