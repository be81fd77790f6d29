"""Chain heuristic: split GPUs into independent pipelines and give each the layer split that
maximises its bottleneck. Fast (bisection on the target rate per chain), and a strong warm start
for the MILP: on fast networks the optimum is often a set of balanced chains.
"""

from __future__ import annotations

import time

from planner.errors import SolveError
from planner.flow import max_flow
from planner.problem import Placement, PlacementProblem
from planner.solvers.base import Progress, SolveResult


def split_chain(problem: PlacementProblem, chain: list[str]) -> tuple[float, dict[str, tuple[int, int]]]:
    """Best layer split of one ordered chain: bisection on the rate T, each GPU taking as many layers
    as it serves at T. Returns (bottleneck rate, ranges); rate 0 when the chain cannot hold the model."""
    layers = problem.layers

    def assign(target: float) -> dict[str, tuple[int, int]] | None:
        ranges, start = {}, 0
        for i, name in enumerate(chain):
            if start == layers:
                break
            best = 0
            for k in range(1, layers - start + 1):
                end = start + k
                if problem.fits(name, start, end) and problem.capacity(name, start, end) >= target:
                    best = k
                elif k > problem.max_layers(name, start, end):
                    break
            if best == 0:
                return None
            ranges[name] = (start, start + best)
            start += best
        return ranges if start == layers else None

    caps = sorted({problem.capacity(n, s, e) for n in chain for s in (0, 1) for e in range(s + 1, layers + 1)
                   if problem.fits(n, s, e)} | {problem.capacity(n, 1, 2) for n in chain if problem.fits(n, 1, 2)})
    low, high = 0.0, max(caps, default=0.0)
    if assign(1e-9) is None:
        return 0.0, {}
    for _ in range(50):
        mid = (low + high) / 2
        if assign(mid) is not None:
            low = mid
        else:
            high = mid
    ranges = assign(low) or {}
    placement = Placement({**dict.fromkeys(chain, (0, 0)), **ranges})
    return max_flow(problem, placement).value, ranges


def _host_order(problem: PlacementProblem, names: list[str]) -> list[str]:
    """Keep each host's GPUs together, the coordinator's host first: fewest slow hops."""
    coordinator = problem.cluster.coordinator_host
    seen = list(dict.fromkeys(problem.by_name[n].host for n in names))
    hosts = sorted(seen, key=lambda h: (h != coordinator, -problem.coordinator_capacity(h), seen.index(h)))
    return [n for h in hosts for n in names if problem.by_name[n].host == h]


def chain_candidates(problem: PlacementProblem, deadline: float) -> list[Placement]:
    """Placements from splitting the GPUs into c chains (snake-dealt by capacity), for every c."""
    nodes = [n.name for n in problem.nodes]
    strength = {n: problem.capacity(n, 1, 2) * problem.cost(n).max_layers() for n in nodes}
    ranked = sorted(nodes, key=lambda n: (-strength[n], n))
    candidates = []
    for chains in range(1, len(nodes) + 1):
        if time.perf_counter() > deadline:
            break
        groups: list[list[str]] = [[] for _ in range(chains)]
        for i, name in enumerate(ranked):
            lap, pos = divmod(i, chains)
            groups[pos if lap % 2 == 0 else chains - 1 - pos].append(name)
        ranges = dict.fromkeys(nodes, (0, 0))
        for group in groups:
            rate, split = split_chain(problem, _host_order(problem, group))
            if rate > 0:
                ranges.update(split)
        if any(e > s for s, e in ranges.values()):
            candidates.append(Placement(ranges))
    return candidates


def chains(problem: PlacementProblem, *, time_limit: float = 10.0, seed: int = 0,
           progress: Progress | None = None) -> SolveResult:
    """Best of the chain candidates by static max flow."""
    began = time.perf_counter()
    options = chain_candidates(problem, began + time_limit)
    if not options:
        raise SolveError("no chain of GPUs can hold the whole model")
    best = max(options, key=lambda p: max_flow(problem, p).value)
    return SolveResult("chains", best, "feasible", time.perf_counter() - began)
