"""What a plan says to people and scripts: the JSON contract, layout figures, rich tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from planner.layout import Layout
from planner.plan import Plan
from planner.units import format_time


def plan_json(plan: Plan) -> dict:
    """The JSON contract of `planner solve --json` (docs/formats.md), plus predicted latency."""
    result, serving = plan.result, plan.serving
    nodes = [{"name": n.name, "host": n.host, "gpu": n.gpu,
              "start_layer": plan.placement.ranges[n.name][0], "end_layer": plan.placement.ranges[n.name][1]}
             for n in plan.problem.nodes]
    groups = [list(g) for g in plan.placement.tp_groups]
    # flows as served: scaled by the load the latency limits allow
    flows = [{"from": a, "to": b, "tokens_per_s": round(v * serving.load, 3)}
             for (a, b), v in serving.flow.edge_flows.items()]
    return {
        "model": plan.cluster.model.id,
        "engine": plan.cluster.engine,
        "method": result.method,
        "throughput_tokens_per_s": round(serving.throughput, 3),
        "max_flow_tokens_per_s": round(serving.max_flow, 3),
        "round_trip_max_flow_tokens_per_s": round(plan.round_trip_max_flow, 3),
        "upper_bound_tokens_per_s": round(plan.upper_bound, 3),
        "tpot_s": serving.tpot_s,
        "ttft_s": serving.ttft_s,
        "solver": {"status": result.status, "seconds": round(result.seconds, 3), "gap": result.gap},
        "nodes": nodes,
        **({"tp_groups": groups} if groups else {}),  # flows name a group by its members joined with '+'
        "flows": flows,
        "bottleneck": list(serving.flow.cut),
        "lanes": plan.lanes,   # decode micro-batches per path; null: one per stage of each path
        "notes": list(result.notes) + list(serving.notes) + list(plan.notes),
    }


def plan_layout(plan: Plan) -> Layout:
    serving = plan.serving
    figures = {
        "max_flow_tokens_per_s": f"{serving.max_flow:.2f}",
        "round_trip_max_flow_tokens_per_s": f"{plan.round_trip_max_flow:.2f}",
        "predicted_throughput_tokens_per_s": f"{serving.throughput:.2f}",
        "upper_bound_tokens_per_s": f"{plan.upper_bound:.2f}",
        "solver_status": plan.result.status,
        "solver_seconds": f"{plan.result.seconds:.2f}",
    }
    if serving.tpot_s is not None:
        figures["predicted_tpot_ms"] = f"{serving.tpot_s * 1e3:.2f}"
        figures["predicted_ttft_ms"] = f"{serving.ttft_s * 1e3:.2f}"
    flows = {edge: value * serving.load for edge, value in serving.flow.edge_flows.items()}
    return Layout(plan.cluster, plan.result.method, plan.placement, flows, figures, plan.lanes)


def lanes_past_bound(served: float, bound: float, lanes: int | None) -> str:
    """What to say after a static bound (max flow, upper bound) that a plan's estimate passes thanks to its
    lanes, else "". The bounds count each stage at its batch with one lane per stage, prompt chunks sharing
    its token budget; fewer lanes leave stages gaps that run prompts apart (docs/planner.md)."""
    return f" at one lane per stage, which {lanes} lanes per path pass" if lanes is not None and served > bound else ""


def print_plan(console: Console, plan: Plan) -> None:
    serving, result = plan.serving, plan.result
    table = Table(title=f"{plan.cluster.model.id} on {plan.cluster.name}: method {result.method}")
    for col in ("node", "GPU", "layers", "count", "capacity tok/s", "flow tok/s", "used", "batch", "KV tokens/layer"):
        table.add_column(col, justify="right" if col not in ("node", "GPU") else "left")
    for node in plan.problem.nodes:
        start, end = plan.placement.ranges[node.name]
        if end <= start:
            table.add_row(node.name, node.gpu, "-", "0", "-", "-", "-", "-", "-", style="dim")
            continue
        unit = plan.placement.unit_of(node.name)  # a tensor-parallel group reports once, on its first GPU
        members = plan.placement.members(unit)
        label = node.name if len(members) == 1 else f"{node.name} (tp{len(members)})"
        if node.name != members[0]:
            table.add_row(label, node.gpu, f"[{start}, {end})", str(end - start), f"tp with {members[0]}",
                          "", "", "", "")
            continue
        cap = serving.node_capacity.get(unit, plan.problem.capacity(unit, start, end))
        flow = serving.flow.node_flow.get(unit, 0.0) * serving.load
        kv = plan.problem.cost(unit).kv_tokens(end - start, start == 0, end == plan.problem.layers) \
            if not plan.problem.static else None
        batch = serving.node_batch.get(unit)
        table.add_row(label, node.gpu, f"[{start}, {end})", str(end - start), f"{cap:,.0f}", f"{flow:,.0f}",
                      f"{flow / cap:.0%}" if cap else "-", f"{batch:.1f}" if batch else "-",
                      f"{kv:,}" if kv is not None else "-")
    console.print(table)
    gap = f", gap {result.gap:.1%}" if result.gap is not None else ""
    console.print(f"solver: {result.status} in {result.seconds:.2f} s{gap}")
    round_trip = f", {plan.round_trip_max_flow:,.0f} at its round trips" if serving.tpot_s is not None else ""
    bounds = lanes_past_bound(serving.throughput, min(serving.max_flow, plan.upper_bound), serving.lanes)
    console.print(f"static max flow {serving.max_flow:,.0f} tokens/s{round_trip} (upper bound {plan.upper_bound:,.0f}){bounds}; "
                  f"predicted serving throughput [bold]{serving.throughput:,.0f}[/] tokens/s"
                  + (f", TPOT {format_time(serving.tpot_s)}, TTFT {format_time(serving.ttft_s)}"
                     if serving.tpot_s is not None else ""))
    if serving.flow.cut:
        console.print("bottleneck (min cut): " + ", ".join(serving.flow.cut))
    for note in result.notes + serving.notes + plan.notes:
        console.print(f"note: {note}")


def chain_text(plan: Plan) -> str:
    """Request routes as text: coordinator -> node -> ... with their share of the tokens served."""
    total = sum(path.tokens_per_s for path in plan.serving.paths)
    lines = []
    for path in plan.serving.paths:
        share = path.tokens_per_s / total if total else 0
        lines.append(f"{share:.0%}: coordinator -> " + " -> ".join(path.nodes) + " -> coordinator")
    return "\n".join(lines)


def versus_text(plan: Plan, baseline: Plan) -> str:
    """How the plan compares with a baseline (the hand split), and why the baseline falls short."""
    ours, theirs = plan.serving, baseline.serving
    if theirs.throughput <= 0:
        return f"the {baseline.result.method} split serves nothing under these limits"
    ratio = ours.throughput / theirs.throughput
    lines = [f"versus the {baseline.result.method} split: {ratio:.2f}x the serving throughput "
             f"({ours.throughput:,.0f} vs {theirs.throughput:,.0f} tokens/s)"
             + (f", TPOT {format_time(ours.tpot_s)} vs {format_time(theirs.tpot_s)}"
                if ours.tpot_s is not None and theirs.tpot_s is not None else "")]
    binding = [n for n in theirs.flow.cut if n in baseline.placement.ranges]
    for name in binding:
        start, end = baseline.placement.ranges[name]
        cost = baseline.problem.cost(name)
        first, last = start == 0, end == baseline.problem.layers
        extras = " with the embeddings" if first else (" with the LM head" if last else "")
        reason = (f"  why: in the {baseline.result.method} split {name} ({cost.gpu.id}) holds {end - start} layers"
                  f"{extras} and caps the flow at {theirs.node_capacity.get(name, 0):,.0f} tokens/s")
        if not baseline.problem.static:
            in_flight = cost.max_batch(end - start, first, last)
            step = max(cost.step_batch(end - start, first, last), 1)
            reason += (f": KV room for {in_flight} sequences, decode step {format_time(cost.decode_s(end - start, step))}"
                       f" at {step:.0f} per step")
        if theirs.load < 1:
            reason += f"; the latency limits then keep {theirs.load:.0%} of that flow"
        lines.append(reason)
    for name in theirs.flow.cut:
        if name not in baseline.placement.ranges:
            lines.append(f"  why: in the {baseline.result.method} split the {name} caps the flow")
    return "\n".join(lines)
