"""The best single pipeline, exactly, and disjoint pipelines extracted one after another.

A chain serves T tokens/s if every GPU on it holds a span it serves at T or more, every hop between
consecutive GPUs carries T, and the spans add up to the model. For a fixed T that is a question of
which GPUs, in which order: each GPU should take as many layers as it serves at T (kmax), so the best
chain covers the most layers. A dynamic programme over (GPUs used so far, the last one's class) answers
it; GPUs are merged into classes when they are interchangeable at T (same type, same links at or above
T to every host), which keeps a 3-region cluster of one GPU per host to a few classes. The optimal
bottleneck is one of the finitely many capacities, so bisection over the sorted values is exact.

On memory-tight clusters (a single pipeline must use nearly every GPU) this finds what a generic MILP
struggles to find: the order of the GPUs across slow region links.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from planner.problem import Placement, PlacementProblem

STATE_LIMIT = 60_000  # DP states per target; beyond that the target counts as not reachable


@dataclass(frozen=True)
class _Class:
    gpu: str
    nodes: tuple[str, ...]
    first: int   # layers a member serves at T as the first stage (holding the embeddings)
    middle: int
    last: int    # ... as the last stage (holding the LM head)
    whole: bool  # one member holds the whole model at T
    coordinator: bool  # its hosts reach the coordinator at T


def _kmax(problem: PlacementProblem, node: str, target: float, first: bool, last: bool) -> int:
    """Most layers k such that the GPU serves `target` holding any of 1 .. k layers. The programme takes
    a chain's last GPU short of its kmax, so every shorter span must serve too: with a table that rises
    somewhere (published tables do), a k past a dip is left to the MILP, which reads each span exactly."""
    layers = problem.layers
    cost = problem.cost(node)
    best = 0
    for k in range(1, min(cost.max_layers(first=first, last=last), layers) + 1):
        if cost.capacity(k, problem.rtt_s, first=first, last=last) < target:
            break
        best = k
    return best


def _link_table(problem: PlacementProblem, nodes: list[str]) -> dict[tuple[str, str], float]:
    """Tokens/s of every host-pair link among the hosts of `nodes`, looked up once (a lookup is slow
    next to the programme: on 128 hosts the table took 0.4 s per target when asked for each time)."""
    hosts = list(dict.fromkeys(problem.by_name[n].host for n in nodes))
    return {(a, b): problem.link_capacity(a, b) for a in hosts for b in hosts}


def _classes(problem: PlacementProblem, nodes: list[str], target: float,
             links: dict[tuple[str, str], float]) -> tuple[list[_Class], list[list[bool]]]:
    """Interchangeable GPUs at `target`, and whether a token may hop from one class to the next."""
    hosts = list(dict.fromkeys(problem.by_name[n].host for n in nodes))
    many = {h: sum(problem.by_name[n].host == h for n in nodes) > 1 for h in hosts}

    def ok(a: str, b: str) -> bool:
        if a == b and not many[a]:
            return True  # a host with one GPU never hops to itself
        return links[a, b] >= target

    signature = {h: tuple((ok(h, x), ok(x, h)) for x in hosts) for h in hosts}
    members: dict[tuple, list[str]] = {}
    for name in nodes:
        node = problem.by_name[name]
        members.setdefault((node.gpu, signature[node.host]), []).append(name)
    classes = []
    for (gpu, _), names in members.items():
        rep = names[0]
        host = problem.by_name[rep].host
        classes.append(_Class(gpu, tuple(names), _kmax(problem, rep, target, True, False),
                              _kmax(problem, rep, target, False, False), _kmax(problem, rep, target, False, True),
                              _kmax(problem, rep, target, True, True) >= problem.layers,
                              problem.coordinator_capacity(host) >= target))
    hops = [[ok(problem.by_name[a.nodes[0]].host, problem.by_name[b.nodes[0]].host) for b in classes] for a in classes]
    return classes, hops


def _chain_at(problem: PlacementProblem, nodes: list[str], target: float, links: dict[tuple[str, str], float],
              deadline: float = math.inf) -> list[tuple[str, int, int]] | None:
    """A chain serving `target`, as (GPU, start, end), or None (also when the DP grows too large or
    the deadline passes)."""
    layers = problem.layers
    if time.perf_counter() > deadline:
        return None
    classes, hops = _classes(problem, nodes, target, links)
    for c in classes:
        if c.whole and c.coordinator:
            return [(c.nodes[0], 0, layers)]
    zero = (0,) * len(classes)
    # state: (GPUs used per class, class of the last GPU) -> (layers covered, parent state)
    frontier: dict[tuple[tuple[int, ...], int], tuple[int, tuple | None]] = {}
    for i, c in enumerate(classes):
        if c.coordinator and c.first > 0:
            used = zero[:i] + (1,) + zero[i + 1:]
            frontier[used, i] = (c.first, None)
    seen = dict(frontier)
    while frontier:
        grown: dict[tuple[tuple[int, ...], int], tuple[int, tuple | None]] = {}
        for done, (state, (covered, _)) in enumerate(frontier.items()):
            # one expansion may grow millions of states on 100-GPU clusters: stop inside it too
            if done % 512 == 0 and (len(seen) + len(grown) > STATE_LIMIT or time.perf_counter() > deadline):
                return None
            used, last = state
            for j, c in enumerate(classes):
                if used[j] >= len(c.nodes) or not hops[last][j]:
                    continue
                if c.coordinator and c.last > 0 and covered + c.last >= layers:
                    return _spans(classes, seen, state, j, layers)
                if c.middle == 0:
                    continue
                nxt = (used[:j] + (used[j] + 1,) + used[j + 1:], j)
                value = covered + c.middle
                if value > seen.get(nxt, (-1, None))[0] and value > grown.get(nxt, (-1, None))[0]:
                    grown[nxt] = (value, state)
        seen.update(grown)
        if len(seen) > STATE_LIMIT or time.perf_counter() > deadline:
            return None
        frontier = grown
    return None


def _spans(classes: list[_Class], seen: dict, state: tuple, final: int, layers: int) -> list[tuple[str, int, int]]:
    order = [final]
    while state is not None:
        order.append(state[1])
        state = seen[state][1]
    order.reverse()
    taken = [0] * len(classes)
    spans, start = [], 0
    for position, ci in enumerate(order):
        c = classes[ci]
        node = c.nodes[taken[ci]]
        taken[ci] += 1
        k = c.first if position == 0 else c.middle
        end = layers if position == len(order) - 1 else start + k
        spans.append((node, start, end))
        start = end
    return spans


def _targets(problem: PlacementProblem, nodes: list[str]) -> list[float]:
    """Every value the bottleneck of a chain can take, ascending."""
    values = set()
    for name in nodes:
        cost = problem.cost(name)
        for first in (False, True):
            for last in (False, True):
                for k in range(1, min(cost.max_layers(first=first, last=last), problem.layers) + 1):
                    values.add(cost.capacity(k, problem.rtt_s, first=first, last=last))
    hosts = {problem.by_name[n].host for n in nodes}
    values |= {problem.link_capacity(a, b) for a in hosts for b in hosts}
    return sorted(v for v in values if v > 0 and math.isfinite(v))


def _chains_at(problem: PlacementProblem, nodes: list[str], target: float, count: int,
               links: dict[tuple[str, str], float],
               deadline: float = math.inf) -> list[list[tuple[str, int, int]]] | None:
    """`count` disjoint chains each serving `target`, taken one after another (each with the fewest
    GPUs the DP finds), or None."""
    left, found = list(nodes), []
    for _ in range(count):
        spans = _chain_at(problem, left, target, links, deadline)
        if spans is None:
            return None
        found.append(spans)
        taken = {node for node, _, _ in spans}
        left = [n for n in left if n not in taken]
    return found


def _largest(values: list[float], reachable, deadline: float):
    """Bisection for the largest value at which `reachable` returns something; (value, result)."""
    low, high, best = 0, len(values) - 1, (0.0, None)
    while low <= high and time.perf_counter() < deadline:
        mid = (low + high) // 2
        found = reachable(values[mid])
        if found is None:
            high = mid - 1
        else:
            best = (values[mid], found)
            low = mid + 1
    return best


def best_chain(problem: PlacementProblem, nodes: list[str] | None = None,
               deadline: float = math.inf) -> tuple[float, list[tuple[str, int, int]]]:
    """The chain over `nodes` (default: all GPUs) with the highest bottleneck rate, as (rate, spans).
    Rate 0 and no spans when no chain holds the model (or the deadline passed first)."""
    nodes = nodes if nodes is not None else [n.name for n in problem.nodes]
    links = _link_table(problem, nodes)
    rate, spans = _largest(_targets(problem, nodes), lambda t: _chain_at(problem, nodes, t, links, deadline), deadline)
    return rate, spans or []


def disjoint_chains(problem: PlacementProblem, deadline: float = math.inf) -> list[Placement]:
    """For c = 1, 2, ...: c disjoint pipelines with the highest common bottleneck rate, as placements
    (GPUs on no chain are left unused; the MILP may add them)."""
    nodes = [n.name for n in problem.nodes]
    values = _targets(problem, nodes)
    links = _link_table(problem, nodes)
    placements = []
    for count in range(1, len(nodes) + 1):
        if time.perf_counter() > deadline:
            break
        rate, chains = _largest(values, lambda t: _chains_at(problem, nodes, t, count, links, deadline), deadline)
        if not chains:
            break
        ranges = dict.fromkeys(nodes, (0, 0))
        ranges.update({node: (start, end) for spans in chains for node, start, end in spans})
        placements.append(Placement(ranges))
    return placements
