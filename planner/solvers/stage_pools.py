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

Region chains (below) are the other shape: regions one after another, a chain inside each, GPUs of
any type side by side at each region crossing.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

from planner.errors import SolveError
from planner.flow import max_flow
from planner.problem import Placement, PlacementProblem
from planner.solvers.base import Progress, SolveResult

BISECTION_STEPS = 40
NEAR_TOP = (1.0, 0.99, 0.98, 0.96, 0.93, 0.9)  # targets below the largest feasible one also tried
MAX_WIDTH = 4  # most GPUs side by side on either side of a region crossing
MAX_REGIONS = 4  # region orders are enumerated only up to this many regions


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
    return _stacked(problem, [(stage.nodes, stage.layers) for stage in order])


def _stacked(problem: PlacementProblem, stages: list[tuple[tuple[str, ...], int]]) -> Placement | None:
    """Stages (GPUs side by side, layers each) stacked in order over the model: the surplus is taken from
    the longest stages first; None when a GPU cannot hold its range (embeddings, LM head) or the stages
    do not cover the model."""
    lengths = [k for _, k in stages]
    surplus = sum(lengths) - problem.layers
    while surplus > 0:
        i = max(range(len(lengths)), key=lambda j: (lengths[j], j))
        lengths[i] -= 1
        surplus -= 1
    ranges = dict.fromkeys((n.name for n in problem.nodes), (0, 0))
    start = 0
    for (names, _), k in zip(stages, lengths):
        if k <= 0:
            continue
        for name in names:
            if not problem.fits(name, start, start + k):
                return None
            ranges[name] = (start, start + k)
        start += k
    return Placement(ranges) if start == problem.layers else None


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
    """Placements of stages of identical GPU groups and of region chains (below), best first by max flow:
    at the largest target each reaches and a few just below it (links or the edge stages may bind
    there), the pools each in a few orders."""
    scored: list[tuple[float, int, Placement]] = []
    # region chains get half of the time, the pools the rest
    halfway = time.perf_counter() + (deadline - time.perf_counter()) / 2 if math.isfinite(deadline) else deadline
    chains = region_chain_placements(problem, halfway)
    for placement in chains:
        if scored and time.perf_counter() > halfway:
            break  # a max flow each: seconds on 100-GPU clusters
        scored.append((max_flow(problem, placement).value, -len(scored), placement))
    chains = chains[:len(scored)]
    top = _largest_target(problem, deadline)
    for share in NEAR_TOP if top > 0 else ():
        if time.perf_counter() > deadline and len(scored) > len(chains):
            break
        stages = stages_at(problem, top * share)
        if stages is None:
            continue
        for order in _orders(problem, stages):
            if time.perf_counter() > deadline and len(scored) > len(chains):
                break
            placement = _placement(problem, order)
            if placement is not None:
                scored.append((max_flow(problem, placement).value, -len(scored), placement))
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [p for _, _, p in scored]


# ---- region chains ---------------------------------------------------------------------------------
# Clusters whose regions each lack something (the Helix paper's three regions: all A100s in one, no
# region holds the model) need every token to cross regions over slow host-pair links, each carrying a
# fraction of what a GPU serves. A region chain visits regions one after another; inside a region one
# chain of GPUs (fast links), each GPU holding the most layers it serves at the target T; at a crossing,
# the last stage of one region and the first of the next are each a few GPUs side by side holding one
# range (together serving T), so the crossing is spread over every pair of them (w_out x w_in links).


@dataclass(frozen=True)
class _Segment:
    stages: tuple[tuple[tuple[str, ...], int], ...]  # (GPUs side by side on one range, layers), in order
    layers: int


def _regions(problem: PlacementProblem) -> dict[str, list[str]]:
    """GPUs by the region their cluster file names, in host order; empty when a GPU's host names none."""
    regions: dict[str, list[str]] = {}
    for node in problem.nodes:
        region = problem.cluster.host(node.host).region
        if region is None:
            return {}
        regions.setdefault(region, []).append(node.name)
    return regions


def _most_layers(problem: PlacementProblem, names: tuple[str, ...], target: float, memo: dict) -> int:
    """Most layers the GPUs `names` hold side by side (one range) while serving `target` together
    (remembered in `memo` by GPU types: GPUs of one type hold alike)."""
    key = (tuple(sorted(problem.by_name[n].gpu for n in names)), target)
    if key not in memo:
        memo[key] = _most_layers_uncached(problem, names, target)
    return memo[key]


def _most_layers_uncached(problem: PlacementProblem, names: tuple[str, ...], target: float) -> int:
    costs = [problem.cost(n) for n in names]
    top = min(min(c.max_layers() for c in costs), problem.layers)
    return max((k for k in range(1, top + 1)
                if sum(c.capacity(k, problem.rtt_s) for c in costs) >= target), default=0)


def _wide_stage(problem: PlacementProblem, free: list[str], width: int, target: float,
                single: dict[str, int], memo: dict) -> tuple[tuple[str, ...], int] | None:
    """`width` GPUs of `free` side by side serving `target`, losing the fewest layers against what they
    would hold one after another; GPUs of one type are interchangeable, so type mixes are enumerated."""
    by_type: dict[str, list[str]] = {}
    for name in free:
        by_type.setdefault(problem.by_name[name].gpu, []).append(name)
    best = None
    for mix in itertools.combinations_with_replacement(sorted(by_type), width):
        if any(mix.count(t) > len(by_type[t]) for t in set(mix)):
            continue
        names = tuple(by_type[t][mix[:i].count(t)] for i, t in enumerate(mix))
        k = _most_layers(problem, names, target, memo)
        if k and (best is None or k - sum(single[n] for n in names) > best[0]):
            best = (k - sum(single[n] for n in names), names, k)
    return None if best is None else (best[1], best[2])


def _segment(problem: PlacementProblem, names: list[str], target: float, width_in: int,
             width_out: int, memo: dict) -> _Segment | None:
    """The chain through one region's GPUs `names` covering the most layers at `target`, its first stage
    `width_in` GPUs side by side and its last `width_out` (a width of 1: one GPU)."""
    single = {n: _most_layers(problem, (n,), target, memo) for n in names}
    free = [n for n in names if single[n] > 0 or width_in > 1 or width_out > 1]
    first = last = None
    if width_in > 1:
        first = _wide_stage(problem, free, width_in, target, single, memo)
        if first is None:
            return None
        free = [n for n in free if n not in first[0]]
    if width_out > 1:
        last = _wide_stage(problem, free, width_out, target, single, memo)
        if last is None:
            return None
        free = [n for n in free if n not in last[0]]
    middle = [((n,), single[n]) for n in free if single[n] > 0]
    stages = ([first] if first else []) + middle + ([last] if last else [])
    return _Segment(tuple(stages), sum(k for _, k in stages)) if stages else None


def _mean_link(problem: PlacementProblem, a: list[str], b: list[str]) -> float:
    caps = [problem.link_capacity(problem.by_name[x].host, problem.by_name[y].host) for x in a for y in b]
    return sum(caps) / len(caps)


def _region_chain_at(problem: PlacementProblem, target: float, regions: dict[str, list[str]],
                     segments: dict) -> list[_Segment] | None:
    """Regions in the order (and subset) whose segments cover the model at `target` with the fewest
    regions, or None."""
    names = list(regions)
    if "links" not in segments:  # the mean host-pair link between every two regions, once
        segments["links"] = {(a, b): _mean_link(problem, regions[a], regions[b])
                             for a in names for b in names if a != b}
    links = segments["links"]
    coordinator = {r: sum(problem.coordinator_capacity(problem.by_name[n].host) for n in regions[r])
                   / len(regions[r]) for r in names}

    def segment(region: str, width_in: int, width_out: int) -> _Segment | None:
        key = (region, width_in, width_out, target)
        if key not in segments:
            segments[key] = _segment(problem, regions[region], target, width_in, width_out, segments)
        return segments[key]

    def widths(link: float) -> list[tuple[int, int]]:  # fewest GPUs on each side of a crossing
        return [(a, b) for a in range(1, MAX_WIDTH + 1) for b in range(1, MAX_WIDTH + 1)
                if a * b * link >= target and not ((a - 1) * b * link >= target or a * (b - 1) * link >= target)]

    best: tuple[int, list[_Segment]] | None = None
    for count in range(1, len(names) + 1):
        for order in itertools.permutations(names, count):
            ends = [w for w in range(1, MAX_WIDTH + 1) if w * coordinator[order[0]] >= target][:1]
            tails = [w for w in range(1, MAX_WIDTH + 1) if w * coordinator[order[-1]] >= target][:1]
            if not ends or not tails:
                continue
            # paths: (width entering the current region, segments so far, layers so far)
            paths = [(ends[0], [], 0)]
            for i, region in enumerate(order):
                grown = []
                last = i == len(order) - 1
                exits = [(w, 0) for w in tails] if last else widths(links[region, order[i + 1]])
                for width_in, done, covered in paths:
                    for width_out, width_next in exits:
                        seg = segment(region, width_in, width_out)
                        if seg is not None:
                            grown.append((width_next, done + [seg], covered + seg.layers))
                # the best per entry width of the next region: the enumeration stays small
                best_by_width: dict[int, tuple] = {}
                for path in grown:
                    if path[0] not in best_by_width or path[2] > best_by_width[path[0]][2]:
                        best_by_width[path[0]] = path
                paths = list(best_by_width.values())
            for _, done, covered in paths:
                if covered >= problem.layers and (best is None or covered > best[0]):
                    best = (covered, done)
        if best is not None:
            return best[1]
    return None


def _chain_placement(problem: PlacementProblem, segments: list[_Segment]) -> Placement | None:
    """Ranges for the stages of `segments` in order, the surplus taken from the longest stages first."""
    return _stacked(problem, [stage for seg in segments for stage in seg.stages])


def region_chain_placements(problem: PlacementProblem, deadline: float = math.inf) -> list[Placement]:
    """Region chains at the largest target they reach (bisection) and a few targets just below it; none
    with latency models (built and measured for static tables; the serving objective's rounds are left
    as they were), on clusters whose file names no regions, of one region or of more than MAX_REGIONS."""
    regions = _regions(problem)
    if not problem.static or not 1 < len(regions) <= MAX_REGIONS:
        return []
    cache: dict = {}
    low, high = 0.0, problem.upper_bound()
    for _ in range(BISECTION_STEPS):
        if time.perf_counter() > deadline:
            break
        mid = (low + high) / 2
        if _region_chain_at(problem, mid, regions, cache) is not None:
            low = mid
        else:
            high = mid
    placements = []
    for share in NEAR_TOP if low > 0 else ():
        if time.perf_counter() > deadline and placements:
            break
        segments = _region_chain_at(problem, low * share, regions, cache)
        placement = _chain_placement(problem, segments) if segments else None
        if placement is not None and placement not in placements:
            placements.append(placement)
    return placements


def stage_pools(problem: PlacementProblem, *, time_limit: float = 10.0, seed: int = 0,
                progress: Progress | None = None) -> SolveResult:
    """Best placement of stages of identical GPU groups by static max flow (deterministic; `seed` unused)."""
    began = time.perf_counter()
    options = stage_pool_placements(problem, began + time_limit)
    if not options:
        raise SolveError("stages: no pools of identical GPUs hold the whole model")
    return SolveResult("stages", options[0], "feasible", time.perf_counter() - began)
