"""Covariance types: one table entry per type holding all that depends on it.

=============  ==============================  ======================  =========
type           parameters (``covariances_``)   second moments ``Q``    block
=============  ==============================  ======================  =========
``full``       (K, d, d)                       (K, d, d)               matrix
``tied``       (d, d)                          (d, d)                  matrix
``diag``       (K, d)                          (K, d)                  diagonal
``spherical``  (K,)                            (K,)                    scalar
``shared``     ()                              (K,)                    scalar
=============  ==============================  ======================  =========

The parameter shape is scikit-learn's, for ``covariances_``, ``precisions_``,
``precisions_cholesky_`` and ``precisions_init`` alike; ``shared`` (one σ²
for all components) is 0-d there. The second moments ``Q`` of the E-step
are per component except for ``tied``; the kernels also take the precision
Cholesky factor in that shape (``shared``: one value repeated per component).
A *block* is one covariance: a (d, d) matrix, its diagonal, or one variance
for all features; a type is a block, either per component or pooled.

numpy (and scipy.linalg) only: this is numeric core, no Dask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MATRIX_DIMS = ("feature_row", "feature_col")


@dataclass(frozen=True)
class CovarianceType:
    """Shapes, parameter count and conversions of one covariance type.

    Attributes
    ----------
    name : str
    dims : tuple of str
        Dims of the parameters (``component``, ``feature``, ``feature_row``,
        ``feature_col``), as exported to xarray; sizes from :meth:`shape`.
    moment_dims : tuple of str
        Dims of the second moments ``Q`` and of the kernels' Cholesky factor.
    block : {'matrix', 'diagonal', 'scalar'}
        What one covariance is.
    estimate : callable ``(N, S, Q, delta, nk) -> covariance``
        The M-step's covariance before ``reg_covar``, from moments ``N``
        (K,), ``S`` (K, d), ``Q`` taken about points c_k, the shifts
        ``delta`` (K, d) = S / nk from c_k to the new means, and the floored
        masses ``nk`` (K,).
    """

    name: str
    dims: tuple[str, ...]
    moment_dims: tuple[str, ...]
    block: str
    estimate: Callable[..., np.ndarray]

    # ---------------------------------------------------------------- shapes
    def shape(self, n_components: int, n_features: int) -> tuple[int, ...]:
        """Shape of the parameters (scikit-learn's)."""
        return _sizes(self.dims, n_components, n_features)

    def moment_shape(self, n_components: int, n_features: int) -> tuple[int, ...]:
        """Shape of the second moments ``Q`` and of the kernels' Cholesky factor."""
        return _sizes(self.moment_dims, n_components, n_features)

    @property
    def pooled(self) -> bool:
        """One covariance for all components."""
        return "component" not in self.dims

    @property
    def one_variance(self) -> bool:
        """The whole covariance is one σ² (which ``variance=`` may fix)."""
        return self.dims == ()

    @property
    def whitened(self) -> bool:
        """E-step by distances of whitened rows Y U (one pooled matrix U)
        rather than by quadratic features of the rows."""
        return self.block == "matrix" and self.pooled

    def block_size(self, n_features: int) -> int:
        """Free parameters of one covariance: d(d+1)/2, d or 1."""
        d = n_features
        return {"matrix": d * (d + 1) // 2, "diagonal": d, "scalar": 1}[self.block]

    def n_parameters(self, n_components: int, n_features: int) -> int:
        """Free covariance parameters of the model (scikit-learn's ``_n_parameters`` part)."""
        return (1 if self.pooled else n_components) * self.block_size(n_features)

    # ----------------------------------------------------------- parameters
    def identity(self, n_features: int):
        """The unit covariance of one block: I (d, d) for matrices, else 1."""
        return np.eye(n_features) if self.block == "matrix" else 1.0

    def isotropic(self, value: float, n_components: int, n_features: int) -> np.ndarray:
        """``value`` × identity for every component, in the parameter shape."""
        return np.full(self.shape(n_components, n_features), value * self.identity(n_features))

    def component(self, params: np.ndarray, k: int) -> np.ndarray:
        """The block of component ``k`` (the pooled one for pooled types)."""
        return params if self.pooled else params[k]

    def to_moment_shape(self, params: np.ndarray, n_components: int, n_features: int):
        """Parameters repeated per component where the kernels want that (shared)."""
        shape = self.moment_shape(n_components, n_features)
        return params if params.shape == shape else np.full(shape, params)

    def to_full(self, cov: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        """Covariances as (K, d, d) matrices (read-only for ``tied``)."""
        K, d = n_components, n_features
        if self.block == "matrix":
            return np.broadcast_to(cov, (K, d, d))
        variances = cov if self.block == "diagonal" else np.broadcast_to(cov, (K,))[:, None]
        return np.broadcast_to(variances, (K, d))[:, :, None] * np.eye(d)

    def rescaled(self, params: np.ndarray, scale: np.ndarray) -> tuple[CovarianceType, np.ndarray]:
        """Covariances of x·scale from those of x: (its type, S Σ S with S = diag(scale)).

        Matrices and diagonals keep their type; one σ² per component
        (``spherical``) becomes a diagonal per component (``diag``), one for
        all (``shared``) a pooled diagonal matrix (``tied``), unless every
        feature has the same scale.
        """
        scale = np.asarray(scale, dtype=np.float64)
        params = np.asarray(params, dtype=np.float64)
        if self.block == "matrix":
            return self, params * np.outer(scale, scale)
        if self.block == "diagonal":
            return self, params * scale**2
        if np.all(scale == scale[0]):
            return self, params * scale[0] ** 2
        if self.pooled:
            return COVARIANCE_TYPES["tied"], np.diag(params * scale**2)
        return COVARIANCE_TYPES["diag"], params[:, None] * scale**2

    def draw(self, rng, mean: np.ndarray, cov_block: np.ndarray, n: int) -> np.ndarray:
        """``n`` rows from N(mean, cov_block) with ``rng`` (a RandomState), as scikit-learn."""
        if self.block == "matrix":
            return rng.multivariate_normal(mean, cov_block, n)
        return mean + rng.standard_normal((n, mean.size)) * np.sqrt(cov_block)

    # ----------------------------------------------------------- conversions
    def log_det_cholesky(self, prec_chol: np.ndarray, n_features: int) -> np.ndarray:
        """log det of each precision Cholesky factor (−½ log det Σ), shape (K,) or ()."""
        if self.block == "matrix":
            return np.log(np.diagonal(prec_chol, axis1=-2, axis2=-1)).sum(axis=-1)
        if self.block == "diagonal":
            return np.log(prec_chol).sum(axis=-1)
        return n_features * np.log(prec_chol)

    def precision_cholesky(self, cov: np.ndarray) -> np.ndarray:
        """Cholesky factor of the precision of each covariance, as scikit-learn's.

        Raises
        ------
        numpy.linalg.LinAlgError
            If a covariance is not positive definite (or not finite).
        """
        if self.block != "matrix":
            if not np.all(np.isfinite(cov)) or np.any(cov <= 0.0):
                raise np.linalg.LinAlgError("covariance not positive")
            return 1.0 / np.sqrt(cov)
        # imported here: the parameter tables read this module, and --help should not load scipy
        from scipy.linalg import solve_triangular

        mats = self._stack(cov)
        out = np.empty_like(mats)
        for k, mat in enumerate(mats):
            chol = np.linalg.cholesky(mat)
            out[k] = solve_triangular(chol, np.eye(mat.shape[0]), lower=True).T
        return self._unstack(out)

    def precisions_from_cholesky(self, prec_chol: np.ndarray) -> np.ndarray:
        """Precisions U Uᵀ (matrices) or U² from their Cholesky factors U."""
        if self.block == "matrix":
            return prec_chol @ np.swapaxes(prec_chol, -1, -2)
        return prec_chol**2

    def covariances_from_precisions(self, precisions: np.ndarray) -> np.ndarray:
        """Covariances from precisions (inverse matrices or reciprocals)."""
        if self.block == "matrix":
            return np.linalg.inv(precisions)
        return 1.0 / precisions

    def cholesky_from_precisions(self, precisions: np.ndarray) -> np.ndarray:
        """Upper Cholesky factor U with precision = U Uᵀ, as scikit-learn's.

        Raises
        ------
        ValueError
            If a precision is not positive (definite and symmetric) and finite.
        """
        if self.block != "matrix":
            if np.any(precisions <= 0.0) or not np.all(np.isfinite(precisions)):
                raise ValueError(
                    f"precisions_init for covariance_type={self.name!r} must be "
                    "strictly positive and finite; pass 1 / variance for each component."
                )
            return np.sqrt(precisions)
        mats = self._stack(precisions)
        out = np.empty_like(mats)
        for k, mat in enumerate(mats):
            if not np.allclose(mat, mat.T):
                raise ValueError(
                    f"precisions_init[{k}] is not symmetric; pass symmetric positive-definite "
                    "precision matrices (the inverse of covariance matrices)."
                )
            try:
                lower = np.linalg.cholesky(mat[::-1, ::-1])
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"precisions_init[{k}] is not positive definite; pass symmetric "
                    "positive-definite precision matrices (the inverse of covariance "
                    "matrices), e.g. np.linalg.inv(covariances)."
                ) from None
            out[k] = lower[::-1, ::-1]
        return self._unstack(out)

    def smallest_variance(self, cov: np.ndarray) -> np.ndarray:
        """Smallest variance (eigenvalue, diagonal entry or σ²) of each block, (K,) or (1,)."""
        if self.block == "matrix":
            return np.linalg.eigvalsh(cov).min(axis=-1).reshape(-1)
        return (cov.min(axis=-1) if self.block == "diagonal" else cov).reshape(-1)

    def _stack(self, params: np.ndarray) -> np.ndarray:
        return params[None] if self.pooled else params

    def _unstack(self, stacked: np.ndarray) -> np.ndarray:
        return stacked[0] if self.pooled else stacked


def _sizes(dims: tuple[str, ...], n_components: int, n_features: int) -> tuple[int, ...]:
    return tuple(n_components if dim == "component" else n_features for dim in dims)


# ------------------------------------------------------------------ M-step
# The covariance about the new means from moments about c_k, one estimator
# per type: Σ w r (y − μ)(y − μ)ᵀ = Q − S δᵀ − δ Sᵀ + N δ δᵀ with μ = c + δ.


def _estimate_full(N, S, Q, delta, nk):
    cov = Q - np.einsum("ki,kj->kij", S, delta)
    cov -= np.einsum("ki,kj->kij", delta, S)
    cov += N[:, None, None] * np.einsum("ki,kj->kij", delta, delta)
    cov /= nk[:, None, None]
    return cov


def _estimate_tied(N, S, Q, delta, nk):
    cov = Q - S.T @ delta - delta.T @ S + (delta.T * N) @ delta
    cov /= nk.sum()
    return cov


def _estimate_diag(N, S, Q, delta, nk):
    return (Q - 2.0 * delta * S + N[:, None] * delta**2) / nk[:, None]


def _scatter(N, S, Q, delta):
    """Σ w r ‖y − μ_k‖² per component."""
    return Q - 2.0 * (delta * S).sum(axis=1) + N * (delta**2).sum(axis=1)


def _estimate_spherical(N, S, Q, delta, nk):
    return _scatter(N, S, Q, delta) / (nk * S.shape[1])


def _estimate_shared(N, S, Q, delta, nk):
    return np.asarray(_scatter(N, S, Q, delta).sum() / (nk.sum() * S.shape[1]))


_COMPONENT = ("component",)

#: The covariance types by name, in scikit-learn's order and then dask_emk's own.
COVARIANCE_TYPES: dict[str, CovarianceType] = {
    ct.name: ct
    for ct in (
        CovarianceType("full", _COMPONENT + MATRIX_DIMS, _COMPONENT + MATRIX_DIMS, "matrix",
                       _estimate_full),
        CovarianceType("tied", MATRIX_DIMS, MATRIX_DIMS, "matrix", _estimate_tied),
        CovarianceType("diag", ("component", "feature"), ("component", "feature"), "diagonal",
                       _estimate_diag),
        CovarianceType("spherical", _COMPONENT, _COMPONENT, "scalar", _estimate_spherical),
        CovarianceType("shared", (), _COMPONENT, "scalar", _estimate_shared),
    )
}  # fmt: skip


def check_covariance_type(name) -> CovarianceType:
    """The table entry of ``name`` (a ValueError naming the choices if unknown)."""
    try:
        return COVARIANCE_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"covariance_type must be one of {tuple(COVARIANCE_TYPES)}, got {name!r}."
        ) from None
