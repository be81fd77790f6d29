"""Workloads: who sends requests when (`offline`, `poisson:RATE`, `trace:FILE`) and how long they are
(`fixed`, `uniform`, `lognormal`). Specs are parsed and checked here, where they enter.

Lengths and arrivals come from numpy Generators the simulation builds from its seed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from planner.errors import InputError

# ---- requests -------------------------------------------------------------------------------------


class Request:
    """One request's life: lengths, the path it was given, and the times that make its latencies."""

    __slots__ = ("id", "arrival_s", "prompt", "output", "kv_tokens", "path", "pid",
                 "lane", "admitted_s", "first_s")

    def __init__(self, rid: int, arrival_s: float, prompt: int, output: int) -> None:
        self.id, self.arrival_s, self.prompt, self.output = rid, arrival_s, prompt, output
        self.kv_tokens = prompt + output   # KV reserved on every stage of its path at admission
        self.path: tuple = ()              # stages, set at admission
        self.pid = -1                      # interned path id
        self.lane = 0                      # its decode micro-batch on that path
        self.admitted_s = math.nan
        self.first_s = math.nan            # first token back at the coordinator (later ones: its Cohort)


# ---- lengths --------------------------------------------------------------------------------------

# Spread of the lognormal lengths: standard deviations of ln(tokens), fitted (mean and standard deviation
# of the logs, i.e. maximum likelihood) to 864 requests of the Azure LLM inference trace 2023,
# conversation service (AzureLLMInferenceTrace_conv.csv, Patel et al., "Splitwise", ISCA 2024):
# rows 1-429 and the 435 rows from 18:44:50 to 18:45:48. Their logs are uncorrelated (r = 0.01).
# docs/simulator.md#lengths gives the sample's figures.
TRACE_SIGMA_PROMPT = 1.09
TRACE_SIGMA_OUTPUT = 0.85
LOGNORMAL_CLIP = 8.0   # lengths above 8x their mean are clipped (0.7% of prompts, 0.3% of outputs)


@dataclass(frozen=True)
class Lengths:
    """Prompt and output lengths of a request mix with the given means (tokens)."""

    kind: str            # fixed | uniform | lognormal
    prompt_mean: int
    output_mean: int
    max_total: int       # the model's context window: prompt + output never exceed it

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        p, o = self.prompt_mean, self.output_mean
        if self.kind == "fixed":
            prompt, output = np.full(n, p), np.full(n, o)
        elif self.kind == "uniform":  # integers in [mean/2, 3 mean/2]: the mean is kept, spread +-50%
            prompt = rng.integers(max(1, p - p // 2), p + p // 2 + 1, n)
            output = rng.integers(max(1, o - o // 2), o + o // 2 + 1, n)
        elif self.kind == "lognormal":  # trace-fitted spread, scaled so the means are the cluster's
            prompt = _lognormal(rng, p, TRACE_SIGMA_PROMPT, n)
            output = _lognormal(rng, o, TRACE_SIGMA_OUTPUT, n)
        else:
            raise ValueError(self.kind)
        prompt = np.clip(prompt, 1, self.max_total - 1).astype(np.int64)
        output = np.clip(output, 1, self.max_total - prompt).astype(np.int64)
        return prompt, output


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int) -> np.ndarray:
    mu = math.log(mean) - sigma * sigma / 2  # E[X] = exp(mu + sigma^2 / 2) = mean
    return np.minimum(np.rint(rng.lognormal(mu, sigma, n)), LOGNORMAL_CLIP * mean)


LENGTH_KINDS = ("fixed", "uniform", "lognormal")


# ---- arrivals -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offline:
    """Closed loop: `in_flight` requests outstanding at all times, a new one as each finishes
    (None: the simulation sizes it to saturate the cluster)."""

    in_flight: int | None = None
    name = "offline"

    @property
    def label(self) -> str:
        return "offline" if self.in_flight is None else f"offline:{self.in_flight}"


@dataclass(frozen=True)
class Poisson:
    """Open loop: requests arrive as a Poisson process of `rate` requests/s."""

    rate: float
    name = "poisson"

    @property
    def label(self) -> str:
        return f"poisson:{self.rate:g}"

    def arrivals(self, rng: np.random.Generator, lengths: Lengths) -> Iterator[tuple[float, int, int]]:
        now = 0.0
        while True:
            gaps = rng.exponential(1.0 / self.rate, 1024)
            prompt, output = lengths.sample(rng, 1024)
            for gap, p, o in zip(gaps.tolist(), prompt.tolist(), output.tolist()):
                now += gap
                yield now, p, o


@dataclass(frozen=True)
class Trace:
    """Open loop: the arrivals and lengths of a CSV file (arrival_s,input_tokens,output_tokens)."""

    path: Path
    rows: tuple[tuple[float, int, int], ...]
    name = "trace"

    @property
    def label(self) -> str:
        return f"trace:{self.path}"

    def arrivals(self, rng: np.random.Generator, lengths: Lengths) -> Iterator[tuple[float, int, int]]:
        for arrival, prompt, output in self.rows:
            yield arrival, min(prompt, lengths.max_total - 1), max(1, min(output, lengths.max_total - prompt))


Workload = Offline | Poisson | Trace

WORKLOAD_HELP = "offline | offline:N | poisson:RATE | trace:FILE"


def parse_workload(spec: str) -> Workload:
    """`offline`, `offline:N` (N requests in flight), `poisson:RATE` (requests/s) or `trace:FILE`."""
    kind, _, arg = spec.strip().partition(":")
    field = "--workload"
    if kind == "offline":
        if not arg:
            return Offline()
        if not arg.isdigit() or int(arg) < 1:
            raise InputError(f"'{spec}': N must be a whole number >= 1", field=field, fix="write e.g. 'offline:64'")
        return Offline(int(arg))
    if kind == "poisson":
        try:
            rate = float(arg)
        except ValueError:
            rate = math.nan
        if not rate > 0 or math.isinf(rate):
            raise InputError(f"'{spec}': RATE must be a positive number of requests/s", field=field,
                             fix="write e.g. 'poisson:2.5'")
        return Poisson(rate)
    if kind == "trace":
        if not arg:
            raise InputError(f"'{spec}' names no file", field=field, fix="write 'trace:FILE.csv'")
        return read_trace(Path(arg))
    raise InputError(f"unknown workload '{spec}'", field=field, fix=f"use {WORKLOAD_HELP}")


def read_trace(path: Path) -> Trace:
    """CSV rows `arrival_s,input_tokens,output_tokens` (a header line is allowed), sorted by arrival."""
    if not path.is_file():
        raise InputError("trace file not found", file=path, fix="check the path in --workload trace:FILE")
    rows = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if number == 1 and not _is_number(row[0]):
                    continue  # header
                while row and not row[-1].strip():   # a trailing comma
                    row.pop()
                if len(row) != 3:   # a fourth column may mean the columns are not these (an id first)
                    raise InputError(f"line {number}: {len(row)} columns, not 3", file=path,
                                     fix="write exactly 'arrival_s,input_tokens,output_tokens' on every line")
                try:
                    arrival, prompt, output = float(row[0]), int(row[1]), int(row[2])
                except ValueError:
                    raise InputError(f"line {number}: '{','.join(row)}' is not numbers", file=path,
                                     fix="arrival in seconds, then two whole token counts") from None
                if not (arrival >= 0 and math.isfinite(arrival)) or prompt < 1 or output < 1:
                    raise InputError(f"line {number}: arrival must be >= 0 and token counts >= 1", file=path,
                                     fix="fix or drop the line")
                rows.append((arrival, prompt, output))
    except UnicodeDecodeError:
        raise InputError("trace is not a text file", file=path, fix="give a CSV file") from None
    if not rows:
        raise InputError("trace has no requests", file=path, fix="add 'arrival_s,input_tokens,output_tokens' lines")
    return Trace(path, tuple(sorted(rows)))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
