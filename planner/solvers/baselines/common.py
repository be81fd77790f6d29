"""Helpers every baseline shares: empty ranges, GPU speed, tie-breaking, results."""

from __future__ import annotations

import time

from planner.flow import max_flow
from planner.problem import Placement, PlacementProblem
from planner.solvers.base import SolveResult

_TIE = 1e-6  # relative: max flows closer than this are equal (the shallower layout wins)


def empty(problem: PlacementProblem) -> dict[str, tuple[int, int]]:
    return dict.fromkeys((n.name for n in problem.nodes), (0, 0))


def rates(problem: PlacementProblem) -> dict[str, float]:
    """Each GPU's speed: its best layer-tokens/s (tokens/s x layers held, over the ranges it can hold),
    the figure Petals servers announce per block; the same measure bounds the problem's throughput."""
    by_type: dict[str, float] = {}
    for gpu, cost in problem.costs.items():
        by_type[gpu] = max((cost.capacity(k, 0.0) * k for k in range(1, cost.max_layers() + 1)), default=0.0)
    return {n.name: by_type[n.gpu] for n in problem.nodes}


def fastest_first(problem: PlacementProblem) -> list[str]:
    speeds = rates(problem)
    return sorted(speeds, key=lambda name: (-speeds[name], name))


def longest(problem: PlacementProblem, node: str, start: int) -> int:
    """Most layers `node` holds starting at `start` (0 if none): ending at the last layer if it can."""
    for k in range(problem.layers - start, 0, -1):
        if problem.fits(node, start, start + k):
            return k
    return 0


def flow_value(problem: PlacementProblem, placement: Placement) -> float:
    return max_flow(problem, placement).value


def better(flow: float, depth: int, best: tuple[float, int] | None) -> bool:
    """Higher max flow wins; on a tie the shallower pipeline (fewer stages) does."""
    if best is None:
        return flow > 0
    if flow > best[0] * (1 + _TIE):
        return True
    return flow >= best[0] * (1 - _TIE) and depth < best[1]


def result(method: str, placement: Placement, began: float, notes: list[str]) -> SolveResult:
    return SolveResult(method, placement, "feasible", time.perf_counter() - began, notes=tuple(notes))
