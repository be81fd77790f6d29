"""planner compare CLUSTER.ini"""

from __future__ import annotations

import json

import click
from planner.cli.console import make_console
from planner.cli.options import FiniteRange, engine_option, plot_path
from rich.table import Table

from planner import sp_pp
from planner.cluster import Cluster, load_cluster
from planner.engines import ENGINES
from planner.errors import InputError, SolveError
from planner.ini import comma_items
from planner.plan import Plan, score, served_at_tpot, solve as solve_plan
from planner.problem import PlacementProblem
from planner.vllm_runnable import NotRunnable, vllm_chains
from planner.report import lanes_past_bound, plan_layout
from planner.solvers.registry import DEFAULT_METHOD, METHODS
from simulator import SimConfig, simulate
from simulator.workload import Poisson

SP_PP = "sp-pp"  # seed 002's strategy: a closed-form model (planner.sp_pp), not a placement method
SIM_DURATION_S = 120.0  # measured after the simulator's automatic warm-up: steady state, short to run
LATENCY_LOAD = 0.8  # latencies are simulated at this share of the planner's predicted throughput


def _simulated(plan: Plan, seed: int) -> dict:
    """The plan in the simulator: throughput under offline load (saturated), TTFT and TPOT under Poisson
    arrivals at 80% of the predicted throughput (under saturation TTFT is mostly admission queueing)."""
    layout = plan_layout(plan)
    offline = simulate(layout, SimConfig(duration_s=SIM_DURATION_S, seed=seed))
    rate = LATENCY_LOAD * plan.serving.throughput / plan.cluster.workload.output_tokens
    loaded = simulate(layout, SimConfig(workload=Poisson(rate), duration_s=SIM_DURATION_S, seed=seed)) \
        if rate > 0 else None
    return {"sim_throughput_tokens_per_s": offline.decode_throughput,
            "sim_tpot_s": loaded.tpot.get("mean") if loaded else None,
            "sim_ttft_s": loaded.ttft.get("mean") if loaded else None}


def _engine_plans(cluster_file: str, own: Plan, time_limit: float, seed: int, max_tpot_s: float | None,
                  max_ttft_s: float | None) -> list[dict]:
    """The default method's best plan for each engine (for vllm: only what vLLM can run), each predicted
    with every engine's cost model: what the vLLM-runnable constraint costs."""
    # vLLM and the runtime always, and the plan's own engine (helix) when it is another
    engines = [engine for engine in ENGINES if engine in ("runtime", "vllm") or engine == own.cluster.engine]
    clusters = {engine: load_cluster(cluster_file, engine=engine) for engine in engines}
    entries = []
    for engine in engines:
        try:
            plan = own if engine == own.cluster.engine else solve_plan(
                clusters[engine], DEFAULT_METHOD, time_limit=time_limit, seed=seed, max_tpot_s=max_tpot_s,
                max_ttft_s=max_ttft_s)
        except SolveError as exc:
            entries.append({"solved_for": engine, "error": str(exc)})
            continue
        try:
            vllm_chains(plan.cluster, plan.placement)
            refusal = None
        except NotRunnable as exc:
            refusal = exc.problem
        predictions = {}
        for judge in engines:
            problem = PlacementProblem(clusters[judge], max_tpot_s=max_tpot_s, max_ttft_s=max_ttft_s)
            try:
                s = plan.serving if judge == engine else score(problem, plan.result, max_tpot_s, max_ttft_s).serving
            except SolveError:
                predictions[judge] = None
                continue
            predictions[judge] = {"throughput_tokens_per_s": s.throughput, "tpot_s": s.tpot_s, "ttft_s": s.ttft_s}
        entries.append({"solved_for": engine, "vllm_runnable": refusal is None, "vllm_refusal": refusal,
                        "gpus_used": len(plan.placement.used()), "predictions": predictions})
    return entries


def _sp_pp_row(cluster: Cluster) -> dict:
    """Seed 002's strategy on every GPU: one request at a time, SP+PP with a pairwise KV sync."""
    name = f"{SP_PP} (1 request)"
    devices = sp_pp.split_layers(cluster, sp_pp.select_devices(cluster))
    try:
        sp_pp.whole_model_fits(cluster, devices)
        workload = cluster.workload
        result = sp_pp.estimate(cluster, devices, workload.prompt_tokens, workload.output_tokens, "pairwise")
    except InputError as exc:
        return {"method": name, "error": exc.problem}
    if not result.fits:
        return {"method": name, "error": "a prompt of the workload's length does not fit beside the whole model"}
    return {"method": name, "max_flow_tokens_per_s": None, "throughput_tokens_per_s": result.throughput_tokens_per_s,
            "tpot_s": result.tpot_s, "ttft_s": result.ttft_s, "gpus_used": len(devices), "seconds": 0.0,
            "status": "model", "note": result.reason}


@click.command()
@click.argument("cluster_file", type=click.Path())
@click.option("--methods", "names", default=",".join([*METHODS, SP_PP]), show_default=True,
              help=f"Comma-separated methods to compare ({SP_PP}: seed 002's SP+PP on every GPU).")
@click.option("--time-limit", type=FiniteRange(min=0.1), default=60.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-tpot", type=FiniteRange(min=0, min_open=True), default=None, help="ms")
@click.option("--max-ttft", type=FiniteRange(min=0, min_open=True), default=None, help="ms")
@click.option("--simulate/--no-simulate", "with_sim", default=True, show_default=True,
              help="Also run each plan in the simulator (offline load) for measured TTFT/TPOT.")
@click.option("--match-tpot/--no-match-tpot", default=True, show_default=True,
              help=f"Re-solve with {DEFAULT_METHOD} held to each other method's TPOT (half the time limit each).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, callback=plot_path,
              help="Bar chart of the methods to this PNG.")
@click.option("--engines/--no-engines", "with_engines", default=True, show_default=True,
              help=f"Also solve {DEFAULT_METHOD} for the other engine and predict both engines' best plans "
                   "with both cost models: what the vLLM-runnable constraint costs.")
@engine_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list, one object per method.")
def compare(cluster_file: str, names: str, time_limit: float, seed: int, max_tpot: float | None,
            max_ttft: float | None, with_sim: bool, match_tpot: bool, with_engines: bool, plot: str | None,
            engine: str, as_json: bool) -> None:
    """Solve with every method and print one table: max flow, predicted serving throughput, TPOT and
    TTFT (planner and simulator), GPUs, solve time, and what the default method serves at each other
    method's TPOT."""
    cluster = load_cluster(cluster_file, engine=engine)
    console = make_console(stderr=as_json)
    latency = cluster.has_latency
    rows = []
    plans: dict[str, Plan] = {}
    chosen = comma_items(names, "--methods", f"name methods comma-separated, of {', '.join([*METHODS, SP_PP])}")
    for name in chosen:
        if name not in METHODS and name != SP_PP:
            raise click.BadParameter(f"unknown method '{name}' (use {', '.join([*METHODS, SP_PP])})",
                                     param_hint="--methods")
    for name in (n for n in chosen if n != SP_PP):
        with console.status(f"{name} ..."):
            try:
                plan = solve_plan(cluster, name, time_limit=time_limit, seed=seed,
                                  max_tpot_s=max_tpot / 1e3 if max_tpot else None,
                                  max_ttft_s=max_ttft / 1e3 if max_ttft else None)
            except SolveError as exc:
                rows.append({"method": name, "error": str(exc)})
                continue
            plans[name] = plan
            s = plan.serving
            row = {"method": name, "max_flow_tokens_per_s": s.max_flow, "throughput_tokens_per_s": s.throughput,
                   "tpot_s": s.tpot_s, "ttft_s": s.ttft_s, "gpus_used": len(plan.placement.used()),
                   "seconds": plan.result.seconds, "status": plan.result.status, "lanes": plan.lanes}
            if latency and with_sim:
                row.update(_simulated(plan, seed))
            rows.append(row)
    if SP_PP in chosen and latency and len(cluster.nodes()) > 1:
        rows.append(_sp_pp_row(cluster))
    if latency and match_tpot:
        for row in rows:
            if "error" in row or row["method"] == DEFAULT_METHOD or not row["tpot_s"] or row["status"] == "model":
                continue
            limit = row["tpot_s"] if max_tpot is None else min(row["tpot_s"], max_tpot / 1e3)
            with console.status(f"{DEFAULT_METHOD} at {row['method']}'s TPOT ..."):
                row["default_at_this_tpot_tokens_per_s"] = served_at_tpot(cluster, limit, time_limit=time_limit / 2, seed=seed)
    if latency and with_engines and DEFAULT_METHOD in plans:
        with console.status("the best plan for each engine ..."):
            default_row = next(row for row in rows if row["method"] == DEFAULT_METHOD)
            default_row["engine_plans"] = _engine_plans(
                cluster_file, plans[DEFAULT_METHOD], time_limit, seed,
                max_tpot / 1e3 if max_tpot else None, max_ttft / 1e3 if max_ttft else None)
    if plot:
        from planner.plot import plot_comparison  # matplotlib only when a plot is asked for
        plot_comparison(rows, f"{cluster.model.id} on {cluster.name}", plot)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_table(console, cluster, rows, latency and with_sim, latency and match_tpot)
        for row in rows:
            if "engine_plans" in row:
                _print_engine_plans(console, row["engine_plans"])
    if all("error" in row for row in rows):   # the table says why; the exit status says nothing was compared
        raise SolveError(f"every method failed ({', '.join(row['method'] for row in rows)})")


def _print_engine_plans(console, entries: list[dict]) -> None:
    """The best plan for each engine beside each other, both engines' predictions, and what it costs
    to plan only what vLLM can run."""
    engines = [entry["solved_for"] for entry in entries]   # each plan is predicted on every engine solved for
    table = Table(title=f"what vLLM can run: {DEFAULT_METHOD}'s best plan for each engine, predicted on each")
    for col in ("plan", "runs on vLLM", *(f"{e} {what}" for e in engines for what in ("tok/s", "TPOT ms")), "GPUs"):
        table.add_column(col, justify="left" if col in ("plan", "runs on vLLM") else "right")
    for entry in entries:
        label = f"--engine {entry['solved_for']}"
        if "error" in entry:
            table.add_row(label, "[red]failed[/]", *[""] * (2 * len(engines) + 1))
            continue
        cells = [label, "yes" if entry["vllm_runnable"] else "no"]
        for judge in engines:
            p = entry["predictions"][judge]
            cells += [f"{p['throughput_tokens_per_s']:,.0f}", f"{p['tpot_s'] * 1e3:.1f}" if p["tpot_s"] else "-"] \
                if p else ["-", "-"]
        table.add_row(*cells, str(entry["gpus_used"]))
    console.print(table)
    by_engine = {e["solved_for"]: e for e in entries}
    free, runnable = by_engine.get("runtime", {}), by_engine.get("vllm", {})
    for entry in entries:
        if "error" in entry:
            console.print(f"[red]--engine {entry['solved_for']} failed[/]: {entry['error']}")
        elif not entry["vllm_runnable"]:
            console.print(f"--engine {entry['solved_for']}'s plan is not vLLM-runnable: {entry['vllm_refusal']}")
    if "error" in free or "error" in runnable or not free or not runnable:
        return
    a, b = free["predictions"].get("vllm"), runnable["predictions"].get("vllm")
    if a and b and a["throughput_tokens_per_s"] > 0:
        cost = 1 - b["throughput_tokens_per_s"] / a["throughput_tokens_per_s"]
        verdict = (f"costs {cost:.0%}" if cost > 0.005 else "costs nothing here")
        console.print(f"on the vllm engine's cost model, planning only what vLLM can run {verdict}: "
                      f"{b['throughput_tokens_per_s']:,.0f} tokens/s against {a['throughput_tokens_per_s']:,.0f} "
                      "for the --engine runtime plan (docs/exports.md#what-vllm-can-run)")


def _print_table(console, cluster: Cluster, rows: list[dict], with_sim: bool, match_tpot: bool) -> None:
    table = Table(title=f"{cluster.model.id} on {cluster.name}, {cluster.engine} engine")
    columns = ["method", "max flow tok/s", "serving tok/s", "TPOT ms", "TTFT ms"]
    if with_sim:
        columns += ["sim tok/s", f"sim TPOT ms @{LATENCY_LOAD:.0%}", f"sim TTFT ms @{LATENCY_LOAD:.0%}"]
    if match_tpot:
        columns += [f"{DEFAULT_METHOD} at this TPOT"]
    columns += ["GPUs", "solve s"]
    for col in columns:
        table.add_column(col, justify="left" if col == "method" else "right")
    ms = lambda v: f"{v * 1e3:.1f}" if v is not None else "-"  # noqa: E731
    for row in rows:
        if "error" in row:  # the reason goes under the table: a long line in a narrow cell reads badly
            table.add_row(row["method"], "[red]failed[/]", *[""] * (len(columns) - 2))
            continue
        flow = row["max_flow_tokens_per_s"]
        cells = [row["method"], f"{flow:,.0f}" if flow is not None else "-", f"{row['throughput_tokens_per_s']:,.0f}",
                 ms(row["tpot_s"]), ms(row["ttft_s"])]
        if with_sim:
            sim = row.get("sim_throughput_tokens_per_s")
            cells += [f"{sim:,.0f}" if sim is not None else "-", ms(row.get("sim_tpot_s")), ms(row.get("sim_ttft_s"))]
        if match_tpot:
            matched = row.get("default_at_this_tpot_tokens_per_s")
            cells += [f"{matched:,.0f}" if matched is not None else "-"]
        cells += [str(row["gpus_used"]), f"{row['seconds']:.2f}"]
        table.add_row(*cells)
    console.print(table)
    for row in rows:
        if "error" in row:
            console.print(f"[red]{row['method']} failed[/]: {row['error']}")
    if any(row.get("status") == "model" for row in rows):
        console.print("sp-pp (1 request): seed 002's SP+PP on every GPU from its closed-form model (planner sp-pp), "
                      "one request at a time, not simulated.")
    passed = [row["method"] for row in rows if row.get("max_flow_tokens_per_s") is not None and lanes_past_bound(
        row["throughput_tokens_per_s"], row["max_flow_tokens_per_s"], row["lanes"])]
    if passed:   # as `planner solve` says it after each plan's max flow
        console.print(f"max flow: static, each stage at one lane per stage; fewer lanes per path serve more "
                      f"({', '.join(passed)}).")
    if with_sim:
        console.print(f"sim: the simulator, offline load for tok/s; Poisson arrivals at {LATENCY_LOAD:.0%} of the "
                      "planner's tok/s for TPOT and TTFT.")
    if match_tpot:
        console.print(f"'{DEFAULT_METHOD} at this TPOT': what {DEFAULT_METHOD} serves when held to that method's "
                      "predicted TPOT (--max-tpot); more than the method's own figure means it serves more at equal "
                      "or better per-token latency.")
