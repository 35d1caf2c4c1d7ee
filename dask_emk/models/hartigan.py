"""k-means refinements on the KMeans engine: Lloyd from given centres, and
the batch Hartigan polish that leaves a Lloyd fixed point only for a strictly
lower one (the last step of :class:`dask_emk.AnnealedGaussianMixture`; the
moves' arithmetic is :mod:`dask_emk.core.hartigan`).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from dask_emk.core import hartigan as rules
from dask_emk.core.nan_policy import NanPolicy
from dask_emk.engine.passes import hartigan_pass
from dask_emk.models.kmeans import KMeans


def lloyd_from(
    X, weight, centers: np.ndarray, max_iter: int, tol: float, split_every, callback=None,
    cache="auto",
) -> KMeans:
    """Lloyd iterations from ``centers`` on the dask_emk KMeans engine.

    ``callback`` watches this run only: the fitted KMeans keeps none, so it
    can be saved in a model file with the estimator that holds it.
    """
    km = KMeans(centers.shape[0], init=centers, n_init=1, max_iter=max_iter, tol=tol,
                split_every=split_every, callback=callback, cache=cache)  # fmt: skip
    return km.fit(X, sample_weight=weight).set_params(callback=None)


def lloyd_passes(km: KMeans) -> int:
    """Full passes of a KMeans fit: its iterations, plus the final assignment
    pass it runs unless it stopped on an exact fixed point (then the last
    iteration's inertia is the final one)."""
    exact = km.inertia_history_ and km.inertia_history_[-1] == km.inertia_
    return km.n_iter_ + (0 if exact else 1)


class _NotLower(Exception):
    """Raised from the KMeans callback to stop a Lloyd run whose first pass
    (the inertia at its starting centres) is not below ``bound``."""


def _stop_unless_lower(model, info, bound: float) -> None:
    if info["iteration"] == 1 and not info["inertia"] < bound:
        raise _NotLower


def hartigan_polish(
    X, array, weight, km: KMeans, max_passes: int, max_iter: int, split_every,
    nan_policy=NanPolicy.RAISE,
):  # fmt: skip
    """Lloyd + batch Hartigan passes from a Lloyd fixed point, on the full data.

    Every pass is one Hartigan pass (:func:`dask_emk.engine.passes.hartigan_pass`)
    at the current centres: the nearest-centre (Lloyd) sums, the inertia, and
    the single-row moves that would lower the cost, binned by gain. From its
    sums alone (no pass) :func:`dask_emk.core.hartigan.hartigan_moves` picks
    Lloyd's update or Lloyd's update plus the top bins of moves, whichever
    gives the lowest exact cost; the new centres are that partition's means,
    and the next pass is both the evaluation of a move and the next round.

    * A move is ACCEPTED only if the next pass's inertia (the true cost at the
      moved centres, every row to its nearest) is strictly below the inertia
      of the pass that made it. Otherwise the centres go back to those
      before the move and the polish stops.
    * The polish stops when a pass finds no candidate row, or no move that
      lowers the exact cost at Lloyd's fixed point (no Lloyd shift either),
      or after ``max_passes`` passes.
    * It ends with :class:`dask_emk.KMeans` (tol 0) from the last centres, to
      Lloyd's exact fixed point and for the fitted Lloyd object: usually 2
      passes (the centres made from the pass's sums differ from the
      KMeans run's own in the last bit), at most ``max_iter``. After an
      unevaluated move (the budget ran out) its first pass is the evaluation.

    Why: Lloyd stops where every row is nearest its centre, but moving a
    boundary row also moves both centres, by w/(N ± w) of its offset, and
    that can lower the cost although the row is nearer its own centre.
    Hartigan's fixed points are a subset of Lloyd's (Telgarsky & Vattani
    2010), so this leaves a Lloyd fixed point only for a strictly lower one.

    Parameters
    ----------
    X : the input as given to :class:`dask_emk.KMeans` (or its InputData)
    array : ndarray or dask array of shape (n, d), the same data
    weight : ndarray, dask array or None
    km : KMeans, fitted to its exact fixed point
    max_passes : int
        Hartigan passes at most (the final Lloyd run not included).
    max_iter : int
        Iterations of the final Lloyd run at most.
    split_every : int or None
    nan_policy : NanPolicy
        'omit' leaves out rows holding NaN (the polish never runs with gaps).

    Returns
    -------
    km : KMeans, at the polished centres (``km`` itself when nothing moved)
    passes : int, passes over the data used, the final Lloyd run's included
    n_iter : int, Hartigan passes plus the final Lloyd run's iterations
    rounds : list of dict, one per Hartigan pass: ``inertia`` at its centres,
        ``candidates`` (rows with a lowering move), ``moved`` (rows moved),
        ``predicted`` (Σ Δ of the moved rows), ``change`` (exact change from
        ``inertia`` to the cost of the chosen partition at its means),
        ``accepted`` (for a move: whether the next pass confirmed it).
    """
    K, rounds = km.n_clusters, []
    centers = np.asarray(km.cluster_centers_, dtype=np.float64)
    mass = np.asarray(km.cluster_weights_, dtype=np.float64)
    start = kept = centers
    bound, moved_any = None, False  # bound: inertia before a pending move
    # One reference point for all passes, as in a KMeans run: an unchanged
    # partition then gives bit-identical sums and centres, so the fixed point
    # is seen exactly (a new reference per pass made the centres wander in
    # the last bit and the loop never stopped).
    origin = centers.mean(axis=0)
    edges = rules.hartigan_edges(float(km.inertia_), float(mass.sum()), K)
    while len(rounds) < max_passes:
        st = hartigan_pass(array, weight, centers, mass, origin, edges, split_every, nan_policy)
        if bound is not None:
            rounds[-1]["accepted"] = bool(st["inertia"] < bound)
            if not rounds[-1]["accepted"]:
                centers, bound = kept, None
                rounds.append(None)  # counted as a pass, recorded in the move's round
                break
        M = centers - origin
        p, change = rules.hartigan_moves(st["N"], st["S"], M, st["dN"], st["dS"], st["moved"])
        dN, dS = st["dN"][:p].sum(axis=0), st["dS"][:p].sum(axis=0)
        new = origin + rules.moved_centers(st["N"], st["S"], M, dN, dS)
        rounds.append(dict(inertia=float(st["inertia"]), candidates=int(st["moved"].sum()),
                           moved=int(st["moved"][:p].sum()),
                           predicted=float(st["gain"][:p].sum()), change=change))  # fmt: skip
        if p == 0 and (rounds[-1]["candidates"] == 0 or np.array_equal(new, centers)):
            # Nothing for Hartigan; what Lloyd has left, the final KMeans does.
            centers = new
            break
        kept, bound = (centers, float(st["inertia"])) if p else (new, None)
        moved_any |= p > 0
        centers, mass = new, st["N"] + dN
    passes, n_iter = len(rounds), len(rounds)
    rounds = [r for r in rounds if r is not None]
    if not moved_any or np.array_equal(centers, start):
        # Only Lloyd steps (rounding at most), or the first move was rejected:
        # km is still the fit.
        return km, passes, n_iter, rounds
    check = None if bound is None else partial(_stop_unless_lower, bound=bound)
    try:
        final = lloyd_from(X, weight, centers, max_iter, 0.0, split_every, check, km.cache)
    except _NotLower:  # the last move, made as the budget ran out, did not help
        rounds[-1]["accepted"] = False
        passes += 1
        final = lloyd_from(X, weight, kept, max_iter, 0.0, split_every, cache=km.cache)
    return final, passes + lloyd_passes(final), n_iter + final.n_iter_, rounds
