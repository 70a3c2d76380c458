"""The intermediate representation everything stands on, torch-free: the cost graph (:mod:`graph`), the
errors (:mod:`errors`), JSON helpers (:mod:`jsonfile`), profiled op times (:mod:`profiled`) and the
readers of published graph files (:mod:`importers`). Imports nothing above it (see ARCHITECTURE.md)."""
