"""Clear ValueErrors for bad input, parameters and degenerate fits."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from helpers import CountComputes, blobs, fit_quiet, init_params

from dask_emk import GaussianMixture

K = 3


@pytest.fixture(scope="module")
def X():
    return blobs(n=600, d=3, K=K, seed=0)


def model(X, ct="full", **kw):
    return GaussianMixture(K, covariance_type=ct, max_iter=5, **{**init_params(X, K, ct), **kw})


def test_fewer_samples_than_components(X):
    with pytest.raises(ValueError, match=r"n_samples >= n_components.*n_components = 5"):
        GaussianMixture(5, init_params="random").fit(X[:4])


def test_unknown_covariance_type(X):
    with pytest.raises(ValueError, match="covariance_type must be one of.*'fool'"):
        GaussianMixture(K, covariance_type="fool", init_params="random").fit(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_numpy_input(X, bad):
    Xb = X.copy()
    Xb[123, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        model(X).fit(Xb)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_in_late_dask_chunk_raised_at_first_pass(X, bad):
    Xb = X.copy()
    Xb[-3, 0] = bad  # only the last 97-row chunk holds it
    dX = da.from_array(Xb, chunks=(97, -1))
    with CountComputes() as computes, pytest.raises(ValueError, match=r"NaN or infinity in 1 row"):
        model(X).fit(dX)
    assert computes.count == 1  # no extra pass, and no EM iterations on bad data


def test_nonfinite_predict_input(X):
    gm = fit_quiet(model(X), X)
    Xb = X.copy()
    Xb[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        gm.predict(Xb)


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("weights_init", np.full(K + 1, 1.0 / (K + 1)), r"weights_init must have shape \(3,\)"),
        ("means_init", np.zeros((K, 2)), r"means_init must have shape \(3, 3\)"),
        ("precisions_init", np.stack([np.eye(3)] * 2), r"precisions_init must have shape"),
        ("weights_init", np.array([0.5, 0.2, 0.2]), "sum to 1"),
    ],
)
def test_wrong_init(X, name, value, match):
    with pytest.raises(ValueError, match=match):
        model(X, **{name: value}).fit(X)


@pytest.mark.parametrize("ct, shape", [("diag", (K, 2)), ("spherical", (K, 3)), ("tied", (3,))])
def test_wrong_precision_shape_by_type(X, ct, shape):
    with pytest.raises(ValueError, match="precisions_init must have shape"):
        model(X, ct, precisions_init=np.ones(shape)).fit(X)


def test_precisions_not_positive_definite(X):
    prec = np.stack([np.eye(3)] * K)
    prec[1] = np.diag([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match=r"precisions_init\[1\] is not positive definite"):
        model(X, precisions_init=prec).fit(X)
    with pytest.raises(ValueError, match="strictly positive"):
        model(X, "diag", precisions_init=-np.ones((K, 3))).fit(X)


def test_precisions_not_symmetric(X):
    prec = np.stack([np.eye(3)] * K)
    prec[2, 0, 1] = 0.5
    with pytest.raises(ValueError, match=r"precisions_init\[2\] is not symmetric"):
        model(X, precisions_init=prec).fit(X)


def test_predict_with_other_number_of_features(X):
    gm = fit_quiet(model(X), X)
    for method in ("predict", "predict_proba", "score_samples", "score"):
        with pytest.raises(ValueError, match="X has 2 features.*expecting 3"):
            getattr(gm, method)(X[:, :2])
    with pytest.raises(ValueError, match="X has 4 features.*expecting 3"):
        gm.predict(da.from_array(np.hstack([X, X[:, :1]]), chunks=100))


def test_one_dimensional_input(X):
    with pytest.raises(ValueError, match=r"must be 2-D.*reshape\(-1, 1\)"):
        model(X).fit(X[:, 0])
    with pytest.raises(ValueError, match="must be 2-D"):
        model(X).fit(da.from_array(X[:, 0]))


@pytest.mark.parametrize("shape", [(0, 3), (10, 0)])
def test_empty_input(X, shape):
    with pytest.raises(ValueError, match="empty"):
        GaussianMixture(K, init_params="random").fit(np.empty(shape))
    with pytest.raises(ValueError, match="empty"):
        GaussianMixture(K, init_params="random").fit(da.zeros(shape))


def test_non_numeric_input(X):
    with pytest.raises(ValueError, match="non-numeric dtype"):
        model(X).fit(X.astype(str))
    with pytest.raises(ValueError, match="non-numeric values in an object array"):
        model(X).fit(np.where(X > 0, "pos", "neg").astype(object))


def test_complex_input(X):
    with pytest.raises(ValueError, match="Complex data not supported.*real-valued"):
        model(X).fit(X + 1j)
    with pytest.raises(ValueError, match="Complex data not supported"):
        model(X).fit(da.from_array(X + 1j, chunks=100))


def test_sparse_input_refused(X):
    import scipy.sparse as sp

    with pytest.raises(TypeError, match="Sparse input is not supported.*toarray"):
        model(X).fit(sp.csr_matrix(X))


def test_object_array_of_numbers_is_numbers(X):
    a = fit_quiet(model(X), X.astype(object))
    b = fit_quiet(model(X), X)
    np.testing.assert_array_equal(a.means_, b.means_)


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical", "shared"])
def test_degenerate_covariance_suggests_reg_covar(ct):
    # every component sits on a set of identical points: zero covariance
    Xd = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]]), 50, axis=0)
    gm = GaussianMixture(
        3,
        covariance_type=ct,
        reg_covar=0.0,
        max_iter=5,
        weights_init=np.full(3, 1 / 3),
        means_init=Xd[[0, 50, 100]] + 0.1,
        precisions_init=init_params(Xd, 3, ct)["precisions_init"],
    )
    with pytest.raises(ValueError, match="increase reg_covar"):
        gm.fit(Xd)


def test_variance_needs_shared(X):
    with pytest.raises(ValueError, match="variance=.*covariance_type='shared'"):
        model(X, "diag", variance=0.5).fit(X)
    for bad in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="variance must be a positive finite"):
            model(X, "shared", variance=bad).fit(X)


@pytest.mark.parametrize("lazy", [False, True])
def test_bad_sample_weight(X, lazy):
    def wrap(w):
        return da.from_array(w, chunks=100) if lazy else w

    data = da.from_array(X, chunks=(97, -1)) if lazy else X
    w = np.ones(len(X))
    w[5] = -1.0
    with pytest.raises(ValueError, match="negative"):
        model(X).fit(data, sample_weight=wrap(w))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(600,\)"):
        model(X).fit(data, sample_weight=wrap(np.ones(599)))
    with pytest.raises(ValueError, match="sums to zero"):
        model(X).fit(data, sample_weight=wrap(np.zeros(len(X))))
    w = np.ones(len(X))
    w[7] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        model(X).fit(data, sample_weight=wrap(w))


def test_bad_scalar_parameters(X):
    for kw, match in [
        ({"n_components": 0}, "n_components must be an integer >= 1"),
        ({"max_iter": -1}, "max_iter must be an integer >= 0"),
        ({"n_init": 0}, "n_init must be an integer >= 1"),
        ({"tol": -1.0}, "tol must be a non-negative"),
        ({"reg_covar": -1e-6}, "reg_covar must be a non-negative"),
        ({"init_params": "nope"}, "init_params must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            GaussianMixture(**{"n_components": K, "init_params": "random", **kw}).fit(X)


def test_zarr_path_errors(tmp_path, X):
    with pytest.raises(ValueError, match="does not exist"):
        model(X).fit(str(tmp_path / "missing.zarr"))
