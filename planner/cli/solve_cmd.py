"""planner solve CLUSTER.ini"""

from __future__ import annotations

import json
from pathlib import Path

import click
from planner.cli.console import make_console
from planner.cli.options import FiniteRange, engine_option, plot_path

from planner.cluster import load_cluster
from planner.layout import write_layout
from planner.plan import solve as solve_plan
from planner.errors import InputError, SolveError
from planner.report import chain_text, plan_json, plan_layout, print_plan, versus_text
from planner.solvers.registry import DEFAULT_METHOD, METHODS
from planner.vllm_runnable import NotRunnable, vllm_chains


@click.command()
@click.argument("cluster_file", type=click.Path())
@click.option("--method", type=click.Choice(sorted(METHODS)), default=DEFAULT_METHOD, show_default=True,
              help="Placement method (docs/planner.md).")
@click.option("--time-limit", type=FiniteRange(min=0.1), default=60.0, show_default=True,
              help="Seconds the optimiser may take; the best layout found by then is returned.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every random choice.")
@click.option("--max-tpot", type=FiniteRange(min=0, min_open=True), default=None,
              help="Latency limit: mean time per output token, in ms.")
@click.option("--max-ttft", type=FiniteRange(min=0, min_open=True), default=None,
              help="Latency limit: mean time to first token, in ms.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the layout to this INI file.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, callback=plot_path,
              help="Draw the layer map to this PNG.")
@engine_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys: docs/formats.md).")
def solve(cluster_file: str, method: str, time_limit: float, seed: int, max_tpot: float | None,
          max_ttft: float | None, out: str | None, plot: str | None, engine: str, as_json: bool) -> None:
    """Decide which layers each GPU holds and how requests flow, maximising served tokens/s."""
    cluster = load_cluster(cluster_file, engine=engine)
    if out and Path(out).resolve() == Path(cluster_file).resolve():
        raise InputError("--out names the cluster file itself: the layout would overwrite it", field="--out",
                         fix="write the layout to another file, e.g. layout.ini")
    console = make_console(stderr=as_json)
    with console.status(f"solving with {method} ...") as status:
        plan = solve_plan(cluster, method, time_limit=time_limit, seed=seed,
                          max_tpot_s=max_tpot / 1e3 if max_tpot else None,
                          max_ttft_s=max_ttft / 1e3 if max_ttft else None,
                          progress=lambda message: status.update(message))
    if out:
        write_layout(out, plan_layout(plan))
    if plot:
        from planner.plot import plot_layout  # matplotlib only when a plot is asked for
        plot_layout(plan, plot)
    if as_json:
        click.echo(json.dumps(plan_json(plan), indent=2))
        return
    print_plan(console, plan)
    console.print(f"costed for the {cluster.engine} engine (--engine; docs/cost-model.md#engines-and-calibration)")
    console.print(chain_text(plan))
    if cluster.engine == "vllm" and method != DEFAULT_METHOD:  # only the default method keeps to what vLLM runs
        try:
            vllm_chains(cluster, plan.placement)
        except NotRunnable as exc:
            console.print(f"note: vLLM cannot run this layout ({exc.problem}); `--method {DEFAULT_METHOD} "
                          "--engine vllm` plans only what it can")
    if method != "even":  # the hand split people start from (seed 000): say by how much and why
        try:
            even = solve_plan(cluster, "even", max_tpot_s=max_tpot / 1e3 if max_tpot else None,
                              max_ttft_s=max_ttft / 1e3 if max_ttft else None)
            console.print(versus_text(plan, even))
        except SolveError as exc:
            console.print(f"(no even split to compare with: {exc})")
    if out:
        console.print(f"layout written to {out}")
    if plot:
        console.print(f"plot written to {plot}")
