"""planner simulate LAYOUT.ini"""

from __future__ import annotations

import json

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planner.cli.console import make_console
from planner.cli.options import FiniteRange, engine_option, plot_path
from planner.lanes import MAX_LANES
from planner.layout import read_layout
from planner.routing import ROUTERS
from planner.report import lanes_past_bound
from planner.units import format_time
from simulator import COMPILED_RUNNING, LENGTH_KINDS, SimConfig, parse_workload, simulate
from simulator.simulation import AUTO_WARMUP_MIN_S
from simulator.workload import WORKLOAD_HELP

PROGRESS_AFTER_S = 30.0  # simulated seconds: shorter runs finish before a bar is worth drawing
MAX_SIMULATED_S = 1e6    # 11.6 days: longer runs are a typo, not a study
DEFAULTS = SimConfig()   # an instance: a compiled dataclass's class attributes are not its defaults


@click.command(name="simulate")
@click.argument("layout_file", type=click.Path())
@click.option("--duration", type=FiniteRange(min=0, min_open=True, max=MAX_SIMULATED_S), default=DEFAULTS.duration_s, show_default=True,
              help="Simulated seconds measured, after the warm-up.")
@click.option("--warmup", type=FiniteRange(min=0, max=MAX_SIMULATED_S), default=None, show_default="auto",
              help="Simulated seconds run first and left out of the metrics; auto: until as many requests "
                   f"have finished as were admitted at the start, at least {AUTO_WARMUP_MIN_S:g} s.")
@click.option("--workload", default="offline", show_default=True, help=WORKLOAD_HELP + " (docs/simulator.md).")
@click.option("--lengths", type=click.Choice(LENGTH_KINDS), default=DEFAULTS.lengths, show_default=True,
              help="Prompt/output lengths around the cluster's [workload] means (trace: from the file).")
@click.option("--scheduler", type=click.Choice(sorted(ROUTERS)), default=DEFAULTS.scheduler, show_default=True,
              help="Routing policy: the path each request takes.")
@click.option("--microbatches", type=click.IntRange(min=1, max=MAX_LANES), default=DEFAULTS.microbatches,
              help="Decode micro-batches (lanes) kept apart on each path. Default: the layout's `lanes`, else one "
                   "per stage of the path (one per path on an engine that runs a path's sequences as one group: helix).")
@click.option("--token-budget", type=click.IntRange(min=1), default=DEFAULTS.token_budget,
              help="Tokens per stage iteration: decode tokens first, prompt chunks in what is left. Default: the "
                   "engine's (256 for runtime and vllm, 2,048 for helix, whose prompts run whole).")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULTS.seed, show_default=True,
              help="Seed for lengths, arrivals and routing.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, callback=plot_path,
              help="Latency CDFs, throughput over time and per-node use, to this PNG.")
@engine_option(default=None, help_extra=" Default: the engine the layout was planned for.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys: docs/formats.md).")
def simulate_cmd(layout_file: str, duration: float, warmup: float | None, workload: str, lengths: str, scheduler: str,
                 microbatches: int | None, token_budget: int | None, seed: int, plot: str | None, engine: str | None,
                 as_json: bool) -> None:
    """Simulate serving a layout, event by event: throughput, TTFT, TPOT, end-to-end latency, per-node
    utilisation and KV use, the busiest link. Deterministic for a seed."""
    layout = read_layout(layout_file, engine=engine)
    config = SimConfig(workload=parse_workload(workload), lengths=lengths, scheduler=scheduler,
                       duration_s=duration, warmup_s=warmup, seed=seed, token_budget=token_budget,
                       microbatches=microbatches)
    console = make_console(stderr=as_json)
    err = make_console(stderr=True)
    expected_s = duration + (AUTO_WARMUP_MIN_S if warmup is None else warmup)  # at least, when automatic
    if not as_json and err.is_terminal and expected_s >= PROGRESS_AFTER_S:
        with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                      TimeElapsedColumn(), console=err, transient=True) as bar:
            task = bar.add_task("run", total=expected_s)
            result = simulate(layout, config,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        result = simulate(layout, config)
    if plot:
        from simulator.plot import plot_result  # matplotlib only when a plot is asked for

        plot_result(result, plot)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    print_result(console, result, layout_file, layout.lanes)
    if plot:
        console.print(f"plot written to {plot}")



def _ms(stats: dict) -> list[str]:
    return [format_time(stats[k]) if stats[k] is not None else "-" for k in ("mean", "p50", "p90", "p99")]


def print_result(console, result, layout_file: str, planned_lanes: int | None = None) -> None:
    """The run's figures; `planned_lanes`: the lanes per path the layout's predictions were made for."""
    s, ref = result.settings, result.reference
    console.print(f"[bold]{layout_file}[/]: {s['model']} ({s['method']} layout), workload {s['workload']}"
                  + (f" ({s['in_flight']} in flight)" if s["in_flight"] else "")
                  + f", {s['lengths']} lengths (means {s['prompt_tokens_mean']} + {s['output_tokens_mean']} tokens), "
                  f"{s['scheduler']} routing, seed {s['seed']}")
    warmup = f"{s['warmup_s']:g} s warm-up" + (" (auto)" if s["warmup_auto"] else "")
    console.print(f"simulated {warmup} + {s['duration_s']:g} s measured in "
                  f"{result.wall_seconds:.2f} s ({result.simulated_seconds / max(result.wall_seconds, 1e-9):,.0f}x "
                  f"real time, {result.events:,} events; "
                  + ("compiled)" if COMPILED_RUNNING else "pure Python, docs/simulator.md#speed)"))
    line = (f"throughput [bold]{result.decode_throughput:,.1f}[/] output tokens/s "
            f"({result.total_throughput:,.1f} with prompt tokens); {result.requests_completed:,} requests completed")
    if result.requests_waiting:
        line += f", {result.requests_waiting:,} waiting for KV room at the end"
    if result.requests_rejected:
        line += f", {result.requests_rejected:,} rejected (larger than any path's KV cache)"
    console.print(line)
    if ref.get("max_flow_tokens_per_s"):
        planner = f"planner: static max flow {ref['max_flow_tokens_per_s']:,.0f} tokens/s"
        if ref.get("round_trip_max_flow_tokens_per_s"):
            planner += f" ({ref['round_trip_max_flow_tokens_per_s']:,.0f} at its round trips)"
        planner += lanes_past_bound(ref.get("predicted_throughput_tokens_per_s") or 0, ref["max_flow_tokens_per_s"],
                                    planned_lanes)
        if ref.get("predicted_throughput_tokens_per_s"):
            planner += f", predicted serving {ref['predicted_throughput_tokens_per_s']:,.0f} tokens/s"
        if ref.get("predicted_tpot_s"):
            planner += f", TPOT {format_time(ref['predicted_tpot_s'])}"
        console.print(planner)

    latency = Table(title="Latency")
    for col in ("", "mean", "p50", "p90", "p99"):
        latency.add_column(col, justify="left" if not col else "right")
    latency.add_row("TTFT", *_ms(result.ttft))
    latency.add_row("TPOT", *_ms(result.tpot))
    latency.add_row("end to end", *_ms(result.e2e))
    latency.add_row("admission wait", *_ms(result.queue_wait))
    console.print(latency)

    nodes = Table(title="Nodes")
    for col in ("node", "GPU", "layers", "busy", "peak KV", "KV tokens", "mean batch", "iterations", "mean step"):
        nodes.add_column(col, justify="left" if col in ("node", "GPU") else "right")
    for st in result.stages:
        nodes.add_row(st.name, st.gpu, f"[{st.layers[0]}, {st.layers[1]})", f"{st.utilisation:.0%}",
                      f"{st.peak_kv:.0%}", f"{st.kv_tokens:,}", f"{st.mean_batch:.1f}", f"{st.iterations:,}",
                      format_time(st.mean_iteration_s) if st.iterations else "-")
    console.print(nodes)
    busiest = result.busiest_link
    if busiest is not None:
        console.print(f"busiest link: {busiest.name}, busy {busiest.utilisation:.0%} "
                      f"({busiest.bytes / max(result.measured_seconds, 1e-9) / 1e6:,.2f} MB/s)")
