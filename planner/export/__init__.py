"""Exporters: a layout turned into what something else runs. `planner export LAYOUT --to NAME OUT/`."""

from __future__ import annotations

from planner.export.runtime import export_runtime

EXPORTERS = {"runtime": export_runtime}  # name -> (layout, out_dir, **options) -> paths written
