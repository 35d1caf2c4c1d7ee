"""Synthetic Gaussian-mixture data written to zarr chunk by chunk, with its truth.

A generated store is a zarr group holding ``X`` (n, d) and the true
``weights`` (K,), ``means`` (K, d), ``covariances`` (K, d, d) and ``labels``
(n,), so every fit can be checked against ground truth. Its root attribute
``dask_emk_generated`` marks it as written here: only such a store is ever
replaced (with ``overwrite=True``; :mod:`dask_emk.pipeline.outputs` holds the rule). It
is published like a results store (:func:`dask_emk.pipeline.outputs.building_store`:
renamed into place from ``<path>.partial`` on a local disk, root ``zarr.json``
written last on an object store): an interrupted run leaves no store that
opens as complete, and the next one removes what it left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dask
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from dask_emk.engine.locations import open_node
from dask_emk.engine.reduction import compute_one
from dask_emk.models import export
from dask_emk.pipeline.outputs import (
    GENERATED,
    building_store,
    check_output,
    claim,
)


@dataclass(frozen=True)
class MixtureTruth:
    """True parameters of a generated mixture (float64)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray


def random_mixture(n_features: int, n_components: int, *, separation: float = 6.0, seed: int = 0):
    """Draw well-separated mixture parameters.

    Parameters
    ----------
    n_features, n_components : int
    separation : float
        Scale of the spread of the means relative to unit-scale covariances.
    seed : int

    Returns
    -------
    MixtureTruth with weights (K,), means (K, d), covariances (K, d, d).
    """
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(scale=separation, size=(n_components, n_features))
    factors = rng.normal(scale=0.5, size=(n_components, n_features, n_features))
    covariances = factors @ factors.transpose(0, 2, 1) + 0.5 * np.eye(n_features)
    return MixtureTruth(weights, means, covariances)


def sample_block(truth: MixtureTruth, n_rows: int, rng: np.random.Generator):
    """Draw ``n_rows`` samples and their labels from the mixture (in memory)."""
    labels = rng.choice(truth.weights.size, size=n_rows, p=truth.weights)
    chol = np.linalg.cholesky(truth.covariances)
    X = rng.standard_normal((n_rows, truth.means.shape[1]))
    # One GEMM per component: gathering a d×d factor per row would hold an
    # (n, d, d) array, 512 MB for a million rows in 8-D.
    for k in range(truth.weights.size):
        rows = labels == k
        X[rows] = X[rows] @ chol[k].T + truth.means[k]
    return X, labels


def write_mixture_zarr(
    path: str | os.PathLike,
    n_samples: int,
    truth: MixtureTruth,
    *,
    chunk_rows: int = 100_000,
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
) -> Path | str:
    """Write a mixture data set to a zarr store, one Dask task per chunk.

    Parameters
    ----------
    path : path (or object-store URL) of the store to create
    n_samples : int
    truth : MixtureTruth
    chunk_rows : int
        Rows per zarr chunk (and per block generated).
    dtype : {'float32', 'float64'}
    seed : int
        Each chunk draws from its own stream spawned from this seed, so the
        data do not depend on how many chunks are written at once.
    overwrite : bool
        Replace an existing store that this function wrote; otherwise an
        existing path is an error. Any other existing path always is.

    Returns
    -------
    Path (URL) of the finished store.

    Notes
    -----
    The chunks are written by the Dask scheduler in effect (local threads
    unless one is set), so with a cluster the store must be on a file system
    the workers share, or on an object store they reach.
    """
    if n_samples < 1 or chunk_rows < 1:
        raise ValueError(f"n_samples and chunk_rows must be >= 1, got {n_samples}, {chunk_rows}.")
    check = partial(check_output, path, GENERATED, where="path", replace=overwrite,
                    replace_hint="overwrite=True")  # fmt: skip
    final = check()
    with claim(final, GENERATED, where="path"):
        check()  # again: the claim may have put back a store a killed run moved aside
        with building_store(final, GENERATED) as store:
            group = zarr.open_group(store=store, mode="r+")
            _write_mixture(group, n_samples, truth, chunk_rows=chunk_rows, dtype=dtype, seed=seed)
    return final


def _write_mixture(
    group: zarr.Group, n_samples: int, truth: MixtureTruth, *, chunk_rows: int, dtype: str,
    seed: int,
) -> None:  # fmt: skip
    """Fill an empty group with ``X``, ``labels`` and the truth, one Dask task per chunk."""
    d = truth.means.shape[1]
    compressors = [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
    X = group.create_array(
        "X",
        shape=(n_samples, d),
        chunks=(chunk_rows, d),
        dtype=dtype,
        compressors=compressors,
        dimension_names=export.schema_dims(export.GENERATED, "X"),
    )
    labels = group.create_array(
        "labels",
        shape=(n_samples,),
        chunks=(chunk_rows,),
        dtype="int32",
        compressors=compressors,
        dimension_names=export.schema_dims(export.GENERATED, "labels"),
    )
    streams = np.random.SeedSequence(seed).spawn(-(-n_samples // chunk_rows))
    shared_truth = dask.delayed(truth)
    write = dask.delayed(_write_chunk, pure=False)
    bounds = [(i * chunk_rows, min((i + 1) * chunk_rows, n_samples)) for i in range(len(streams))]
    # One task per chunk on the scheduler in effect (local threads by
    # default, the cluster inside a pipeline): each writes its own chunks.
    writes = [write(X, labels, *b, shared_truth, s) for b, s in zip(bounds, streams, strict=True)]
    compute_one(writes)
    for name in ("weights", "means", "covariances"):
        dims = export.schema_dims(export.GENERATED, name)
        group.create_array(name, data=getattr(truth, name), dimension_names=dims)
    attrs = dict(n_samples=n_samples, n_features=d, n_components=truth.weights.size, seed=seed)
    group.attrs.update(export.schema_attrs(export.GENERATED, **attrs))


def _write_chunk(X, labels, start: int, stop: int, truth: MixtureTruth, stream) -> None:
    block, block_labels = sample_block(truth, stop - start, np.random.default_rng(stream))
    X[start:stop] = block.astype(X.dtype)
    labels[start:stop] = block_labels


def read_truth(path: str | os.PathLike) -> MixtureTruth:
    """True parameters stored beside a generated data set (local path or URL)."""
    return truth_of(open_node(path))


def truth_of(group: zarr.Group) -> MixtureTruth:
    """True parameters held by the group of a generated data set."""
    return MixtureTruth(
        *(np.asarray(group[name][...]) for name in ("weights", "means", "covariances"))
    )
