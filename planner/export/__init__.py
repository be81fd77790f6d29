"""Exporters: a layout turned into what something else runs. `planner export LAYOUT --to NAME OUT/`.

Each exporter is (layout, out_dir, **options) -> paths written; it takes the options it knows
(layout_path, checkpoint, max_model_len, max_num_seqs, ...) and ignores the rest. It refuses a layout
it cannot express with one InputError line, before writing anything. Walkthroughs: docs/exports.md.
"""

from __future__ import annotations

from planner.export.helix import export_helix
from planner.export.runtime import export_runtime
from planner.export.vllm import export_vllm, export_vllm_replicas

EXPORTERS = {  # name -> (layout, out_dir, **options) -> paths written
    "runtime": export_runtime,
    "vllm-replicas": export_vllm_replicas,
    "vllm": export_vllm,
    "helix": export_helix,
}
# the engine each target serves with (planner/engines.py): what a plan for it should be made for
TARGET_ENGINE = {"runtime": "runtime", "vllm-replicas": "vllm", "vllm": "vllm", "helix": "helix"}
