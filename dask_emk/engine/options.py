"""The names of the input options, in a module that imports nothing heavy.

The pipeline's configuration and the parameter tables check these values;
they live apart from :mod:`dask_emk.engine.inputs` and
:mod:`dask_emk.engine.storage` (which import Dask, xarray and zarr) so that
``dask-emk --help`` and a pipeline error are answered without loading the
numeric stack (issue 26: 2-3 s and 400 MB before).
"""

from dask_emk.core.nan_policy import NAN_POLICIES  # noqa: F401 (the names of NanPolicy)

#: What a read does with a missing chunk or shard file: raise, or read the
#: fill value (for stores written without empty chunks; an explicit choice).
MISSING_CHUNKS = ("raise", "fill")
