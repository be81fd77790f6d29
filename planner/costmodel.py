"""Cost model: bytes, memory limits, per-layer times and node capacity for one GPU type and model.

Roofline by default (time = max(bytes / usable bandwidth, FLOPs / usable FLOP/s) + launch overhead), with
the efficiency constants of the engine the plan runs on (planner/engines.py); measured per-layer latency
tables (the runtime's profile) replace the runtime's times, a static throughput table replaces the capacity.
A tensor-parallel group of `tp` GPUs of one type is costed as one wider GPU plus its all-reduces
(see GpuCost). Formulas, assumptions and sources: docs/cost-model.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from planner.catalog import DTYPE_BYTES, GpuSpec, LatencyTable, ModelSpec
from planner.engines import DEFAULT_ENGINE, Efficiency, Overheads, efficiency as engine_efficiency, overheads

GIB = 1024.0**3
LOGIT_BYTES = 4  # logits are float32 for sampling (the runtime and vLLM upcast them)
WAKE_WAITS_MS = (0.2, 1.0, 5.0, 20.0)  # waits `planner profile` measures wake_ms at (and `show --json` shows)


@dataclass(frozen=True)
class CostParams:
    """The model's stated assumptions, one factor per line."""

    engine: str = DEFAULT_ENGINE          # whose speed: efficiency constants per engine, planner/engines.py
    gpu_memory_utilization: float = 0.90  # share of memory the engine may use (vLLM's default)
    runtime_reserve_bytes: float = 1.0 * GIB  # CUDA context, allocator slack, activation workspace
    min_kv_tokens: int = 4096             # a node must keep KV room for at least one 4k-token request
    max_batch: int = 256                  # most sequences one step decodes (vLLM's max_num_seqs)
    prefill_chunk_tokens: int = 256       # chunked prefill: prompt tokens a stage iteration takes at most


@dataclass(frozen=True)
class Workload:
    """The request mix capacities are quoted for: mean prompt and output lengths in tokens."""

    prompt_tokens: int = 1024
    output_tokens: int = 256

    @property
    def mean_context(self) -> float:
        """Tokens a decoding sequence holds on average: the prompt plus half its output."""
        return self.prompt_tokens + self.output_tokens / 2

    @property
    def request_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


class LinkLike(Protocol):
    """What the cost model needs of a link (planner.cluster.Link has it)."""

    bandwidth_bytes_per_s: float
    latency_s: float


class NoLatencyModel(Exception):
    """A GPU described only by a static throughput table has no per-layer times."""


def _by_sequences(measured: float | LatencyTable | None, engine_s: float, sequences: float) -> float:
    """A measured per-step cost (one number, or a table by sequences) at `sequences`; the engine's constant
    where the GPU section has none."""
    if measured is None:
        return engine_s
    return measured.seconds(sequences) if isinstance(measured, LatencyTable) else measured


class GpuCost:
    """Costs of running `model` in `dtype` on one GPU type, or on a tensor-parallel group of `tp` of them.

    Tensor parallelism (Megatron style, as vLLM runs it): each of the `tp` GPUs holds 1/tp of every
    layer's weights and of its KV heads, so the group behaves as one GPU with tp x the memory, tp x the
    memory bandwidth and tp x the FLOP/s (launch overhead per layer unchanged: the GPUs run in parallel),
    plus two all-reduces per layer (after attention and after the MLP) of the step's activations:
        all_reduce_s(rows) = 2 (tp - 1) / tp x rows x hidden_size x dtype_bytes / tp_link.bandwidth
                             + 2 (tp - 1) x tp_link.latency            (ring all-reduce)
    with rows = the decode batch (sequences) or the prefill tokens. Measured latency tables are divided
    by tp (ideal scaling) before the all-reduces are added; measured kv_tokens are read at layers / tp
    (each GPU keeps the weights of layers / tp layers). Static throughput tables have no latency model:
    a group's capacity is tp x the table's, and it holds tp x max_layers layers. `tp_link=None` makes the
    all-reduces free.

    `params.engine` picks the roofline's efficiency constants (`efficiency` overrides them). A GPU
    described by measured tables has no roofline figures: its tables are used whatever the engine, as
    the measurement of the engine that was profiled (`planner profile` times the runtime's layers).
    """

    def __init__(self, gpu: GpuSpec, model: ModelSpec, dtype: str, workload: Workload = Workload(),
                 params: CostParams = CostParams(), tp: int = 1, tp_link: LinkLike | None = None,
                 efficiency: Efficiency | None = None) -> None:
        if tp < 1:
            raise ValueError(f"tensor-parallel degree must be at least 1, got {tp}")
        self.gpu, self.model, self.dtype, self.workload, self.params = gpu, model, dtype, workload, params
        self.efficiency = efficiency or engine_efficiency(params.engine, gpu.id)
        self.overheads: Overheads = overheads(params.engine)
        self.tp, self.tp_link = tp, tp_link
        self.dtype_bytes = DTYPE_BYTES[dtype]
        self.layer_bytes = model.layer_params() * self.dtype_bytes
        # K and V vectors of every KV head, for one token in one layer
        self.kv_bytes_per_token = 2 * model.kv_heads * model.head_dim * self.dtype_bytes
        self.embedding_bytes = model.embedding_params() * self.dtype_bytes
        self.head_bytes = model.head_params() * self.dtype_bytes
        self._capacity = lru_cache(maxsize=None)(self._capacity_uncached)

    # ---- memory -------------------------------------------------------------------------------

    @property
    def has_latency(self) -> bool:
        return not self.gpu.is_static

    def usable_bytes(self) -> float:
        """Memory for weights and KV cache, summed over a tensor-parallel group's GPUs."""
        if self.gpu.memory_bytes is None:
            return math.inf
        return self.tp * (self.gpu.memory_bytes * self.params.gpu_memory_utilization
                          - self.params.runtime_reserve_bytes)

    def extra_bytes(self, first: bool, last: bool) -> float:
        """Embedding table on the stage holding layer 0; final norm and LM head on the last stage."""
        return (self.embedding_bytes if first else 0.0) + (self.head_bytes if last else 0.0)

    def kv_tokens(self, layers: int, first: bool = False, last: bool = False) -> int:
        """Tokens of KV cache the GPU holds for each of its `layers` layers (0 when they do not fit)."""
        if layers <= 0:
            return 0
        measured = self.gpu.kv_tokens
        if measured:
            return int(_interpolate(measured, layers / self.tp))
        free = self.usable_bytes() - layers * self.layer_bytes - self.extra_bytes(first, last)
        return max(0, int(free // (layers * self.kv_bytes_per_token)))

    def max_layers(self, first: bool = False, last: bool = False) -> int:
        """Most layers this GPU holds while keeping KV room for `min_kv_tokens` tokens in each."""
        if self.gpu.max_layers is not None:
            return min(self.gpu.max_layers * self.tp, self.model.layers)
        per_layer = self.layer_bytes + self.params.min_kv_tokens * self.kv_bytes_per_token
        room = self.usable_bytes() - self.extra_bytes(first, last)
        return max(0, min(self.model.layers, int(room // per_layer)))

    def max_batch(self, layers: int, first: bool = False, last: bool = False) -> int:
        """Sequences whose KV fits beside the weights, capped by max_batch. Each admitted request
        reserves KV for its whole prompt + output (no preemption, as the simulator and runtime do)."""
        fits = int(self.kv_tokens(layers, first, last) // self.workload.request_tokens)
        return max(0, min(self.params.max_batch, fits))

    def step_batch(self, layers: int, first: bool = False, last: bool = False) -> float:
        """Most sequences one iteration decodes: those in flight (max_batch), but no more than prefill
        keeps up with: an iteration takes at most prefill_chunk_tokens tokens, decode first, and every
        decoded token brings prompt / output prompt tokens along."""
        share = max(1.0, self.params.prefill_chunk_tokens * self.workload.output_tokens / self.workload.request_tokens)
        return min(self.max_batch(layers, first, last), share)

    # ---- time ---------------------------------------------------------------------------------

    def decode_s(self, layers: int, batch: float, context: float | None = None) -> float:
        """One decode step of `batch` sequences through `layers` layers, each sequence at `context` tokens."""
        if self.gpu.is_static:
            raise NoLatencyModel(self.gpu.id)
        if self.gpu.decode_ms is not None:
            return layers * (self.gpu.decode_ms.seconds(batch) / self.tp + 2 * self.all_reduce_s(batch))
        context = self.workload.mean_context if context is None else context
        q_width = self.model.attention_heads * self.model.head_dim
        weight_bytes = self.layer_bytes                                 # every weight read once per step
        kv_read_bytes = batch * context * self.kv_bytes_per_token      # every cached token read once
        flops = batch * (2 * self.model.linear_params()                 # GEMV: 2 FLOPs per weight
                         + 4 * q_width * context)                       # QK^T and AV over the context
        return layers * (self._roofline(weight_bytes + kv_read_bytes, flops, self.efficiency.decode_compute_efficiency)
                         + 2 * self.all_reduce_s(batch))

    def prefill_s(self, layers: int, tokens: float, context: float = 0.0) -> float:
        """A prefill pass of `tokens` new tokens (following `context` cached ones) through `layers` layers."""
        if self.gpu.is_static:
            raise NoLatencyModel(self.gpu.id)
        if self.gpu.prefill_ms is not None:
            return layers * (self.gpu.prefill_ms.seconds(tokens) / self.tp + 2 * self.all_reduce_s(tokens))
        q_width = self.model.attention_heads * self.model.head_dim
        moved = self.layer_bytes + tokens * self.kv_bytes_per_token     # weights once, new KV written
        flops = (tokens * 2 * self.model.linear_params()
                 + 4 * q_width * tokens * (context + tokens / 2))      # causal attention, half the square
        return layers * (self._roofline(moved, flops, self.efficiency.compute_efficiency) + 2 * self.all_reduce_s(tokens))

    # ---- work outside the layers (docs/cost-model.md#work-outside-the-layers) ----------------------

    @property
    def hop_s(self) -> float:
        """Fixed cost of one message this unit sends (or the coordinator sends it), beyond its bytes."""
        return self.gpu.hop_s if self.gpu.hop_s is not None else self.overheads.hop_s

    def step_overhead_s(self, sequences: float = 1.0) -> float:
        """Fixed cost of one iteration of `sequences` sequences (decode rows and prompts) at this unit,
        whatever it computes: the host's batch formation and layout."""
        return _by_sequences(self.gpu.step_overhead_s, self.overheads.step_s, sequences)

    def wake_s(self, waited_s: float) -> float:
        """What a step costs beyond its figures when the unit waited `waited_s` for it (a sleeping worker
        woken by the message, its caches cold): the GPU section's measured `wake_ms`, else nothing."""
        table = self.gpu.wake_s
        if table is None or waited_s <= 0:
            return 0.0
        return table.seconds(min(waited_s, table.points[-1][0]))   # flat past the longest wait measured

    @property
    def wakes(self) -> bool:
        """Whether waiting costs this unit anything (a measured `wake_ms`)."""
        return self.gpu.wake_s is not None

    def host_step_s(self, sequences: float = 1.0) -> float:
        """The coordinator's loop for one message of `sequences` sequences it sends to this unit."""
        return _by_sequences(self.gpu.host_step_s, self.overheads.host_step_s, sequences)

    def head_s(self, batch: float) -> float:
        """The last stage's final norm + LM head + sampling for `batch` rows (decode sequences, or prompts
        whose last token this pass computed): the head's weights read once, its logits written and read."""
        if self.gpu.is_static:
            raise NoLatencyModel(self.gpu.id)
        if self.gpu.head_ms is not None:
            return self.gpu.head_ms.seconds(batch) / self.tp
        vocab, hidden = self.model.vocab_size, self.model.hidden_size
        moved = self.head_bytes + batch * hidden * self.dtype_bytes + 2 * batch * vocab * LOGIT_BYTES
        return self._outside_s(moved, 2 * batch * vocab * hidden, batch)

    def embed_s(self, tokens: float) -> float:
        """The first stage's embedding of `tokens` tokens: one row of the table read and written per token."""
        if self.gpu.is_static:
            raise NoLatencyModel(self.gpu.id)
        if self.gpu.embed_ms is not None:
            return self.gpu.embed_ms.seconds(tokens) / self.tp
        return self._outside_s(2 * tokens * self.model.hidden_size * self.dtype_bytes, 0.0, tokens)

    def _outside_s(self, moved_bytes: float, flops: float, batch: float) -> float:
        """Time of kernels outside the layers without a measured table: on a roofline GPU, the roofline at
        the engine's decode efficiency; on a measured GPU (no datasheet figures), a layer's measured decode
        time scaled by the bytes moved against a layer's."""
        if self.gpu.decode_ms is not None:
            return self.gpu.decode_ms.seconds(batch) / self.tp * moved_bytes / self.layer_bytes
        return self._roofline(moved_bytes, flops, self.efficiency.decode_compute_efficiency)

    def all_reduce_s(self, rows: float) -> float:
        """One ring all-reduce of `rows` hidden vectors across the tensor-parallel group (0 when tp = 1)."""
        if self.tp == 1 or self.tp_link is None:
            return 0.0
        size = rows * self.model.hidden_size * self.dtype_bytes
        return 2 * (self.tp - 1) / self.tp * size / self.tp_link.bandwidth_bytes_per_s \
            + 2 * (self.tp - 1) * self.tp_link.latency_s

    def _roofline(self, moved_bytes: float, flops: float, compute_efficiency: float) -> float:
        bandwidth = self.gpu.memory_bandwidth_bytes_per_s * self.efficiency.memory_efficiency * self.tp
        peak = self.gpu.fp32_flops if self.dtype == "fp32" else self.gpu.fp16_flops
        if peak is None:
            peak = self.gpu.fp16_flops / 4  # no fp32 figure: tensor cores unused, a quarter of fp16
        return self.efficiency.roofline_s(moved_bytes / bandwidth, flops / (peak * self.tp * compute_efficiency))

    def seconds_per_output_token(self, layers: int, batch: float, first: bool = False, last: bool = False) -> float:
        """Node time one output token costs: its share of a decode step of `batch` sequences plus its
        request's prefill, amortised over the request's output tokens. The prompt goes through in chunks
        of what an iteration's token budget leaves after the decode batch (chunked prefill, decode first,
        as vLLM and the simulator schedule it), each chunk a pass of its own that reads the weights.
        The unit holding layer 0 (`first`) also embeds every token, the one holding the last layer (`last`)
        runs the head for every decode step and once per prompt, and every iteration pays the step
        overhead: as many iterations as decode steps or prompt chunks, whichever are more."""
        prompt, output = self.workload.prompt_tokens, self.workload.output_tokens
        chunk = min(prompt, max(1.0, self.params.prefill_chunk_tokens - batch))
        # chunk j attends over the j chunks before it: the passes' causal attention sums to prompt^2 / 2
        prefill = prompt / chunk * (self.prefill_s(layers, chunk, (prompt - chunk) / 2)
                                    + (self.embed_s(chunk) if first else 0.0))
        decode = self.decode_s(layers, batch)
        if first:
            decode += self.embed_s(batch)
        if last:
            decode += self.head_s(batch)
            prefill += self.head_s(1)   # the head reads only each prompt's last token
        iterations = max(1.0 / batch, prompt / (chunk * output))
        return decode / batch + prefill / output + iterations * self.step_overhead_s(batch)

    # ---- capacity -----------------------------------------------------------------------------

    def capacity(self, layers: int, rtt_s: float = 0.0, first: bool = False, last: bool = False) -> float:
        """Output tokens/s this GPU sustains holding `layers` layers, in a pipeline whose round trip
        (one token of one sequence, all stages and links) takes `rtt_s` seconds; 0 means unbounded."""
        return self._capacity(layers, round(rtt_s, 9), first, last)

    def _capacity_uncached(self, layers: int, rtt_s: float, first: bool, last: bool) -> float:
        if layers <= 0:
            return 0.0
        if self.gpu.is_static:
            return self.tp * _static_capacity(self.gpu.throughput, layers)
        batch = self.max_batch(layers, first, last)
        if batch == 0:
            return 0.0
        # Batch and per-token work both grow with the batch, so the largest batch a step runs is best:
        compute_bound = 1.0 / self.seconds_per_output_token(layers, self.step_batch(layers, first, last), first, last)
        # each sequence yields one token per round trip, so B sequences give at most B / rtt tokens/s
        trip_bound = batch / rtt_s if rtt_s > 0 else math.inf
        return min(compute_bound, trip_bound)

    def capacity_table(self, first: bool = False, last: bool = False) -> list[float]:
        """Default display: capacity with no round-trip bound for 1 .. max_layers layers."""
        return [self.capacity(k, 0.0, first, last) for k in range(1, self.max_layers(first, last) + 1)]


def _static_capacity(table: tuple[float, ...], layers: int) -> float:
    """Tokens/s from a static table; past its end capacity falls as 1/layers from the last entry."""
    if layers <= len(table):
        return table[layers - 1]
    return table[-1] * len(table) / layers


def _interpolate(points: tuple[tuple[int, int], ...], x: float) -> float:
    if x <= points[0][0]:
        return points[0][1] if x == points[0][0] or len(points) == 1 else _line(points[0], points[1], x)
    for p0, p1 in zip(points, points[1:]):
        if x <= p1[0]:
            return _line(p0, p1, x)
    return max(0.0, _line(points[-2], points[-1], x)) if len(points) > 1 else points[-1][1] * points[-1][0] / x


def _line(p0: tuple[float, float], p1: tuple[float, float], x: float) -> float:
    return p0[1] + (p1[1] - p0[1]) * (x - p0[0]) / (p1[0] - p0[0])
