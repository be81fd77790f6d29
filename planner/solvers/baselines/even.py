"""Equal layers per GPU, in host order (docs/planner.md#baselines)."""

from __future__ import annotations

import time

from planner.errors import SolveError
from planner.problem import Placement, PlacementProblem, split_evenly
from planner.solvers.base import Progress, SolveResult
from planner.solvers.baselines.common import empty, result


def even(problem: PlacementProblem, *, time_limit: float = 0, seed: int = 0,
         progress: Progress | None = None) -> SolveResult:
    """Equal layers per GPU in host order: the hand split of the seed-000 notes (10 layers x 4 GPUs).

    Models what people do first by hand (and what `--pipeline-parallel-size N` does with one GPU per
    stage): one chain through every GPU in the order the cluster file lists them, equal stages, blind to
    GPU speed, memory and links. It is the reference every other method must beat.
    """
    began = time.perf_counter()
    nodes = [n.name for n in problem.nodes]
    if len(nodes) > problem.layers:
        nodes = nodes[: problem.layers]
    ranges = empty(problem)
    for name, span in zip(nodes, split_evenly(problem.layers, len(nodes))):
        if not problem.fits(name, *span):
            raise SolveError(f"even split: {name} cannot hold layers {span[0]}-{span[1]} "
                             f"({span[1] - span[0]} layers, at most {problem.max_layers(name, *span)} fit)")
        ranges[name] = span
    return result("even", Placement(ranges), began, [])
