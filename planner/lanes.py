"""How many decode micro-batches (lanes) each path runs, rated by a model of a path's round trip.

A path's sequences in flight, B, travel in L lanes of B / L. Each stage runs one step per lane per round
trip, and a stage that a lane has left runs waiting prompts in iterations of their own. Two bounds set
the round trip (docs/planner.md#lanes):

* busy: a stage's work per round trip, L lane steps plus the prompts of the B / output requests that
  replace those finishing, cannot exceed the round trip (with one lane per stage the slowest stage is
  busy all the time, the estimate's "lanes pass the slowest stage one at a time");
* latency: a lane's own trip, its step at every stage and every hop, plus at each stage what it finds
  there: half a prompt pass when the stage is in one (the stage's prompt share of its time), and a chunk
  riding in its step while prompts wait.

More lanes keep a long chain's stages busy; fewer give each step a larger batch, so its weights are read
for more tokens. The serving estimate (planner/serving.py) models one lane per stage and asks this module
to rate every lane count with the two bounds at its sequences in flight; it scales each path's round
trip by the best count's over one lane per stage's. Measured against the simulator: docs/planner.md#lanes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from planner.flow import COORDINATOR

if TYPE_CHECKING:   # the serving estimate calls this module: types only, no import cycle
    from planner.serving import PathEstimate, _Units

MAX_LANES = 1024     # lanes a path may be given (more than a stage's sequences leave lanes empty)
MIN_GAIN = 1.03      # a lane count other than one per stage must gain this much by the model to be chosen
MAX_PROMPT_SHARE = 0.95
ROUNDS = 60          # damped fixed-point rounds over the paths' round trips
MOVED = 1e-6         # relative: stop once no round trip moves more than this


@dataclass(frozen=True)
class LaneChoice:
    lanes: int | None          # lanes per path (None: one per stage of each path)
    gain: float                # modelled throughput with `lanes` over one lane per stage
    tpot_ratio: dict[tuple[str, ...], float]  # per path: modelled round trip with `lanes` over one per stage


class _Stage:
    """One unit's times for the lane model: a decode step (with its embedding, head and overhead), one
    prompt pass of a full token budget, and a request's whole prompt."""

    def __init__(self, units: _Units, node: str) -> None:
        cost, (layers, first, last) = units.cost[node], units.shape[node]
        workload, params = units.problem.cluster.workload, units.problem.cluster.cost_params
        self.cost, self.layers, self.first, self.last = cost, layers, first, last
        self.budget = params.prefill_chunk_tokens
        self.prompt, self.output = workload.prompt_tokens, workload.output_tokens
        chunk = min(self.prompt, self.budget)
        self.pass_s = cost.prefill_s(layers, chunk, (self.prompt - chunk) / 2) + cost.step_overhead_s(1) \
            + (cost.embed_s(chunk) if first else 0.0)
        self.prompt_s = self.prompt / chunk * self.pass_s + (cost.head_s(1) if last else 0.0)

    def step_s(self, batch: float) -> float:
        cost = self.cost
        return cost.decode_s(self.layers, batch) + cost.step_overhead_s(batch) \
            + (cost.embed_s(batch) if self.first else 0.0) + (cost.head_s(batch) if self.last else 0.0)

    def riding_s(self, batch: float) -> float:
        """A prompt chunk in the budget a lane's step leaves."""
        room = self.budget - batch
        return self.cost.prefill_s(self.layers, room, self.prompt / 2) if room >= 1 else 0.0


def round_trips(units: _Units, paths: list[tuple[tuple[str, ...], float, float]],
                lanes: int | None) -> dict[tuple[str, ...], float]:
    """Modelled round trip of each path (nodes, sequences in flight, starting round trip) when every path
    runs `lanes` lanes (None: one per stage of the path)."""
    stages = {n: _Stage(units, n) for nodes, _, _ in paths for n in nodes}
    batch = {nodes: max(held / (lanes or len(nodes)), 1e-9) for nodes, held, _ in paths}
    step = {(nodes, n): stages[n].step_s(batch[nodes]) for nodes, _, _ in paths for n in nodes}
    # what a lane meets at a stage in a prompt pass: half the pass, and a chunk riding in its own step
    met = {(nodes, n): stages[n].pass_s / 2 + stages[n].riding_s(batch[nodes]) for nodes, _, _ in paths for n in nodes}
    hops = {nodes: sum(units.hop_s(a, b, batch[nodes]) for a, b in zip((COORDINATOR,) + nodes, nodes + (COORDINATOR,)))
            for nodes, _, _ in paths}
    trip = {nodes: start for nodes, _, start in paths}
    # a stage waits between its lanes' visits: a round over the lanes holding sequences, less its step
    visits = {nodes: min(lanes or len(nodes), max(held, 1.0)) for nodes, held, _ in paths}
    woken = dict(step)
    sharing = {n: [nodes for nodes, _, _ in paths if n in nodes] for n in stages}
    for _ in range(ROUNDS):
        rate = {nodes: held / trip[nodes] for nodes, held, _ in paths}   # sequences round per second
        if units.wakes:
            woken = {(nodes, n): s + stages[n].cost.wake_s(trip[nodes] / visits[nodes] - s)
                     for (nodes, n), s in step.items()}
        prompts, work = dict.fromkeys(stages, 0.0), dict.fromkeys(stages, 0.0)
        for nodes, held, _ in paths:
            for n in nodes:
                stage = stages[n]
                prompts[n] += rate[nodes] / stage.output * stage.prompt_s
                work[n] += rate[nodes] * (woken[(nodes, n)] / batch[nodes] + stage.prompt_s / stage.output)
        moved = 0.0
        for nodes, _, _ in paths:
            latency = hops[nodes]
            for n in nodes:
                share = min(prompts[n], MAX_PROMPT_SHARE)
                latency += woken[(nodes, n)] + share * met[(nodes, n)]
                # a stage that other paths pass through may be on one of their lanes' steps when this
                # lane arrives: busy with it that share of the time, for half its step on average
                for other in sharing[n]:
                    if other is not nodes:
                        other_step = woken[(other, n)]
                        latency += min(visits[other] * other_step / trip[other], 1.0) * other_step / 2
            busy = trip[nodes] * max(work[n] for n in nodes)   # > trip: a stage cannot keep up at this trip
            updated = 0.5 * trip[nodes] + 0.5 * max(latency, busy)
            moved = max(moved, abs(updated - trip[nodes]) / trip[nodes])
            trip[nodes] = updated
        if moved < MOVED:
            break
    return trip


def choose(units: _Units, served: list[PathEstimate]) -> LaneChoice:
    """The lane count (the same for every path, as the simulator's --microbatches and the runtime's --lanes
    take it) that the model rates highest at the sequences in flight of the estimate's paths `served` (one
    lane per stage), if it gains MIN_GAIN over one lane per stage; else one lane per stage. A path keeps its
    sequences in flight, so the count that serves most also has the shortest round trips: latency limits
    need no count of their own (the estimate cuts the load after this)."""
    best = LaneChoice(None, 1.0, {})
    paths = _modelled(served)
    if paths is None:
        return best
    default = round_trips(units, paths, None)
    for lanes in range(1, max(len(nodes) for nodes, _, _ in paths) + 1):
        rated = _rated(units, served, paths, default, lanes)
        if rated.gain >= MIN_GAIN and rated.gain > best.gain:
            best = rated
    return best


def rate(units: _Units, served: list[PathEstimate], lanes: int) -> LaneChoice | None:
    """The model's figures for `lanes` lanes on every path against one per stage, at the sequences in flight
    of `served` (one lane per stage); None where the model does not hold (below)."""
    paths = _modelled(served)
    return None if paths is None else _rated(units, served, paths, round_trips(units, paths, None), lanes)


def _modelled(served: list[PathEstimate]) -> list[tuple[tuple[str, ...], float, float]] | None:
    """(nodes, sequences in flight, round trip) of the paths that carry tokens; None if none do, or where
    paths share a stage: there lanes of several paths merge into one step, which the model does not
    describe for a chosen count (`grouped` below takes shared stages for one group per path)."""
    paths = [(p.nodes, p.tokens_per_s * p.tpot_s, p.tpot_s) for p in served if p.tokens_per_s > 0]
    seen: set[str] = set()
    for nodes, _, _ in paths:
        if seen & set(nodes):
            return None
        seen |= set(nodes)
    return paths or None


def _rated(units: _Units, served: list[PathEstimate], paths, default: dict[tuple[str, ...], float],
           lanes: int) -> LaneChoice:
    trips = round_trips(units, paths, lanes)
    ratio = {nodes: trips[nodes] / default[nodes] for nodes in trips}
    rates = {p.nodes: p.tokens_per_s for p in served}
    # each path keeps its sequences in flight: its tokens/s scale inversely with its round trip
    gain = sum(rates[nodes] / ratio[nodes] for nodes in ratio) / sum(rates[nodes] for nodes in ratio)
    return LaneChoice(lanes, gain, ratio)


def grouped(units: _Units, served: list[PathEstimate], share: float = 1.0) -> list[PathEstimate]:
    """The paths of `served` on an engine that moves each path's decoding sequences as one group (helix):
    it admits while KV lasts, so the paths together hold as many sequences as their scarcest stage's KV
    (or batch cap) allows, split between them as `served` splits its tokens/s, times `share` (a load
    below the full one); each path's round trip is its group's (round_trips with one lane per path) and
    it serves its sequences in flight over that. TTFT is kept."""
    carrying = [p for p in served if p.tokens_per_s > 0]
    if not carrying:
        return served
    slots = {n: units.cost[n].max_batch(units.shape[n][0], first=units.shape[n][1], last=units.shape[n][2])
             for p in carrying for n in p.nodes}
    through = {n: sum(p.tokens_per_s for p in carrying if n in p.nodes) for n in slots}
    fill = min(slots[n] / through[n] for n in slots) * share
    held = {p.nodes: max(p.tokens_per_s * fill, 1e-9) for p in carrying}
    trips = round_trips(units, [(p.nodes, held[p.nodes], p.tpot_s) for p in carrying], 1)
    return [replace(p, tokens_per_s=held[p.nodes] / trips[p.nodes], tpot_s=trips[p.nodes]) if p.nodes in trips else p
            for p in served]


def scaled(paths: list[PathEstimate], ratio: dict[tuple[str, ...], float]) -> list[PathEstimate]:
    """Paths with each round trip scaled by `ratio` and, its sequences in flight kept, its tokens/s inversely."""
    return [replace(p, tokens_per_s=p.tokens_per_s / ratio.get(p.nodes, 1.0), tpot_s=p.tpot_s * ratio.get(p.nodes, 1.0))
            for p in paths]

