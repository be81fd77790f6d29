"""planner export LAYOUT.ini --to runtime|vllm|vllm-replicas|helix OUT/"""

from __future__ import annotations

import warnings

import click

from planner.cli.console import make_console
from planner.cli.options import FiniteRange
from planner.errors import InputError, InputWarning
from planner.engines import GROUP_ENGINES
from planner.export import EXPORTERS, TARGET_ENGINE
from planner.lanes import MAX_LANES
from planner.layout import read_layout
from planner.routing import DEFAULT_ROUTER, ROUTERS
from runtime.config import DEFAULT_HTTP_PORT, DEFAULT_PORT, MAX_KV_SLOTS, Limits


@click.command(name="export")
@click.argument("layout_file", type=click.Path())
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--to", "target", type=click.Choice(sorted(EXPORTERS)), default="runtime", show_default=True,
              help="What to export for.")
@click.option("--checkpoint", default=None,
              help="Model directory the workers load (each host's path to it); for vLLM, the model served "
                   "(default: the model's Hugging Face name).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cuda: each GPU runs on its host's cuda:INDEX; cpu: every worker on the CPU.")
@click.option("--port", type=click.IntRange(1, 65000), default=DEFAULT_PORT, show_default=True,
              help="The host's ZeroMQ port; each host's workers take the ports after it.")
@click.option("--http-port", type=click.IntRange(1, 65535), default=DEFAULT_HTTP_PORT, show_default=True,
              help="Port of the host's OpenAI-compatible HTTP API.")
@click.option("--routing", type=click.Choice(sorted(ROUTERS)), default=DEFAULT_ROUTER, show_default=True,
              help="Routing policy of the host (planner.routing, as in the simulator).")
@click.option("--max-seq-len", type=click.IntRange(min=2), default=Limits.max_seq_len, show_default=True,
              help="Most tokens (prompt + output) of one request (vLLM: --max-model-len).")
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=None,
              help="vLLM: --max-num-seqs of each server (default: what its KV memory holds, at most 256).")
@click.option("--kv-slots", type=click.IntRange(1, MAX_KV_SLOTS), default=None,
              help=f"Requests each worker holds KV for at once, its decode batch limit (default {MAX_KV_SLOTS}).")
@click.option("--kv-tokens", type=click.IntRange(min=1), default=None,
              help="Tokens of KV each worker's paged pool holds (default: sized at start from the GPU memory "
                   "left after the weights; on --device cpu, what the cost model fits).")
@click.option("--gpu-memory-utilization", type=FiniteRange(0.05, 1.0), default=Limits.gpu_memory_utilization,
              show_default=True, help="Share of each GPU's memory a worker may take (weights, KV and CUDA graphs).")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="Replay decode steps as CUDA graphs (off: eager, for debugging).")
@click.option("--lanes", type=click.IntRange(min=0, max=MAX_LANES), default=None, show_default="the layout's lanes, else 0",
              help="Decode micro-batches per path (0: one per stage of the path; the simulator's --microbatches).")
def export_cmd(layout_file: str, out_dir: str, target: str, checkpoint: str | None, device: str, port: int,
               http_port: int, routing: str, max_seq_len: int, max_num_seqs: int | None, kv_slots: int | None,
               kv_tokens: int | None, gpu_memory_utilization: float, cuda_graphs: bool, lanes: int | None) -> None:
    """Write the files that run a layout: the bundled runtime (runtime.json and a launch script per host),
    vLLM replicas (vllm-replicas), vLLM pipelines over Ray (vllm) or Helix's files (helix).
    docs/exports.md walks through each."""
    if checkpoint is not None and not checkpoint.strip():   # '' would be written as the path workers load
        raise InputError("is empty", field="--checkpoint",
                         fix="give the model directory, or leave --checkpoint out and set CHECKPOINT when launching")
    layout = read_layout(layout_file)
    written = EXPORTERS[target](layout, out_dir, layout_path=layout_file, checkpoint=checkpoint, device=device,
                               base_port=port, http_port=http_port, routing=routing,
                               limits=Limits(max_seq_len=max_seq_len, gpu_memory_utilization=gpu_memory_utilization,
                                             cuda_graphs=cuda_graphs,
                                             lanes=(layout.lanes or 0) if lanes is None else lanes),
                               kv_slots=kv_slots, kv_tokens=kv_tokens,
                               max_model_len=max_seq_len, max_num_seqs=max_num_seqs)
    # after the export: a refused one says only why (one line)
    if layout.lanes is not None and target != "runtime":   # the lane count is the bundled runtime's setting
        warnings.warn(InputWarning(f"{layout_file}: [layout] lanes = {layout.lanes} does not apply to --to {target}: "
                                   "it has no lane setting, so the layout's predicted figures are not what it "
                                   "serves (for vLLM, re-plan with --engine vllm)"))
    engine, runs_on = layout.cluster.engine, TARGET_ENGINE[target]
    if engine != runs_on and {engine, runs_on} & set(GROUP_ENGINES):   # their scheduling differs most
        warnings.warn(InputWarning(f"{layout_file}: planned for the {engine} engine, exported --to {target}, which "
                                   f"schedules a path's sequences as {runs_on} does, so the layout's predicted figures "
                                   f"are not what it serves; re-plan with --engine {runs_on} for the layout it serves best"))
    console = make_console()
    for path in written:
        console.print(f"wrote {path}")
