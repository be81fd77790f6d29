"""vLLM style: tensor parallel inside hosts x pipeline parallel across them."""

from __future__ import annotations

import time
from collections.abc import Iterator

from planner.errors import SolveError
from planner.problem import Placement, PlacementProblem, group_name, split_evenly
from planner.solvers.base import Progress, SolveResult, no_progress
from planner.solvers.baselines.common import better, empty, flow_value, result

TP_DEGREES = (1, 2, 4, 8)


def _tp_groups(problem: PlacementProblem, tp: int) -> list[tuple[str, ...]]:
    """Consecutive GPUs of each host in groups of `tp` (hosts whose GPU count tp does not divide, or
    whose groups would mix GPU types, are left out)."""
    groups = []
    for host in problem.cluster.hosts:
        count = len(host.gpus)
        if count == 0 or count % tp:
            continue
        host_groups = [tuple(range(i, i + tp)) for i in range(0, count, tp)]
        if any(len({host.gpus[i] for i in g}) != 1 for g in host_groups):
            continue
        groups += [tuple(f"{host.name}:{i}" for i in g) for g in host_groups]
    return groups


def tp_pp_placements(problem: PlacementProblem) -> Iterator[tuple[int, int, int, Placement]]:
    """Every uniform (TP, PP) layout that fits: (tp, depth, replicas, placement). Groups of `tp`
    consecutive GPUs inside hosts (hosts `tp` does not divide sit out) form chains of `depth` equal
    stages in host order; as many chains as there are groups serve side by side."""
    heads = problem.cluster.model.attention_heads
    for tp in TP_DEGREES:
        if heads % tp:
            continue
        groups = _tp_groups(problem, tp)
        for depth in range(1, min(len(groups), problem.layers) + 1):
            stages = split_evenly(problem.layers, depth)
            replicas = len(groups) // depth
            ranges = empty(problem)
            fits = True
            for r in range(replicas):
                for group, span in zip(groups[r * depth:(r + 1) * depth], stages):
                    unit = group[0] if tp == 1 else group_name(group)
                    if not problem.fits(unit, *span):
                        fits = False
                        break
                    for node in group:
                        ranges[node] = span
                if not fits:
                    break
            if fits:
                used_groups = tuple(groups[: replicas * depth]) if tp > 1 else ()
                yield tp, depth, replicas, Placement(ranges, used_groups)


def tp_pp(problem: PlacementProblem, *, time_limit: float = 0, seed: int = 0,
          progress: Progress | None = None) -> SolveResult:
    """vLLM style: uniform tensor-parallel groups inside hosts, equal pipeline stages across them.

    Models `vllm serve --tensor-parallel-size T --pipeline-parallel-size P` (seed 004): each host's GPUs
    form groups of T (T in 1, 2, 4, 8, dividing the host's GPU count and the model's attention heads;
    hosts T does not divide sit out), groups in host order form chains of P equal stages, and as many
    chains as there are groups serve side by side (data-parallel replicas; leftover groups sit out).
    People use it because it is what the engine offers: one flag pair, no per-GPU tuning. Every (T, P)
    that fits in memory is scored; the best static max flow wins (the shallower one on a tie).
    """
    began = time.perf_counter()
    report = progress or no_progress
    best: tuple[float, int] | None = None
    best_placement, best_config = None, None
    for tp, depth, replicas, placement in tp_pp_placements(problem):
        if best_placement is not None and 0 < time_limit < time.perf_counter() - began:
            report("tp-pp: time limit reached; further (T, P) not tried")
            break
        flow = flow_value(problem, placement)
        report(f"tp-pp: TP{tp} x PP{depth} x {replicas}, max flow {flow:,.0f} tokens/s")
        if better(flow, depth, best):
            best, best_placement, best_config = (flow, depth), placement, (tp, depth, replicas)
    if best_placement is None:
        raise SolveError("tp-pp: no uniform tensor-parallel degree and equal pipeline split fits in memory")
    tp, depth, replicas = best_config
    return result("tp-pp", best_placement, began,
                  [f"tp-pp: tensor parallel {tp} x pipeline parallel {depth}, {replicas} replica(s)"])
