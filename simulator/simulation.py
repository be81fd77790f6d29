"""A served layout, simulated: the coordinator, its admission queue, the stages and the links.

Request life (docs/simulator.md):
  arrival -> admission queue (FIFO) -> a path, chosen hop by hop by the routing policy among stages
  with KV room for prompt + output tokens (reserved on every stage of the path; freed at completion)
  -> prompt to the first stage (4-byte token ids) -> prefill, chunk by chunk, stage by stage
  (hidden_size x dtype bytes per token between stages) -> first token back to the coordinator (TTFT)
  -> decode rounds along the same path, one token per sequence per round trip -> last token (E2E).

Only `simulate()` and `Simulation` are public; they read a Layout and never reach into the solver.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from time import perf_counter
from typing import Callable, Final, Iterator

import numpy as np

from planner.engines import GROUP_ENGINES
from planner.errors import InputError
from planner.flow import max_flow
from planner.layout import Layout
from planner.problem import PlacementProblem
from planner.routing import COORDINATOR, DEFAULT_ROUTER, ROUTERS, RouteGraph, make_router
from simulator.engine import EventLoop
from simulator.metrics import LinkReport, Recorder, SimResult, StageReport, summarise
from simulator.network import Link
from simulator.stage import LANES_PER_PATH, Chunk, Cohort, Stage
from simulator.workload import LENGTH_KINDS, Lengths, Offline, Poisson, Request, Trace, Workload

TOKEN_ID_BYTES: Final = 4         # the coordinator sends and receives token ids
PROGRESS_STEPS = 200       # the run is cut into this many slices to report progress
MIN_TOKEN_BUDGET = 32     # a decode batch larger than the budget defers prompt chunks, never decodes
LENGTH_BLOCK = 4096        # closed-loop lengths are drawn this many at a time
# Automatic warm-up: it lasts until as many requests have finished as were admitted at the start, so
# the start-up wave of prefills is over (docs/simulator.md#warm-up), and
AUTO_WARMUP_MIN_S = 60.0    # at least this long
AUTO_WARMUP_MAX_S = 3600.0  # at most this long: a cluster whose requests never finish still reports


@dataclass(frozen=True)
class SimConfig:
    workload: Workload = field(default_factory=Offline)
    lengths: str = "fixed"          # fixed | uniform | lognormal (means: the cluster's [workload])
    scheduler: str = DEFAULT_ROUTER # a name in planner.routing.ROUTERS
    duration_s: float = 600.0       # measured
    warmup_s: float | None = None   # simulated first, excluded from the metrics; None: automatic
    seed: int = 0
    token_budget: int | None = None  # tokens per stage iteration, decode + prompt chunks (None: the engine's)
    microbatches: int | None = None  # decode micro-batches per path (lanes), filled evenly; None: the layout's
    #                                   `lanes`, or one per stage where it has none (helix: one per path)


Progress = Callable[[float, float], None]   # (simulated seconds done, total)


def simulate(layout: Layout, config: SimConfig = SimConfig(), progress: Progress | None = None) -> SimResult:
    """Simulate serving `layout` under `config`; deterministic for a seed."""
    return Simulation(layout, config).run(progress)


def _check(layout: Layout, config: SimConfig) -> None:
    """Refuse what the simulator cannot run, naming the field and the fix."""
    cluster = layout.cluster
    if not layout.placement.units():
        raise InputError("the layout places no layers", field="[nodes]", fix="re-plan with `planner solve --out`")
    if config.scheduler not in ROUTERS:
        raise InputError(f"unknown scheduler '{config.scheduler}'", field="--scheduler",
                         fix=f"use one of {', '.join(ROUTERS)}")
    if config.lengths not in LENGTH_KINDS:
        raise InputError(f"unknown lengths '{config.lengths}'", field="--lengths",
                         fix=f"use one of {', '.join(LENGTH_KINDS)}")
    if not cluster.has_latency:  # the layout was planned as a pure max-flow problem
        gpu = next(g for g, spec in cluster.gpu_types.items() if spec.is_static)
        raise InputError(f"GPU type '{gpu}' is described only by a static throughput table, which says "
                         "nothing about latency or memory: the simulator cannot run this layout",
                         file=cluster.path, field=f"[gpu {gpu}] throughput",
                         fix="give it measured decode_ms/prefill_ms tables (docs/formats.md) "
                             "or use a catalog GPU type")
    if config.token_budget is not None and config.token_budget < MIN_TOKEN_BUDGET:
        raise InputError(f"a token budget of {config.token_budget} tokens per iteration is too small",
                         field="--token-budget", fix=f"give at least {MIN_TOKEN_BUDGET}")


class Simulation:
    def __init__(self, layout: Layout, config: SimConfig) -> None:
        self.layout, self.config = layout, config
        cluster = layout.cluster
        # None: one per stage of each path. An engine that moves a path's sequences as one group runs one
        # lane per path whatever the layout says (a layout's `lanes` is the runtime's setting)
        self.lanes = config.microbatches or (1 if cluster.engine in GROUP_ENGINES else layout.lanes)
        self.token_budget = config.token_budget or cluster.cost_params.prefill_chunk_tokens
        problem = PlacementProblem(cluster)
        units = layout.placement.units()
        _check(layout, config)
        # the metrics window [warmup_s, end_s]; with an automatic warm-up it opens once the run says when
        self.auto_warmup = config.warmup_s is None
        self.warmup_s: float = math.inf if config.warmup_s is None else config.warmup_s
        self.end_s = self.warmup_s + config.duration_s
        self.window_open = False
        self.first_wave = 1            # requests to complete before an automatic warm-up may end
        self.completed_total = 0
        self.loop = EventLoop()
        self.recorder = Recorder(self.warmup_s, self.end_s, bin_s=max(1.0, self.expected_end(0.0) / 1000))
        seeds = np.random.SeedSequence(config.seed).spawn(3)
        self.length_rng, self.arrival_rng = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1])

        # stages, the routing graph and the links between them
        self.stages: dict[str, Stage] = {}
        memos: dict = {}   # step-time tables, shared by stages of one GPU type and layer count
        for name, span in units.items():
            stage = Stage(name, problem.host_of(name), problem.cost_of(name), span, problem.layers,
                          self.token_budget, cluster.activation_bytes_per_token(), (self.warmup_s, self.end_s),
                          memos, self.loop)
            stage.deliver_to_coordinator = self.at_coordinator
            self.stages[name] = stage
        flows = layout.flows or max_flow(problem, layout.placement).edge_flows
        self.graph = RouteGraph.build(problem, layout.placement, flows)
        self.router = make_router(config.scheduler, self.graph, seed=int(seeds[2].generate_state(1)[0]))
        self.links: dict[tuple[str, str], Link] = {}
        self.coordinator_link: dict[Stage, Link] = {}
        self._connect()
        self.widest = self._widest_request()
        workload = cluster.workload
        if workload.prompt_tokens + workload.output_tokens > self.widest:
            raise InputError(f"a request of {workload.prompt_tokens} + {workload.output_tokens} tokens needs more KV "
                             f"cache than any path of the layout holds ({self.widest:,} tokens)",
                             file=cluster.path, field="[workload]", fix="shorten the requests or re-plan")

        # requests
        self.lengths = Lengths(config.lengths, workload.prompt_tokens, workload.output_tokens,
                               cluster.model.max_position_embeddings)
        self.closed = isinstance(config.workload, Offline)
        _check_requests(config, cluster, config.duration_s + (AUTO_WARMUP_MIN_S if self.auto_warmup else self.warmup_s))
        self.in_flight = 0
        if isinstance(config.workload, Offline):
            self.in_flight = config.workload.in_flight or self.saturating_in_flight(problem, units)
        self.queue: deque[Request] = deque()
        self.paths: dict[tuple[str, ...], int] = {}
        self.path_stages: list[tuple[Stage, ...]] = []
        self.lane_sizes: list[list[int]] = []   # sequences in each micro-batch of each path
        # A lane (micro-batch) travels as one: while its cohort is out, first tokens that join it and
        # prompts that ride with it wait here for its return (as the runtime's host and vLLM's scheduler
        # hold them), so a path's lanes never fragment into batches of their own. By cohort key:
        self.lane_out: set[int] = set()                  # lanes whose cohort is on its way
        self.held_firsts: dict[int, list[Cohort]] = {}   # new members, each a cohort of one
        self.held_prompts: dict[int, list[Chunk]] = {}   # prompt chunks
        self._next_id = 0
        self._lengths_buffer: list[tuple[int, int]] = []
        self._load = lambda unit: self.stages[unit].resident
        self._arrivals: Iterator[tuple[float, int, int]] = iter(())

    # ---- construction helpers ---------------------------------------------------------------------

    def _connect(self) -> None:
        """A Link per direction of every host pair the routing graph uses, the coordinator's included."""
        cluster = self.layout.cluster
        for name, stage in self.stages.items():
            for nxt in self.graph.successors.get(name, ()):
                if nxt == COORDINATOR:
                    stage.link_to[None] = self._link(stage.host, COORDINATOR, cluster.coordinator_link(stage.host))
                else:
                    other = self.stages[nxt]
                    stage.link_to[other] = self._link(stage.host, other.host, cluster.link(stage.host, other.host))
        for name in self.graph.successors[COORDINATOR]:
            first = self.stages[name]
            self.coordinator_link[first] = self._link(COORDINATOR, first.host, cluster.coordinator_link(first.host))

    def _link(self, a: str, b: str, spec) -> Link:
        key = (a, b)
        if key not in self.links:
            name = f"{a} GPUs" if a == b else f"{a}->{b}"
            self.links[key] = Link(name, spec.bandwidth_bytes_per_s, spec.latency_s, (self.warmup_s, self.end_s))
        return self.links[key]

    @staticmethod
    def saturating_in_flight(problem: PlacementProblem, units: dict[str, tuple[int, int]]) -> int:
        """Offline default: every stage's largest batch, summed, so KV, not the workload, is the limit."""
        return max(1, sum(problem.cost_of(n).max_batch(e - s, first=s == 0, last=e == problem.layers)
                          for n, (s, e) in units.items()))

    def _widest_request(self) -> int:
        """Largest KV reservation (tokens) some routable path can hold when empty."""
        best: dict[str, float] = {COORDINATOR: math.inf}

        def widest(unit: str) -> float:
            if unit not in best:
                best[unit] = 0.0
                onward = max((widest(n) for n in self.router.options(unit)), default=0.0)
                best[unit] = min(self.stages[unit].kv_capacity, onward)
            return best[unit]

        widest_tokens = int(max((widest(n) for n in self.router.options(COORDINATOR)), default=0.0))
        if widest_tokens <= 0:
            raise InputError("no chain of stages with KV room runs from the coordinator back to it",
                             field="[nodes]", fix="re-plan the layout: every layer must be covered by linked GPUs")
        return widest_tokens

    # ---- requests ---------------------------------------------------------------------------------

    def _new_request(self, now: float, prompt: int | None = None, output: int | None = None) -> Request:
        if prompt is None or output is None:
            if not self._lengths_buffer:
                prompts, outputs = self.lengths.sample(self.length_rng, LENGTH_BLOCK)
                self._lengths_buffer = list(zip(prompts.tolist(), outputs.tolist()))[::-1]
            prompt, output = self._lengths_buffer.pop()
        request = Request(self._next_id, now, prompt, output)
        self._next_id += 1
        return request

    def _intern(self, names: tuple[str, ...]) -> int:
        pid = self.paths.get(names)
        if pid is None:
            pid = self.paths[names] = len(self.path_stages)
            stages = tuple(self.stages[n] for n in names)
            self.path_stages.append(stages)
            lanes = self.lanes or len(stages)   # by default one per stage, as vLLM's virtual engines
            self.lane_sizes.append([0] * lanes)
            for i, stage in enumerate(stages):
                stage.add_path(pid, stages[i + 1] if i + 1 < len(stages) else None, lanes)
        return pid

    def admit(self, now: float) -> None:
        """Admit queued requests in order while a path has KV room for the one at the head."""
        queue, stages = self.queue, self.stages
        while queue:
            request = queue[0]
            need = request.kv_tokens
            if need > self.widest:  # would never fit: refuse it rather than block the queue forever
                queue.popleft()
                self.recorder.rejected += 1
                if self.closed:
                    queue.append(self._new_request(now))
                continue
            names = self.router.route(lambda unit: stages[unit].has_room(need), self._load)
            if names is None:
                return
            queue.popleft()
            request.pid = self._intern(names)
            request.path = path = self.path_stages[request.pid]
            request.admitted_s = now
            lanes = self.lane_sizes[request.pid]
            request.lane = lanes.index(min(lanes))   # the emptiest micro-batch of the path
            lanes[request.lane] += 1
            for stage in path:
                stage.reserve(need, now)
            key = request.pid * LANES_PER_PATH + request.lane
            if key in self.lane_out:   # the prompt rides with its lane's next step
                self.held_prompts.setdefault(key, []).append([request, request.prompt, 0])
                continue
            first = path[0]
            arrive = self.coordinator_link[first].send(now, TOKEN_ID_BYTES * request.prompt) + first.inbound_time[1]
            first.receive(arrive, [], [[request, request.prompt, 0]])

    def arrive(self, now: float, item: tuple[float, int, int]) -> None:
        """Open-loop arrival: queue the request, try to admit, schedule the next arrival."""
        _, prompt, output = item
        self.queue.append(self._new_request(now, prompt, output))
        self.admit(now)
        upcoming = next(self._arrivals, None)
        if upcoming is not None and upcoming[0] <= self.end_s:
            self.loop.schedule(upcoming[0], self.arrive, upcoming)

    def _complete(self, request: Request, now: float) -> None:
        self.lane_sizes[request.pid][request.lane] -= 1
        for stage in request.path:
            stage.release(request.kv_tokens)
        self.recorder.done(request, now)
        self.completed_total += 1
        if self.warmup_s == math.inf and self.completed_total >= self.first_wave:
            self._set_window(max(AUTO_WARMUP_MIN_S, float(math.ceil(now))))
        if self.closed:
            self.queue.append(self._new_request(now))

    def at_coordinator(self, now: float, payload: tuple[list[Cohort], list[Request]]) -> None:
        """Tokens back at the coordinator: first tokens start decoding, finished requests leave,
        the rest go round again to the first stage of their path, each lane with what waited for it."""
        cohorts, firsts = payload
        recorder, lane_out = self.recorder, self.lane_out
        leaving: dict[int, Cohort | None] = {}   # lanes that go round now (None: only prompts wait for it)
        tokens = 0
        finished = False
        for cohort in cohorts:
            members = cohort.members
            tokens += len(members)
            lane_out.discard(cohort.key)
            cohort.round = round_ = cohort.round + 1
            last_s, lasts, ends = cohort.last_s, cohort.lasts, cohort.ends
            # Recorder.decode_gap for the whole cohort at once, unless an automatic warm-up is still
            # running: a completion in this round may end it, so gap by gap as the recorder decides
            gradual = self.warmup_s == math.inf
            if gradual:
                for i, request in enumerate(members):
                    recorder.decode_gap(now, now - (last_s if lasts is None else lasts[i]))
                    if ends[i] == round_:
                        self._complete(request, now)
            elif recorder.low <= now <= recorder.high:
                recorder.tpot.extend([now - last_s] * len(members) if lasts is None else [now - t for t in lasts])
            cohort.last_s, cohort.lasts = now, None
            gone = 0
            if round_ == cohort.due:   # the last token of some members: they leave the cohort
                finished = True
                staying, staying_ends = [], []
                for request, end in zip(members, ends):
                    if end == round_:
                        gone += request.prompt + request.output - 1   # its context in the round just done
                        if not gradual:
                            self._complete(request, now)
                    else:
                        staying.append(request)
                        staying_ends.append(end)
                cohort.members = members = staying
                cohort.ends = staying_ends
                cohort.due = min(staying_ends, default=0)
            cohort.ctx += len(members) - gone   # every sequence still decoding holds one more token
            leaving[cohort.key] = cohort if members else leaving.get(cohort.key)
        for request in firsts:
            request.first_s = now
            recorder.first_token(request, now)
            tokens += 1
            if request.output <= 1:
                self._complete(request, now)
                finished = True
                continue
            cohort = Cohort(request.pid, request.lane, [request], request.prompt + 1)  # prompt + first token
            cohort.ends, cohort.due, cohort.last_s = [request.output - 1], request.output - 1, now
            self.held_firsts.setdefault(cohort.key, []).append(cohort)
            if cohort.key not in lane_out:
                leaving.setdefault(cohort.key, None)
        recorder.tokens(now, tokens)
        outgoing: dict[Stage, tuple[list[Cohort], list[Chunk]]] = {}
        for key, going in leaving.items():
            for joining in self.held_firsts.pop(key, ()):
                if going is None:
                    going = joining
                else:
                    going.merge(joining)
            prompts = self.held_prompts.pop(key, ())
            if going is None and not prompts:
                continue
            sent, chunks = outgoing.setdefault(self.path_stages[key // LANES_PER_PATH][0], ([], []))
            if going is not None:
                sent.append(going)
                lane_out.add(key)
            chunks.extend(prompts)
        for first, (sent, chunks) in outgoing.items():
            sequences = len(chunks)
            for cohort in sent:
                sequences += len(cohort.members)
            ids = sequences - len(chunks)   # one token id per decode sequence, a prompt's every token
            for chunk in chunks:
                ids += chunk[1]
            first.receive(self.coordinator_link[first].send(now, TOKEN_ID_BYTES * ids) + first.inbound_time[sequences],
                          sent, chunks)
        if finished:   # a closed loop's next requests come after the lanes left: each waits for its lane's return
            self.admit(now)

    # ---- running ----------------------------------------------------------------------------------

    def expected_end(self, now: float) -> float:
        """When the run will end: known once the warm-up is; until then, as if it ended at its minimum."""
        if self.end_s < math.inf:
            return self.end_s
        return max(now, AUTO_WARMUP_MIN_S) + self.config.duration_s

    def _set_window(self, warmup_s: float) -> None:
        """Fix the metrics window once an automatic warm-up has run its course."""
        self.warmup_s, self.end_s = warmup_s, warmup_s + self.config.duration_s
        window = (self.warmup_s, self.end_s)
        self.recorder.low, self.recorder.high = window
        for stage in self.stages.values():
            stage.low, stage.high = window
        for link in self.links.values():
            link.low, link.high = window

    def _open_window(self) -> None:
        """The window opens: KV already reserved then counts toward each stage's peak."""
        self.window_open = True
        for stage in self.stages.values():
            stage.kv_peak = max(stage.kv_peak, stage.kv_used)

    def run(self, progress: Progress | None = None) -> SimResult:
        began = perf_counter()
        loop = self.loop
        workload = self.config.workload
        if isinstance(workload, Offline):
            for _ in range(self.in_flight):
                self.queue.append(self._new_request(0.0))
            self.admit(0.0)
            self.first_wave = max(1, self.in_flight - len(self.queue))   # admitted at the start
        else:
            self._arrivals = workload.arrivals(self.arrival_rng, self.lengths)
            first = next(self._arrivals, None)
            if first is not None:
                loop.schedule(first[0], self.arrive, first)
        step = self.expected_end(0.0) / PROGRESS_STEPS
        while loop.now < self.end_s:
            if self.warmup_s == math.inf and loop.now >= AUTO_WARMUP_MAX_S:
                self._set_window(loop.now)
            until = min(loop.now + step, self.end_s if self.window_open else self.warmup_s)
            loop.run(until)
            if not self.window_open and loop.now >= self.warmup_s:
                self._open_window()
            if progress is not None:
                progress(loop.now, self.expected_end(loop.now))
        return self._result(perf_counter() - began)

    def _result(self, wall_s: float) -> SimResult:
        rec, config, layout = self.recorder, self.config, self.layout
        measured = config.duration_s
        problem = PlacementProblem(layout.cluster)
        stages = []
        for name, stage in self.stages.items():
            members = layout.placement.members(name)
            gpu = problem.by_name[members[0]].gpu + (f" x{len(members)}" if len(members) > 1 else "")
            stages.append(StageReport(
                name, gpu, stage.span, stage.busy_s / measured,
                stage.kv_peak / stage.kv_capacity if stage.kv_capacity else 0.0, stage.kv_capacity,
                stage.decoded / stage.iterations if stage.iterations else 0.0, stage.iterations,
                stage.busy_s / stage.iterations if stage.iterations else 0.0))
        links = tuple(LinkReport(link.name, link.busy_s / measured, link.bytes) for link in self.links.values())
        figures = layout.figures

        def figure(key: str, scale: float = 1.0) -> float | None:
            try:
                return float(figures[key]) * scale
            except (KeyError, ValueError):
                return None

        reference = {"max_flow_tokens_per_s": figure("max_flow_tokens_per_s"),
                     "round_trip_max_flow_tokens_per_s": figure("round_trip_max_flow_tokens_per_s"),
                     "predicted_throughput_tokens_per_s": figure("predicted_throughput_tokens_per_s"),
                     "predicted_tpot_s": figure("predicted_tpot_ms", 1e-3),
                     "predicted_ttft_s": figure("predicted_ttft_ms", 1e-3)}
        settings = {"model": layout.cluster.model.id, "method": layout.method,
                    "workload": config.workload.label, "in_flight": self.in_flight or None,
                    "lengths": config.lengths, "prompt_tokens_mean": self.lengths.prompt_mean,
                    "output_tokens_mean": self.lengths.output_mean, "scheduler": config.scheduler,
                    "seed": config.seed, "token_budget": self.token_budget, "lanes": self.lanes,
                    "warmup_s": self.warmup_s, "warmup_auto": self.auto_warmup,
                    "duration_s": config.duration_s}
        bins = int(math.ceil(self.end_s / rec.bin_s))
        series = tuple(count / rec.bin_s for count in (rec.bins + [0] * bins)[:bins])
        return SimResult(
            decode_throughput=rec.output_tokens / measured,
            total_throughput=(rec.output_tokens + rec.prompt_tokens) / measured,
            requests_completed=rec.completed,
            ttft=summarise(rec.ttft), tpot=summarise(rec.tpot), e2e=summarise(rec.e2e),
            queue_wait=summarise(rec.queue_wait),
            simulated_seconds=self.end_s, measured_seconds=measured, wall_seconds=wall_s,
            events=self.loop.fired, stages=tuple(stages), links=links, settings=settings, reference=reference,
            requests_rejected=rec.rejected, requests_waiting=len(self.queue),
            throughput_series=series, bin_seconds=rec.bin_s,
            samples={"ttft_s": tuple(rec.ttft), "tpot_s": tuple(rec.tpot), "e2e_s": tuple(rec.e2e)})


MAX_ARRIVALS = 10_000_000   # requests an open-loop run may be asked to simulate (minutes of CPU at most)


def _check_requests(config: SimConfig, cluster, end_s: float) -> None:
    """Refuse a workload that cannot mean what it says: a trace request longer than the model's context
    (it would never be admitted), or an arrival rate that asks for more requests than a run can hold."""
    workload = config.workload
    if isinstance(workload, Trace):
        context = cluster.model.max_position_embeddings
        for _, prompt, output in workload.rows:
            if prompt + output > context:
                raise InputError(f"a request of {prompt} + {output} tokens is longer than {cluster.model.id}'s "
                                 f"context ({context} tokens)", file=workload.path, fix="drop or shorten it")
    elif isinstance(workload, Poisson) and workload.rate * end_s > MAX_ARRIVALS:
        raise InputError(f"poisson:{workload.rate:g} for {end_s:g} simulated s is {workload.rate * end_s:.3g} requests, "
                         f"more than {MAX_ARRIVALS:,}", field="--workload",
                         fix="give a rate near what the layout serves (planner solve predicts it) or a shorter --duration")
