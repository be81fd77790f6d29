"""The optimiser: a layer-boundary MILP for static max flow, iterated to serve the most tokens.

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
import pulp

from planner.errors import SolveError
from planner.flow import max_flow
from planner.problem import Placement, PlacementProblem
from planner.serving import estimate
from planner.solvers.base import Progress, SolveResult
from planner.solvers import baselines
from planner.solvers.chains import chain_candidates

COORDINATOR = "coordinator"
FIXED_POINT_ROUNDS = 4


@dataclass(frozen=True)
class Group:
    """Interchangeable GPUs: same host, same type."""

    host: str
    gpu: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class MilpOutcome:
    placement: Placement
    objective: float
    bound: float
    status: str


def groups_of(problem: PlacementProblem) -> list[Group]:
    found: dict[tuple[str, str], list[str]] = {}
    for node in problem.nodes:
        found.setdefault((node.host, node.gpu), []).append(node.name)
    return [Group(host, gpu, tuple(nodes)) for (host, gpu), nodes in found.items()]


def _zones(problem: PlacementProblem, hosts: list[str], never_binding: float) -> list[list[str]]:
    """Partition hosts into zones whose every internal link carries more than any placement could send."""
    zones: list[list[str]] = []
    for host in hosts:
        for zone in zones:
            if all(problem.link_capacity(host, other) >= never_binding and
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


def solve_max_flow(problem: PlacementProblem, *, time_limit: float, warm: Placement | None = None,
                   threads: int = 2) -> MilpOutcome:
    """Placement with the most static max flow at the problem's capacities (its rtt_s)."""
    layers = problem.layers
    groups = groups_of(problem)
    hosts = list(dict.fromkeys(g.host for g in groups))
    ub = problem.upper_bound()
    zones = _zones(problem, hosts, never_binding=ub * 1.0001)
    zone_of = {h: i for i, zone in enumerate(zones) for h in zone}

    lp = pulp.LpProblem("placement", pulp.LpMaximize)
    count, flow = {}, {}
    for gi, group in enumerate(groups):
        node = group.nodes[0]
        for s in range(layers):
            for e in range(s + 1, layers + 1):
                if not problem.fits(node, s, e):
                    continue
                cap = problem.capacity(node, s, e)
                if cap <= 0:
                    continue
                count[gi, s, e] = pulp.LpVariable(f"x_{gi}_{s}_{e}", 0, len(group.nodes), cat="Integer")
                flow[gi, s, e] = pulp.LpVariable(f"y_{gi}_{s}_{e}", 0)
                lp += flow[gi, s, e] <= cap * count[gi, s, e]
    if not count:
        raise SolveError("no GPU can hold even one layer with KV room: the model does not fit")
    for gi, group in enumerate(groups):
        lp += pulp.lpSum(v for (g, _, _), v in count.items() if g == gi) <= len(group.nodes)

    def out_at(host: str, b: int):  # flow leaving the GPUs of `host` that end at boundary b
        return pulp.lpSum(v for (g, _, e), v in flow.items() if e == b and groups[g].host == host)

    def in_at(host: str, b: int):
        return pulp.lpSum(v for (g, s, _), v in flow.items() if s == b and groups[g].host == host)

    # coordinator links: token ids in to layer 0, sampled ids back from the last layer
    for host in hosts:
        cap = min(problem.coordinator_capacity(host), ub * 1.0001)
        lp += in_at(host, 0) <= cap
        lp += out_at(host, layers) <= cap
    lp += pulp.lpSum(in_at(h, 0) for h in hosts) == pulp.lpSum(out_at(h, layers) for h in hosts)
    # boundaries: each host's outflow goes over links (shared per host pair and boundary)
    for b in range(1, layers):
        senders = [h for h in hosts if any(e == b and groups[g].host == h for (g, _, e) in flow)]
        receivers = [h for h in hosts if any(s == b and groups[g].host == h for (g, s, _) in flow)]
        sent = {h: [] for h in senders}
        received = {h: [] for h in receivers}
        for ha, hb in itertools.product(senders, receivers):
            if zone_of[ha] == zone_of[hb] and ha != hb:
                continue  # pooled below
            cap = problem.link_capacity(ha, hb)
            if cap <= 0:
                continue
            # a bound above anything the GPUs can send only hurts numerics: clamp it
            var = pulp.LpVariable(f"g_{hosts.index(ha)}_{hosts.index(hb)}_{b}", 0, min(cap, ub * 1.0001))
            sent[ha].append(var)
            received[hb].append(var)
        pooled_out, pooled_in = {}, {}
        for zi, zone in enumerate(zones):
            members_out = [h for h in zone if h in sent]
            members_in = [h for h in zone if h in received]
            if len(zone) > 1 and members_out and members_in:
                for h in members_out:
                    pooled_out[h] = pulp.LpVariable(f"po_{hosts.index(h)}_{b}", 0)
                    sent[h].append(pooled_out[h])
                for h in members_in:
                    pooled_in[h] = pulp.LpVariable(f"pi_{hosts.index(h)}_{b}", 0)
                    received[h].append(pooled_in[h])
                lp += pulp.lpSum(pooled_out[h] for h in members_out) == pulp.lpSum(pooled_in[h] for h in members_in)
        for h in senders:
            lp += out_at(h, b) == pulp.lpSum(sent[h])
        for h in receivers:
            lp += in_at(h, b) == pulp.lpSum(received[h])
        for h in hosts:  # a host with no matching partner at b can carry nothing across it
            if h in senders and not sent[h]:
                lp += out_at(h, b) == 0
    lp += pulp.lpSum(in_at(h, 0) for h in hosts)

    began = time.perf_counter()
    heuristics = chain_candidates(problem, began + min(5.0, time_limit / 4)) + ([warm] if warm else [])
    scored = [(max_flow(problem, p).value, i, p) for i, p in enumerate(heuristics)]
    incumbent_value, _, incumbent = max(scored, default=(0.0, 0, None), key=lambda t: (t[0], -t[1]))
    start = _warm_values(problem, groups, incumbent, count) if incumbent else None
    left = time_limit - (time.perf_counter() - began)
    solver = _WarmHighs(start, msg=False, timeLimit=max(left, 0.1), threads=threads, gapRel=1e-6)
    lp.solve(solver)
    found = _disaggregate(problem, groups, count) if lp.objective.value() is not None else None
    value = max_flow(problem, found).value if found else 0.0
    placement, objective = (found, value) if value >= incumbent_value else (incumbent, incumbent_value)
    if placement is None:
        raise SolveError(f"the MILP solver found no placement ({pulp.LpStatus[lp.status]})")
    bound = solver.dual_bound if math.isfinite(solver.dual_bound) else ub
    bound = max(min(bound, ub), objective)
    proven = bound <= objective * (1 + 1e-4) + 1e-9
    return MilpOutcome(placement, objective, bound, "optimal" if proven else "time_limit")


def _warm_values(problem: PlacementProblem, groups: list[Group], warm: Placement, count: dict) -> dict[str, float]:
    values: dict[str, float] = {}
    group_of = {n: gi for gi, g in enumerate(groups) for n in g.nodes}
    for name, (s, e) in warm.used().items():
        key = (group_of[name], s, e)
        if key in count:
            values[count[key].name] = values.get(count[key].name, 0.0) + 1
    return values


def _disaggregate(problem: PlacementProblem, groups: list[Group], count: dict) -> Placement:
    """Give each group's interval counts to its GPUs in index order."""
    ranges = dict.fromkeys((n.name for n in problem.nodes), (0, 0))
    for gi, group in enumerate(groups):
        chosen = sorted((s, e) for (g, s, e), v in count.items()
                        if g == gi for _ in range(int(round(v.value() or 0))))
        for name, span in zip(group.nodes, chosen):
            ranges[name] = span
    return Placement(ranges)


def optimise(problem: PlacementProblem, *, time_limit: float = 60.0, seed: int = 0,
             progress: Progress | None = None, max_tpot_s: float | None = None,
             max_ttft_s: float | None = None, warm: Placement | None = None) -> SolveResult:
    """Default method. Static tables: the max-flow MILP, solved to a proof or the time limit.
    Latency models: capacities are re-quoted at the round trip each candidate placement really has,
    re-solved, and the candidate that the serving estimator predicts to serve most wins."""
    began = time.perf_counter()
    say = progress or (lambda message: None)
    deadline = began + time_limit
    if problem.static:
        say("max-flow MILP (static throughput tables)")
        outcome = solve_max_flow(problem, time_limit=time_limit, warm=warm)
        gap = (outcome.bound - outcome.objective) / outcome.bound if outcome.bound > 0 else 0.0
        return SolveResult("milp", outcome.placement, outcome.status, time.perf_counter() - began,
                           gap=max(gap, 0.0), bound=outcome.bound)
    candidates: dict[tuple, Placement] = {}
    best = None
    rtt, status = 0.0, "optimal"

    def consider(placement: Placement) -> None:
        nonlocal best
        key = tuple(sorted(placement.used().items()))
        if key in candidates or not placement.used():
            return
        candidates[key] = placement
        served = estimate(problem, placement, max_tpot_s=max_tpot_s, max_ttft_s=max_ttft_s)
        rank = (served.throughput, -(served.tpot_s or 0.0))
        if best is None or rank > best[0]:
            best = (rank, placement, served)

    for name, method in baselines.METHODS.items():  # what people do today is a candidate too
        try:
            consider(method(problem, time_limit=1.0, seed=seed, progress=say).placement)
        except SolveError:
            pass
    for round_no in range(FIXED_POINT_ROUNDS):
        left = deadline - time.perf_counter()
        if left <= 0.05:
            status = "time_limit"
            break
        quoted = problem.with_rtt(rtt)
        for placement in chain_candidates(quoted, min(deadline, time.perf_counter() + left / 4)):
            consider(placement)
        say(f"round {round_no + 1}: MILP with capacities at a {rtt * 1e3:.1f} ms round trip")
        left = deadline - time.perf_counter()
        outcome = solve_max_flow(quoted, time_limit=left / (FIXED_POINT_ROUNDS - round_no),
                                 warm=best[1] if best else warm)
        if outcome.status != "optimal":
            status = "time_limit"
        consider(outcome.placement)
        served = best[2]
        say(f"round {round_no + 1}: best serves {served.throughput:,.0f} tok/s, TPOT {(served.tpot_s or 0) * 1e3:.1f} ms")
        if served.tpot_s is None or abs(served.tpot_s - rtt) <= 0.02 * max(rtt, 1e-9):
            break
        rtt = served.tpot_s
    if best is None:
        raise SolveError("time limit too short to find any placement; raise --time-limit")
    _, placement, served = best
    note = (f"serving objective: {len(candidates)} candidate placements scored with capacities consistent "
            "with their own round trips; status refers to the max-flow MILP of each round")
    return SolveResult("milp", placement, status, time.perf_counter() - began, gap=None,
                       bound=served.max_flow, notes=(note,))


def milp(problem: PlacementProblem, *, time_limit: float = 60.0, seed: int = 0,
         progress: Progress | None = None) -> SolveResult:
    return optimise(problem, time_limit=time_limit, seed=seed, progress=progress)


METHODS = {"milp": milp}
