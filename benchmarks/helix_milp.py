"""A Helix-style placement MILP, the comparison point of issue 17 (benchmarks only, not a planner method).

The formulation of the Helix paper (Mei et al., ASPLOS'25, section 4), written here from its
description and from the models its artifact writes (ilp_model.lp): per GPU an integer start layer and
a one-hot choice of how many layers it holds, its throughput the table's entry for that count; per
directed GPU pair (and coordinator to GPU, GPU to coordinator) a binary switch that may be on only when
one GPU's end is the other's start (big-M constraints), flow on a pair bounded by its link when on;
flow conserved at every GPU; maximise the flow out of the coordinator. Solved by HiGHS (what this
project uses; Helix used Gurobi) within a time limit and its placement re-scored by this project's
max-flow evaluator. Helix's artifact starts the solver from its `swarm` layout (start_from_heuristic,
e.g. artifact_evaluation/model_placement/layout_distributed/ilp/*new.ini); `initial` does the same.
"""

from __future__ import annotations

import math

import pulp

from planner.flow import max_flow
from planner.problem import Placement, PlacementProblem
from planner.quiet import solver_stdout_silenced
from planner.solvers.milp import _WarmHighs


def helix_style_milp(problem: PlacementProblem, time_limit: float, initial: Placement | None = None,
                     threads: int = 2) -> tuple[float, Placement | None]:
    """(static max flow of the placement found, the placement) within `time_limit` seconds, from the
    placement `initial` if given."""
    layers = problem.layers
    names = [n.name for n in problem.nodes]
    host = {n.name: n.host for n in problem.nodes}
    ub = problem.upper_bound()
    lp = pulp.LpProblem("helix", pulp.LpMaximize)
    start, end, hold, cap = {}, {}, {}, {}
    for i, name in enumerate(names):
        top = min(problem.cost(name).max_layers(), layers)
        start[name] = lp.add_variable(f"start_{i}", 0, layers - 1, cat="Integer")
        hold[name] = {k: lp.add_variable(f"hold_{i}_{k}", 0, 1, cat="Binary") for k in range(1, top + 1)}
        lp += pulp.lpSum(hold[name].values()) == 1
        end[name] = start[name] + pulp.lpSum(k * v for k, v in hold[name].items())
        lp += end[name] <= layers
        # static tables do not depend on position; a GPU's capacity for k layers anywhere in the model
        cap[name] = pulp.lpSum(min(problem.cost(name).capacity(k, problem.rtt_s), ub) * v
                               for k, v in hold[name].items())
    inflow = {n: [] for n in names}
    outflow = {n: [] for n in names}
    source = []
    sink = []
    for i, a in enumerate(names):
        coordinator = min(problem.coordinator_capacity(host[a]), ub)
        if coordinator > 0:
            on = lp.add_variable(f"switch_source_{i}", 0, 1, cat="Binary")
            flow = lp.add_variable(f"flow_source_{i}", 0)
            lp += start[a] + layers * on <= layers      # on only if the GPU starts at layer 0
            lp += flow <= coordinator * on
            inflow[a].append(flow)
            source.append(flow)
            on = lp.add_variable(f"switch_{i}_sink", 0, 1, cat="Binary")
            flow = lp.add_variable(f"flow_{i}_sink", 0)
            lp += layers * on <= end[a]                 # on only if the GPU ends at the last layer
            lp += flow <= coordinator * on
            outflow[a].append(flow)
            sink.append(flow)
        for j, b in enumerate(names):
            link = min(problem.link_capacity(host[a], host[b]), ub) if a != b else 0.0
            if link <= 0:
                continue
            on = lp.add_variable(f"switch_{i}_{j}", 0, 1, cat="Binary")
            flow = lp.add_variable(f"flow_{i}_{j}", 0)
            lp += end[a] - start[b] + layers * on <= layers   # on only if a's end is b's start
            lp += start[b] - end[a] + layers * on <= layers
            lp += flow <= link * on
            outflow[a].append(flow)
            inflow[b].append(flow)
    for name in names:
        lp += pulp.lpSum(inflow[name]) == pulp.lpSum(outflow[name])
        lp += pulp.lpSum(inflow[name]) <= cap[name]
    lp += pulp.lpSum(source) == pulp.lpSum(sink)
    lp += pulp.lpSum(source)
    with solver_stdout_silenced():
        lp.solve(_WarmHighs(_start_values(problem, initial, names) if initial else None, msg=False,
                            timeLimit=time_limit, threads=threads))
    if lp.objective.value() is None or not math.isfinite(lp.objective.value() or math.nan):
        return 0.0, None
    ranges = {}
    for name in names:
        s = round(start[name].value() or 0)
        k = max(hold[name], key=lambda k: hold[name][k].value() or 0.0)
        ranges[name] = (s, min(s + k, layers))
    placement = Placement(ranges)
    return max_flow(problem, placement).value, placement


def _start_values(problem: PlacementProblem, placement: Placement, names: list[str]) -> dict[str, float]:
    """The variables' values for `placement` and its max flow (an unused GPU holds layer 0 with no flow)."""
    index = {name: i for i, name in enumerate(names)}
    values: dict[str, float] = {}
    for name in names:
        s, e = placement.ranges[name]
        s, k = (s, e - s) if e > s else (0, 1)
        values[f"start_{index[name]}"] = s
        values[f"hold_{index[name]}_{k}"] = 1
    for (a, b), flow in max_flow(problem, placement).edge_flows.items():
        if flow <= 0:
            continue
        key = "source_%d" % index[b] if a == "coordinator" else \
            "%d_sink" % index[a] if b == "coordinator" else "%d_%d" % (index[a], index[b])
        values[f"switch_{key}"] = 1
        values[f"flow_{key}"] = flow
    return values
