"""The rules of deterministic annealing, one small numpy function each.

The model is a mixture of spherical Gaussians sharing one variance σ²,
density ∝ exp(−‖x − μ_k‖² / (2σ²)). A component whose responsibility-weighted
covariance C_k has largest eigenvalue λ_k is a stable fixed point of EM only
while σ² > λ_k (Rose 1998, with the 2σ² kernel convention; Rose's critical
temperature T = 2λ_max is the same point for the kernel exp(−‖x−μ‖²/T)).
Below it the mean splits along the principal axis of C_k.

The winning schedule (measured in benchmarks/bench_anneal.py):

1. start just above λ_max(Cov X), one mean at the data mean
   (:func:`start_variance`);
2. at each σ² run EM with σ² fixed until the means settle, then split every
   unstable mean (λ_k > σ²), heaviest SSE first, up to a budget of
   ``max_split_factor × K`` means (:func:`components_to_split`,
   :func:`split_means`);
3. jump to the next critical variance and cool one factor below it
   (:func:`next_variance`) — no steps are spent where nothing splits;
4. coalesce means that EM pulled together (:func:`coalesce_pairs`);
5. stop when the budget is reached and the last split has settled, or σ²
   passes the stop value (:func:`stop_reason`);
6. harden the surplus means with Lloyd, merge down to K by Ward's rule
   (:func:`ward_merge`);
7. anneal the K means on from one cooling factor below the last σ² until the
   assignments are hard (:func:`is_hard`), then Lloyd. Lloyd straight after
   the merge stops in the nearest local minimum; the soft assignments let
   the boundaries between neighbouring clusters settle first (on a 5×5 grid
   of overlapping blobs: 0.05% above the best of 10 k-means++ runs without
   this step, 0.02% below with it).
8. on the full data, Lloyd to its exact fixed point, then batch Hartigan
   passes (:mod:`dask_emk.core.hartigan`): each pass finds the
   rows whose move to another cluster lowers the cost although they are
   nearest their own centre (Hartigan & Wong's gain, which counts that the
   move shifts both means), and applies Lloyd's update plus the batch of the
   largest-gain moves whose exact cost, computed from the pass's sums, is
   lowest. A move is kept only if the next pass's inertia is strictly lower
   (run by :func:`dask_emk.models.hartigan.hartigan_polish`). Lloyd's tol-1e-4 stop
   and its neighbouring fixed points left 3 of 20 benchmark runs up to 7e-6
   above the best of 10 k-means++ runs; the polish puts all 20 below.
"""

from __future__ import annotations

import numpy as np

#: σ²₀ = START_MARGIN × λ_max(Cov X): strictly above the first critical variance.
START_MARGIN = 1.05
#: Children start at μ ± SPLIT_NUDGE √λ v: half-way to where a Gaussian's two
#: halves settle (±√(2/π)·√λ ≈ 0.8 √λ), so EM needs few iterations to separate them.
SPLIT_NUDGE = 0.5
#: Means closer than COALESCE_DISTANCE · σ after EM have collapsed into one.
COALESCE_DISTANCE = 0.2
#: Assignments count as hard when the mean of 1 − max_k r_ik is below this.
HARD_SOFTNESS = 1e-3
#: Hartigan passes over the full data the polish may use (default of the
#: estimator's ``hartigan_max_passes``; the final Lloyd run after it, usually
#: 2 passes, comes on top). Each pass is one round: Lloyd's update plus a
#: batch of moves, checked by the next pass. Measured on the benchmark sets
#: (benchmarks/RESULTS.md): 1 pass where nothing moves (unbalance), 2 on d8,
#: 3–6 on rings, 9–20 on grid100 (100 overlapping clusters; the cap was
#: reached once, by a run whose 20th pass found nothing left to move). 20
#: keeps the whole annealed fit within 1.6× the passes of one k-means|| +
#: Lloyd fit on the same data (target 3×) and bounds a polish that keeps
#: finding small gains.
HARTIGAN_MAX_PASSES = 20


def start_variance(lambda_data: float, sigma2_start: float | None) -> float:
    """σ²₀: the user's value, else just above the first critical variance.

    Parameters
    ----------
    lambda_data : float
        λ_max of the weighted data covariance.
    sigma2_start : float or None
    """
    if sigma2_start is not None:
        return float(sigma2_start)
    return START_MARGIN * lambda_data if lambda_data > 0 else 1.0


def critical_variances(
    N: np.ndarray, S: np.ndarray, Q: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """λ_max and principal axis of each component's weighted covariance.

    Parameters
    ----------
    N : ndarray of shape (m,)
    S : ndarray of shape (m, d)
        Σ r (x − μ_k), about the means the statistics were taken at.
    Q : ndarray of shape (m, d, d)
        Σ r (x − μ_k)(x − μ_k)ᵀ.
    eps : float
        Floor on the masses.

    Returns
    -------
    lam : ndarray of shape (m,)
    axes : ndarray of shape (m, d), unit vectors
    """
    nk = N + eps
    delta = S / nk[:, None]
    cov = Q / nk[:, None, None] - np.einsum("ki,kj->kij", delta, delta)
    values, vectors = np.linalg.eigh(cov)
    axes = vectors[:, :, -1]
    # A fixed sign per axis makes the split (and the whole path) deterministic.
    flip = np.sign(axes[np.arange(axes.shape[0]), np.abs(axes).argmax(axis=1)])
    return np.maximum(values[:, -1], 0.0), axes * flip[:, None]


def has_settled(shifts: list[float], sigma2: float, tol: float) -> bool:
    """Whether EM at fixed σ² has converged, judged by the distance left to go.

    EM converges linearly, and just below a critical variance very slowly
    (critical slowing down): a small shift then does not mean the means have
    arrived, and splitting unseparated children makes spurious near-duplicate
    means. With the contraction ρ = shift_t / shift_{t−1} the distance still
    to travel is about shift_t ρ / (1 − ρ); settled when it is below √(tol σ²).

    Parameters
    ----------
    shifts : list of float
        Largest distance a mean moved, per EM iteration so far.
    sigma2 : float
    tol : float
    """
    if shifts[-1] == 0.0:
        return True
    if len(shifts) < 2:
        return False
    rho = shifts[-1] / shifts[-2] if shifts[-2] > 0 else 0.0
    if rho >= 1.0:
        return False
    return shifts[-1] * rho / (1.0 - rho) <= np.sqrt(tol * sigma2)


def components_to_split(
    lam: np.ndarray, mass: np.ndarray, sigma2: float, budget: int
) -> np.ndarray:
    """Indices of unstable means (λ_k > σ²) to split, within the budget.

    Heaviest first by mass × λ_k, the SSE a split along the principal axis
    removes (up to a constant), so the budget goes to the biggest gains.

    Parameters
    ----------
    lam, mass : ndarray of shape (m,)
    sigma2 : float
    budget : int
        Maximum number of means after the split.
    """
    room = max(budget - lam.shape[0], 0)
    unstable = np.flatnonzero(lam > sigma2)
    order = np.argsort(-(mass[unstable] * lam[unstable]), kind="stable")
    return np.sort(unstable[order[:room]])


def split_means(
    means: np.ndarray, weights: np.ndarray, idx: np.ndarray, lam: np.ndarray, axes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Split means ``idx`` in two along their principal axes.

    Mean k moves to μ_k + a v_k and a child μ_k − a v_k is appended, a =
    SPLIT_NUDGE √λ_k; each keeps half the weight.

    Returns
    -------
    means : ndarray of shape (m + len(idx), d)
    weights : ndarray of shape (m + len(idx),)
    """
    step = SPLIT_NUDGE * np.sqrt(lam[idx])[:, None] * axes[idx]
    means, weights = means.copy(), weights.copy()
    children = means[idx] - step
    means[idx] += step
    weights[idx] *= 0.5
    return np.concatenate([means, children]), np.concatenate([weights, weights[idx]])


def next_variance(sigma2: float, lam: np.ndarray, split: bool, cooling: float) -> float:
    """Next σ²: cool one factor, jumping first to the next critical variance.

    After a split the children need a lower σ² to separate: ``cooling · σ²``.
    Without one, nothing happens until σ² reaches max_k λ_k, so go straight
    there and one cooling factor below: ``cooling · max_k λ_k``.
    """
    if split or lam.size == 0:
        return cooling * sigma2
    return cooling * min(sigma2, float(lam.max()))


def coalesce_pairs(means: np.ndarray, sigma2: float) -> list[tuple[int, int]]:
    """Pairs (a, b), a < b, of means closer than COALESCE_DISTANCE · σ.

    Each mean appears in at most one pair (greedy by index).
    """
    diff = means[:, None, :] - means[None, :, :]
    close = np.einsum("abi,abi->ab", diff, diff) < COALESCE_DISTANCE**2 * sigma2
    pairs, used = [], set()
    for a, b in zip(*np.nonzero(np.triu(close, 1)), strict=True):
        if a not in used and b not in used:
            pairs.append((int(a), int(b)))
            used.update((a, b))
    return pairs


def merge_pair(
    means: np.ndarray, mass: np.ndarray, a: int, b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replace mean a by the mass-weighted mean of a and b and drop b."""
    total = mass[a] + mass[b]
    means, mass = means.copy(), mass.copy()
    if total > 0:
        means[a] = (mass[a] * means[a] + mass[b] * means[b]) / total
    mass[a] = total
    return np.delete(means, b, axis=0), np.delete(mass, b)


def ward_cost(means: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """ΔSSE of merging each pair, n_a n_b / (n_a + n_b) ‖μ_a − μ_b‖², shape (m, m).

    The diagonal is +inf (a mean does not merge with itself).
    """
    diff = means[:, None, :] - means[None, :, :]
    dist = np.einsum("abi,abi->ab", diff, diff)
    total = mass[:, None] + mass[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        cost = np.where(total > 0, np.outer(mass, mass) / total, 0.0) * dist
    np.fill_diagonal(cost, np.inf)
    return cost


def ward_merge(
    means: np.ndarray, mass: np.ndarray, n_keep: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Merge greedily the pair with least ΔSSE until ``n_keep`` means remain.

    Parameters
    ----------
    means : ndarray of shape (m, d)
    mass : ndarray of shape (m,)
        Weight of the points assigned to each mean (hard assignment).
    n_keep : int

    Returns
    -------
    means : ndarray of shape (n_keep, d)
    mass : ndarray of shape (n_keep,)
    merges : list of (a, b)
        Positions in the ORIGINAL ``means`` of each merge: b merged into a.
    """
    origin = list(range(means.shape[0]))
    merges = []
    while means.shape[0] > n_keep:
        cost = ward_cost(means, mass)
        a, b = np.unravel_index(np.argmin(cost), cost.shape)
        a, b = (int(a), int(b)) if a < b else (int(b), int(a))
        merges.append((origin[a], origin[b]))
        means, mass = merge_pair(means, mass, a, b)
        del origin[b]
    return means, mass, merges


def is_hard(softness: float, sigma2: float, sigma2_stop: float) -> bool:
    """Whether the K-mean anneal after the merge can hand over to Lloyd.

    Parameters
    ----------
    softness : float
        Mean of 1 − max_k r_ik over the sample at ``sigma2``.
    sigma2, sigma2_stop : float
        Also hard (for Lloyd's purposes) once σ² is below the schedule's end.
    """
    return softness < HARD_SOFTNESS or sigma2 < sigma2_stop


def stop_reason(
    n_means: int, budget: int, split: bool, sigma2_next: float, sigma2_stop: float
) -> str | None:
    """Why annealing ends after this step, or None to go on.

    * ``'budget'``: as many means as allowed and the last split has settled.
      No split can happen any more, and below every critical variance
      lowering σ² only hardens the assignments: Lloyd (σ² → 0) does that
      in a few cheap iterations instead of a long tail of EM steps.
    * ``'sigma2_stop'``: the schedule's end; also reached when every mean
      sits on point-like data (λ_k = 0, the jump goes to σ² = 0).
    """
    if n_means >= budget and not split:
        return "budget"
    if sigma2_next < sigma2_stop:
        return "sigma2_stop"
    return None
