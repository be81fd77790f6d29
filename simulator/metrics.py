"""What a run measured, inside the window [warm-up, warm-up + duration]:

- throughput: output tokens reaching the coordinator in the window / its length ("decode"), and that
  plus the prompt tokens of requests whose prefill finished in the window ("total");
- latency: TTFT (arrival to first token back at the coordinator, the wait for admission included;
  offline runs keep a backlog, so there it is mostly that wait, reported apart as queue_wait) of every
  request whose first token came in the window, finished or not (a request that outlasts the window
  still had its first token: counting only finished ones left long runs with none); TPOT over every
  decode token in the window (Recorder.decode_gap); E2E (arrival to last token) over requests whose
  first token came after the warm-up and that finished in the window;
- per stage: busy share of the window, peak KV reserved, mean decode batch; per link: busy share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def summarise(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    array = np.asarray(values)
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {"mean": float(array.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


class Recorder:
    """Counters the simulation updates as it runs (cheap: a few additions per event)."""

    def __init__(self, warmup_s: float, end_s: float, bin_s: float) -> None:
        self.low, self.high = warmup_s, end_s
        self.bin_s = bin_s
        self.bins: list[int] = []   # output tokens per bin, whole run (grows: the end may be decided late)
        self.output_tokens = 0
        self.prompt_tokens = 0
        self.completed = 0
        self.rejected = 0
        self.ttft: list[float] = []
        self.tpot: list[float] = []
        self.e2e: list[float] = []
        self.queue_wait: list[float] = []

    def tokens(self, now: float, count: int) -> None:
        index = int(now / self.bin_s)
        if index >= len(self.bins):
            self.bins += [0] * (index + 1 - len(self.bins))
        self.bins[index] += count
        if self.low <= now <= self.high:
            self.output_tokens += count

    def first_token(self, request, now: float) -> None:
        """A request's first token is back (its prompt done): its prompt tokens, TTFT and admission wait."""
        if self.low <= now <= self.high:
            self.prompt_tokens += request.prompt
            self.ttft.append(now - request.arrival_s)
            self.queue_wait.append(request.admitted_s - request.arrival_s)

    def done(self, request, now: float) -> None:
        if not self.low <= now <= self.high:
            return
        self.completed += 1
        if request.first_s < self.low:
            return  # its first token came during the warm-up
        self.e2e.append(now - request.arrival_s)

    def decode_gap(self, now: float, gap: float) -> None:
        """Time since the same request's previous token, for every decode token in the window. TPOT is
        taken over these tokens, not over completed requests: on a slow path a request can outlast the
        run, and counting only those that finish would leave the slow paths out (survivorship bias)."""
        if self.low <= now <= self.high:
            self.tpot.append(gap)


@dataclass(frozen=True)
class StageReport:
    name: str
    gpu: str
    layers: tuple[int, int]
    utilisation: float          # busy share of the window
    peak_kv: float              # peak share of its KV cache reserved
    kv_tokens: int              # KV capacity, tokens
    mean_batch: float           # decode sequences per iteration
    iterations: int
    mean_iteration_s: float     # busy time per iteration (planner run reports a worker's mean step alike)


@dataclass(frozen=True)
class LinkReport:
    name: str
    utilisation: float
    bytes: float


@dataclass(frozen=True)
class SimResult:
    """A run's figures; `to_json()` is the `planner simulate --json` contract (docs/formats.md)."""

    decode_throughput: float
    total_throughput: float
    requests_completed: int
    ttft: dict
    tpot: dict
    e2e: dict
    queue_wait: dict
    simulated_seconds: float
    measured_seconds: float
    wall_seconds: float
    events: int
    stages: tuple[StageReport, ...]
    links: tuple[LinkReport, ...]
    settings: dict
    reference: dict                               # the layout's max flow and the planner's prediction
    requests_rejected: int = 0
    requests_waiting: int = 0
    throughput_series: tuple[float, ...] = ()     # output tokens/s per bin over the whole run
    bin_seconds: float = 1.0
    samples: dict = field(default_factory=dict)   # raw TTFT/TPOT/E2E values for plots

    @property
    def busiest_link(self) -> LinkReport | None:
        return max(self.links, key=lambda link: (link.utilisation, link.name), default=None)

    def to_json(self) -> dict:
        busiest = self.busiest_link
        return {
            "decode_throughput_tokens_per_s": self.decode_throughput,
            "total_throughput_tokens_per_s": self.total_throughput,
            "requests_completed": self.requests_completed,
            "ttft_s": self.ttft,
            "tpot_s": self.tpot,
            "simulated_seconds": self.simulated_seconds,
            "wall_seconds": self.wall_seconds,
            "events": self.events,
            # extras
            "e2e_s": self.e2e,
            "queue_wait_s": self.queue_wait,
            "measured_seconds": self.measured_seconds,
            "requests_rejected": self.requests_rejected,
            "requests_waiting": self.requests_waiting,
            "nodes": [{"name": s.name, "gpu": s.gpu, "start_layer": s.layers[0], "end_layer": s.layers[1],
                       "utilisation": s.utilisation, "peak_kv": s.peak_kv, "kv_tokens": s.kv_tokens,
                       "mean_batch": s.mean_batch, "iterations": s.iterations,
                       "mean_iteration_s": s.mean_iteration_s} for s in self.stages],
            "busiest_link": None if busiest is None else
            {"name": busiest.name, "utilisation": busiest.utilisation, "bytes": busiest.bytes},
            "settings": self.settings,
            "reference": self.reference,
        }
