"""planner compare CLUSTER.ini"""

from __future__ import annotations

import json

import click
from planner.cli.console import make_console
from rich.table import Table

from planner.cluster import load_cluster
from planner.errors import SolveError
from planner.plan import solve as solve_plan
from planner.plot import plot_comparison
from planner.solvers.registry import METHODS


@click.command()
@click.argument("cluster_file", type=click.Path())
@click.option("--methods", "names", default=",".join(METHODS), show_default=True,
              help="Comma-separated methods to compare.")
@click.option("--time-limit", type=click.FloatRange(min=0.1), default=60.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-tpot", type=click.FloatRange(min=0, min_open=True), default=None, help="ms")
@click.option("--max-ttft", type=click.FloatRange(min=0, min_open=True), default=None, help="ms")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Bar chart of the methods to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list, one object per method.")
def compare(cluster_file: str, names: str, time_limit: float, seed: int, max_tpot: float | None,
            max_ttft: float | None, plot: str | None, as_json: bool) -> None:
    """Solve with every method and print one table: max flow, serving throughput, TPOT, TTFT, GPUs, time."""
    cluster = load_cluster(cluster_file)
    console = make_console(stderr=as_json)
    rows = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name not in METHODS:
            raise click.BadParameter(f"unknown method '{name}' (use {', '.join(METHODS)})", param_hint="--methods")
        with console.status(f"{name} ..."):
            try:
                plan = solve_plan(cluster, name, time_limit=time_limit, seed=seed,
                                  max_tpot_s=max_tpot / 1e3 if max_tpot else None,
                                  max_ttft_s=max_ttft / 1e3 if max_ttft else None)
            except SolveError as exc:
                rows.append({"method": name, "error": str(exc)})
                continue
        s = plan.serving
        rows.append({"method": name, "max_flow_tokens_per_s": s.max_flow, "throughput_tokens_per_s": s.throughput,
                     "tpot_s": s.tpot_s, "ttft_s": s.ttft_s, "gpus_used": len(plan.placement.used()),
                     "seconds": plan.result.seconds, "status": plan.result.status})
    if plot:
        plot_comparison(rows, f"{cluster.model.id} on {cluster.name}", plot)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{cluster.model.id} on {cluster.name}")
    for col in ("method", "max flow tok/s", "serving tok/s", "TPOT ms", "TTFT ms", "GPUs", "solve s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row["method"], f"[red]{row['error']}[/]", "", "", "", "", "")
            continue
        ms = lambda v: f"{v * 1e3:.1f}" if v is not None else "-"  # noqa: E731
        table.add_row(row["method"], f"{row['max_flow_tokens_per_s']:,.0f}", f"{row['throughput_tokens_per_s']:,.0f}",
                      ms(row["tpot_s"]), ms(row["ttft_s"]), str(row["gpus_used"]), f"{row['seconds']:.2f}")
    console.print(table)
