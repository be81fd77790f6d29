"""Petals-style greedy: each GPU takes as many layers as fit, where throughput is lowest."""

from __future__ import annotations

import math
import time

from planner.errors import SolveError
from planner.problem import Placement, PlacementProblem
from planner.solvers.base import Progress, SolveResult, no_progress
from planner.solvers.baselines.common import empty, fastest_first, longest, result


def greedy(problem: PlacementProblem, *, time_limit: float = 0, seed: int = 0,
           progress: Progress | None = None) -> SolveResult:
    """Petals-style greedy: each GPU in turn serves as many layers as fit where throughput is lowest.

    Models decentralised swarms (Petals): servers join one by one, fastest first here (ties by name),
    and each takes a contiguous span of as many layers as it can hold where the layers currently have
    the least total capacity (Petals' rule: the window whose sorted per-layer capacities are
    lexicographically smallest; a longer window wins a tie). People use it because it needs no global
    optimisation and adapts as GPUs join. Petals clients may enter a server mid-span; our evaluator needs
    exact chaining, so spans are snapped to boundaries:
      1. chain: GPUs extend one chain from layer 0, each taking as many layers as fit, until the last
         layer is covered (the uncovered layers are the weakest: capacity 0);
      2. reinforce: each further GPU takes the weakest window from an existing end (or 0) to an existing
         start (or the last layer), as long as fits, so it lies on a full chain;
      3. GPUs no such window fits build another chain from layer 0 (ending on the last layer or on an
         existing start), and step 2 repeats with the new boundaries; a GPU left over stays unused.
    """
    began = time.perf_counter()
    report = progress or no_progress
    layers = problem.layers
    ranges = empty(problem)
    coverage = [0.0] * layers

    def place(node: str, start: int, end: int) -> None:
        ranges[node] = (start, end)
        cap = problem.capacity(node, start, end)
        for layer in range(start, end):
            coverage[layer] += cap

    def spans() -> list[tuple[int, int]]:
        return [r for r in ranges.values() if r[1] > r[0]]

    def chain(pool: list[str]) -> tuple[list[tuple[str, int, int]], list[str]]:
        """A chain from layer 0 through `pool` in order; it ends on the last layer or an existing start."""
        links, rest, frontier = [], [], 0
        for node in pool:
            k = longest(problem, node, frontier) if frontier < layers else 0
            if k == 0:
                rest.append(node)
                continue
            links.append((node, frontier, frontier + k))
            frontier += k
        joins = {s for s, _ in spans() if s > 0}
        while links and links[-1][2] < layers:     # a dead end: end it on an existing start, or drop it
            node, start, end = links[-1]
            snap = max((j for j in joins if start < j <= end), default=None)
            if snap is not None:
                links[-1] = (node, start, snap)
                break
            links.pop()
            rest.append(node)
        order = {n: i for i, n in enumerate(pool)}
        return links, sorted(rest, key=order.__getitem__)

    links, pending = chain(fastest_first(problem))
    if not links:
        covered = 0
        for node in fastest_first(problem):
            covered += longest(problem, node, covered) if covered < layers else 0
        raise SolveError(f"greedy: the GPUs, each taking as many layers as fit, cover layers 0-{covered} "
                         f"of {layers}; the model needs more memory")
    for link in links:
        place(*link)
    while pending:
        report(f"greedy: {len(spans())} GPUs placed, {len(pending)} left")
        leftover = []
        for node in pending:
            current = spans()
            ends = sorted({0} | {e for _, e in current if e < layers})
            starts = sorted({layers} | {s for s, _ in current if s > 0})
            best_key, best_span = None, None
            for start in ends:
                for end in starts:
                    if end <= start or not problem.fits(node, start, end):
                        continue
                    key = (sorted(coverage[start:end]) + [math.inf] * (layers - (end - start)), start)
                    if best_key is None or key < best_key:
                        best_key, best_span = key, (start, end)
            if best_span is None:
                leftover.append(node)
            else:
                place(node, *best_span)
        links, pending = chain(leftover) if leftover else ([], [])
        for link in links:
            place(*link)
        if not links:
            break
    notes = [f"greedy: {len(pending)} GPU(s) unused, no span between existing boundaries fits: "
             + ", ".join(pending)] if pending else []
    return result("greedy", Placement(ranges), began, notes)
