"""SWARM parallelism: equal stages served by pools of GPUs balanced by capacity."""

from __future__ import annotations

import time

from planner.errors import SolveError
from planner.problem import Placement, PlacementProblem, split_evenly
from planner.solvers.base import Progress, SolveResult, no_progress
from planner.solvers.baselines.common import better, empty, fastest_first, flow_value, result


def _assign_stages(problem: PlacementProblem, stages: list[tuple[int, int]],
                   order: list[str]) -> list[list[str]] | None:
    """GPUs onto stages, balancing each stage's total capacity: the stage with the fewest candidates
    first gets its fastest candidate, then largest-capacity-first onto the stage with the lowest total.
    None when some stage has no GPU that holds it."""
    eligible = [[n for n in order if problem.fits(n, *span)] for span in stages]
    if any(not e for e in eligible):
        return None
    members: list[list[str]] = [[] for _ in stages]
    totals = [0.0] * len(stages)
    taken: set[str] = set()
    for j in sorted(range(len(stages)), key=lambda j: (len(eligible[j]), j)):
        free = [n for n in eligible[j] if n not in taken]
        if not free:
            return None
        members[j].append(free[0])
        taken.add(free[0])
        totals[j] += problem.capacity(free[0], *stages[j])
    for node in order:
        if node in taken:
            continue
        options = [j for j in range(len(stages)) if problem.fits(node, *stages[j])]
        if not options:
            continue
        j = min(options, key=lambda j: (totals[j], j))
        members[j].append(node)
        totals[j] += problem.capacity(node, *stages[j])
    return members


def swarm(problem: PlacementProblem, *, time_limit: float = 0, seed: int = 0,
          progress: Progress | None = None) -> SolveResult:
    """SWARM parallelism: S equal stages, every GPU joins one stage, stages balanced by capacity.

    Models SWARM (Ryabinin et al., 2023) and similar "stage pools": the model is cut into S equal
    stages; each stage is served by a pool of interchangeable GPUs, and any GPU of stage i may pass to
    any GPU of stage i + 1 (all-to-all between pools). GPUs are spread so each pool's total capacity is
    balanced (largest capacity first onto the pool with the lowest total). People use it because it is
    simple, tolerates GPUs joining and leaving, and makes no GPU a single point of failure. S runs from
    the smallest that fits in memory to the number of GPUs; the S with the highest static max flow wins
    (the shallower one on a tie).
    """
    began = time.perf_counter()
    report = progress or no_progress
    order = fastest_first(problem)
    best: tuple[float, int] | None = None
    best_placement = None
    for depth in range(1, min(len(order), problem.layers) + 1):
        if best_placement is not None and 0 < time_limit < time.perf_counter() - began:
            report("swarm: time limit reached; deeper stage counts not tried")
            break
        stages = split_evenly(problem.layers, depth)
        members = _assign_stages(problem, stages, order)
        if members is None:
            continue
        ranges = empty(problem)
        for span, nodes in zip(stages, members):
            for node in nodes:
                ranges[node] = span
        placement = Placement(ranges)
        flow = flow_value(problem, placement)
        report(f"swarm: {depth} stages, max flow {flow:,.0f} tokens/s")
        if better(flow, depth, best):
            best, best_placement = (flow, depth), placement
    if best_placement is None:
        raise SolveError("swarm: no number of equal stages gives every stage a GPU that holds it")
    depth = best[1]
    return result("swarm", best_placement, began,
                  [f"swarm: {depth} stage(s) of about {problem.layers / depth:.1f} layers"])
