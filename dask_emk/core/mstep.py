"""Sufficient statistics: their layout as one flat vector, and the M-step.

A block's statistics travel through the Dask tree reduction as one float64
row vector, so combining two blocks is plain addition (``Array.sum``).
:class:`StatsLayout` names the pieces of that vector; :func:`m_step` turns the
summed statistics into new parameters (all tiny K×d-sized numpy work).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from dask_emk.core.covariance import COVARIANCE_TYPES
from dask_emk.core.marginal import masked_estimate

DEGENERATE_MESSAGE = (
    "Fitting the mixture model failed because some components have ill-defined "
    "empirical covariance (for instance caused by singleton or collapsed samples). "
    "Try to decrease the number of components, increase reg_covar (it is {reg}), "
    "or scale the input data."
)


class CollapsedComponentWarning(UserWarning):
    """A component's covariance is held up by ``reg_covar`` alone (collapsed or empty)."""


@dataclass
class GaussianState:
    """Mixture parameters in float64, in scikit-learn's shapes."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray


def m_step(
    stats: dict,
    centers: np.ndarray,
    covariance_type: str,
    reg_covar: float,
    *,
    eps: float,
    variance: float | None = None,
) -> GaussianState:
    """New parameters from summed statistics taken about ``centers``.

    Parameters
    ----------
    stats : dict
        Summed statistics (``N`` (K,), ``S`` (K, d), ``Q``), see
        :func:`dask_emk.core.mixture.moment_stats`; with gaps also ``Nf``
        (K, d) (:func:`dask_emk.core.marginal.estep_stats`).
    centers : ndarray of shape (K, d)
        The reference c_k each component's moments were taken about.
    covariance_type : str
    reg_covar : float
        Added to the diagonal of every covariance (not to a fixed variance).
    eps : float
        Floor added to the masses as scikit-learn does (10 × machine epsilon
        of the data dtype) so empty components give finite means.
    variance : float, optional
        Fixed shared variance (``covariance_type='shared'`` only).

    Returns
    -------
    GaussianState
    """
    ctype = COVARIANCE_TYPES[covariance_type]
    N, S = stats["N"], stats["S"]
    # With gaps (nan_policy='marginalize') diagonal and scalar blocks take
    # per-feature masses: each feature's mean over its observed entries.
    masses = stats.get("Nf")
    means, delta, nk = weighted_means(centers, N if masses is None else masses, S, eps)
    weights = (N + eps) / (N + eps).sum()
    if variance is not None:  # a fixed σ² ('shared'): nothing to estimate or check
        cov = np.asarray(float(variance))
    else:
        if masses is None:
            cov = ctype.estimate(N, S, stats["Q"], delta, nk)
        else:
            cov = masked_estimate(covariance_type, masses, S, stats["Q"], delta, nk)
        _warn_if_floored(ctype.smallest_variance(cov), None if ctype.pooled else weights, reg_covar)
        cov += reg_covar * ctype.identity(S.shape[1])
    if variance is None and ctype.block != "matrix":
        _check_above_roundoff(cov, weights, means, reg_covar)
    return GaussianState(weights, means, cov, precision_cholesky(cov, covariance_type, reg_covar))


def weighted_means(centers: np.ndarray, N: np.ndarray, S: np.ndarray, eps: float = 0.0):
    """Weighted means μ_k = c_k + S_k / (N_k + eps) from moments about c_k.

    The mean update of every M-step: EM's and the annealing's (``eps``
    floors empty components, as scikit-learn) and k-means' (its σ² → 0
    limit: the mean of the rows assigned, ``eps`` = 0 on non-empty clusters).

    Parameters
    ----------
    centers : ndarray of shape (K, d) or (d,)
        The reference points c_k.
    N : ndarray of shape (K,) or (K, d)
        Σ w r per component (or per component and feature, with gaps).
    S : ndarray of shape (K, d)
        Σ w r (x − c_k) per component.
    eps : float

    Returns
    -------
    means : ndarray of shape (K, d)
    delta : ndarray of shape (K, d), μ_k − c_k
    nk : ndarray of shape (K,), N + eps
    """
    nk = N + eps
    delta = S / (nk[:, None] if nk.ndim == 1 else nk)
    return centers + delta, delta, nk


def _warn_if_floored(smallest, weights, reg_covar: float) -> None:
    """Warn when reg_covar is all that keeps a covariance positive definite.

    Parameters
    ----------
    smallest : ndarray of shape (K,) or (1,)
        Smallest variance (eigenvalue, diagonal entry or σ²) of each
        covariance before ``reg_covar`` is added.
    weights : ndarray of shape (K,) or None
        Mixture weights; None for one pooled covariance (the message then says so).
    reg_covar : float
        With 0 nothing is floored (a collapse raises in
        :func:`precision_cholesky` / :func:`_check_above_roundoff` instead).

    Notes
    -----
    A component that collapsed onto one point (duplicate rows) or lost its
    samples has a variance of zero up to round-off; ``reg_covar`` then keeps
    the fit finite, but the component is no longer a Gaussian of the data,
    which the user should hear about rather than find out from the numbers.
    The test is "below reg_covar": then the regulariser is at least half of
    the covariance in some direction.
    """
    if reg_covar <= 0:
        return
    floored = np.flatnonzero(smallest < reg_covar)
    if floored.size == 0:
        return
    if weights is None:
        what = "the pooled covariance has"
    else:
        # No per-iteration numbers in the text: Python's default filter then
        # shows the warning once per fit instead of once per EM iteration.
        what = f"component(s) {floored.tolist()} have"
    warnings.warn(
        f"{what} a variance below reg_covar={reg_covar:g} in some direction: they "
        "collapsed onto a single point or a flat set (duplicate rows, a feature that "
        "is constant within the component) or lost their samples, and reg_covar alone "
        "keeps the covariance positive definite. Try fewer components, another "
        "initialisation, or scale the data; raising reg_covar makes the floor explicit.",
        CollapsedComponentWarning,
        stacklevel=3,
    )


def _check_above_roundoff(cov, weights, means, reg_covar: float) -> None:
    """Raise for variances that the E-step's round-off cannot tell from zero.

    The kernels form squared distances about the mixture mean c, so a collapsed
    component (duplicate points, reg_covar=0) comes back not as 0 but as noise
    of about eps·‖μ_k − c‖²; scikit-learn's ``<= 0`` test would let it through.
    """
    origin = weights @ means
    spread = weights @ ((means - origin) ** 2).mean(axis=1)
    if np.any(cov <= 256 * np.finfo(np.float64).eps * spread):
        raise ValueError(DEGENERATE_MESSAGE.format(reg=reg_covar))


def precision_cholesky(cov: np.ndarray, covariance_type: str, reg_covar: float = 0.0) -> np.ndarray:
    """Cholesky factor of the precision for each covariance, as scikit-learn.

    For ``shared`` the scalar is broadcast to no shape change (0-d in, 0-d out).

    Raises
    ------
    ValueError
        If a covariance is not positive definite; the message suggests
        raising ``reg_covar``.
    """
    try:
        return COVARIANCE_TYPES[covariance_type].precision_cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError(DEGENERATE_MESSAGE.format(reg=reg_covar)) from None
