"""Stages of identical GPU groups: cut the model into stages, each served by a pool of GPUs of one type.

For a target rate T, a pool of m GPUs of one type covers the most layers k at which m x capacity(k)
still reaches T, and any GPU of one stage may pass to any GPU of the next (all-to-all: a pool of m
GPUs next to a pool of n has m x n host pairs, so a crossing between regions is spread over many
links, the many-thin-pipelines structure the max flow needs on clusters whose regions each lack
something). Which pool sizes a type should use is a knapsack per type (most layers covered by its
GPUs); T is feasible when the types together cover the model, and bisection finds the largest T.
Stage order decides which pools meet across a region link, so a few orders are scored by max flow and
the best kept. On the Helix-shaped three-region cluster with a remote coordinator this reaches 95% of
the upper bound in well under a second (docs/planner.md#optimiser).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from planner.errors import SolveError
from planner.flow import max_flow
from planner.problem import Placement, PlacementProblem
from planner.solvers.base import Progress, SolveResult

BISECTION_STEPS = 40
NEAR_TOP = (1.0, 0.99, 0.98, 0.96, 0.93, 0.9)  # targets below the largest feasible one also tried


@dataclass(frozen=True)
class Stage:
    gpu: str                 # GPU type of the pool
    nodes: tuple[str, ...]   # its members
    layers: int              # layers the stage holds


def _reach(problem: PlacementProblem, rep: str, target: float, size: int) -> int:
    """Most layers a pool of `size` GPUs like `rep` holds while serving `target` together (middle stage)."""
    cost = problem.cost(rep)
    best = 0
    for k in range(1, min(cost.max_layers(), problem.layers) + 1):
        if size * cost.capacity(k, problem.rtt_s) >= target:
            best = k
    return best


def _pool_sizes(reach: list[int], count: int) -> list[int]:
    """Pool sizes (a partition of at most `count` GPUs) covering the most layers; reach[m] = layers a
    pool of m covers."""
    best = [0] * (count + 1)
    choice = [0] * (count + 1)  # 0: leave one GPU unused
    for n in range(1, count + 1):
        best[n], choice[n] = best[n - 1], 0
        for m in range(1, n + 1):
            # ties go to the larger pool: fewer stages, and a crossing spread over more host pairs
            if reach[m] and reach[m] + best[n - m] >= best[n]:
                best[n], choice[n] = reach[m] + best[n - m], m
    sizes, n = [], count
    while n > 0:
        if choice[n] == 0:
            n -= 1
        else:
            sizes.append(choice[n])
            n -= choice[n]
    return sizes


def _types(problem: PlacementProblem) -> dict[str, list[str]]:
    """GPUs by type, ordered by region and host so that a pool takes neighbours where it can."""
    hosts = problem.cluster.hosts
    region = {h.name: (h.region or "", i) for i, h in enumerate(hosts)}
    by_type: dict[str, list[str]] = {}
    for node in sorted(problem.nodes, key=lambda n: (region[n.host], n.name)):
        by_type.setdefault(node.gpu, []).append(node.name)
    return by_type


def stages_at(problem: PlacementProblem, target: float) -> list[Stage] | None:
    """Pools of one type each serving `target`, covering at least every layer (stages unordered), or None."""
    stages, covered = [], 0
    for gpu, names in _types(problem).items():
        reach = [0] + [_reach(problem, names[0], target, m) for m in range(1, len(names) + 1)]
        taken = 0
        for size in sorted(_pool_sizes(reach, len(names)), reverse=True):
            stages.append(Stage(gpu, tuple(names[taken:taken + size]), reach[size]))
            taken += size
            covered += reach[size]
    return stages if covered >= problem.layers else None


def _orders(problem: PlacementProblem, stages: list[Stage]) -> list[list[Stage]]:
    """Stage orders worth scoring: grouped by region (fewest slow crossings), by GPU strength, and both
    reversed; large pools next to single GPUs keep a crossing on many host pairs."""
    region_index = {h.name: i for i, h in enumerate(problem.cluster.hosts)}
    regions = {h.name: h.region or h.name for h in problem.cluster.hosts}
    order_of_region = {r: i for i, r in enumerate(dict.fromkeys(regions[h.name] for h in problem.cluster.hosts))}

    def home(stage: Stage) -> float:
        homes = [order_of_region[regions[problem.by_name[n].host]] for n in stage.nodes]
        return sum(homes) / len(homes)

    strength = {s: problem.cost(s.nodes[0]).capacity(1, problem.rtt_s) for s in stages}
    by_region = sorted(stages, key=lambda s: (home(s), -strength[s], -len(s.nodes),
                                              region_index[problem.by_name[s.nodes[0]].host]))
    by_strength = sorted(stages, key=lambda s: (-strength[s], home(s), -len(s.nodes)))
    # alternate single GPUs with pools: a crossing next to a pool spreads over its members' links
    singles = [s for s in by_region if len(s.nodes) == 1]
    pools = [s for s in by_region if len(s.nodes) > 1]
    woven: list[Stage] = []
    while singles or pools:
        if singles:
            woven.append(singles.pop(0))
        if pools:
            woven.append(pools.pop(0))
    unique = []
    for order in (by_region, by_region[::-1], by_strength, by_strength[::-1], woven, woven[::-1]):
        if order not in unique:
            unique.append(order)
    return unique


def _placement(problem: PlacementProblem, order: list[Stage]) -> Placement | None:
    """Ranges for stages in this order, trimmed to the model's layers (surplus taken from the longest
    stages first, each kept serving); None when an edge stage cannot hold the embeddings or LM head."""
    layers = problem.layers
    lengths = [s.layers for s in order]
    surplus = sum(lengths) - layers
    while surplus > 0:
        i = max(range(len(lengths)), key=lambda j: (lengths[j], j))
        lengths[i] -= 1
        surplus -= 1
    ranges = dict.fromkeys((n.name for n in problem.nodes), (0, 0))
    start = 0
    for stage, k in zip(order, lengths):
        if k <= 0:
            continue
        for node in stage.nodes:
            if not problem.fits(node, start, start + k):
                return None
            ranges[node] = (start, start + k)
        start += k
    return Placement(ranges) if start == layers else None


def _largest_target(problem: PlacementProblem, deadline: float) -> float:
    high = problem.upper_bound()
    low = 0.0
    if high <= 0 or stages_at(problem, 1e-9) is None:
        return 0.0
    for _ in range(BISECTION_STEPS):
        if time.perf_counter() > deadline:
            break
        mid = (low + high) / 2
        if stages_at(problem, mid) is not None:
            low = mid
        else:
            high = mid
    return low


def stage_pool_placements(problem: PlacementProblem, deadline: float = math.inf) -> list[Placement]:
    """Placements of stages of identical GPU groups, best first by max flow: at the largest target the
    pools reach and a few just below it (links or the edge stages may bind there), each in a few orders."""
    top = _largest_target(problem, deadline)
    if top <= 0:
        return []
    scored: list[tuple[float, int, Placement]] = []
    for share in NEAR_TOP:
        stages = stages_at(problem, top * share)
        if stages is None:
            continue
        for order in _orders(problem, stages):
            if time.perf_counter() > deadline and scored:
                break
            placement = _placement(problem, order)
            if placement is not None:
                scored.append((max_flow(problem, placement).value, -len(scored), placement))
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [p for _, _, p in scored]


def stage_pools(problem: PlacementProblem, *, time_limit: float = 10.0, seed: int = 0,
                progress: Progress | None = None) -> SolveResult:
    """Best placement of stages of identical GPU groups by static max flow (deterministic; `seed` unused)."""
    began = time.perf_counter()
    options = stage_pool_placements(problem, began + time_limit)
    if not options:
        raise SolveError("stages: no pools of identical GPUs hold the whole model")
    return SolveResult("stages", options[0], "feasible", time.perf_counter() - began)
