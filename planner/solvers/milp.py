"""The layer-boundary MILP for static max flow (the optimiser's search loop: planner/solvers/optimiser.py).

Why not the published formulation: an integer start layer per GPU with big-M switched edges has an LP
bound near the trivial one. Here every GPU group chooses *intervals* [s, e) (one integer count per
interval), flow is conserved at every layer boundary of every host, and identical GPUs of one host are
one group with an integer count. The LP relaxation is then a max-flow over intervals: tight, and HiGHS
proves small clusters optimal in seconds. Hosts joined only by links too fast to bind are pooled into a
zone whose internal traffic needs no per-pair variables. Details: docs/planner.md#optimiser.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import highspy
import numpy as np
import pulp

from planner.errors import SolveError
from planner.flow import max_flow
from planner.problem import TP_SIZES, Placement, PlacementProblem, group_name
from planner.quiet import solver_stdout_silenced

FULL_SOLVE_SHARE = 0.3       # pooled models: time for the full solve before neighbourhood search
NEIGHBOURHOOD_GROUPS = 3     # groups freed per neighbourhood
NEIGHBOURHOOD_SECONDS = 4.0  # limit of one neighbourhood solve
EXACT_GPUS = 12  # up to this many GPUs the exact per-host model is used
WARM_SCORING_SHARE = 0.3  # at most this share of the limit scoring warm starts (the first always)
HIGHS_SHARE = 0.9  # HiGHS stops a little after its time limit: it gets this share of what is left
PROOF_TOLERANCE = 1e-4  # relative gap called optimal (HiGHS's default)
COVERING_SECONDS = 5.0  # at most this long for one covering-relaxation proof


@dataclass(frozen=True)
class Group:
    """Interchangeable GPUs of one type at one flow endpoint (a host, or a pooled zone), used as
    pipeline units of `tp` GPUs each (tp > 1: tensor-parallel groups inside one host). The variants of
    one (endpoint, GPU type) share its GPUs."""

    endpoint: str
    gpu: str
    nodes: tuple[str, ...]
    tp: int = 1

    @property
    def unit(self) -> str:
        """The name capacities are asked for: a GPU, or the group of the first `tp` GPUs."""
        return self.nodes[0] if self.tp == 1 else group_name(self.nodes[:self.tp])


@dataclass(frozen=True)
class MilpOutcome:
    placement: Placement
    objective: float
    bound: float
    status: str


def _zones(problem: PlacementProblem, hosts: list[str], never_binding: float) -> list[list[str]]:
    """Partition hosts into zones whose every internal link (GPU links included) carries more than
    any placement could send, so traffic inside a zone needs no per-pair variables."""
    zones: list[list[str]] = []
    for host in hosts:
        if problem.link_capacity(host, host) < never_binding:
            zones.append([host])  # its own GPU link may bind: modelled explicitly
            continue
        for zone in zones:
            if all(problem.link_capacity(other, other) >= never_binding and
                   problem.link_capacity(host, other) >= never_binding and
                   problem.link_capacity(other, host) >= never_binding for other in zone):
                zone.append(host)
                break
        else:
            zones.append([host])
    return zones


class _WarmHighs(pulp.HiGHS):
    """pulp's HiGHS driver, plus a warm-start solution and the solver's proven bound afterwards."""

    def __init__(self, start: dict[str, float] | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.start = start
        self.dual_bound = math.nan

    def callSolver(self, lp) -> None:  # noqa: N802 (pulp's name)
        if self.start:
            solution = highspy.HighsSolution()
            solution.col_value = [self.start.get(var.name, 0.0) for var in lp.variables()]
            solution.value_valid = True
            lp.solverModel.setSolution(solution)
        lp.solverModel.run()
        # pulp hands HiGHS the negated objective of a maximisation: negate the bound back
        self.dual_bound = -lp.solverModel.getInfo().mip_dual_bound


class _OutOfTime(Exception):
    """The deadline passed while a model was being built (building is not bounded by HiGHS's limit)."""


def _check(deadline: float) -> None:
    if time.perf_counter() > deadline:
        raise _OutOfTime


def covering_refutes(problem: PlacementProblem, target: float, time_limit: float, threads: int = 2,
                     deadline: float = math.inf) -> bool:
    """True when no placement can reach `target` tokens/s, proven by a relaxation that ignores links
    and chaining: each layer must be held by GPUs whose capacities, each capped at the target, add up
    to it (a GPU passes at most min(capacity, T) of the T crossing every layer). It depends only on
    how many GPUs of each type there are, so it is small; it settles memory-tight clusters, where the
    flow MILP's LP bound is loose. False when the relaxation is feasible or the time ran out (building
    the model counts against `deadline`, solving against `time_limit` too)."""
    try:
        return _covering_refutes(problem, target, time_limit, deadline, threads)
    except _OutOfTime:
        return False


def _covering_refutes(problem: PlacementProblem, target: float, time_limit: float, deadline: float,
                      threads: int) -> bool:
    began = time.perf_counter()
    layers = problem.layers
    lp = pulp.LpProblem("covering", pulp.LpMinimize)
    held: list[list] = [[] for _ in range(layers)]
    for ti, (_, count, units) in enumerate(problem.unit_kinds()):
        used = []
        for tp, names in units.items():
            longest = max(problem.cost(n).max_layers() for n in names)
            for s in range(layers):
                _check(deadline)
                for e in range(s + 1, min(s + longest, layers) + 1):
                    rates = [problem.capacity(n, s, e) for n in names if problem.fits(n, s, e)]
                    weight = min(max(rates, default=0.0) / target, 1.0)
                    if weight > 1e-9:
                        x = lp.add_variable(f"c_{ti}_{tp}_{s}_{e}", 0, count // tp, cat="Integer")
                        used.append(tp * x)
                        for layer in range(s, e):
                            held[layer].append(weight * x)
        lp += pulp.lpSum(used) <= count
    for terms in held:
        lp += pulp.lpSum(terms) >= 1
    lp += pulp.lpSum(lp.variables())
    # pulp hands the model to HiGHS at about the cost of building it: keep that much in hand
    limit = min(time_limit, (deadline - time.perf_counter() - (time.perf_counter() - began)) * HIGHS_SHARE)
    if limit < 0.05:
        return False
    # the thread count must match every other HiGHS run in the process: HiGHS's scheduler is global
    with solver_stdout_silenced():
        lp.solve(pulp.HiGHS(msg=False, timeLimit=limit, threads=threads))
    return pulp.LpStatus[lp.status] == "Infeasible"


def solve_max_flow(problem: PlacementProblem, *, time_limit: float, warm_starts: list[Placement] | None = None,
                   pooled: bool | None = None, threads: int = 2, seed: int = 0,
                   reserve_scorings: int = 0) -> MilpOutcome:
    """Placement with the most static max flow at the problem's capacities (its rtt_s).

    Exact model (default up to EXACT_GPUS GPUs): one group per host and GPU type, per-host-pair link
    variables across zones. Pooled model (larger clusters): one group per zone and GPU type, links
    between zones bounded conservatively by the slowest host pair times the number of GPUs on the
    narrower side, and layer boundaries on a grid of `step` layers. A pooled solution is re-scored
    exactly, and its status is never 'optimal' unless it meets the exact upper bound. The best of
    `warm_starts` is the starting incumbent (planner.solvers.optimiser.heuristic_starts finds them).
    Building the model counts against `time_limit`: past it, the incumbent is returned. The solve
    keeps time for re-scoring what it found, and for `reserve_scorings` more scorings of the caller's
    (each counted as the slowest max flow of a warm start: on 128 GPUs about a second)."""
    began = time.perf_counter()
    deadline = began + time_limit
    ub = problem.upper_bound()
    scored = []  # each warm start costs a max flow: on 100-GPU clusters, seconds for a long list
    slowest = 0.0
    for i, placement in enumerate(warm_starts or []):
        if scored and time.perf_counter() > began + time_limit * WARM_SCORING_SHARE:
            break
        scoring = time.perf_counter()
        scored.append((max_flow(problem, placement).value, i, placement))
        slowest = max(slowest, time.perf_counter() - scoring)
    deadline -= min((1 + reserve_scorings) * slowest, time_limit / 4)
    incumbent_value, _, incumbent = max(scored, default=(0.0, 0, None), key=lambda t: (t[0], -t[1]))
    try:
        return _solve_max_flow(problem, began, deadline, incumbent, incumbent_value, pooled, threads, seed)
    except _OutOfTime:
        if incumbent is None:
            raise SolveError("time limit too short to build the placement model; raise --time-limit") from None
        return MilpOutcome(incumbent, incumbent_value, max(ub, incumbent_value), "time_limit")


def _solve_max_flow(problem: PlacementProblem, began: float, deadline: float, incumbent: Placement | None,
                    incumbent_value: float, pooled: bool | None, threads: int, seed: int) -> MilpOutcome:
    time_limit = deadline - began
    layers = problem.layers
    ub = problem.upper_bound()
    hosts = problem.hosts_with_gpus()
    zones = _zones(problem, hosts, never_binding=ub * 1.0001)
    pooled = len(problem.nodes) > EXACT_GPUS if pooled is None else pooled
    zone_of = {h: f"z{i}" for i, zone in enumerate(zones) for h in zone}
    endpoint_of = {n.name: (zone_of[n.host] if pooled else n.host) for n in problem.nodes}
    step = max(1, round(layers / 40)) if pooled else 1
    found: dict[tuple[str, str], list[str]] = {}
    for node in problem.nodes:
        found.setdefault((endpoint_of[node.name], node.gpu), []).append(node.name)
    groups = [Group(ep, gpu, tuple(nodes)) for (ep, gpu), nodes in found.items()]
    if not pooled:  # exact model: a host's GPUs of one type may also form tensor-parallel units
        groups += [Group(g.endpoint, g.gpu, g.nodes, tp) for g in list(groups)
                   for tp in TP_SIZES if tp <= len(g.nodes)]

    lp = pulp.LpProblem("placement", pulp.LpMaximize)
    count, flow = {}, {}
    ends, starts = {}, {}          # (endpoint, boundary) -> flow variables
    end_counts, start_counts = {}, {}  # (endpoint, boundary) -> count variables
    bounds = sorted(set(range(0, layers, step)) | {layers})
    for gi, group in enumerate(groups):
        node = group.unit
        for s in bounds:
            _check(deadline)
            for e in bounds:
                if e <= s or not problem.fits(node, s, e):
                    continue
                cap = problem.capacity(node, s, e)
                if cap <= 0:
                    continue
                count[gi, s, e] = x = lp.add_variable(f"x_{gi}_{s}_{e}", 0, len(group.nodes) // group.tp,
                                                      cat="Integer")
                flow[gi, s, e] = y = lp.add_variable(f"y_{gi}_{s}_{e}", 0)
                lp += y <= cap * x
                ends.setdefault((group.endpoint, e), []).append(y)
                starts.setdefault((group.endpoint, s), []).append(y)
                end_counts.setdefault((group.endpoint, e), []).append(x)
                start_counts.setdefault((group.endpoint, s), []).append(x)
    if not count:
        raise SolveError("no GPU can hold even one layer with KV room: the model does not fit")
    budget: dict[tuple[str, str], list] = {}  # GPUs each (endpoint, type) gives to its units
    for (gi, _, _), x in count.items():
        budget.setdefault((groups[gi].endpoint, groups[gi].gpu), []).append(groups[gi].tp * x)
    for (endpoint, gpu), used in budget.items():
        lp += pulp.lpSum(used) <= len(found[endpoint, gpu])
    # Every layer is held by at least one GPU (valid for any placement that serves at all). Redundant for
    # integer solutions, but it stops the LP relaxation from spreading fractions of GPUs over one-layer
    # intervals: with N GPUs and L layers the average interval must be L/N long, which tightens the bound.
    for layer in range(layers):
        lp += pulp.lpSum(v for (_, s, e), v in count.items() if s <= layer < e) >= 1

    endpoints = list(dict.fromkeys(g.endpoint for g in groups))
    members = {ep: [h for h in hosts if (zone_of[h] if pooled else h) == ep] for ep in endpoints}
    out_at = lambda ep, b: pulp.lpSum(ends.get((ep, b), []))  # noqa: E731
    in_at = lambda ep, b: pulp.lpSum(starts.get((ep, b), []))  # noqa: E731

    def link_cap(a: str, c: str) -> float:
        """Conservative capacity between endpoints (slowest host pair), clamped for numerics."""
        return min(min(problem.link_capacity(ha, hc) for ha in members[a] for hc in members[c]), ub * 1.0001)

    # coordinator links: token ids in to layer 0, sampled ids back from the last layer
    for ep in endpoints:  # pooled: the slowest member's link, conservatively (token ids rarely bind)
        cap = min(min(problem.coordinator_capacity(h) for h in members[ep]), ub * 1.0001)
        lp += in_at(ep, 0) <= cap
        lp += out_at(ep, layers) <= cap
    # boundaries: what ends at b on an endpoint leaves over links to endpoints where something starts at b
    for b in bounds[1:-1]:
        _check(deadline)
        sent = {ep: [] for ep in endpoints}
        received = {ep: [] for ep in endpoints}
        for a, c in itertools.product(endpoints, endpoints):
            if not ends.get((a, b)) or not starts.get((c, b)):
                continue
            same_zone = pooled and a == c or not pooled and a != c and zone_of[a] == zone_of[c] \
                and len(zones[int(zone_of[a][1:])]) > 1
            if same_zone or (not pooled and a == c and problem.link_capacity(a, a) >= ub * 1.0001):
                continue  # pooled below
            cap = link_cap(a, c)
            if cap <= 0:
                continue
            var = lp.add_variable(f"g_{endpoints.index(a)}_{endpoints.index(c)}_{b}", 0, cap if not pooled else None)
            if pooled:  # each sending GPU has its own path to each receiver: min(#senders, #receivers) pairs
                lp += var <= cap * pulp.lpSum(end_counts[a, b])
                lp += var <= cap * pulp.lpSum(start_counts[c, b])
            sent[a].append(var)
            received[c].append(var)
        pooled_zones: dict[str, tuple[list, list]] = {}
        for ep in endpoints:
            zone = ep if pooled else zone_of[ep]
            if not pooled and len(zones[int(zone[1:])]) == 1 and problem.link_capacity(ep, ep) < ub * 1.0001:
                continue
            po = lp.add_variable(f"po_{endpoints.index(ep)}_{b}", 0) if ends.get((ep, b)) else None
            pi = lp.add_variable(f"pi_{endpoints.index(ep)}_{b}", 0) if starts.get((ep, b)) else None
            outs, ins = pooled_zones.setdefault(zone, ([], []))
            if po is not None:
                sent[ep].append(po)
                outs.append(po)
            if pi is not None:
                received[ep].append(pi)
                ins.append(pi)
        for outs, ins in pooled_zones.values():
            lp += pulp.lpSum(outs) == pulp.lpSum(ins)
        for ep in endpoints:
            if ends.get((ep, b)):
                lp += out_at(ep, b) == pulp.lpSum(sent[ep])
            if starts.get((ep, b)):
                lp += in_at(ep, b) == pulp.lpSum(received[ep])
    lp += pulp.lpSum(in_at(ep, 0) for ep in endpoints) == pulp.lpSum(out_at(ep, layers) for ep in endpoints)
    lp += pulp.lpSum(in_at(ep, 0) for ep in endpoints)

    built = time.perf_counter()
    if incumbent and covering_refutes(problem, incumbent_value * (1 + PROOF_TOLERANCE),
                                      min(COVERING_SECONDS, time_limit / 10), threads, deadline):
        return MilpOutcome(incumbent, incumbent_value, min(ub, incumbent_value * (1 + PROOF_TOLERANCE)), "optimal")
    start = _warm_values(groups, incumbent, count) if incumbent else None
    # pulp hands the model to HiGHS and reads the solution back at about the cost of building it
    left = deadline - time.perf_counter() - (built - began)
    if left < 0.1:
        raise _OutOfTime
    # a full solve first (it proves small cases); larger ones then improve by neighbourhood search
    first_limit = left * HIGHS_SHARE if not pooled else left * FULL_SOLVE_SHARE
    solver = _WarmHighs(start, msg=False, timeLimit=max(first_limit, 0.1), threads=threads, gapRel=PROOF_TOLERANCE)
    with solver_stdout_silenced():
        lp.solve(solver)
    solution = _solution_of(lp, count) if lp.objective.value() is not None else start
    if pooled and solution is not None:
        solution = _neighbourhood_search(lp, groups, count, solution, deadline=deadline, seed=seed)
    found_placement = _placement_of(problem, groups, solution) if solution else None
    value = max_flow(problem, found_placement).value if found_placement else 0.0
    placement, objective = (found_placement, value) if value >= incumbent_value else (incumbent, incumbent_value)
    if placement is None:
        raise SolveError(f"the MILP solver found no placement ({pulp.LpStatus[lp.status]})")
    bound = solver.dual_bound if math.isfinite(solver.dual_bound) and not pooled else ub
    bound = max(min(bound, ub), objective)
    left = deadline - time.perf_counter()
    if bound > objective * (1 + PROOF_TOLERANCE) and objective > incumbent_value and left > 0.5 and \
            covering_refutes(problem, objective * (1 + PROOF_TOLERANCE), min(COVERING_SECONDS, left), threads, deadline):
        bound = max(min(ub, objective * (1 + PROOF_TOLERANCE)), objective)
    proven = bound <= objective * (1 + PROOF_TOLERANCE) + 1e-9
    return MilpOutcome(placement, objective, bound, "optimal" if proven else "time_limit")


def _solution_of(lp: pulp.LpProblem, count: dict) -> dict[str, float]:
    return {var.name: round(var.value() or 0.0) for var in count.values()}


def _neighbourhood_search(lp: pulp.LpProblem, groups: list[Group], count: dict, solution: dict[str, float],
                          *, deadline: float, seed: int) -> dict[str, float]:
    """Large-neighbourhood search on the solved model: free the counts of a few groups, fix the rest at
    the incumbent, re-solve (small, so HiGHS finishes), keep improvements. Seeded, so deterministic
    up to the time limit."""
    highs = lp.solverModel
    rng = np.random.default_rng(seed)
    by_group: dict[int, list] = {}
    for (gi, _, _), var in count.items():
        by_group.setdefault(gi, []).append(var)
    columns = list(lp.variables())
    best = -highs.getInfo().objective_function_value if highs.getInfo().primal_solution_status else 0.0
    size = min(NEIGHBOURHOOD_GROUPS, len(groups))
    while time.perf_counter() < deadline - 0.2 and size < len(groups) + 1:
        free = set(rng.choice(len(groups), size=size, replace=False).tolist())
        for gi, variables in by_group.items():
            for var in variables:
                if gi in free:
                    highs.changeColBounds(var.index, 0, len(groups[gi].nodes) // groups[gi].tp)
                else:
                    highs.changeColBounds(var.index, solution.get(var.name, 0.0), solution.get(var.name, 0.0))
        start = highspy.HighsSolution()
        start.col_value = [solution.get(v.name, v.value() or 0.0) for v in columns]
        start.value_valid = True
        highs.setSolution(start)
        highs.setOptionValue("time_limit", max(0.1, min(NEIGHBOURHOOD_SECONDS, (deadline - time.perf_counter()) * HIGHS_SHARE)))
        with solver_stdout_silenced():
            highs.run()
        info = highs.getInfo()
        if info.primal_solution_status:
            value = -info.objective_function_value
            if value > best * (1 + 1e-6):
                best = value
                values = highs.getSolution().col_value
                for var in count.values():
                    var.varValue = values[var.index]
                solution = {var.name: round(values[var.index]) for var in count.values()}
    return solution


def _warm_values(groups: list[Group], warm: Placement, count: dict) -> dict[str, float]:
    values: dict[str, float] = {}
    group_of = {(n, g.tp): gi for gi, g in enumerate(groups) for n in g.nodes}
    for unit, (s, e) in warm.units().items():
        members = warm.members(unit)
        key = (group_of.get((members[0], len(members)), -1), s, e)
        if key in count:
            values[count[key].name] = values.get(count[key].name, 0.0) + 1
    return values


def _placement_of(problem: PlacementProblem, groups: list[Group], solution: dict[str, float]) -> Placement:
    """Give each group's interval counts to its GPUs in index order, widest units first, so that a
    tensor-parallel unit takes consecutive GPUs of its host."""
    ranges = dict.fromkeys((n.name for n in problem.nodes), (0, 0))
    chosen: dict[int, list[tuple[int, int]]] = {}
    for name, value in solution.items():
        _, gi, s, e = name.split("_")
        chosen.setdefault(int(gi), []).extend([(int(s), int(e))] * int(round(value)))
    free = {(g.endpoint, g.gpu): list(g.nodes) for g in groups}
    tp_groups = []
    for gi in sorted(chosen, key=lambda gi: (-groups[gi].tp, gi)):
        group = groups[gi]
        pool = free[group.endpoint, group.gpu]
        for span in sorted(chosen[gi]):
            members, pool[:group.tp] = pool[:group.tp], []
            for node in members:
                ranges[node] = span
            if group.tp > 1:
                tp_groups.append(tuple(members))
    return Placement(ranges, tuple(tp_groups))


