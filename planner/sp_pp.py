"""SP+PP (seed 002): chunked prefill through a layer pipeline, a KV-cache sync, then redundant decode.

Our reading of seed 002 (the deployment docs/seeds/002-sp-pp.md describes):

* **Every device loads the whole model** ("每台设备都加载完整模型"), but during prefill each one runs only
  its share of the layers: the layers are split evenly in rank order (device 0: layers 0 .. L/3, ...;
  "模型的transformer层均分到3台设备"). We use `--method even`'s split (the first stages one layer longer
  when the layers do not divide).
* **Prefill (SP + PP).** The prompt is cut into chunks of `chunk_tokens` (default 128, the seed's
  `--chunk_size`) that stream through that layer pipeline: while device 1 runs chunk j through its layers,
  device 0 runs chunk j+1. Each chunk attends to the chunks before it (chunked prefill). After prefill,
  device s holds the KV cache of *its* layers for every prompt token.
* **KV sync.** Every device then needs the KV of every layer, so the per-device KV blocks are all-gathered:
  `pairwise` (the seed's `all_gather`: every device sends its block straight to every other, one round)
  or `ring` (N - 1 rounds; in round k each device passes one block to its ring successor: first its own,
  then the one it just received). The sync starts when the last stage finishes (an all-gather is a
  collective: every rank must join; the seed's sync thread can hide at most the pipeline's drain).
* **Decode** runs redundantly on every device with the full KV cache and no communication ("所有设备使用
  完整的KV cache进行相同的全量推理，无需通信"); every device produces the same tokens, so the reply
  streams from the fastest one. The first output token falls out of the last stage at the end of prefill,
  so the sync delays the second token, not the first.

**The plain pipeline** we compare with runs the same request on the same devices and the same layer
split, but sends the whole prompt through each stage at once (no chunks, no sync) and decodes through the
pipeline: every token crosses every stage and link, and the last stage hands the sampled id back to the
first. It needs only its layer range (and that range's KV) on each device. **The chunked pipeline** is the
same pipeline with the prompt in the same chunks (what a pipeline engine with chunked prefill does, and
what `planner simulate`'s token budget models): SP+PP's prefill without its sync or its local decode.

Cost model, one factor per line (all times come from GpuCost; nothing here knows a GPU's figures):

* stage compute: `GpuCost.prefill_s(layers, chunk, context=tokens before the chunk)`;
* a chunk's hop to the next stage: `link.latency + chunk x hidden x dtype bytes / link.bandwidth`, the
  link being the cluster's host-to-host link (`Cluster.link`; two GPUs of one host use its `gpu_link`);
  one link carries one chunk at a time;
* prefill is the makespan of that flow shop (stages = each GPU, then its outgoing link):
  `F[s][j] = max(F[s][j-1], A[s][j]) + t[s][j]`, `A[s+1][j] = max(D[s][j-1], F[s][j]) + bytes/bw + latency`.
  It is evaluated exactly, O(chunks x devices); with equal chunk times it is the textbook
  `sum of stages + sum of hops + (chunks - 1) x slowest stage`;
* KV bytes of device s: `layers_s x prompt x GpuCost.kv_bytes_per_token` (K and V of every KV head);
* a sync round: every transfer starts at once; transfers between two hosts share that directed host pair's
  link; two GPUs of one host use their own `gpu_link` each way. A round takes the slowest link's
  `latency + bytes / bandwidth`; `pairwise` is one round, `ring` N - 1 rounds one after the other.
  The cluster file gives a bandwidth per host pair, not per network port, so by default a host sending to
  two other hosts at once is not slowed (true of a full mesh of cables, and the planner's reading
  elsewhere); `shared_nic=True` (`--shared-nic`) also makes each host's transfers to other hosts share
  one port out and one port in, at its fastest link's rate: a switch with one NIC per machine, which
  costs `pairwise` its parallelism;
* decode step: `GpuCost.decode_s(layers, batch=1, context=prompt + output / 2)` (the mean context of
  the request's decode steps), so `decode = (output - 1) x step`;
* a request's end-to-end latency = TTFT + sync + decode; TPOT = (sync + decode) / (output - 1); the
  throughput is output tokens / end-to-end latency, one request at a time (as the seed serves).

Memory: SP+PP needs the whole model (embeddings and LM head included) plus `prompt + output` tokens of KV
for every layer on **every** device; the plain pipeline only each stage's range and its KV. A prompt
that does not fit is reported, not estimated as if it did.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from planner.cluster import Cluster, Link, Node
from planner.costmodel import GpuCost
from planner.errors import InputError
from planner.problem import TOKEN_ID_BYTES, split_evenly
from planner.units import format_time

SYNC_STRATEGIES = ("pairwise", "ring")
DEFAULT_CHUNK_TOKENS = 128     # the seed's --chunk_size
DEFAULT_OUTPUT_TOKENS = 100    # the seed's --max_new_tokens
SWEEP_PROMPT_TOKENS = (1024, 2048, 4096, 8192, 16384, 32768)


@dataclass(frozen=True)
class Device:
    """One GPU of the SP+PP group and the layers it runs during prefill, [start_layer, end_layer)."""

    name: str
    host: str
    gpu: str
    start_layer: int
    end_layer: int

    @property
    def layers(self) -> int:
        return self.end_layer - self.start_layer


@dataclass(frozen=True)
class PipelineEstimate:
    """One request on the layer pipeline over the same devices: no sync, every decode token through every
    stage; the prompt whole (the plain pipeline) or in chunks (the chunked pipeline)."""

    prefill_s: float
    decode_step_s: float           # one output token through every stage and link
    decode_s: float                # all output tokens after the first
    ttft_s: float
    tpot_s: float
    latency_s: float               # end to end: TTFT + decode
    throughput_tokens_per_s: float  # output tokens/s, one request at a time
    fits: bool                     # every stage holds its range and the request's KV
    kv_room_tokens: int            # fewest KV tokens a stage holds beside its range
    chunk_tokens: int              # prefill chunk (the prompt length: no chunks)


@dataclass(frozen=True)
class SpPpEstimate:
    """One request served by SP+PP with one sync strategy, and the plain pipeline beside it."""

    sync: str                      # 'pairwise' | 'ring'
    prompt_tokens: int
    output_tokens: int
    chunk_tokens: int
    chunks: int
    devices: tuple[Device, ...]
    prefill_s: float               # first chunk in at device 0 to last chunk out of the last stage
    sync_s: float
    sync_bytes: float              # bytes crossing links, all transfers together
    decode_step_s: float           # one output token on the decode device (whole model, no communication)
    decode_s: float                # all output tokens after the first
    decode_device: str             # the fastest device: the reply streams from it
    ttft_s: float
    tpot_s: float
    latency_s: float               # end to end: TTFT + sync + decode
    throughput_tokens_per_s: float  # output tokens/s, one request at a time
    fits: bool                     # every device holds the whole model and the request's KV
    kv_room_tokens: int            # fewest KV tokens a device holds beside the whole model
    pipeline: PipelineEstimate     # whole prompt per stage
    chunked_pipeline: PipelineEstimate  # the same chunks as SP+PP, decode through the stages, no sync
    beats_pipeline: bool           # sooner end to end than the plain pipeline (and fits)
    reason: str                    # one line: why it does or does not
    beats_chunked_pipeline: bool

    @property
    def break_even_output_tokens(self) -> float | None:
        """Output tokens from which local decode has paid for the sync against the chunked pipeline:
        each token saves the pipeline's hops, the sync is paid once. None when decode saves nothing."""
        saved_per_token = self.chunked_pipeline.decode_step_s - self.decode_step_s
        return 1 + self.sync_s / saved_per_token if saved_per_token > 0 else None


# ---- devices ----------------------------------------------------------------------------------------

def select_devices(cluster: Cluster, names: Sequence[str] | None = None) -> list[Node]:
    """The GPUs named `names` (HOST:INDEX, in ring and pipeline order), or every GPU of the cluster."""
    nodes = cluster.nodes()
    if not names:
        return nodes
    by_name = {n.name: n for n in nodes}
    chosen: list[Node] = []
    for name in names:
        if name not in by_name:
            known = ", ".join(by_name) if len(by_name) <= 12 else ", ".join(list(by_name)[:12]) + ", ..."
            raise InputError(f"unknown GPU '{name}'", file=cluster.path, field="--gpus",
                             fix=f"name GPUs as HOST:INDEX, e.g. {known}")
        if by_name[name] in chosen:
            raise InputError(f"GPU '{name}' is listed twice", field="--gpus", fix="list each GPU once")
        chosen.append(by_name[name])
    return chosen


def split_layers(cluster: Cluster, nodes: Sequence[Node]) -> tuple[Device, ...]:
    """Equal layer ranges in device order, as the seed splits them (`--method even`'s split)."""
    layers = cluster.model.layers
    if not nodes:
        raise InputError("no GPUs to run SP+PP on", file=cluster.path, fix="give at least one host GPUs")
    if len(nodes) > layers:
        raise InputError(f"{len(nodes)} devices for {layers} layers: a stage needs at least one layer",
                         field="--gpus", fix=f"use at most {layers} GPUs")
    return tuple(Device(n.name, n.host, n.gpu, start, end)
                 for n, (start, end) in zip(nodes, split_evenly(layers, len(nodes))))


def _cost(cluster: Cluster, device: Device) -> GpuCost:
    cost = cluster.cost(device.gpu)
    if not cost.has_latency:  # a static throughput table says nothing about one request's times
        raise InputError(f"GPU type '{device.gpu}' has only a static throughput table; SP+PP needs per-layer "
                         "times", file=cluster.path, field=f"[gpu {device.gpu}]",
                         fix="drop 'throughput' (use the cost model) or give decode_ms and prefill_ms")
    return cost


def _link(cluster: Cluster, a: Device, b: Device) -> Link:
    link = cluster.link(a.host, b.host)
    if link is None:
        raise InputError(f"no link between hosts {a.host} and {b.host} ({a.name} -> {b.name})",
                         file=cluster.path, field="[network]",
                         fix=f"add '{a.host} -- {b.host} = BANDWIDTH, LATENCY' or a default")
    return link


def _coordinator_link(cluster: Cluster, device: Device) -> Link:
    link = cluster.coordinator_link(device.host)
    if link is None:
        raise InputError(f"no link between the coordinator and host {device.host}", file=cluster.path,
                         field="[network]", fix=f"add 'coordinator -- {device.host} = BANDWIDTH, LATENCY'")
    return link


def whole_model_fits(cluster: Cluster, devices: Sequence[Device]) -> None:
    """SP+PP keeps the whole model on every device: refuse a device that cannot hold even its weights."""
    for device in devices:
        if _cost(cluster, device).kv_tokens(cluster.model.layers, first=True, last=True) <= 0:
            raise InputError(
                f"{cluster.model.id} does not fit on {device.name} ({device.gpu}): SP+PP keeps the whole model "
                "on every device", file=cluster.path, field="--gpus",
                fix="choose GPUs with more memory or a smaller model or dtype; `planner solve` plans a pipeline")


# ---- phases -----------------------------------------------------------------------------------------

def prefill_makespan(stage_s: Sequence[Sequence[float]], transfer_s: Sequence[Sequence[float]],
                     latency_s: Sequence[float]) -> float:
    """Flow-shop makespan: chunk j takes stage_s[s][j] on stage s, then crosses link s to stage s + 1 in
    transfer_s[s][j] seconds plus latency_s[s]; a stage runs one chunk at a time and a link carries one at
    a time (latency overlaps: it is the wire's delay, not its occupancy). All chunks wait at stage 0 at 0."""
    chunks = len(stage_s[0])
    arrive = [0.0] * chunks
    for s, times in enumerate(stage_s):
        done, busy = [], 0.0
        for j in range(chunks):
            busy = max(busy, arrive[j]) + times[j]   # the stage is free and the chunk is here
            done.append(busy)
        if s == len(stage_s) - 1:
            return done[-1]
        arrive, sending = [], 0.0
        for j in range(chunks):
            sending = max(sending, done[j]) + transfer_s[s][j]  # the link is free and the chunk computed
            arrive.append(sending + latency_s[s])
    return 0.0


def _prefill_s(cluster: Cluster, devices: Sequence[Device], prompt: int, chunk: int) -> float:
    """The prompt in chunks of `chunk` tokens through the devices' layer ranges (one chunk: a plain pass)."""
    sizes = [min(chunk, prompt - start) for start in range(0, prompt, chunk)]
    stage_s = [[_cost(cluster, d).prefill_s(d.layers, size, context=j * chunk) for j, size in enumerate(sizes)]
               for d in devices]
    vector = cluster.activation_bytes_per_token()  # one hidden vector per token between stages
    links = [_link(cluster, a, b) for a, b in zip(devices, devices[1:])]
    transfer_s = [[size * vector / link.bandwidth_bytes_per_s for size in sizes] for link in links]
    return prefill_makespan(stage_s, transfer_s, [link.latency_s for link in links])


def _round_s(cluster: Cluster, transfers: Sequence[tuple[Device, Device, float]], shared_nic: bool = False) -> float:
    """One round of simultaneous transfers (source, destination, bytes): each link carries its share one
    after another; the round ends when the slowest link is done. With `shared_nic`, a host's transfers to
    all other hosts also share one port out and one port in, at the rate of its fastest link used."""
    load: dict[tuple[str, ...], float] = defaultdict(float)
    rate: dict[tuple[str, ...], float] = {}
    delay: dict[tuple[str, ...], float] = defaultdict(float)
    for a, b, size in transfers:
        link = _link(cluster, a, b)
        # between hosts: the directed host pair's link, shared; inside a host: each GPU pair's own path
        keys = [("gpu", a.name, b.name) if a.host == b.host else ("link", a.host, b.host)]
        if shared_nic and a.host != b.host:
            keys += [("out", a.host), ("in", b.host)]
        for key in keys:
            load[key] += size
            rate[key] = max(rate.get(key, 0.0), link.bandwidth_bytes_per_s)
            delay[key] = max(delay[key], link.latency_s)
    return max((delay[k] + load[k] / rate[k] for k in load), default=0.0)


def sync_rounds(devices: Sequence[Device], block_bytes: Sequence[float],
                strategy: str) -> list[list[tuple[Device, Device, float]]]:
    """The transfers of each round of an all-gather of one KV block per device."""
    n = len(devices)
    if strategy == "pairwise":  # every device sends its own block to every other at once
        return [[(devices[i], devices[k], block_bytes[i]) for i in range(n) for k in range(n) if k != i]] \
            if n > 1 else []
    if strategy == "ring":      # round r: device i passes block (i - r) mod n to device i + 1
        return [[(devices[i], devices[(i + 1) % n], block_bytes[(i - r) % n]) for i in range(n)]
                for r in range(n - 1)]
    raise _unknown_sync(strategy)


def _unknown_sync(name: str) -> InputError:
    return InputError(f"unknown sync strategy '{name}'", field="--sync", fix=f"use one of {', '.join(SYNC_STRATEGIES)}")


def sync_s(cluster: Cluster, devices: Sequence[Device], prompt: int, strategy: str,
           shared_nic: bool = False) -> tuple[float, float]:
    """Seconds and bytes moved to give every device the prompt's KV cache of every layer."""
    kv_per_token_layer = cluster.cost(devices[0].gpu).kv_bytes_per_token  # the same model on every device
    blocks = [d.layers * prompt * kv_per_token_layer for d in devices]
    rounds = sync_rounds(devices, blocks, strategy)
    seconds = sum(_round_s(cluster, transfers, shared_nic) for transfers in rounds)
    return seconds, sum(size for transfers in rounds for _, _, size in transfers)


def plain_pipeline(cluster: Cluster, devices: Sequence[Device], prompt: int, output: int,
                   chunk: int | None = None) -> PipelineEstimate:
    """The request on the layer pipeline: the whole prompt per stage (or in chunks of `chunk` tokens),
    every decode token through every stage."""
    context = prompt + output / 2  # mean context over the decode steps
    chunk = min(chunk or prompt, prompt)
    prefill = _prefill_s(cluster, devices, prompt, chunk)
    ttft = _entry_s(cluster, devices, prompt) + prefill + _exit_s(cluster, devices[-1])
    step = sum(_cost(cluster, d).decode_s(d.layers, 1, context) for d in devices)
    vector = cluster.activation_bytes_per_token()
    for a, b in zip(devices, devices[1:]):
        link = _link(cluster, a, b)
        step += link.latency_s + vector / link.bandwidth_bytes_per_s
    if len(devices) > 1:  # the last stage hands the sampled id back to the first
        link = _link(cluster, devices[-1], devices[0])
        step += link.latency_s + TOKEN_ID_BYTES / link.bandwidth_bytes_per_s
    decode = (output - 1) * step
    last = len(devices) - 1
    room = min(_cost(cluster, d).kv_tokens(d.layers, first=i == 0, last=i == last) for i, d in enumerate(devices))
    latency = ttft + decode
    return PipelineEstimate(prefill, step, decode, ttft, decode / (output - 1) if output > 1 else 0.0, latency,
                            output / latency, room >= prompt + output, room, chunk)


def _entry_s(cluster: Cluster, devices: Sequence[Device], prompt: int) -> float:
    """The prompt's token ids from the coordinator to device 0."""
    link = _coordinator_link(cluster, devices[0])
    return link.latency_s + prompt * TOKEN_ID_BYTES / link.bandwidth_bytes_per_s


def _exit_s(cluster: Cluster, device: Device) -> float:
    """One sampled token id from a device to the coordinator."""
    link = _coordinator_link(cluster, device)
    return link.latency_s + TOKEN_ID_BYTES / link.bandwidth_bytes_per_s


# ---- the strategy -----------------------------------------------------------------------------------

def estimate(cluster: Cluster, devices: Sequence[Device], prompt: int, output: int = DEFAULT_OUTPUT_TOKENS,
             sync: str = "pairwise", chunk: int = DEFAULT_CHUNK_TOKENS, shared_nic: bool = False) -> SpPpEstimate:
    """One request of `prompt` + `output` tokens by SP+PP with `sync`, and on the plain pipeline."""
    for value, flag in ((prompt, "--prompt"), (output, "--output"), (chunk, "--chunk")):
        if value < 1:
            raise InputError(f"{value} tokens is not a length", field=flag, fix="give a positive token count")
    if sync not in SYNC_STRATEGIES:
        raise _unknown_sync(sync)
    limit = cluster.model.max_position_embeddings
    if prompt + output > limit:
        raise InputError(f"{prompt:,} prompt + {output:,} output tokens exceed {cluster.model.id}'s context of "
                         f"{limit:,} tokens", field="--prompt/--output", fix=f"keep prompt + output <= {limit:,}")
    layers, context = cluster.model.layers, prompt + output / 2
    # one device has no one to share the sequence with: the prompt is one chunk, as on a plain pipeline
    chunk = chunk if len(devices) > 1 else prompt
    prefill = _prefill_s(cluster, devices, prompt, chunk)
    ttft = _entry_s(cluster, devices, prompt) + prefill + _exit_s(cluster, devices[-1])
    sync_seconds, sync_bytes = sync_s(cluster, devices, prompt, sync, shared_nic)
    steps = {d.name: _cost(cluster, d).decode_s(layers, 1, context) for d in devices}
    fastest = min(steps, key=lambda name: (steps[name], name))
    decode = (output - 1) * steps[fastest]
    latency = ttft + sync_seconds + decode
    room = min(_cost(cluster, d).kv_tokens(layers, first=True, last=True) for d in devices)
    fits = room >= prompt + output
    pipeline = plain_pipeline(cluster, devices, prompt, output)
    chunked = plain_pipeline(cluster, devices, prompt, output, chunk)
    beats, reason = _verdict(prefill_saved_s=pipeline.ttft_s - ttft, decode_saved_s=pipeline.decode_s - decode,
                             sync_cost_s=sync_seconds, fits=fits, pipeline=pipeline, room=room,
                             needed=prompt + output)
    return SpPpEstimate(
        sync=sync, prompt_tokens=prompt, output_tokens=output, chunk_tokens=min(chunk, prompt),
        chunks=math.ceil(prompt / chunk), devices=tuple(devices), prefill_s=prefill, sync_s=sync_seconds,
        sync_bytes=sync_bytes, decode_step_s=steps[fastest], decode_s=decode, decode_device=fastest, ttft_s=ttft,
        tpot_s=(sync_seconds + decode) / (output - 1) if output > 1 else 0.0, latency_s=latency,
        throughput_tokens_per_s=output / latency, fits=fits, kv_room_tokens=room, pipeline=pipeline,
        chunked_pipeline=chunked, beats_pipeline=beats, reason=reason,
        beats_chunked_pipeline=fits and (latency < chunked.latency_s or not chunked.fits))


def _verdict(*, prefill_saved_s: float, decode_saved_s: float, sync_cost_s: float, fits: bool,
             pipeline: PipelineEstimate, room: int, needed: int) -> tuple[bool, str]:
    """Whether SP+PP finishes the request sooner than the plain pipeline, and the one-line why."""
    if not fits:
        return False, (f"SP+PP does not fit: every device needs the whole model and {needed:,} tokens of KV for "
                       f"every layer, and one holds {room:,}")
    if not pipeline.fits:
        return True, (f"the plain pipeline does not fit ({needed:,} tokens of KV, a stage holds "
                      f"{pipeline.kv_room_tokens:,})")
    margin = prefill_saved_s + decode_saved_s - sync_cost_s
    parts = (f"chunked prefill {_saves(prefill_saved_s)}, local decode {_saves(decode_saved_s)}, "
             f"the KV sync costs {format_time(sync_cost_s)}")
    if abs(margin) < 1e-9:  # one device: nothing to chunk, sync or skip
        return False, f"SP+PP and the plain pipeline finish together: {parts}"
    if margin > 0:
        return True, f"SP+PP finishes {format_time(margin)} sooner: {parts}"
    return False, f"SP+PP finishes {format_time(-margin)} later: {parts}"


def _saves(seconds: float) -> str:
    return f"saves {format_time(seconds)}" if seconds >= 0 else f"costs {format_time(-seconds)} more"
