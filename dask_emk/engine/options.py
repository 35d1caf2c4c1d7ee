"""The names of the input options, in a module that imports nothing.

The pipeline's configuration and the parameter tables check these values;
they live apart from :mod:`dask_emk.engine.inputs` and
:mod:`dask_emk.engine.storage` (which import Dask, xarray and zarr) so that
``dask-emk --help`` and a pipeline error are answered without loading the
numeric stack (issue 26: 2-3 s and 400 MB before).
"""

#: Values of the estimators' ``nan_policy`` (after scipy's): 'raise' on NaN,
#: 'omit' rows holding NaN from every statistic (NaN outputs there);
#: 'marginalize' uses the features each row has.
NAN_POLICIES = ("raise", "omit", "marginalize")

#: What a read does with a missing chunk or shard file: raise, or read the
#: fill value (for stores written without empty chunks; an explicit choice).
MISSING_CHUNKS = ("raise", "fill")
