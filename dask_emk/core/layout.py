"""The statistics of a block as one flat float64 vector: :class:`StatsLayout`
names its pieces, so combining blocks is plain addition."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dask_emk.core.covariance import COVARIANCE_TYPES


@dataclass(frozen=True)
class StatsLayout:
    """Names and shapes of the statistics packed into one flat vector.

    Parameters
    ----------
    shapes : dict of name -> shape
    """

    shapes: dict

    @classmethod
    def mixture(
        cls, n_components: int, n_features: int, covariance_type: str, marginal: bool = False
    ) -> StatsLayout:
        """E-step statistics; with ``marginal`` (gaps marginalised) non-matrix
        types also carry ``Nf`` (K, d), the mass over each feature's observed entries."""
        K, d = n_components, n_features
        ctype = COVARIANCE_TYPES[covariance_type]
        shapes = {"n": (), "loglik": (), "nonfinite": (), "N": (K,), "S": (K, d)}
        shapes["Q"] = ctype.moment_shape(K, d)
        if marginal and ctype.block != "matrix":
            shapes["Nf"] = (K, d)
        return cls(shapes)

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def pack(self, stats: dict) -> np.ndarray:
        """Flatten a dict of statistics into a (1, size) float64 row."""
        parts = [np.asarray(stats[name], dtype=np.float64).ravel() for name in self.shapes]
        return np.concatenate(parts)[None, :]

    def unpack(self, vector: np.ndarray) -> dict:
        """Inverse of :meth:`pack` for a (size,) or (1, size) vector."""
        rows = np.reshape(vector, (1, -1))
        return {name: part[0, ...] for name, part in self.unpack_rows(rows).items()}

    def unpack_rows(self, rows: np.ndarray) -> dict:
        """Split stacked packed rows (r, size) into a dict of (r, *shape) arrays."""
        rows = np.asarray(rows, dtype=np.float64)
        out, start = {}, 0
        for name, shape in self.shapes.items():
            stop = start + math.prod(shape)
            out[name] = rows[:, start:stop].reshape((rows.shape[0],) + tuple(shape))
            start = stop
        return out
