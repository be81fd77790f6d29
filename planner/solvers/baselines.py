"""Baseline placements, each what some group of users does today (docs/planner.md#baselines).

Every baseline is deterministic (no random choice; `seed` is accepted for the common signature), returns
ranges that fit in memory and chain exactly (a GPU starts where another one ends, so the flow evaluator
finds at least one full chain from layer 0 to the last layer), and raises SolveError with a one-line
reason when it cannot place the model on the cluster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from planner.errors import SolveError
from planner.flow import max_flow
from planner.problem import Placement, PlacementProblem, group_name
from planner.solvers.base import Progress, SolveResult, no_progress

TP_DEGREES = (1, 2, 4, 8)
_TIE = 1e-6  # relative: max flows closer than this are equal (the shallower layout wins)


def split_evenly(layers: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges of `parts` stages as equal as possible, the first ones one layer longer."""
    base, extra = divmod(layers, parts)
    ranges, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


# ---- shared helpers -----------------------------------------------------------------------------

def _empty(problem: PlacementProblem) -> dict[str, tuple[int, int]]:
    return dict.fromkeys((n.name for n in problem.nodes), (0, 0))


def _rates(problem: PlacementProblem) -> dict[str, float]:
    """Each GPU's speed: its best layer-tokens/s (tokens/s x layers held, over the ranges it can hold),
    the figure Petals servers announce per block; the same measure bounds the problem's throughput."""
    by_type: dict[str, float] = {}
    for gpu, cost in problem.costs.items():
        by_type[gpu] = max((cost.capacity(k, 0.0) * k for k in range(1, cost.max_layers() + 1)), default=0.0)
    return {n.name: by_type[n.gpu] for n in problem.nodes}


def _fastest_first(problem: PlacementProblem) -> list[str]:
    rates = _rates(problem)
    return sorted(rates, key=lambda name: (-rates[name], name))


def _longest(problem: PlacementProblem, node: str, start: int) -> int:
    """Most layers `node` holds starting at `start` (0 if none): ending at the last layer if it can."""
    for k in range(problem.layers - start, 0, -1):
        if problem.fits(node, start, start + k):
            return k
    return 0


def _flow(problem: PlacementProblem, placement: Placement) -> float:
    return max_flow(problem, placement).value


def _better(flow: float, depth: int, best: tuple[float, int] | None) -> bool:
    """Higher max flow wins; on a tie the shallower pipeline (fewer stages) does."""
    if best is None:
        return flow > 0
    if flow > best[0] * (1 + _TIE):
        return True
    return flow >= best[0] * (1 - _TIE) and depth < best[1]


def _result(method: str, placement: Placement, began: float, notes: list[str]) -> SolveResult:
    return SolveResult(method, placement, "feasible", time.perf_counter() - began, notes=tuple(notes))


# ---- even ---------------------------------------------------------------------------------------

def even(problem: PlacementProblem, *, time_limit: float = 0, seed: int = 0,
         progress: Progress | None = None) -> SolveResult:
    """Equal layers per GPU in host order: the hand split of the seed-000 notes (10 layers x 4 GPUs).

    Models what people do first by hand (and what `--pipeline-parallel-size N` does with one GPU per
    stage): one chain through every GPU in the order the cluster file lists them, equal stages, blind to
    GPU speed, memory and links. It is the reference every other method must beat.
    """
    began = time.perf_counter()
    nodes = [n.name for n in problem.nodes]
    if len(nodes) > problem.layers:
        nodes = nodes[: problem.layers]
    ranges = _empty(problem)
    for name, span in zip(nodes, split_evenly(problem.layers, len(nodes))):
        if not problem.fits(name, *span):
            raise SolveError(f"even split: {name} cannot hold layers {span[0]}-{span[1]} "
                             f"({span[1] - span[0]} layers, at most {problem.max_layers(name, *span)} fit)")
        ranges[name] = span
    return _result("even", Placement(ranges), began, [])


# ---- greedy (Petals) ----------------------------------------------------------------------------

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
    ranges = _empty(problem)
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
            k = _longest(problem, node, frontier) if frontier < layers else 0
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

    links, pending = chain(_fastest_first(problem))
    if not links:
        covered = 0
        for node in _fastest_first(problem):
            covered += _longest(problem, node, covered) if covered < layers else 0
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
    return _result("greedy", Placement(ranges), began, notes)


# ---- swarm --------------------------------------------------------------------------------------

def _assign_stages(problem: PlacementProblem, stages: list[tuple[int, int]],
                   order: list[str]) -> list[list[str]] | None:
    """GPUs onto stages, balancing each stage's total capacity: the stage with the fewest candidates
    first gets its fastest candidate, then largest-capacity-first onto the stage with the lowest total.
    None when some stage has no GPU that holds it."""
    eligible = [[n for n in order if problem.fits(n, *span)] for span in stages]
    if any(not e for e in eligible):
        return None
    members: list[list[str]] = [[] for _ in stages]
    totals = [0.0] * len(stages)
    taken: set[str] = set()
    for j in sorted(range(len(stages)), key=lambda j: (len(eligible[j]), j)):
        free = [n for n in eligible[j] if n not in taken]
        if not free:
            return None
        members[j].append(free[0])
        taken.add(free[0])
        totals[j] += problem.capacity(free[0], *stages[j])
    for node in order:
        if node in taken:
            continue
        options = [j for j in range(len(stages)) if problem.fits(node, *stages[j])]
        if not options:
            continue
        j = min(options, key=lambda j: (totals[j], j))
        members[j].append(node)
        totals[j] += problem.capacity(node, *stages[j])
    return members


def swarm(problem: PlacementProblem, *, time_limit: float = 0, seed: int = 0,
          progress: Progress | None = None) -> SolveResult:
    """SWARM parallelism: S equal stages, every GPU joins one stage, stages balanced by capacity.

    Models SWARM (Ryabinin et al., 2023) and similar "stage pools": the model is cut into S equal
    stages; each stage is served by a pool of interchangeable GPUs, and any GPU of stage i may pass to
    any GPU of stage i + 1 (all-to-all between pools). GPUs are spread so each pool's total capacity is
    balanced (largest capacity first onto the pool with the lowest total). People use it because it is
    simple, tolerates GPUs joining and leaving, and makes no GPU a single point of failure. S runs from
    the smallest that fits in memory to the number of GPUs; the S with the highest static max flow wins
    (the shallower one on a tie).
    """
    began = time.perf_counter()
    report = progress or no_progress
    order = _fastest_first(problem)
    best: tuple[float, int] | None = None
    best_placement = None
    for depth in range(1, min(len(order), problem.layers) + 1):
        if best_placement is not None and 0 < time_limit < time.perf_counter() - began:
            report("swarm: time limit reached; deeper stage counts not tried")
            break
        stages = split_evenly(problem.layers, depth)
        members = _assign_stages(problem, stages, order)
        if members is None:
            continue
        ranges = _empty(problem)
        for span, nodes in zip(stages, members):
            for node in nodes:
                ranges[node] = span
        placement = Placement(ranges)
        flow = _flow(problem, placement)
        report(f"swarm: {depth} stages, max flow {flow:,.0f} tokens/s")
        if _better(flow, depth, best):
            best, best_placement = (flow, depth), placement
    if best_placement is None:
        raise SolveError("swarm: no number of equal stages gives every stage a GPU that holds it")
    depth = best[1]
    return _result("swarm", best_placement, began,
                   [f"swarm: {depth} stage(s) of about {problem.layers / depth:.1f} layers"])


# ---- separate pipelines per GPU type ------------------------------------------------------------

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
    ranges = _empty(problem)
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
    return _result("separate", Placement(ranges), began, notes)


# ---- tensor parallel x pipeline parallel (vLLM) -------------------------------------------------

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
            ranges = _empty(problem)
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
        flow = _flow(problem, placement)
        report(f"tp-pp: TP{tp} x PP{depth} x {replicas}, max flow {flow:,.0f} tokens/s")
        if _better(flow, depth, best):
            best, best_placement, best_config = (flow, depth), placement, (tp, depth, replicas)
    if best_placement is None:
        raise SolveError("tp-pp: no uniform tensor-parallel degree and equal pipeline split fits in memory")
    tp, depth, replicas = best_config
    return _result("tp-pp", best_placement, began,
                   [f"tp-pp: tensor parallel {tp} x pipeline parallel {depth}, {replicas} replica(s)"])


# ---- replicas (one model copy per GPU or TP group) ---------------------------------------------

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
    ranges = _empty(problem)
    for group in units:
        for node in group:
            ranges[node] = (0, problem.layers)
    groups = tuple(g for g in units if len(g) > 1)
    sizes = sorted({len(g) for g in units})
    notes.insert(0, f"replicas: {len(units)} replica(s), TP {'/'.join(map(str, sizes))}")
    return _result("replicas", Placement(ranges, groups), began, notes)


METHODS = {"even": even, "greedy": greedy, "swarm": swarm, "separate": separate, "tp-pp": tp_pp, "replicas": replicas}
