"""Many models per pass: one read of each block serves a batch of model fits.

A fit is written as a *step generator*: it yields what it needs from the
data, a :class:`Pass` (its block function, arguments and layout) or
:class:`Rows` (rows by index), and receives the answer (the unpacked
statistics, or the rows). :class:`Batch` runs a list of such generators in
lockstep: in each round it answers every :class:`Rows` request with one read
and every :class:`Pass` with one pass over the data, whose block function
(:func:`batch_block`) runs each model's kernel on the block and
concatenates their packed rows (:func:`concatenate_layouts`), so the
statistics of the whole batch travel in one vector per block through the
same tree reduction (:func:`dask_emk.engine.reduction.run_pass`). A
generator that returns (a converged model) leaves the batch.

A fit run alone is a batch of one: the same code path, one compute per
pass, and per model the same sums in the same order as in any batch (each
column of the stacked rows is added on its own), so a model fitted in a
batch gives bit for bit the result it gives alone.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask.array as da
import numpy as np

from dask_emk.core.blocks import without_nan_rows
from dask_emk.core.layout import StatsLayout
from dask_emk.core.nan_policy import NanPolicy
from dask_emk.engine import reduction
from dask_emk.engine.cache import kept_rows

#: A fit as the engine runs it: yields requests, receives their answers, returns its result.
Steps = Generator[Any, Any, Any]


@dataclass(frozen=True)
class Pass:
    """One model's part of a pass over the data.

    ``block_fn(x, w, *args)`` returns the model's packed (1, layout.size)
    row of one block (a :class:`~dask_emk.engine.reduction.RowKeyed` one is
    called ``fn(x, w, rows, *args)`` with the rows' global indices);
    ``combine`` merges stacked rows (default: adds them), as in
    :func:`dask_emk.engine.reduction.reduce_pass`. The answer is the
    unpacked dict of the statistics summed over all blocks. With
    ``complete_rows`` ``block_fn`` sees only the block's rows without NaN
    (seeding draws complete rows under ``nan_policy='marginalize'``, where
    the other requests see the gaps; under 'omit' every request sees only those).
    """

    layout: StatsLayout
    block_fn: Callable[..., np.ndarray]
    args: tuple
    combine: Callable[[np.ndarray], np.ndarray] | None = None
    complete_rows: bool = False


@dataclass(frozen=True)
class Rows:
    """Rows of the data by index, shape (len(index), d) float64, in that order."""

    index: np.ndarray


def concatenate_layouts(layouts: list[StatsLayout]) -> StatsLayout:
    """The layouts one after the other, behind one ``nonfinite`` count.

    Entry ``(i, name)`` is entry ``name`` of ``layouts[i]``; the leading
    ``nonfinite`` (rows holding NaN or inf in the block, counted by the
    first model: every model sees the same rows) is what
    :func:`~dask_emk.engine.reduction.run_pass` checks.
    """
    shapes = {"nonfinite": ()}
    for i, layout in enumerate(layouts):
        shapes.update({(i, name): shape for name, shape in layout.shapes.items()})
    return StatsLayout(shapes)


def split_stats(stats: dict, n_models: int) -> list[dict]:
    """Inverse of :func:`concatenate_layouts` on unpacked statistics: one dict per model."""
    out = [{} for _ in range(n_models)]
    for key, value in stats.items():
        if key != "nonfinite":
            out[key[0]][key[1]] = value
    return out


def batch_block(X, weight, members: tuple, rows=None) -> np.ndarray:
    """Packed row of a batch for one block: each model's row, concatenated.

    ``members`` holds ``(block_fn, args, nonfinite_column, complete_rows)``
    per model; the rows without NaN are taken once for all members that ask.
    A row holding ±inf is kept there too, so every member counts the same
    ``nonfinite`` rows. ``rows``: the block's global row indices (n,), for
    members whose block function is :class:`~dask_emk.engine.reduction.RowKeyed`
    (None when no member's is).
    """
    complete, out = None, []
    for fn, args, _, complete_rows in members:
        if complete_rows and complete is None:
            complete = without_nan_rows(X, weight, rows)
        x, w, r = complete if complete_rows else (X, weight, rows)
        out.append(np.asarray(reduction.apply_block(fn, x, w, r, args), np.float64).reshape(-1))
    nonfinite = out[0][members[0][2]]
    return np.concatenate([[nonfinite], *out])[None, :]


def keyed_batch_block(X, weight, rows, members: tuple) -> np.ndarray:
    """:func:`batch_block` as a :class:`~dask_emk.engine.reduction.RowKeyed` block function."""
    return batch_block(X, weight, members, rows)


def combine_batch(rows: np.ndarray, slices: tuple, combines: tuple) -> np.ndarray:
    """Merge stacked batch rows (r, size): each model's columns by its own ``combine``."""
    parts = [rows[:, :1].sum(axis=0, keepdims=True)]
    for columns, combine in zip(slices, combines, strict=True):
        block = rows[:, columns]
        parts.append(block.sum(axis=0, keepdims=True) if combine is None else combine(block))
    return np.concatenate(parts, axis=1)


def batch_pass(
    X, weight, requests: list[Pass], split_every=None, nan_policy=NanPolicy.RAISE
) -> list[dict]:
    """One pass over the data (one compute) answering every request; raises on NaN/inf rows.

    ``nan_policy`` as in :func:`dask_emk.engine.reduction.run_pass`.
    """
    layouts = [r.layout for r in requests]
    layout = concatenate_layouts(layouts)
    # Under 'omit' the pass itself leaves the rows holding NaN out.
    members = tuple(
        (r.block_fn, r.args, _column(r.layout, "nonfinite"),
         r.complete_rows and not nan_policy.omits_rows)
        for r in requests
    )  # fmt: skip
    combine = None
    if any(r.combine is not None for r in requests):
        starts = np.cumsum([1] + [lay.size for lay in layouts])
        slices = tuple(slice(a, b) for a, b in zip(starts[:-1], starts[1:], strict=True))
        combine = partial(combine_batch, slices=slices, combines=tuple(r.combine for r in requests))
    # The blocks' row indices enter the graph only for passes that draw.
    keyed = any(isinstance(r.block_fn, reduction.RowKeyed) for r in requests)
    block_fn = reduction.RowKeyed(keyed_batch_block) if keyed else batch_block
    stats = reduction.run_pass(
        X, weight, layout, block_fn, members, split_every=split_every, combine=combine,
        nan_policy=nan_policy,
    )  # fmt: skip
    return split_stats(stats, len(requests))


def _column(layout: StatsLayout, name: str) -> int:
    """Position of the scalar entry ``name`` in a packed row of ``layout``."""
    start = 0
    for key, shape in layout.shapes.items():
        if key == name:
            return start
        start += int(np.prod(shape))
    raise KeyError(name)


def read_rows(X, index: np.ndarray) -> np.ndarray:
    """Rows of X by index (one compute for dask input: the chunks holding them)."""
    if not isinstance(X, da.Array):
        return np.asarray(X[index], dtype=np.float64)
    if index.size == 0:
        return np.zeros((0, X.shape[1]))
    unique, inverse = np.unique(index, return_inverse=True)
    rows = reduction.compute_one(X[unique], optimize_graph=True)
    return np.asarray(rows, dtype=np.float64)[inverse]


class Batch:
    """Runs step generators in lockstep over one input (see the module docstring).

    Parameters
    ----------
    X : ndarray or dask array of shape (n, d)
    weight : ndarray or dask array of shape (n,), or None
    split_every : int, optional
    nan_policy : NanPolicy
        How the passes read NaN (:class:`~dask_emk.core.nan_policy.NanPolicy`).
    cache : {'auto', True, False}, default False
        Keep the rows in memory during :meth:`run` (:func:`dask_emk.engine.cache.kept_rows`):
        the first pass reads them, every later pass of the run reads them
        from there; released when the run ends.

    Attributes
    ----------
    running : tuple of int
        Indices (in the list given to :meth:`run`) of the fits still in the
        batch; a fit may read it while it reports progress.
    shared : dict
        What the fits of the batch share, by the module that keeps it (the
        seedings' joint log lines, :class:`dask_emk.models.seeding.SeedingLog`).
    """

    def __init__(
        self, X, weight=None, split_every=None, nan_policy=NanPolicy.RAISE, cache=False
    ):
        self.X, self.weight = X, weight
        self.split_every, self.nan_policy = split_every, nan_policy
        self.cache = cache
        self.running: tuple[int, ...] = ()
        self.shared: dict = {}
        # The pass input of the run (X or its kept rows), opened by the first pass.
        self._rows, self._held = None, None

    def run(self, fits: list[Steps]) -> list:
        """Run ``fits`` to their end; returns their return values, in order.

        Each generator is started (run to its first request) in list order
        before any data is read, so whatever they draw from a shared random
        state before their first request is drawn as if they ran one after
        the other.
        """
        results: list = [None] * len(fits)
        pending = {}
        # The M-steps between passes also get one BLAS thread: their matrices
        # are K d × d, and a second OpenBLAS thread woken by them spins on a
        # core while the next pass runs (full covariance, 1M × 32, K = 16, 2
        # cores: 0.69 against 0.83–0.89 s an iteration, under load).
        with reduction.single_blas_thread(), ExitStack() as held:
            self._held = held
            try:
                for i, fit in enumerate(fits):
                    self._advance(i, fit, None, pending, results, first=True)
                while pending:
                    self.running = tuple(sorted(pending))
                    answers = self._answer(pending)
                    for i in sorted(answers):
                        self._advance(i, fits[i], answers[i], pending, results)
            finally:
                # The kept rows go with the run (ExitStack releases them), also on errors.
                self._rows, self._held = None, None
        self.running = ()
        return results

    def _pass_input(self):
        """X, or its rows kept for this run (read by the first pass that asks)."""
        if self._rows is None:
            if self._held is None:  # a pass outside run(): nothing is kept
                return self.X
            self._rows = self._held.enter_context(
                kept_rows(self.X, self.cache, self.nan_policy.omits_rows)
            )
        return self._rows

    def _advance(self, i, fit, answer, pending, results, first=False) -> None:
        try:
            pending[i] = next(fit) if first else fit.send(answer)
        except StopIteration as stop:
            pending.pop(i, None)
            results[i] = stop.value

    def _answer(self, pending: dict) -> dict:
        """Answer every pending request: one read for all Rows, one pass for all Passes.

        A fit may ask for several passes at once (a list of Pass, answered
        by a list): they share the round's one pass.
        """
        rows = [i for i, r in pending.items() if isinstance(r, Rows)]
        passes = [(i, r if isinstance(r, list) else [r]) for i, r in pending.items()
                  if not isinstance(r, Rows)]  # fmt: skip
        answers = {}
        if rows:
            index = np.concatenate([pending[i].index for i in rows]).astype(np.int64)
            read = read_rows(self.X, index)
            ends = np.cumsum([pending[i].index.size for i in rows])
            answers.update({i: read[end - pending[i].index.size : end]
                            for i, end in zip(rows, ends, strict=True)})  # fmt: skip
        if passes:
            requests = [request for _, some in passes for request in some]
            stats = iter(batch_pass(
                self._pass_input(), self.weight, requests, self.split_every,
                nan_policy=self.nan_policy,
            ))  # fmt: skip
            for i, some in passes:
                got = [next(stats) for _ in some]
                answers[i] = got if isinstance(pending[i], list) else got[0]
        return answers


def run_one(X, weight, fit: Steps, split_every=None, nan_policy=NanPolicy.RAISE):
    """Run one step generator alone (a batch of one); returns its result."""
    return Batch(X, weight, split_every, nan_policy=nan_policy).run([fit])[0]
