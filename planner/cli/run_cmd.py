"""planner run --local [LAYOUT.ini --checkpoint DIR]"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from planner.cli.console import make_console
from planner.cli.options import FiniteRange
from planner.errors import InputError
from planner.export.runtime import runtime_config
from planner.ini import comma_items
from planner.lanes import MAX_LANES
from planner.layout import read_layout
from planner.routing import DEFAULT_ROUTER, ROUTERS
from planner.units import format_time
from runtime.config import MAX_KV_SLOTS, Limits


def _ids(text: str) -> list[int]:
    items = comma_items(text, "--prompt-ids", "write e.g. 1,2,3")
    try:
        return [int(x) for x in items]
    except ValueError:
        raise InputError(f"'{text}' is not a list of token ids", field="--prompt-ids", fix="write e.g. 1,2,3") from None


@click.command(name="run")
@click.argument("layout_file", type=click.Path(), required=False)
@click.option("--local", is_flag=True, required=True, help="Start the host and every worker on this machine (loopback).")
@click.option("--checkpoint", type=click.Path(), default=None, help="Model directory (with LAYOUT).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--prompt-ids", default="1,2,3", show_default=True, help="Prompt as comma-separated token ids.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--requests", type=click.IntRange(min=1), default=1, show_default=True,
              help="Copies of the prompt to serve (each with its own seed).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Requests in flight at once, a new one as each ends (the simulator's offline:N); default: all.")
@click.option("--temperature", type=FiniteRange(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-p", type=FiniteRange(min=0, max=1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed of the first request (+1 each).")
@click.option("--routing", type=click.Choice(sorted(ROUTERS)), default=DEFAULT_ROUTER, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per worker (default: this machine's cores / workers, at least 1).")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="Run one request before the measured ones.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="On GPUs, replay decode steps as CUDA graphs (off: eager, for debugging).")
@click.option("--gpu-memory-utilization", type=FiniteRange(0.05, 1.0), default=Limits.gpu_memory_utilization,
              show_default=True, help="Share of each GPU's memory a worker may take (weights, KV, graphs).")
@click.option("--lanes", type=click.IntRange(min=0, max=MAX_LANES), default=None, show_default="the layout's lanes, else 0",
              help="Decode micro-batches per path (0: one per stage of the path; the simulator's --microbatches).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def run_cmd(layout_file: str | None, local: bool, checkpoint: str | None, device: str, prompt_ids: str,
            max_new_tokens: int, requests: int, concurrency: int | None, temperature: float, top_p: float,
            seed: int, routing: str, threads: int | None, warmup: bool, cuda_graphs: bool,
            gpu_memory_utilization: float, lanes: int | None, as_json: bool) -> None:
    """Serve a layout on this machine and generate: prints the ids, output tokens/s and time to first token.
    With no LAYOUT, a built-in demo: a random 6-layer Qwen3 on 3 CPU workers holding 1, 3 and 2 layers."""
    if (layout_file is None) != (checkpoint is None):
        raise InputError("give both LAYOUT and --checkpoint, or neither (the built-in demo)", fix="see --help")
    prompt = _ids(prompt_ids)
    from runtime.checkpoint import make_checkpoint  # torch: only for the commands that run models
    from runtime.demo import write_demo
    from runtime.hfconfig import check_same_model, read_checkpoint_model
    from runtime.launch import LocalRun, measure
    from runtime.sampling import SamplingParams

    with tempfile.TemporaryDirectory(prefix="planner-run-") as tmp:
        if layout_file is None:
            layout_file, checkpoint_dir = write_demo(Path(tmp) / "demo")
            make_checkpoint(checkpoint_dir, read_layout(layout_file).cluster.model, seed=0)
            checkpoint = str(checkpoint_dir)
        layout = read_layout(layout_file)
        model = layout.cluster.model
        check_same_model(read_checkpoint_model(checkpoint), model, file=checkpoint)
        if not all(0 <= t < model.vocab_size for t in prompt):
            raise InputError(f"token ids must be in [0, {model.vocab_size}), {model.id}'s vocabulary",
                             field="--prompt-ids", fix=f"give ids below {model.vocab_size}")
        if len(prompt) + max_new_tokens > model.max_position_embeddings:
            raise InputError(f"{len(prompt):,} prompt + {max_new_tokens:,} new tokens exceed {model.id}'s context of "
                             f"{model.max_position_embeddings:,} tokens", field="--max-new-tokens",
                             fix=f"keep prompt + new tokens <= {model.max_position_embeddings:,}")
        units = layout.placement.units()
        workers = len(units)
        processes = sum(len(layout.placement.members(u)) for u in units)   # a rank of a TP group: one each
        threads = threads or max(1, (os.cpu_count() or 1) // processes)
        # requests as long as this run's (on a CPU the pool holds every request at once at that length; a GPU
        # sizes its pool from its memory)
        limits = Limits(max_seq_len=len(prompt) + max_new_tokens, cuda_graphs=cuda_graphs,
                        gpu_memory_utilization=gpu_memory_utilization,
                        lanes=(layout.lanes or 0) if lanes is None else lanes)
        config = runtime_config(layout, layout_path=str(layout_file), checkpoint=checkpoint, device=device,
                                local=True, routing=routing, seed=seed, limits=limits, threads=threads,
                                kv_slots=min(concurrency or requests, MAX_KV_SLOTS))
        # a GPU worker loads its weights and captures its graphs before it answers
        with LocalRun(config, checkpoint, workdir=Path(tmp), start_timeout_s=600 if device == "cuda" else 60) as run:
            if warmup:  # the first steps of a process are slow (allocations, kernel selection): not measured
                measure(run.host, [prompt], max_new_tokens, [SamplingParams()])
            stats = measure(run.host, [prompt] * requests, max_new_tokens,
                            [SamplingParams(temperature, top_p, seed + i) for i in range(requests)],
                            concurrency=concurrency)
    steps = stats.pop("steps")
    stats.update(layout=str(layout_file), threads_per_worker=threads,
                 workers=[{"node": w.node, "layers": [w.start, w.end], "device": w.device, "tp": w.tp,
                           **_busy(steps[w.node], stats["wall_s"])} for w in config.workers])
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    console = make_console()
    console.print(f"{stats['layout']}: {workers} workers "
                  + ", ".join(f"{w['node']} [{w['layers'][0]}, {w['layers'][1]})" for w in stats["workers"]))
    for i, (ids, path) in enumerate(zip(stats["outputs"], stats["paths"])):
        console.print(f"request {i}: {' -> '.join(path)}: {','.join(map(str, ids))}")
    for error in stats["errors"]:
        console.print(f"[red]error[/]: {error}")
    for w in stats["workers"]:
        if w["steps"]:
            console.print(f"worker {w['node']}: {w['steps']:,} steps of {format_time(w['step_s'])} mean, "
                          f"busy {w['busy_share']:.0%} of the run")
    ttft = stats["ttft_s"]["mean"]
    console.print(f"{stats['output_tokens']} tokens in {stats['wall_s']:.3f} s: "
                  f"[bold]{stats['output_tokens_per_s']:,.1f}[/] output tokens/s, "
                  f"TTFT {format_time(ttft) if ttft is not None else '-'} mean")


def _busy(steps: dict, wall_s: float) -> dict:
    """A worker's steps over the measured run (from its heartbeats), their mean time and its busy share, the
    figures the simulator reports per stage (iterations, utilisation)."""
    count, busy = steps["steps"], steps["busy_s"]
    return {"steps": count, "busy_s": busy, "step_s": busy / count if count else None,
            "busy_share": busy / wall_s if wall_s > 0 else 0.0}
