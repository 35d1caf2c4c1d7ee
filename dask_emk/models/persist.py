"""Model files: a fitted estimator as a zarr store, and back, with no pickle.

A model file is a zarr 3 group written through xarray:

- the root holds the model's export (``to_xarray()``, the names of
  :data:`dask_emk.models.export.SCHEMA`) for people and plots, and the
  attributes :data:`FORMAT_ATTR` (this module's :data:`FORMAT`),
  ``dask_emk_version`` and ``model``;
- the group :data:`MODEL_GROUP` holds what :func:`load` rebuilds the
  estimator from: its class name (attribute ``estimator``), its constructor
  parameters (``params``, JSON) and its fitted state (``state``, JSON:
  every attribute the estimator keeps after ``fit``, as pickling would keep
  it). In both JSON texts numeric arrays are variables of the group, named
  after the attribute; numpy scalars keep their dtype; strings, lists and
  dicts are JSON; a nested estimator (``best_estimator_``, ``kmeans_``, a
  Pipeline's steps), Dataset or DataArray (``path_``, ``criteria_``) is a
  subgroup. The input layout is in them: ``feature_dim``, ``sample_dims``
  and ``nan_policy`` (parameters), ``n_features_in_``, the feature labels
  (a Dataset's variables and levels, ``z[level=850]``) and
  ``feature_names_in_`` (state), so that predict on a new Dataset reads it as
  fit did.

:func:`load` builds only the classes of :data:`CLASSES` (dask_emk's
estimators and scikit-learn's ``Pipeline`` of them), with their constructor,
and sets the state; nothing is unpickled or imported by a name read from the
file. A results store of ``dask-emk fit``/``run`` is a model file too (its
root is the results, :mod:`dask_emk.pipeline.results` adds the group).

Per-sample results of lazy training data (``labels_`` of dask or xarray
input: a graph over the data) are left out, as by pickling
(:class:`dask_emk.models.validation.NoTrainingDataInPickle`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
import warnings

import numpy as np
import xarray as xr
import zarr
from sklearn.base import BaseEstimator

from dask_emk._version import __version__
from dask_emk.engine.locations import (
    filesystem,
    is_url,
    location_exists,
    normalize_location,
    open_node,
    open_store,
    remote_errors,
)
from dask_emk.models.export import MODEL_FILE, schema_attrs

#: Version of the layout below; :func:`load` reads every version up to it.
FORMAT = 1
#: Root attribute that makes a zarr store a model file (its value: :data:`FORMAT`).
FORMAT_ATTR = "dask_emk_model_format"
#: Group of the estimator's parameters and state.
MODEL_GROUP = "model"
#: What :func:`load` may build, by the class name recorded in the file:
#: (module, class). Imported by name so that this module, which the
#: estimators' ``save`` imports, imports no estimator module itself.
CLASSES = {
    "AnnealedGaussianMixture": ("dask_emk.models.anneal", "AnnealedGaussianMixture"),
    "DPMeans": ("dask_emk.models.dpmeans", "DPMeans"),
    "GaussianMixture": ("dask_emk.models.gmm", "GaussianMixture"),
    "GaussianMixtureIC": ("dask_emk.models.ic", "GaussianMixtureIC"),
    "KMeans": ("dask_emk.models.kmeans", "KMeans"),
    "StandardScaler": ("dask_emk.models.preprocess", "StandardScaler"),
    "Pipeline": ("sklearn.pipeline", "Pipeline"),
    "GaussianState": ("dask_emk.core.mstep", "GaussianState"),
}
_ROOT_METADATA = "zarr.json"


def _class(name: str) -> type:
    """The class of :data:`CLASSES` named ``name``; a ValueError for any other name."""
    if name not in CLASSES:
        raise ValueError(
            f"the model file names the class {name!r}, which dask-emk does not load (it "
            f"loads {', '.join(CLASSES)}); was it written by another program?"
        )
    module, attr = CLASSES[name]
    return getattr(importlib.import_module(module), attr)


def _class_name(obj) -> str:
    """The :data:`CLASSES` name of ``obj``'s class; TypeError for any other class."""
    name = type(obj).__name__
    if name not in CLASSES or _class(name) is not type(obj):
        known = ", ".join(n for n in CLASSES if n != "GaussianState")
        raise TypeError(
            f"cannot save a {type(obj).__module__}.{name} in a model file: only {known} "
            "(and a Pipeline of them) are saved; save the dask_emk estimator itself."
        )
    return name


# ------------------------------------------------------------------ encoding
class _Node:
    """One estimator as the JSON texts and arrays of its group, and its subgroups.

    Built whole in memory before anything is written, so a value that cannot
    be saved is refused before a store is touched.
    """

    def __init__(self, estimator: BaseEstimator):
        self.arrays: dict[str, np.ndarray] = {}
        self.children: dict[str, _Node | xr.Dataset] = {}
        params = estimator.get_params(deep=False)
        # The state as pickling sees it (lazy training labels left out).
        state = estimator.__getstate__()
        self.attrs = {
            "estimator": _class_name(estimator),
            "params": json.dumps({k: self.encode(v, k) for k, v in params.items()}),
            "state": json.dumps(
                {k: self.encode(v, k) for k, v in state.items() if k not in params}
            ),
        }

    def _name(self, hint: str) -> str:
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in hint).lstrip("_") or "v"
        name, i = base, 1
        while name in self.arrays or name in self.children:
            name, i = f"{base}_{i}", i + 1
        return name

    def encode(self, value, hint: str):
        """``value`` as JSON, its arrays and subobjects kept aside under names from ``hint``."""
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):
            return {"__scalar__": value.dtype.str, "value": value.item()}
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, np.ndarray):
            return self._array(value, hint)
        if isinstance(value, (list, tuple)):
            items = [self.encode(v, f"{hint}_{i}") for i, v in enumerate(value)]
            return {"__tuple__": items} if isinstance(value, tuple) else items
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {"__dict__": {k: self.encode(v, f"{hint}_{k}") for k, v in value.items()}}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return {
                "__dataclass__": _class_name(value),
                "fields": {k: self.encode(v, f"{hint}_{k}") for k, v in fields.items()},
            }
        return self._child(value, hint)

    def _array(self, value: np.ndarray, hint: str):
        if value.dtype.kind in "biuf":
            name = self._name(hint)
            self.arrays[name] = value
            return {"__array__": name}
        if value.dtype.kind in "OUT" and all(isinstance(v, str) for v in value.ravel().tolist()):
            # numpy's variable-width StringDType (kind T) has no dtype.str to parse back
            dtype = "StringDType" if value.dtype.kind == "T" else value.dtype.str
            return {"__strings__": value.tolist(), "dtype": dtype}
        raise TypeError(f"cannot save the array {hint!r} of dtype {value.dtype} in a model file.")

    def _child(self, value, hint: str):
        name = self._name(hint)
        if isinstance(value, BaseEstimator):
            self.children[name] = _Node(value)
            return {"__estimator__": name}
        if isinstance(value, xr.DataArray):
            self.children[name] = value.to_dataset(name=value.name or "values")
            return {"__dataarray__": name, "name": value.name, "dtypes": _fixed_strings(value)}
        if isinstance(value, xr.Dataset):
            self.children[name] = value
            return {"__dataset__": name, "dtypes": _fixed_strings(value)}
        raise TypeError(
            f"cannot save {hint!r} ({type(value).__name__}) in a model file: parameters and "
            "fitted attributes must be numbers, strings, arrays, lists or dicts of them, or "
            "estimators (a callable init or callback cannot be saved: set it to None first)."
        )


def _fixed_strings(obj) -> dict[str, str]:
    """Names and dtypes of fixed-width unicode variables, stored as object strings."""
    ds = obj.to_dataset(name=obj.name or "values") if isinstance(obj, xr.DataArray) else obj
    return {str(n): v.dtype.str for n, v in ds.variables.items() if v.dtype.kind == "U"}


def _portable(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode as object strings: zarr 3 specifies (and does not warn on) those."""
    fixed = {n: v.astype(object) for n, v in ds.variables.items() if v.dtype.kind == "U"}
    return ds.assign(fixed) if fixed else ds


# ------------------------------------------------------------------- writing
def model_group(model: BaseEstimator) -> _Node:
    """``model``'s group, encoded in memory: what cannot be saved raises TypeError here."""
    return _Node(model)


def write_model(group: _Node, store) -> None:
    """Write a :func:`model_group` as :data:`MODEL_GROUP` (and subgroups) into zarr ``store``.

    The caller writes the root, with :func:`root_attrs` (a model file) or
    :func:`format_attrs` (a store that is a model file beside other things).
    """
    _write_node(group, store, MODEL_GROUP)


def format_attrs(place: str = MODEL_FILE) -> dict:
    """The root attribute that makes a store (of ``place`` in the export schema) a model file."""
    return schema_attrs(place, **{FORMAT_ATTR: FORMAT})


def root_attrs(model: BaseEstimator) -> dict:
    """The root attributes of a model file of ``model``."""
    return {
        **format_attrs(),
        **schema_attrs(MODEL_FILE, dask_emk_version=__version__, model=type(model).__name__),
    }


def _write_node(node: _Node, store, path: str) -> None:
    variables = {
        name: ([f"{name}_{i}" for i in range(a.ndim)], a) for name, a in node.arrays.items()
    }
    _to_zarr(xr.Dataset(variables, attrs=node.attrs), store, path)
    for name, child in node.children.items():
        if isinstance(child, _Node):
            _write_node(child, store, f"{path}/{name}")
        else:
            _to_zarr(_portable(child), store, f"{path}/{name}")


def consolidate(store) -> None:
    """Write zarr's consolidated metadata of ``store`` (last, once every group is written).

    A plain ``xarray.open_zarr(path)`` then opens the store without its
    "failed to open with consolidated metadata" warning, and in one read.
    """
    with warnings.catch_warnings():
        # Not in the zarr 3 specification yet, zarr says; xarray reads it.
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(store)


def _to_zarr(ds: xr.Dataset, store, group: str | None) -> None:
    # Every chunk gets its file, also one of only the fill value: read back as written.
    ds.to_zarr(
        store, group=group, mode="w-", zarr_format=3, consolidated=False, write_empty_chunks=True
    )


def model_root(model: BaseEstimator) -> xr.Dataset:
    """The root of a model file: the model's export, if it has one, and :func:`root_attrs`."""
    export = getattr(model, "to_xarray", None)
    ds = export() if export is not None else xr.Dataset()
    return _portable(ds).assign_attrs(root_attrs(model))


def save_new(model: BaseEstimator, path: str | os.PathLike) -> None:
    """Write ``model`` to a new model file at a local path or object-store URL.

    The store is built in memory (a model is small), then published: locally
    in a fresh folder beside ``path`` renamed into place, on an object store
    with the root ``zarr.json`` put last (a store without it does not open).
    A path that exists is never replaced: this writes only new paths, so it
    cannot overwrite anything dask-emk did not write. Replacing one of its
    own stores is :mod:`dask_emk.pipeline.outputs`' rule, which the models
    layer does not import: ``dask_emk.save(model, path, overwrite=True)``
    (:func:`dask_emk.pipeline.results.save_model`) writes through it.

    Parameters
    ----------
    model : a fitted estimator of :data:`CLASSES`, or a scikit-learn Pipeline of them
    path : str or os.PathLike
        A local path or object-store URL where nothing exists.

    Raises
    ------
    TypeError
        ``model`` is not one of :data:`CLASSES`, or holds a value that cannot
        be saved (a callable parameter).
    ValueError
        ``path`` exists, or the model is not fitted.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    location = normalize_location(path)
    group = model_group(model)  # everything checked before storage is touched
    if location_exists(location):
        raise ValueError(
            f"{location} exists; model.save writes only new paths: choose another path, or "
            "use dask_emk.save(model, path, overwrite=True), which replaces a model file or "
            "results store that dask_emk.save or dask-emk wrote."
        )
    memory: dict = {}
    store = zarr.storage.MemoryStore(memory)
    _to_zarr(model_root(model), store, None)
    write_model(group, store)
    consolidate(store)
    _publish({key: buf.to_bytes() for key, buf in memory.items()}, location)


def _publish(objects: dict[str, bytes], location: str) -> None:
    """Put a store's ``objects`` at ``location``, which appears whole or not at all."""
    keys = sorted(objects, key=lambda k: k == _ROOT_METADATA)  # the root last
    if is_url(location):
        fs, prefix = filesystem(location)
        with remote_errors(location):
            for key in keys:
                fs.pipe_file(f"{prefix}/{key}", objects[key])
        return
    parent = os.path.dirname(os.path.abspath(location))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(location)}.", dir=parent)
    try:
        for key in keys:
            target = os.path.join(tmp, *key.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(objects[key])
        os.rename(tmp, location)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------- reading
def load(path) -> BaseEstimator:
    """The fitted estimator of a model file (or of a ``dask-emk fit``/``run`` results store).

    Parameters
    ----------
    path : str or os.PathLike
        Local path or object-store URL (``s3://``, ``gs://``, ``https://``).

    Returns
    -------
    BaseEstimator
        The estimator, built by its constructor with the saved parameters and
        given the saved fitted state: it predicts as the saved one did, bit for bit.

    Raises
    ------
    ValueError
        Not a zarr store, not a model file, or written by a newer dask-emk.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from dask_emk import KMeans, load
    >>> X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> path = tempfile.mkdtemp() + "/km.zarr"
    >>> KMeans(2, random_state=0).fit(X).save(path)
    >>> model = load(path)
    >>> bool((model.predict(X) == KMeans(2, random_state=0).fit(X).labels_).all())
    True
    """
    location = normalize_location(path)
    root = open_node(location)
    version = root.attrs.get(FORMAT_ATTR) if isinstance(root, zarr.Group) else None
    if not isinstance(version, int):
        raise ValueError(
            f"{location} is not a dask-emk model file (no {FORMAT_ATTR!r} attribute); write "
            "one with model.save(path), or with dask-emk fit/run (its results store)."
        )
    if version > FORMAT:
        raise ValueError(
            f"{location} is a model file of format {version}, written by dask-emk "
            f"{root.attrs.get('dask_emk_version')}; this dask-emk {__version__} reads formats "
            f"up to {FORMAT}: upgrade dask-emk."
        )
    return _read_estimator(open_store(location), MODEL_GROUP)


def _read_estimator(store, path: str) -> BaseEstimator:
    ds = xr.open_zarr(store, group=path, consolidated=False).load()
    name = ds.attrs["estimator"]

    def decode(value):
        return _decode(value, ds, store, path)

    params = {k: decode(v) for k, v in json.loads(ds.attrs["params"]).items()}
    estimator = _class(name)(**params)
    state = {k: decode(v) for k, v in json.loads(ds.attrs["state"]).items()}
    estimator.__setstate__({**estimator.__dict__, **state})
    return estimator


def _decode(value, ds: xr.Dataset, store, path: str):
    """The inverse of :meth:`_Node.encode`."""
    if isinstance(value, list):
        return [_decode(v, ds, store, path) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        return ds[value["__array__"]].values
    if "__scalar__" in value:
        return np.dtype(value["__scalar__"]).type(value["value"])
    if "__strings__" in value:
        dtype = value["dtype"]
        dtype = np.dtypes.StringDType() if dtype == "StringDType" else np.dtype(dtype)
        return np.array(value["__strings__"], dtype=dtype)
    if "__tuple__" in value:
        return tuple(_decode(v, ds, store, path) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, ds, store, path) for k, v in value["__dict__"].items()}
    if "__dataclass__" in value:
        fields = {k: _decode(v, ds, store, path) for k, v in value["fields"].items()}
        return _class(value["__dataclass__"])(**fields)
    if "__estimator__" in value:
        return _read_estimator(store, f"{path}/{value['__estimator__']}")
    group = f"{path}/{value.get('__dataset__') or value['__dataarray__']}"
    child = xr.open_zarr(store, group=group, consolidated=False).load()
    child = child.assign({n: child[n].astype(t) for n, t in value["dtypes"].items()})
    if "__dataset__" in value:
        return child
    array = child[value["name"] or "values"]
    return array.rename(value["name"])
