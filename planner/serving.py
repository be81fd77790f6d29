"""Serving estimator: what a placement really delivers, not just its static max flow.

A node's capacity depends on the batch it can run, and that batch on its KV memory and on the round
trip of the paths through it: each decoding sequence yields one token per trip around the pipeline,
so throughput <= sequences in flight / round-trip time. Capacities and round trips are made
consistent by fixed-point iteration; latency limits then scale the load down until they hold.
Model and assumptions: docs/planner.md#serving-estimator.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from weakref import WeakKeyDictionary

from scipy.optimize import brentq, linprog

from planner import lanes as lane_model
from planner.cluster import Link
from planner.engines import GROUP_ENGINES, LANE_ENGINES
from planner.flow import COORDINATOR, BalancedFlow, FlowResult, hop_link, max_flow
from planner.problem import TOKEN_ID_BYTES, Placement, PlacementProblem

ITERATIONS = 40
LOAD_STEPS = 40  # bisection steps for the load that meets the latency limits
BATCH_FLOOR = 1e-6  # smallest operating batch considered (sequences)
BATCH_XTOL = 1e-12  # operating batches are solved to within this many sequences
TOLERANCE = 1e-3
SETTLED = 1e-2  # capacities moving less than this may stop once the flow's value holds still


# complete estimates by problem, then by placement and latency limits (dropped with the problem)
_ESTIMATES: WeakKeyDictionary[PlacementProblem, dict[tuple, "ServingEstimate"]] = WeakKeyDictionary()


@dataclass(frozen=True)
class PathEstimate:
    nodes: tuple[str, ...]
    tokens_per_s: float
    tpot_s: float
    ttft_s: float


@dataclass(frozen=True)
class ServingEstimate:
    throughput: float                  # output tokens/s under the latency limits
    max_flow: float                    # static max flow at rtt = 0 (the classic objective)
    tpot_s: float | None               # flow-weighted mean time per output token
    ttft_s: float | None               # flow-weighted mean time to first token (no queueing for admission)
    load: float                        # share of the consistent flow kept to meet the limits
    flow: FlowResult                   # flows at the consistent capacities (before load scaling)
    node_capacity: dict[str, float]    # consistent capacities, tokens/s, by unit (GPU or TP group name)
    node_batch: dict[str, float]       # sequences per decode step at the operating point, by unit
    paths: tuple[PathEstimate, ...]
    notes: tuple[str, ...] = ()
    complete: bool = True              # False: a deadline cut the fixed point or the load search (notes say)
    lanes: int | None = None           # decode micro-batches per path (None: one per stage of each path)


class _Units:
    """What the fixed point asks of a placement's units and hops at every step, worked out once per
    estimate: spans, costs, compute-bound capacities, prompt passes, and each hop's link and fixed cost."""

    def __init__(self, problem: PlacementProblem, placement: Placement) -> None:
        self.problem = problem
        self.ranges = placement.units()
        self.cost = {n: problem.cost(n) for n in self.ranges}
        self.shape = {n: (span[1] - span[0], span[0] == 0, span[1] == problem.layers)  # layers, first, last
                      for n, span in self.ranges.items()}
        self.static_capacity = {n: problem.capacity(n, *span, rtt_s=0.0) for n, span in self.ranges.items()}
        prompt = problem.cluster.workload.prompt_tokens
        self.prefill_stage = {n: _prefill_stage_s(problem, n, span, prompt) for n, span in self.ranges.items()}
        self.ceiling, self.ceiling_spot = {}, {}
        for n, (layers, first, last) in self.shape.items():
            ceiling = float(max(1.0, self.cost[n].step_batch(layers, first=first, last=last)))
            self.ceiling[n] = ceiling
            self.ceiling_spot[n] = self.cost[n].seconds_per_output_token(layers, ceiling, first, last)
        self._hops: dict[tuple[str, str], tuple[Link, float, float, tuple[str, str]]] = {}
        self.wakes = any(cost.wakes for cost in self.cost.values())   # a measured wake_ms somewhere

    def hop(self, a: str, b: str) -> tuple[Link, float, float, tuple[str, str]]:
        """A hop's link, the bytes one token puts on it, its fixed cost per message and its link key."""
        if (a, b) not in self._hops:
            link, size = _hop(self.problem, a, b)
            self._hops[(a, b)] = (link, size, _message_s(self.problem, a, b), _link_key(self.problem, a, b))
        return self._hops[(a, b)]

    def hop_s(self, a: str, b: str, vectors: float, sequences: float | None = None) -> float:
        """Latency plus transfer time of `vectors` tokens' vectors over a hop, plus the message's fixed cost
        and, from the coordinator, its loop for the message's `sequences` (default: one per vector; the
        simulator charges the same)."""
        link, size, message, _ = self.hop(a, b)
        seconds = link.latency_s + size * vectors / link.bandwidth_bytes_per_s + message
        if a == COORDINATOR:
            seconds += self.cost[b].host_step_s(vectors if sequences is None else sequences)
        return seconds

    def operating_batch(self, node: str, rate: float) -> float:
        """Smallest batch b with which the node keeps up with `rate` tokens/s: b = rate * step_time(b)."""
        if rate <= 0:
            return 1.0
        cost, (layers, first, last), high = self.cost[node], self.shape[node], self.ceiling[node]
        if high / (self.ceiling_spot[node] * high) <= rate:
            return high  # saturated: it runs its largest batch

        def surplus(batch: float) -> float:  # positive below the fixed point, negative above
            return rate * cost.seconds_per_output_token(layers, batch, first, last) * batch - batch

        if surplus(high) >= 0:
            return high
        if surplus(BATCH_FLOOR) <= 0:
            return BATCH_FLOOR
        # Brent's method: the root to within 1e-12 in about ten steps (bisection took sixty)
        return max(brentq(surplus, BATCH_FLOOR, high, xtol=BATCH_XTOL), BATCH_FLOOR)

    def step_s(self, node: str, batch: float) -> float:
        """One iteration of a node: a decode step of `batch` sequences plus its share of prefill work (with
        the embedding, head and step overhead a first or last stage pays, as the simulator charges them)."""
        batch = max(batch, 1.0)
        layers, first, last = self.shape[node]
        return self.cost[node].seconds_per_output_token(layers, batch, first, last) * batch


def decompose_paths(flow: FlowResult) -> list[tuple[tuple[str, ...], float]]:
    """Split node-to-node flows into coordinator-to-coordinator paths (deterministic order): each path
    follows the largest remaining flow out of every node (ties by name), never revisiting a GPU."""
    leaving: dict[str, dict[str, float]] = {}  # node -> target -> flow left on that edge
    for (a, b), value in flow.edge_flows.items():
        if value > 1e-9:
            leaving.setdefault(a, {})[b] = value
    paths = []
    while True:
        path, seen, node = [], set(), COORDINATOR
        while True:
            options = [(-amount, target) for target, amount in leaving.get(node, {}).items()
                       if target == COORDINATOR or target not in seen]
            if not options:
                break
            node = min(options)[1]
            if node == COORDINATOR:
                break
            path.append(node)
            seen.add(node)
        if node != COORDINATOR or not path:
            return paths
        hops = list(zip([COORDINATOR] + path, path + [COORDINATOR]))
        amount = min(leaving[a][b] for a, b in hops)
        for a, b in hops:
            leaving[a][b] -= amount
            if leaving[a][b] <= 1e-9:
                del leaving[a][b]
        paths.append((tuple(path), amount))


def _hop(problem: PlacementProblem, a: str, b: str) -> tuple[Link, float]:
    """The link a hop uses and the bytes one token puts on it (token ids at the coordinator ends)."""
    size = TOKEN_ID_BYTES if COORDINATOR in (a, b) else problem.cluster.activation_bytes_per_token()
    return hop_link(problem, *_link_key(problem, a, b)), size


def _message_s(problem: PlacementProblem, a: str, b: str) -> float:
    """Fixed cost of one message over a hop: the sending unit's hop cost (a message from the coordinator:
    its receiver's; the coordinator's loop, which grows with the message, is _Units.hop_s's)."""
    return problem.cost(b if a == COORDINATOR else a).hop_s


def _link_key(problem: PlacementProblem, a: str, b: str) -> tuple[str, str]:
    """The physical link a hop uses, per direction (the coordinator's links named after it)."""
    return (COORDINATOR if a == COORDINATOR else problem.host_of(a),
            COORDINATOR if b == COORDINATOR else problem.host_of(b))


def _link_waits(units: _Units, paths, batch: dict[str, float], load: float) -> dict[tuple[str, str], float]:
    """Mean queueing delay on each link (Pollaczek-Khinchine, FIFO): prompts cross a link in chunks
    (chunked prefill), decode tokens as one transfer per batch, and both queue behind each other."""
    workload = units.problem.cluster.workload
    chunk = min(workload.prompt_tokens, units.problem.cluster.cost_params.prefill_chunk_tokens)
    chunks = workload.prompt_tokens / chunk
    traffic: dict[tuple[str, str], tuple[Link, list[tuple[float, float]]]] = {}  # (arrivals/s, bytes) classes
    for nodes, rate in paths:
        tokens_per_s = rate * load
        for a, b in zip((COORDINATOR,) + nodes, nodes + (COORDINATOR,)):
            link, size, _, key = units.hop(a, b)
            rows = max(batch.get(b, batch.get(a, 1.0)), 1.0)
            _, classes = traffic.setdefault(key, (link, []))
            classes.append((tokens_per_s / workload.output_tokens * chunks, chunk * size))
            classes.append((tokens_per_s / rows, rows * size))
    waits = {}
    for key, (link, classes) in traffic.items():
        bandwidth = link.bandwidth_bytes_per_s
        busy = min(sum(rate * size for rate, size in classes) / bandwidth, 0.99)
        second_moment = sum(rate * (size / bandwidth) ** 2 for rate, size in classes)
        waits[key] = second_moment / (2 * (1 - busy))
    return waits


def _latencies(units: _Units, paths, node_flow: dict[str, float], load: float,
               waiting: bool = True) -> tuple[list[PathEstimate], dict[str, float]]:
    """Per-path latencies at `load`; without `waiting`, the shortest round trip (no queueing anywhere)."""
    ranges = units.ranges
    batch = {n: units.operating_batch(n, node_flow.get(n, 0.0) * load) for n in ranges}
    step = {n: units.step_s(n, batch[n]) for n in ranges}
    # a unit waits between its steps when the flow leaves it idle (below one sequence per step) ...
    idle = {n: max(batch[n], 1.0) / (node_flow[n] * load) - step[n] if node_flow.get(n, 0.0) * load > 0 else 0.0
            for n in ranges}
    lanes_at = {n: sum(len(nodes) for nodes, _ in paths if n in nodes) for n in ranges}
    waits = _link_waits(units, paths, batch, load) if waiting else {}
    prompt = units.problem.cluster.workload.prompt_tokens
    estimates = []
    for nodes, rate in paths:
        hops = list(zip((COORDINATOR,) + nodes, nodes + (COORDINATOR,)))
        queued = sum(waits.get(units.hop(a, b)[3], 0.0) for a, b in hops)
        # A path runs one decode micro-batch (lane) per stage, as vLLM's virtual engines and the runtime's
        # host do: lanes pass its slowest stage one at a time, so a lane comes round no sooner than
        # stages x the slowest step; what that exceeds the steps' sum, a lane waits at stages (a stage
        # that waits pays for waking in its step, which that slack can absorb)
        moves = queued + sum(units.hop_s(a, b, batch.get(b, batch.get(a, 1.0))) for a, b in hops)
        steps = [step[n] for n in nodes]
        if units.wakes:   # ... or while the lanes through it are at other stages: a round over their number
            trip = sum(steps) + max(0.0, len(nodes) * max(steps) - sum(steps)) + moves
            wake = {n: units.cost[n].wake_s(max(idle[n], trip / lanes_at[n] - step[n])) for n in nodes}
            steps = [step[n] + wake[n] for n in nodes]
        else:
            wake = dict.fromkeys(nodes, 0.0)
        stage_wait = max(0.0, len(nodes) * max(steps) - sum(steps)) if waiting else 0.0
        tpot = sum(steps) + stage_wait + moves
        ttft = sum(units.prefill_stage[n] + step[n] / 2 + wake[n] for n in nodes) \
            + queued + sum(units.hop_s(a, b, prompt, sequences=1) for a, b in hops)
        estimates.append(PathEstimate(nodes, rate * load, tpot, ttft))
    return estimates, batch


def _prefill_stage_s(problem: PlacementProblem, node: str, span: tuple[int, int], prompt: int) -> float:
    """A whole prompt's pass through a unit: its layers, the embedding on the first stage, the head for
    the prompt's last token on the last, and one step overhead."""
    cost = problem.cost(node)
    seconds = cost.prefill_s(span[1] - span[0], prompt) + cost.step_overhead_s(1)
    if span[0] == 0:
        seconds += cost.embed_s(prompt)
    if span[1] == problem.layers:
        seconds += cost.head_s(1)
    return seconds


def _mean(values: list[tuple[float, float]]) -> float:
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total > 0 else 0.0


@dataclass(frozen=True)
class _FixedPoint:
    flow: FlowResult                # balanced max flow at the consistent capacities
    capacity: dict[str, float]      # the consistent capacities, by unit
    static_value: float             # max flow at compute-bound capacities (rtt = 0)
    steps: int                      # fixed-point steps taken
    cut_short: bool                 # the deadline stopped it before it settled (or ran its ITERATIONS)
    moving: float                   # how far capacities moved in the last step taken (share)


def _consistent_flow(units: _Units, placement: Placement, waiting: bool, deadline: float) -> _FixedPoint:
    """Max flow at capacities quoted for the round trips that flow itself produces (fixed point). A step
    starts only if one more, as long as the longest so far, ends by `deadline`."""
    ranges, problem = units.ranges, units.problem
    capacity = dict(units.static_capacity)
    balance = BalancedFlow(problem, placement)
    flow = balance(capacity, cut=False)  # the max flow's value at rtt = 0, split as the later steps split it
    static_value = flow.value
    weight, trend, steady = 0.5, 0.0, 0
    longest, steps, changed, cut_short = 0.0, 0, math.inf, False
    for _ in range(ITERATIONS):
        began = time.perf_counter()
        if began + longest > deadline:
            cut_short = True
            break
        paths = decompose_paths(flow)
        estimates, _ = _latencies(units, paths, flow.node_flow, 1.0, waiting)
        trip = {n: _mean([(p.tpot_s, p.tokens_per_s) for p in estimates if n in p.nodes]) for n in ranges}
        updated = {n: problem.capacity(n, *ranges[n], rtt_s=trip[n]) if trip[n] > 0 else capacity[n]
                   for n in ranges}
        # damped: capacities and round trips feed each other; the balanced flow can swing between paths
        # as capacities move, so the step halves whenever the flow's value turns back
        changed = max(weight * abs(updated[n] - capacity[n]) / max(capacity[n], 1e-9) for n in ranges)
        capacity = {n: capacity[n] + weight * (updated[n] - capacity[n]) for n in ranges}
        previous, flow = flow, balance(capacity, cut=False)
        steps += 1
        longest = max(longest, time.perf_counter() - began)
        # settled: capacities stopped moving, or nearly so with the value held still twice running (a
        # GPU that carries almost nothing can keep nudging its capacity without changing the flow; a
        # saturated link holds the value still while capacities are still falling)
        still = abs(flow.value - previous.value) <= TOLERANCE * max(previous.value, 1e-9)
        steady = steady + 1 if still and changed < SETTLED else 0
        if changed < TOLERANCE or steady >= 2:
            break
        if trend * (flow.value - previous.value) < 0:
            weight /= 2
        trend = flow.value - previous.value
    return _FixedPoint(balance.with_cut(flow), capacity, static_value, steps, cut_short, changed)


def _within_kv(problem: PlacementProblem, placement: Placement, paths: list[PathEstimate]) -> list[PathEstimate]:
    """KV-bound admission along a path: an admitted request holds KV for its whole prompt + output on
    every stage of its path until its last token, so the sequences in flight through a unit, summed over
    the paths through it (rate x round trip each), fit its KV-limited batch. The fixed point meets this
    only approximately (its capacities see the round trips of the flow before last); where it does not,
    path rates are trimmed to fit, keeping the most tokens/s (an LP over the paths)."""
    ranges = placement.units()
    units = sorted({n for p in paths for n in p.nodes})
    slots = {n: problem.cost(n).max_batch(ranges[n][1] - ranges[n][0], ranges[n][0] == 0,
                                          ranges[n][1] == problem.layers) for n in units}
    held = {n: sum(p.tokens_per_s * p.tpot_s for p in paths if n in p.nodes) for n in units}
    if all(held[n] <= slots[n] * (1 + 1e-6) for n in units):
        return paths
    rows = [[p.tpot_s if n in p.nodes else 0.0 for p in paths] for n in units]
    fit = linprog([-1.0] * len(paths), A_ub=rows, b_ub=[float(slots[n]) for n in units],
                  bounds=[(0.0, p.tokens_per_s) for p in paths], method="highs")
    if not fit.success:
        return paths
    return [replace(p, tokens_per_s=float(rate)) for p, rate in zip(paths, fit.x)]


def round_trip_max_flow(problem: PlacementProblem, placement: Placement,
                        deadline: float = math.inf) -> tuple[float, bool]:
    """Max flow with every unit's batch turned over once per the shortest round trip its paths allow
    (compute and transfers, no waiting): unlike static max flow it sees that a pipeline's stages share
    their sequences and that slow links stretch the trip. What a simulator can approach, not exceed.
    Also whether it is complete: False when `deadline` stopped the fixed point before it settled (the
    value is then likely above the settled one: capacities start at their compute bound and fall)."""
    if problem.static:
        return max_flow(problem.with_rtt(0.0), placement).value, True
    fixed = _consistent_flow(_Units(problem, placement), placement, waiting=False, deadline=deadline)
    return fixed.flow.value, not fixed.cut_short


def estimate(problem: PlacementProblem, placement: Placement, *, max_tpot_s: float | None = None,
             max_ttft_s: float | None = None, deadline: float = math.inf,
             lanes: bool | int = True) -> ServingEstimate:
    """Predicted serving throughput and latency of a placement. Past `deadline` (a time.perf_counter()
    value) the fixed point stops and the load search keeps the highest load found to meet the limits;
    the estimate then says so (`complete` False, and a note). Lanes per path: True, on an engine that
    lets a plan set them (the runtime), the count planner/lanes.py rates best; False, one per stage; a
    number, that many (a layout's `lanes`; one per stage where paths share a stage, with a note). Complete
    estimates are kept per problem: the same placement under the same limits is scored once (the
    optimiser and plan.score both ask)."""
    lane_key = "choose" if lanes is True else "one per stage" if lanes is False else int(lanes)   # True == 1
    key = (tuple(placement.ranges.items()), placement.tp_groups, max_tpot_s, max_ttft_s, lane_key)
    known = _ESTIMATES.setdefault(problem, {})
    if key not in known:
        served = _estimate(problem, placement, max_tpot_s, max_ttft_s, deadline, lanes)
        if not served.complete:
            return served
        known[key] = served
    return known[key]


def _estimate(problem: PlacementProblem, placement: Placement, max_tpot_s: float | None,
              max_ttft_s: float | None, deadline: float, lanes: bool | int) -> ServingEstimate:
    if problem.static:
        static = max_flow(problem.with_rtt(0.0), placement)
        return ServingEstimate(static.value, static.value, None, None, 1.0, static,
                               {}, {}, (), ("static throughput tables: no latency model",))
    units = _Units(problem, placement)
    fixed = _consistent_flow(units, placement, waiting=True, deadline=deadline)
    flow = fixed.flow
    paths = decompose_paths(flow)
    notes: list[str] = []
    if fixed.cut_short:
        notes.append(f"time limit: the fixed point stopped after {fixed.steps} of at most {ITERATIONS} steps, "
                     f"its capacities still moving by {fixed.moving:.1%} a step; throughput and latencies "
                     "are those of its last step (capacities start at their compute bound and fall as it settles, so "
                     "throughput is likely high)")

    choice = lane_model.LaneChoice(None, 1.0, {})
    # an engine that moves each path's sequences as one group: one lane per path whatever is asked, its
    # sequences in flight as many as KV holds (planner/lanes.py: grouped)
    grouped = problem.cluster.engine in GROUP_ENGINES
    if not grouped and lanes is True and problem.cluster.engine in LANE_ENGINES:
        choice = lane_model.choose(units, _latencies(units, paths, flow.node_flow, 1.0)[0])
    elif not grouped and lanes is not False and lanes is not True:   # a given count
        choice = lane_model.rate(units, _latencies(units, paths, flow.node_flow, 1.0)[0], lanes) or choice
        if choice.lanes is None:
            notes.append(f"lanes: {lanes} per path estimated as one per stage: paths share a stage, where the "
                         "lane model does not hold (docs/planner.md#lanes)")
    ratio = choice.tpot_ratio   # per path: round trip with the chosen lanes over one lane per stage's

    def served_at(load: float, latencies: list[PathEstimate]) -> list[PathEstimate]:
        return lane_model.grouped(units, latencies, load) if grouped else lane_model.scaled(latencies, ratio)

    def meets(load: float) -> bool:
        est = served_at(load, _latencies(units, paths, flow.node_flow, load)[0])
        tpot = _mean([(p.tpot_s, p.tokens_per_s) for p in est])
        ttft = _mean([(p.ttft_s, p.tokens_per_s) for p in est])
        return (max_tpot_s is None or tpot <= max_tpot_s) and (max_ttft_s is None or ttft <= max_ttft_s)

    load, bisected = 1.0, LOAD_STEPS
    if not meets(1.0):
        low, high = 0.0, 1.0
        for step in range(LOAD_STEPS):
            if low > 0 and time.perf_counter() > deadline:
                bisected = step  # low meets the limits: a lower load than the search ends at, never higher
                break
            mid = (low + high) / 2
            low, high = (mid, high) if meets(mid) else (low, mid)
        load = low
        notes.append(f"load cut to {load:.0%} of the consistent flow to meet the latency limits")
        if load < 1e-6:
            notes.append("the latency limits cannot be met by this placement even when idle")
        if bisected < LOAD_STEPS:
            notes.append(f"time limit: the load meeting the latency limits was bisected {bisected} times of "
                         f"{LOAD_STEPS}, to within {high - low:.1e} of the consistent flow (the lower end kept)")
    final, batch = _latencies(units, paths, flow.node_flow, max(load, 1e-9))
    offered = sum(p.tokens_per_s for p in final)
    before = {p.nodes: p.tokens_per_s for p in final}
    final = served_at(load, final)
    if grouped:   # each path's tokens/s over the flow's: what its stages carry (_with_lanes)
        ratio = {p.nodes: before[p.nodes] / p.tokens_per_s for p in final if p.tokens_per_s > 0}
    laned = sum(p.tokens_per_s for p in final)
    final = _within_kv(problem, placement, final)
    kept = sum(p.tokens_per_s for p in final) / laned if laned > 0 else 1.0
    if kept < 0.98:  # the fixed point is within a few per cent almost everywhere; say so when it is not
        notes.append(f"path rates trimmed to {kept:.1%} so the sequences in flight fit every stage's KV")
    gain = laned / offered if offered > 0 else 1.0
    capacity = fixed.capacity
    if grouped or choice.lanes is not None:
        what = f"one group per path ({problem.cluster.engine}'s scheduling)" if grouped else f"lanes: {choice.lanes} per path"
        notes.append(f"{what}, {gain - 1:+.0%} tokens/s against one lane per stage by the lane model "
                     "(docs/planner.md#lanes)")
        flow, capacity = _with_lanes(flow, capacity, paths, ratio)
    weights = [(p.tpot_s, p.tokens_per_s) for p in final]
    return ServingEstimate(
        throughput=fixed.flow.value * load * gain * kept, max_flow=fixed.static_value,
        tpot_s=_mean(weights) if final else None,
        ttft_s=_mean([(p.ttft_s, p.tokens_per_s) for p in final]) if final else None,
        load=load, flow=flow, node_capacity=capacity, node_batch=batch, paths=tuple(final),
        notes=tuple(notes), complete=not fixed.cut_short and bisected == LOAD_STEPS,
        lanes=choice.lanes)   # None on a group engine: its one lane per path is its own, not a setting


def _with_lanes(flow: FlowResult, capacity: dict[str, float], paths, ratio: dict[tuple[str, ...], float]
                ) -> tuple[FlowResult, dict[str, float]]:
    """Flows and capacities with each path's stages carrying what its lanes serve (a stage that several
    paths share, as one group each, scales by their rates' mean)."""
    carried: dict[str, list[tuple[float, float]]] = {}
    for nodes, rate in paths:
        for n in nodes:
            carried.setdefault(n, []).append((1.0 / ratio.get(nodes, 1.0), rate))
    factor = {n: _mean(values) if sum(w for _, w in values) > 0 else values[0][0] for n, values in carried.items()}
    edges = {(a, b): value * factor.get(b if a == COORDINATOR else a, 1.0) for (a, b), value in flow.edge_flows.items()}
    scaled_flow = replace(flow, value=sum(v for (a, _), v in edges.items() if a == COORDINATOR), edge_flows=edges,
                          node_flow={n: value * factor.get(n, 1.0) for n, value in flow.node_flow.items()})
    return scaled_flow, {n: value * factor.get(n, 1.0) for n, value in capacity.items()}
