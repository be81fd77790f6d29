"""Data-parallel copies of the whole model, one per GPU or tensor-parallel group."""

from __future__ import annotations

import time

from planner.errors import SolveError
from planner.problem import Placement, PlacementProblem, group_name
from planner.solvers.base import Progress, SolveResult
from planner.solvers.baselines.common import empty, result
from planner.solvers.baselines.tp_pp import TP_DEGREES


def replica_units(problem: PlacementProblem) -> tuple[list[tuple[str, ...]], list[str]]:
    """The units that each hold the whole model: per host, the smallest TP degree (1, 2, 4, 8; dividing
    the model's attention heads) at which a group of consecutive GPUs of one type holds every layer, and
    every such group of that host. Returns (groups, notes on hosts left out)."""
    layers, heads = problem.layers, problem.cluster.model.attention_heads
    units: list[tuple[str, ...]] = []
    notes: list[str] = []
    for host in problem.cluster.hosts:
        count = len(host.gpus)
        if count == 0:
            continue
        chosen: list[tuple[str, ...]] = []
        for tp in TP_DEGREES:
            if tp > count or heads % tp:
                continue
            groups = [tuple(f"{host.name}:{i}" for i in range(s, s + tp)) for s in range(0, count - tp + 1, tp)]
            groups = [g for g in groups if len({problem.by_name[m].gpu for m in g}) == 1]
            chosen = [g for g in groups if problem.fits(g[0] if tp == 1 else group_name(g), 0, layers)]
            if chosen:
                break
        if chosen:
            units += chosen
            left = count - sum(len(g) for g in chosen)
            if left:
                notes.append(f"replicas: {left} GPU(s) of {host.name} hold no replica")
        else:
            notes.append(f"replicas: no GPU or TP group (up to {min(count, 8)}) of {host.name} holds the model")
    return units, notes


def replicas(problem: PlacementProblem, *, time_limit: float = 0, seed: int = 0,
             progress: Progress | None = None) -> SolveResult:
    """Data-parallel replicas (seed 001): every GPU, or the smallest uniform TP group of a host, that holds
    the whole model serves it on its own; requests are spread by capacity (the max-flow flows).

    Models one `vllm serve` per GPU (or per TP group) behind a load balancer: no pipeline, no activations
    between hosts, the shortest round trip. It needs GPUs (or groups) with room for all layers plus KV.
    """
    began = time.perf_counter()
    units, notes = replica_units(problem)
    if not units:
        smallest = min(problem.max_layers(n.name, 0, problem.layers) for n in problem.nodes) if problem.nodes else 0
        raise SolveError(f"replicas: no GPU or tensor-parallel group of one host holds all {problem.layers} "
                         f"layers of {problem.cluster.model.id} with KV room (a GPU holds at most "
                         f"{smallest}); use a pipeline method (chains, tp-pp)")
    ranges = empty(problem)
    for group in units:
        for node in group:
            ranges[node] = (0, problem.layers)
    groups = tuple(g for g in units if len(g) > 1)
    sizes = sorted({len(g) for g in units})
    notes.insert(0, f"replicas: {len(units)} replica(s), TP {'/'.join(map(str, sizes))}")
    return result("replicas", Placement(ranges, groups), began, notes)
