"""Baseline placements, each what some group of users does today (docs/planner.md#baselines)."""

from __future__ import annotations

import time

from planner.errors import SolveError
from planner.problem import Placement, PlacementProblem
from planner.solvers.base import Progress, SolveResult


def split_evenly(layers: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges of `parts` stages as equal as possible, the first ones one layer longer."""
    base, extra = divmod(layers, parts)
    ranges, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def even(problem: PlacementProblem, *, time_limit: float = 0, seed: int = 0,
         progress: Progress | None = None) -> SolveResult:
    """Equal layers per GPU in host order: the hand split of the seed-000 notes (10 layers x 4 GPUs)."""
    began = time.perf_counter()
    nodes = [n.name for n in problem.nodes]
    if len(nodes) > problem.layers:
        nodes = nodes[: problem.layers]
    ranges = dict.fromkeys((n.name for n in problem.nodes), (0, 0))
    for name, span in zip(nodes, split_evenly(problem.layers, len(nodes))):
        if not problem.fits(name, *span):
            raise SolveError(f"even split: {name} cannot hold layers {span[0]}-{span[1]} "
                             f"({span[1] - span[0]} layers, at most {problem.max_layers(name, *span)} fit)")
        ranges[name] = span
    return SolveResult("even", Placement(ranges), "feasible", time.perf_counter() - began)


METHODS = {"even": even}
