"""The default method: heuristic starting points, the max-flow MILP, and for latency models rounds that
re-quote capacities at the round trip each candidate really has (docs/planner.md#optimiser). The MILP's
formulation lives in planner/solvers/milp.py."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from planner.engines import GROUP_ENGINES, SINGLE_GPU_ENGINES
from planner.errors import SolveError
from planner.problem import Placement, PlacementProblem, group_name
from planner.serving import estimate
from planner.solvers import baselines
from planner.solvers.base import Progress, SolveResult
from planner.solvers.branches import branch_placements
from planner.solvers.chains import chain_candidates
from planner.solvers.milp import solve_max_flow
from planner.solvers.pipeline_dp import disjoint_chains
from planner.solvers.short_trips import short_trip_placements
from planner.solvers.stage_pools import stage_pool_placements
from planner.solvers.vllm_plans import vllm_plans

FIXED_POINT_ROUNDS = 4
EXPLORE_STRETCH = (1.5, 2.25)  # each round also scores the best pipelines quoted at these multiples of its round trip
START_SHARE = 0.4            # share of the time limit for scoring heuristic starting points
# cheapest first, so that a tight time limit still sees them (swarm scores many stage counts)
BASELINE_ORDER = ("even", "separate", "replicas", "tp-pp", "greedy", "swarm")
DP_SHARE = 0.1  # share of the time limit for the exact single-pipeline programme
POOLS_SHARE = 0.1  # share of the time limit for stages of identical GPU groups
POOL_STARTS = 3  # the best few of them are warm starts (each costs a max flow to score)
SCORING_SHARE = 0.03  # of the time limit, left for re-scoring the returned placement (plan.score)
# latency models: a round starts only with room for scoring its outcome and for plan.score's two fixed
# points (the serving estimate and the round-trip max flow), each about as slow as the slowest scoring
RESERVED_SCORINGS = 3


def baseline_placements(problem: PlacementProblem, seed: int = 0,
                        deadline: float = math.inf) -> Iterator[Placement]:
    """What people do today: every baseline's placement that exists for this cluster, then every
    uniform TP x PP layout, lazily. Nothing new is started after `deadline`."""
    yield from method_placements(problem, seed, deadline)
    yield from uniform_tp_pp_placements(problem, deadline)


def method_placements(problem: PlacementProblem, seed: int = 0, deadline: float = math.inf,
                      search_deadline: float | None = None) -> Iterator[Placement]:
    """Each baseline method's placement that exists for this cluster, cheapest method first; none is
    started after `deadline`, and methods that search (swarm, tp-pp) stop by `search_deadline`."""
    search_deadline = deadline if search_deadline is None else search_deadline
    names = sorted(baselines.METHODS, key=lambda n: (BASELINE_ORDER.index(n) if n in BASELINE_ORDER else 99, n))
    for name in names:
        method = baselines.METHODS[name]
        if time.perf_counter() > deadline:
            return
        try:
            # each gets half of what is left before the deadline (slow ones stop at their best so far)
            limit = max(1.0, (search_deadline - time.perf_counter()) / 2) if math.isfinite(search_deadline) else 0
            yield method(problem, time_limit=limit, seed=seed, progress=lambda m: None).placement
        except SolveError:
            pass


def uniform_tp_pp_placements(problem: PlacementProblem, deadline: float = math.inf) -> Iterator[Placement]:
    """Every uniform TP x PP layout."""
    # every uniform tensor-parallel grouping, not just the one with the most max flow: groups pool
    # memory into KV room, which max flow does not see
    for _, _, _, placement in baselines.tp_pp_placements(problem):
        if time.perf_counter() > deadline:
            return
        yield placement


def heuristic_starts(problem: PlacementProblem, seed: int, began: float, time_limit: float) -> list[Placement]:
    """Warm starts for a solve that began at `began`: the baselines (within START_SHARE of the time
    limit), the best disjoint pipelines (within DP_SHARE), then the chain candidates (at most 5 s, or a
    quarter of what is left)."""
    starts = stage_pool_placements(problem, time.perf_counter() + time_limit * POOLS_SHARE)[:POOL_STARTS]
    starts += baseline_placements(problem, seed, began + time_limit * START_SHARE)
    starts += disjoint_chains(problem, time.perf_counter() + time_limit * DP_SHARE)
    left = began + time_limit - time.perf_counter()
    return starts + chain_candidates(problem, time.perf_counter() + min(5.0, left / 4))


def optimise(problem: PlacementProblem, *, time_limit: float = 60.0, seed: int = 0,
             progress: Progress | None = None) -> SolveResult:
    """Default method. Static tables: the max-flow MILP, solved to a proof or the time limit.
    Latency models: capacities are re-quoted at the round trip each candidate placement really has,
    re-solved, and the candidate that the serving estimator predicts to serve most under the problem's
    latency limits wins. Returns within the time limit (plus one scoring of the last candidate).
    For the vllm engine, only plans vLLM can run: planner/solvers/vllm_plans.py."""
    if problem.cluster.engine == "vllm":
        return vllm_plans(problem, time_limit=time_limit, seed=seed, progress=progress)
    began = time.perf_counter()
    say = progress or (lambda message: None)
    time_limit *= 1 - SCORING_SHARE  # the caller re-scores the placement within the user's limit
    deadline = began + time_limit
    # heuristic starting points get at most 40% of the time; the MILP rounds need the rest
    starts_deadline = began + time_limit * START_SHARE
    if problem.static:
        say("max-flow MILP (static throughput tables)")
        starts = heuristic_starts(problem, seed, began, time_limit)
        # plan.score re-scores the placement after: three max flows (static, balanced, round trip)
        outcome = solve_max_flow(problem, time_limit=deadline - time.perf_counter(), warm_starts=starts, seed=seed,
                                 reserve_scorings=3)
        gap = (outcome.bound - outcome.objective) / outcome.bound if outcome.bound > 0 else 0.0
        return SolveResult("milp", outcome.placement, outcome.status, time.perf_counter() - began,
                           gap=max(gap, 0.0), bound=outcome.bound)
    scored: dict[tuple, float] = {}
    best = None
    best_by_kind: dict[bool, tuple] = {}  # with / without tensor-parallel groups: for the note on TP
    unfinished = None  # the best candidate whose estimate the deadline cut: returned only if none finished
    cut_short = 0
    rtt, status = 0.0, "optimal"
    slowest = 0.0  # longest scoring so far: new work starts only if one more scoring still fits
    single_gpus = problem.cluster.engine in SINGLE_GPU_ENGINES   # no tensor-parallel groups in its plans
    needs_tp: set[tuple] = set()   # candidates passed over for their tensor-parallel groups

    def consider(placement: Placement) -> None:
        nonlocal best, slowest, unfinished, cut_short
        key = tuple(sorted(placement.used().items())) + tuple(placement.tp_groups)
        if key in scored or not placement.used():
            return
        if placement.tp_groups and single_gpus:
            needs_tp.add(key)
            return
        scoring = time.perf_counter()
        served = estimate(problem, placement, max_tpot_s=problem.max_tpot_s, max_ttft_s=problem.max_ttft_s,
                          deadline=deadline)
        slowest = max(slowest, time.perf_counter() - scoring)
        scored[key] = served.throughput
        rank = (served.throughput, -(served.tpot_s or 0.0))
        if not served.complete:  # figures from a fixed point that had not settled: not ranked with the rest
            cut_short += 1
            if unfinished is None or rank > unfinished[0]:
                unfinished = (rank, placement, served)
            return
        kind = bool(placement.tp_groups)
        if kind not in best_by_kind or rank > best_by_kind[kind][0]:
            best_by_kind[kind] = (rank, placement, served)
        if best is None or rank > best[0]:
            best = (rank, placement, served)

    starts = []
    # what people do today: every baseline's own placement is scored while one more scoring and the
    # final re-scoring fit at all (the plan is never below a baseline for want of time) ...
    for placement in method_placements(problem, seed, deadline, starts_deadline):
        starts.append(placement)
        if time.perf_counter() + (RESERVED_SCORINGS + 1) * slowest > deadline:
            break
        consider(placement)
    # chains with short round trips: under KV-bound admission a path serves in flight / round trip,
    # which the max-flow candidates below, quoted at one round trip for every GPU, cannot rank. Not
    # under latency limits: there, scored this early, they displaced better plans within tight time
    # limits (compare's "milp at this TPOT" on hetero with 10 s fell below tp-pp's own 458 tokens/s)
    limited = problem.max_tpot_s is not None or problem.max_ttft_s is not None
    for placement in [] if limited else short_trip_placements(problem, starts_deadline):
        starts.append(placement)
        if time.perf_counter() + (RESERVED_SCORINGS + 1) * slowest > deadline:
            break
        consider(placement)
    # a fast trunk and slow branches: for an engine that moves a path's sequences as one group, the
    # structure that keeps each group's walk short and the trunk's KV room large
    grouped = problem.cluster.engine in GROUP_ENGINES
    for placement in branch_placements(problem, starts_deadline) if grouped else []:
        starts.append(placement)
        if time.perf_counter() + (RESERVED_SCORINGS + 1) * slowest > deadline:
            break
        consider(placement)
    # ... the other uniform TP x PP layouts only within the share for starting points
    for placement in uniform_tp_pp_placements(problem, starts_deadline):
        starts.append(placement)
        if time.perf_counter() + slowest > starts_deadline:
            break  # scoring another would eat into the MILP rounds
        consider(placement)
    for round_no in range(FIXED_POINT_ROUNDS):
        left = deadline - RESERVED_SCORINGS * slowest - time.perf_counter()
        if left <= 0.05:
            status = "time_limit"
            break
        quoted = problem.with_rtt(rtt)
        chains_found = stage_pool_placements(quoted, time.perf_counter() + left * POOLS_SHARE)[:POOL_STARTS]
        chains_found += disjoint_chains(quoted, time.perf_counter() + left * DP_SHARE)
        chains_found += chain_candidates(quoted, time.perf_counter() + left / 8)
        # a round quotes one round trip for every GPU; longer ones favour placements with more KV room
        # per GPU, which the rounds can converge without seeing: their best pipelines are cheap to find
        for stretch in EXPLORE_STRETCH if rtt > 0 else ():
            chains_found += disjoint_chains(problem.with_rtt(rtt * stretch), time.perf_counter() + left * DP_SHARE)
        for placement in chains_found:
            if time.perf_counter() + slowest > deadline - RESERVED_SCORINGS * slowest - left / 2:
                break  # keep most of the round for the MILP
            consider(placement)
        say(f"round {round_no + 1}: MILP with capacities at a {rtt * 1e3:.1f} ms round trip")
        left = deadline - RESERVED_SCORINGS * slowest - time.perf_counter()
        pool = ([best[1]] if best else []) + chains_found + starts
        outcome = solve_max_flow(quoted, time_limit=max(left / (FIXED_POINT_ROUNDS - round_no), 0.1),
                                 warm_starts=pool, seed=seed)
        if outcome.status != "optimal":
            status = "time_limit"
        consider(outcome.placement)
        if best is None:
            break  # nothing finished scoring: the time is spent
        served = best[2]
        say(f"round {round_no + 1}: best serves {served.throughput:,.0f} tok/s, TPOT {(served.tpot_s or 0) * 1e3:.1f} ms")
        if served.tpot_s is None or abs(served.tpot_s - rtt) <= 0.02 * max(rtt, 1e-9):
            break
        rtt = served.tpot_s
    notes = [f"serving objective: {len(scored)} candidate placements scored with capacities consistent "
             "with their own round trips; status refers to the max-flow MILP of each round"]
    if cut_short:
        status = "time_limit"
        notes.append(f"time limit: {cut_short} candidate placement(s) not ranked, their serving estimates "
                     "cut short by the deadline")
    if best is None:
        if unfinished is None and needs_tp:
            raise SolveError(f"every placement found needs tensor-parallel groups, which the {problem.cluster.engine} "
                             "engine does not run (layers on single GPUs only); plan with --engine runtime or vllm")
        if unfinished is None:
            raise SolveError("time limit too short to find any placement; raise --time-limit")
        best = unfinished
        notes.append("time limit: no serving estimate finished; the plan is the best of the unfinished ones")
    _, placement, served = best
    return SolveResult("milp", placement, status, time.perf_counter() - began, gap=None, bound=served.max_flow,
                       notes=tuple(notes) + _tp_notes(problem, placement, best_by_kind))


def _tp_notes(problem: PlacementProblem, chosen: Placement, best_by_kind: dict[bool, tuple]) -> tuple[str, ...]:
    """Why the plan does or does not group GPUs for tensor parallelism, with the best alternative."""
    def figures(entry: tuple) -> str:
        served = entry[2]
        return f"{served.throughput:,.0f} tokens/s at TPOT {(served.tpot_s or 0) * 1e3:.0f} ms"

    with_tp = bool(chosen.tp_groups)
    notes = []
    if with_tp:
        for group in chosen.tp_groups:
            unit = group_name(group)
            span = chosen.units()[unit]
            first, last = span[0] == 0, span[1] == problem.layers
            grouped, single = problem.cost_of(unit), problem.cost_of(group[0])
            k = span[1] - span[0]
            sequences = grouped.max_batch(k, first, last)
            notes.append(f"tensor parallelism: {unit} hold layers [{span[0]}, {span[1]}) as one unit: their memory "
                         f"pools into KV room for {sequences} sequences (one {problem.by_name[group[0]].gpu} "
                         f"holds at most {single.max_layers(first, last)} of these layers), for two all-reduces "
                         f"per layer, {2 * k * grouped.all_reduce_s(max(sequences, 1)) * 1e3:.1f} ms per decode "
                         "step at that batch")
    alternative = best_by_kind.get(not with_tp)
    if alternative is not None and with_tp in best_by_kind:  # (an unfinished estimate's plan is in neither)
        what = "without tensor-parallel groups" if with_tp else "with tensor-parallel groups"
        notes.append(f"the best plan {what} serves {figures(alternative)}; this plan "
                     f"serves {figures(best_by_kind[with_tp])}")
    return tuple(notes)


METHODS = {"milp": optimise}
