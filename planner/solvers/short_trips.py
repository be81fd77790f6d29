"""Chains with short round trips: candidates for KV-bound serving (docs/planner.md#optimiser).

Under KV-bound admission a request holds KV on every stage of its path, so a path keeps at most as
many sequences in flight as its scarcest stage holds, and serves in flight / round trip. Max-flow
heuristics cannot see that: they quote every stage at the same round trip and spread layers thin
over every GPU, lengthening the trip. Here, for a target `n` of sequences in flight, each GPU may hold
at most the layers that leave KV room for `n` requests; layers go to the GPUs whose layers run
fastest, the last type used spreading its share evenly over all its GPUs (smaller steps); slower GPUs
stay idle. Each target and each number of disjoint chains gives one candidate; the serving estimator
ranks them with everything else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

from planner.problem import Placement, PlacementProblem

# sequences in flight per chain to aim for, as shares of the engine's batch cap (max_num_seqs)
IN_FLIGHT_SHARES = (1.0, 0.75, 0.5, 0.25)
MAX_CHAINS = 4


def layer_time(problem: PlacementProblem, name: str, batch: float) -> float:
    """Seconds one layer of this GPU adds to a token's round trip at `batch` sequences per step."""
    return problem.cost(name).seconds_per_output_token(1, batch) * batch


def room(problem: PlacementProblem, name: str, start: int, in_flight: int, most: int | None = None) -> int:
    """Most layers from `start` (at most `most`) this GPU holds with KV room for `in_flight` requests."""
    best = 0
    for k in range(1, min(problem.layers - start, most or problem.layers) + 1):
        end = start + k
        if not problem.fits(name, start, end):
            break
        if problem.cost(name).max_batch(k, start == 0, end == problem.layers) >= in_flight:
            best = k
    return best


def _chain(problem: PlacementProblem, names: list[str], in_flight: int, batch: float) -> dict[str, tuple[int, int]] | None:
    """Layer ranges for one chain of `names` aiming at `in_flight` sequences, or None if it cannot hold the model."""
    speed = {n: layer_time(problem, n, batch) for n in names}
    by_type: dict[str, list[str]] = {}
    for n in sorted(names, key=lambda n: (speed[n], names.index(n))):
        by_type.setdefault(problem.by_name[n].gpu, []).append(n)
    counts: dict[str, int] = {}
    left = problem.layers
    for members in by_type.values():  # fastest type first
        if left == 0:
            break
        share = math.ceil(left / len(members))
        for n in members:
            # estimated from the middle of the model; checked exactly below
            k = min(share, room(problem, n, 1, in_flight), left)
            if k > 0:
                counts[n] = k
                left -= k
    if left > 0:
        return None
    ranges, start = {}, 0
    for n in names:  # keep the cluster's order (hosts together)
        k = counts.get(n, 0)
        if k == 0:
            continue
        if not problem.fits(n, start, start + k):
            return None
        ranges[n] = (start, start + k)
        start += k
    return ranges if start == problem.layers else None


def snake_deal(ranked: list[str], count: int) -> list[list[str]]:
    """GPUs ranked fastest first dealt into `count` groups back and forth, so each gets its share of the fast ones."""
    groups: list[list[str]] = [[] for _ in range(count)]
    for i, name in enumerate(ranked):
        lap, pos = divmod(i, count)
        groups[pos if lap % 2 == 0 else count - 1 - pos].append(name)
    return groups


def joined(parts: Iterable[dict[str, tuple[int, int]] | None]) -> dict[str, tuple[int, int]] | None:
    """The ranges of several chains together; None if any of them is None (it could not be built)."""
    ranges: dict[str, tuple[int, int]] = {}
    for part in parts:
        if part is None:
            return None
        ranges.update(part)
    return ranges


def distinct_placements(names: list[str], found: Iterable[dict[str, tuple[int, int]] | None]) -> list[Placement]:
    """Each distinct set of ranges found once, as a placement (the GPUs it does not name idle)."""
    seen: set[tuple] = set()
    placements = []
    for ranges in found:
        key = tuple(sorted(ranges.items())) if ranges else None
        if key is not None and key not in seen:
            seen.add(key)
            placements.append(Placement({**dict.fromkeys(names, (0, 0)), **ranges}))
    return placements


def short_trip_placements(problem: PlacementProblem, deadline: float = math.inf) -> list[Placement]:
    """One candidate per (sequences in flight, number of disjoint chains) that holds the model."""
    if problem.static:
        return []
    names = [n.name for n in problem.nodes]
    cap = problem.cluster.cost_params.max_batch
    batch = max(1.0, min(cap, problem.cluster.cost_params.prefill_chunk_tokens / 4))
    ranked = sorted(names, key=lambda n: (layer_time(problem, n, batch), names.index(n)))

    def found() -> Iterator[dict[str, tuple[int, int]] | None]:
        for chains in range(1, MAX_CHAINS + 1):
            groups = snake_deal(ranked, chains)
            for share in IN_FLIGHT_SHARES:
                if time.perf_counter() > deadline:
                    return
                in_flight = max(1, int(cap * share))
                yield joined(_chain(problem, [n for n in names if n in group], in_flight, min(batch, in_flight))
                             for group in groups)

    return distinct_placements(names, found())
