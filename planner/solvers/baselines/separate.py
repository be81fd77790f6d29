"""One pipeline per GPU type: homogeneous chains side by side."""

from __future__ import annotations

import math
import time

from planner.errors import SolveError
from planner.problem import Placement, PlacementProblem
from planner.solvers.base import Progress, SolveResult
from planner.solvers.baselines.common import empty, result


def _balanced_split(problem: PlacementProblem, chain: list[str]) -> list[tuple[int, int]] | None:
    """Contiguous ranges covering every layer along `chain`, each fitting its GPU, chosen so the slowest
    stage is as fast as possible (then the most total capacity): layers in proportion to GPU speed.
    Dynamic programme over (GPUs placed, boundary); None when the chain cannot hold the model."""
    layers = problem.layers
    reach = max(problem.max_layers(n, 1, 2) for n in chain) + 1  # no range is longer than this
    best: list[dict[int, tuple[float, float]]] = [{0: (math.inf, 0.0)}]
    back: list[dict[int, int]] = [{}]
    for node in chain:
        row: dict[int, tuple[float, float]] = {}
        came: dict[int, int] = {}
        for start, (low, total) in sorted(best[-1].items()):
            for end in range(start + 1, min(layers, start + reach) + 1):
                if not problem.fits(node, start, end):
                    continue
                cap = problem.capacity(node, start, end)
                value = (min(low, cap), total + cap)
                if end not in row or value > row[end]:
                    row[end], came[end] = value, start
        best.append(row)
        back.append(came)
    if layers not in best[-1]:
        return None
    spans, end = [], layers
    for i in range(len(chain), 0, -1):
        start = back[i][end]
        spans.append((start, end))
        end = start
    return spans[::-1]


def _chain_length(problem: PlacementProblem, node: str, available: int) -> int | None:
    """Fewest GPUs like `node` that hold the whole model in one chain (None if `available` do not)."""
    for m in range(1, min(available, problem.layers) + 1):
        if m == 1:
            can = problem.fits(node, 0, problem.layers)
        else:
            first = problem.max_layers(node, 0, 1)
            last = problem.max_layers(node, problem.layers - 1, problem.layers)
            middle = problem.max_layers(node, 1, 2)
            can = first >= 1 and last >= 1 and first + last + (m - 2) * middle >= problem.layers
        if can:
            return m
    return None


def separate(problem: PlacementProblem, *, time_limit: float = 0, seed: int = 0,
             progress: Progress | None = None) -> SolveResult:
    """One pipeline per GPU type: each type's GPUs form independent chains holding the whole model.

    Models the common practice of never mixing GPU generations: each type gets as many chains as its
    GPUs can fill (the fewest GPUs of that type that hold the model, leftover GPUs lengthening the
    chains), GPUs taken in host order so a chain stays inside hosts where it can; within a chain layers
    are split so its stages are as balanced as possible (proportional to speed, within memory). A type
    whose GPUs together cannot hold the model is left out. All pipelines serve side by side (the
    coordinator spreads requests over them). People do it because homogeneous pipelines are what serving
    engines support and are easy to reason about.
    """
    began = time.perf_counter()
    ranges = empty(problem)
    notes: list[str] = []
    types = list(dict.fromkeys(n.gpu for n in problem.nodes))
    built = 0
    for gpu in types:
        nodes = [n.name for n in problem.nodes if n.gpu == gpu]
        length = _chain_length(problem, nodes[0], len(nodes))
        if length is None:
            notes.append(f"separate: the {len(nodes)} {gpu} GPU(s) cannot hold {problem.layers} layers; left out")
            continue
        chains = len(nodes) // length
        base, extra = divmod(len(nodes), chains)
        position = 0
        for c in range(chains):
            size = min(base + (1 if c < extra else 0), problem.layers)
            chain = nodes[position: position + size]
            position += base + (1 if c < extra else 0)
            spans = _balanced_split(problem, chain)
            if spans is None:  # identical GPUs: cannot happen when _chain_length said yes
                raise SolveError(f"separate: a chain of {size} {gpu} GPUs cannot hold the model")
            for node, span in zip(chain, spans):
                ranges[node] = span
            built += 1
        notes.append(f"separate: {chains} chain(s) of {gpu}")
    if not built:
        raise SolveError("separate: no GPU type has enough GPUs to hold the whole model on its own")
    return result("separate", Placement(ranges), began, notes)
