"""Routing policies: the path a request takes through a layout, chosen hop by hop at prompt time.

Shared by the simulator and the runtime, so it knows nothing of either: a policy sees the layout's
routing graph (who may pass activations to whom, and the max-flow tokens/s on each edge) and two
questions it may ask of the caller, `is_open(unit)` (may this unit take one more request: KV room,
batch slot) and `load(unit)` (how busy it is). Decode tokens follow the path their prompt took.

A unit is a GPU or a tensor-parallel group (its members joined with '+'), as in planner.flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from planner.problem import Placement, PlacementProblem

COORDINATOR = "coordinator"

IsOpen = Callable[[str], bool]
Load = Callable[[str], float]


@dataclass(frozen=True)
class RouteGraph:
    """Next hops of each unit (exact chaining, links that exist) and the layout's edge flows.

    `successors[COORDINATOR]` are the units holding layer 0; a unit holding the last layer has the
    single successor COORDINATOR. Weights are tokens/s (0 for an edge the max flow leaves unused).
    """

    successors: Mapping[str, tuple[str, ...]]
    weights: Mapping[tuple[str, str], float]

    @classmethod
    def build(cls, problem: PlacementProblem, placement: Placement,
              flows: Mapping[tuple[str, str], float]) -> "RouteGraph":
        units = placement.units()
        cluster = problem.cluster
        starts: dict[int, list[str]] = {}
        for name, (start, _) in units.items():
            starts.setdefault(start, []).append(name)
        successors: dict[str, tuple[str, ...]] = {
            COORDINATOR: tuple(sorted(u for u in starts.get(0, [])
                                      if cluster.coordinator_link(problem.host_of(u)) is not None))}
        for name, (_, end) in units.items():
            host = problem.host_of(name)
            if end == problem.layers:
                successors[name] = (COORDINATOR,) if cluster.coordinator_link(host) is not None else ()
            else:
                successors[name] = tuple(sorted(v for v in starts.get(end, [])
                                                if v != name and cluster.link(host, problem.host_of(v)) is not None))
        weights = {(a, b): float(flows.get((a, b), 0.0)) for a, nexts in successors.items() for b in nexts}
        return cls(successors, weights)


class Router:
    """Base policy: walks from the coordinator to the last stage, asking `choose` at every hop.

    Only next hops from which the coordinator can still be reached through open units are offered
    (a request never starts down a dead end); `route` returns None when no path is open.
    """

    name = "base"

    def __init__(self, graph: RouteGraph, seed: int = 0) -> None:
        self.graph = graph
        self.rng = np.random.default_rng(seed)
        self.next_hops: Mapping[str, tuple[str, ...]] = graph.successors   # a subclass may narrow them

    def options(self, at: str) -> tuple[str, ...]:
        """Next hops this policy considers from `at` (all of them, unless a subclass narrows them)."""
        return self.next_hops.get(at, ())

    def choose(self, at: str, options: tuple[str, ...], load: Load | None) -> str:
        raise NotImplementedError

    def route(self, is_open: IsOpen, load: Load | None = None) -> tuple[str, ...] | None:
        viable: dict[str, bool] = {COORDINATOR: True}
        options_of = self.next_hops.get   # options(), without a call of its own per unit

        def reaches_end(unit: str) -> bool:  # open, and an open path continues to the coordinator
            ok = viable.get(unit)
            if ok is None:
                viable[unit] = ok = False  # layers only grow along a path: no cycles, this only guards
                if is_open(unit):
                    for n in options_of(unit, ()):   # a loop, not any(generator): the simulator routes often
                        if reaches_end(n):
                            ok = True
                            break
                viable[unit] = ok
            return ok

        path: list[str] = []
        at = COORDINATOR
        while True:
            options = tuple([n for n in options_of(at, ()) if reaches_end(n)])
            if not options:
                return None
            at = options[0] if len(options) == 1 else self.choose(at, options, load)
            if at == COORDINATOR:
                return tuple(path)
            path.append(at)


class MaxFlowRouter(Router):
    """Interleaved (smooth) weighted round robin over the layout's max-flow edge flows, hop by hop.

    Each unit keeps a credit per next hop; a choice adds every open option's weight to its credit,
    takes the largest credit and subtracts the open options' total from it (nginx's smooth WRR), so
    over many requests each edge carries its share of the flow, interleaved rather than in runs.
    Edges the max flow leaves unused are never taken (when a unit has none with flow, all count equally).
    """

    name = "maxflow"

    def __init__(self, graph: RouteGraph, seed: int = 0) -> None:
        super().__init__(graph, seed)
        self.credit: dict[tuple[str, str], float] = {}
        self.next_hops = {}
        for at, nexts in graph.successors.items():
            weighted = tuple(n for n in nexts if graph.weights.get((at, n), 0.0) > 0)
            self.next_hops[at] = weighted or nexts

    def weight(self, at: str, nxt: str) -> float:
        return self.graph.weights.get((at, nxt), 0.0) or 1.0

    def choose(self, at: str, options: tuple[str, ...], load: Load | None) -> str:
        total = 0.0
        best, best_credit = options[0], -np.inf
        for n in options:
            w = self.weight(at, n)
            total += w
            credit = self.credit.get((at, n), 0.0) + w
            self.credit[(at, n)] = credit
            if credit > best_credit:
                best, best_credit = n, credit
        self.credit[(at, best)] -= total
        return best


class RandomRouter(Router):
    """Uniformly random among the open next hops (seeded numpy Generator): blind to speeds and flows."""

    name = "random"

    def choose(self, at: str, options: tuple[str, ...], load: Load | None) -> str:
        return options[int(self.rng.integers(len(options)))]


class ShortestQueueRouter(Router):
    """The open next hop with the least load (requests it holds, as the caller counts them); ties by name."""

    name = "shortest-queue"

    def choose(self, at: str, options: tuple[str, ...], load: Load | None) -> str:
        if load is None:
            return options[0]
        return min(options, key=lambda n: (load(n), n))


class RoundRobinRouter(Router):
    """Each unit cycles through its next hops in name order, skipping those not open: blind to speeds."""

    name = "round-robin"

    def __init__(self, graph: RouteGraph, seed: int = 0) -> None:
        super().__init__(graph, seed)
        self.turn: dict[str, int] = {}

    def choose(self, at: str, options: tuple[str, ...], load: Load | None) -> str:
        nexts = self.options(at)
        turn = self.turn.get(at, 0)
        for step in range(len(nexts)):
            candidate = nexts[(turn + step) % len(nexts)]
            if candidate in options:
                self.turn[at] = (turn + step + 1) % len(nexts)
                return candidate
        return options[0]


ROUTERS: dict[str, type[Router]] = {r.name: r for r in (MaxFlowRouter, RandomRouter, ShortestQueueRouter,
                                                       RoundRobinRouter)}
DEFAULT_ROUTER = "maxflow"


def make_router(name: str, graph: RouteGraph, seed: int = 0) -> Router:
    """A routing policy by name (ROUTERS); KeyError for an unknown name."""
    return ROUTERS[name](graph, seed)
