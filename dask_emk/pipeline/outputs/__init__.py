"""Everything dask-emk writes, behind one rule: it replaces or deletes only what it wrote.

- :mod:`~dask_emk.pipeline.outputs.policy`: the rule (what may be replaced,
  :func:`check_output`, :func:`claim`) and the calls writers use;
- :mod:`~dask_emk.pipeline.outputs.markers`: what marks an output as
  dask-emk's, the names of its temporaries, the errors;
- the backends, behind one protocol (:mod:`~dask_emk.pipeline.outputs.backend`,
  chosen from the location by ``backend_for``): the local file system
  (:mod:`~dask_emk.pipeline.outputs.local`: flock, renames) and object stores
  (:mod:`~dask_emk.pipeline.outputs.objects`: conditional puts, root
  ``zarr.json`` last).

The names writers and tests use are re-exported here.
"""

from dask_emk.pipeline.outputs.backend import Backend, backend_for
from dask_emk.pipeline.outputs.local import new_store, remove_leftover, replace_dir
from dask_emk.pipeline.outputs.markers import (
    CHECKPOINT,
    CHECKPOINT_MAGIC,
    DESCRIPTIONS,
    FORMAT,
    GENERATED,
    LOCK_MAGIC,
    NO_ROOM,
    PARTIAL_MAGIC,
    PLOT,
    PNG_SOFTWARE,
    RESULTS,
    ROOT_METADATA,
    STAGED_ROOT,
    STORE_MARKERS,
    NoRoomError,
    UnsafeOutputError,
    beside,
    location_name,
    lock_path,
    marked_root,
    moved_aside_path,
    no_room,
    no_room_error,
    output_location,
    partial_path,
    png_text,
    store_marker,
    suffixed,
    temp_path,
)
from dask_emk.pipeline.outputs.objects import RootLastStore
from dask_emk.pipeline.outputs.policy import (
    building_store,
    check_output,
    claim,
    clean_leftovers,
    temporaries,
    write_file_atomically,
    written_by_dask_emk,
)

__all__ = [
    "CHECKPOINT", "CHECKPOINT_MAGIC", "DESCRIPTIONS", "FORMAT", "GENERATED", "LOCK_MAGIC",
    "NO_ROOM", "PARTIAL_MAGIC", "PLOT", "PNG_SOFTWARE", "RESULTS", "ROOT_METADATA",
    "STAGED_ROOT", "STORE_MARKERS", "Backend", "NoRoomError", "RootLastStore",
    "UnsafeOutputError", "backend_for", "beside", "building_store", "check_output", "claim",
    "clean_leftovers", "location_name", "lock_path", "marked_root", "moved_aside_path",
    "new_store", "no_room", "no_room_error", "output_location", "partial_path", "png_text",
    "remove_leftover", "replace_dir", "store_marker", "suffixed", "temp_path", "temporaries",
    "write_file_atomically", "written_by_dask_emk",
]  # fmt: skip
