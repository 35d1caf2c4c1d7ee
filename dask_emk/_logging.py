"""Logger names, in a module of their own so that any layer can name them
without importing the package's door (which would close an import cycle)."""

#: The logger of the per-step progress lines (annealing steps, EM and Lloyd
#: iterations), a child of the ``dask_emk`` logger; ``dask-emk -q`` hides it.
STEPS_LOGGER = "dask_emk.steps"
