"""Time the runtime's own layers on a device: what `planner profile` writes as a measured [gpu] section.

A stage of `layers` middle layers (no embeddings, no LM head) runs the worker's exact forward pass:
  decode:  B requests, one new token each, every request with `context` tokens already cached;
  prefill: N new tokens, as prompts of at most `prompt_tokens` tokens each (N / prompt_tokens requests).
Each point is the median of repeated runs after a warm-up, divided by the number of layers: milliseconds
per layer, the unit of decode_ms / prefill_ms in cluster files (docs/formats.md).

The host's part of a step (laying out the batch's positions and page tables, copying them to the device)
is paid once per step whatever the stage holds, so it is timed apart and written as `step_overhead_ms`,
not spread over the timed layers: a worker holding all 36 layers of a model pays it once, not 36 times.

On a CPU each timed run of the layers or the head follows a read of as many bytes as the rest of the
model holds (RestOfModel), as it follows the rest of the pipeline there. A GPU's L2 (50 MB on an H100)
holds no layer of the models planned for, so GPU runs are timed back to back.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F

from planner.catalog import ModelSpec
from planner.costmodel import WAKE_WAITS_MS
from runtime.checkpoint import TORCH_DTYPES, load_stage
from runtime.graphs import MIXED_TOKENS, DecodeGraphs, MixedGraphs, StepLayout
from runtime.kvcache import KVPool
from runtime.model import BatchPlan, Stage

DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64)
PREFILL_TOKENS = (16, 64, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class Profile:
    device: str
    device_name: str
    dtype: str
    model: str
    layers_timed: int
    context: int
    prompt_tokens: int
    decode_ms: tuple[tuple[int, float], ...]    # (sequences, ms per layer)
    prefill_ms: tuple[tuple[int, float], ...]   # (tokens, ms per layer)
    memory_bytes: int
    bf16: bool  # the device runs bfloat16 (the catalog's `bf16` key; fp16 every device runs)
    # the work outside the layers (docs/formats.md): the last stage's final norm + LM head + sampling per
    # decode step of N sequences, the first stage's embedding of N tokens, one hop's fixed cost
    head_ms: tuple[tuple[int, float], ...] = ()
    embed_ms: tuple[tuple[int, float], ...] = ()
    hop_ms: float | None = None
    # the host's part of one decode step of N sequences (ms): the cluster file's step_overhead_ms
    host_ms: tuple[tuple[int, float], ...] = ()
    # the coordinator's loop for a round of N sequences' tokens (ms): host_step_ms
    coordinator_ms: tuple[tuple[int, float], ...] = ()
    # what a step costs beyond the back-to-back figures after the stage waited N ms for it: wake_ms
    wake_ms: tuple[tuple[float, float], ...] = ()


def random_stage(model: ModelSpec, layers: int, *, dtype: str, device: str, seed: int = 0) -> Stage:
    """A middle stage of `layers` layers with random weights made on the device (no checkpoint needed)."""
    shape = dataclasses.replace(model, layers=layers + 2)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        template = Stage(shape, 1, 1 + layers)
    tensors = {}
    for name, param in template.state_dict().items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(param.shape, dtype=TORCH_DTYPES[dtype], device=device)
        else:
            fan_in = param.shape[-1] if param.dim() > 1 else 1
            tensors[name] = (torch.randn(param.shape, generator=gen, device=device) / math.sqrt(fan_in)).to(
                TORCH_DTYPES[dtype])
    return Stage.from_tensors(shape, 1, 1 + layers, tensors)


def checkpoint_stage(checkpoint: str, model: ModelSpec, layers: int, *, dtype: str, device: str) -> Stage:
    """Layers [1, 1 + layers) of a checkpoint as a middle stage (random layers if it has too few)."""
    if model.layers < layers + 2:
        return random_stage(model, layers, dtype=dtype, device=device)
    return Stage.from_tensors(model, 1, 1 + layers, load_stage(checkpoint, model, 1, 1 + layers, dtype=dtype,
                                                                 device=device))


def last_level_cache_bytes() -> int | None:
    """The size of this CPU's largest cache (Linux sysfs), or None where it does not say."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        if text.rstrip("KMG").isdigit():
            sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=None)


class RestOfModel:
    """Reads as many bytes as the rest of the model's weights hold. Between two steps of a stage on a CPU
    the other stages, the head and the host run on the same machine, and what they read evicts the
    stage's weights from the caches they share; timed back to back instead, a 2-layer stage of a small
    model stays in the last-level cache and runs 20-25% faster than it does in the pipeline
    (docs/runtime.md). Capped at twice the last-level cache: past that the caches are cold whatever is read."""

    def __init__(self, model: ModelSpec, dtype: str) -> None:
        self.width = torch.tensor([], dtype=TORCH_DTYPES[dtype]).element_size()
        self.model_bytes = (model.layers * model.layer_params() + model.head_params()) * self.width
        cache = last_level_cache_bytes()
        self.cap = 2 * cache if cache else 2 * 2**30
        self.buffer = torch.ones(min(self.model_bytes, self.cap) // 4, dtype=torch.float32)  # real pages

    def rest_bytes(self, timed_params: int) -> int:
        """Bytes read between two timed runs of a part holding `timed_params` weights."""
        return max(0, min(self.model_bytes - timed_params * self.width, self.cap))

    def reader(self, timed_params: int):
        """What runs between two timed runs of that part: a read of the rest (a read, not a write: the
        lines it leaves are clean, as other stages' weights are); None where nothing else runs."""
        view = self.buffer[:self.rest_bytes(timed_params) // 4]
        return (lambda: view.sum()) if view.numel() else None


def _time(fn, device: str, min_runs: int = 5, min_seconds: float = 0.2, before=None) -> float:
    """Median seconds of fn() after two warm-up calls; `before()` runs untimed ahead of every timed call."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    runs: list[float] = []
    started = time.perf_counter()
    while len(runs) < min_runs or (time.perf_counter() - started < min_seconds and len(runs) < 200):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


P = TypeVar("P")
CPU_ROUNDS = 3   # sweeps of a table on a CPU, each point once per sweep


def interleaved(points: Iterable[P], measure: Callable[[P], tuple[float, ...]],
                rounds: int) -> dict[P, tuple[float, ...]]:
    """measure(point) -> a tuple of seconds, for every point once per round, the rounds in turn; the median
    of each figure per point. On a CPU the speed drifts while a table is timed (the clock ramps up, a
    neighbour's burst): timed point after point, a drift lands on one point and can make a step of two
    sequences read faster than one of one (seen: 0.99 against 1.19 ms, which put the simulator 11% fast at
    8 in flight); spread over the sweeps, the median drops it."""
    samples: dict[P, list[tuple[float, ...]]] = {point: [] for point in points}
    for _ in range(rounds):
        for point in points:
            samples[point].append(measure(point))
    return {point: tuple(statistics.median(figures) for figures in zip(*runs)) for point, runs in samples.items()}


def filled_pool(stage: Stage, lengths: list[int]) -> tuple[KVPool, list[str]]:
    """A KV pool holding one request of each length (pages taken, contents whatever they are)."""
    page = 16
    kv = stage.new_kv(max_seqs=len(lengths), max_seq_len=max(lengths),
                      tokens=sum(-(-n // page) * page for n in lengths), page_tokens=page)
    requests = [f"r{i}" for i in range(len(lengths))]
    for request, length in zip(requests, lengths):
        kv.admit(request)
        kv.grow(request, length)
    return kv, requests


def _accelerated(stage: Stage, device: str) -> bool:
    return device.startswith("cuda") and stage.layers[0].self_attn.kernels is not None


def time_decode(stage: Stage, batch: int, context: int, device: str, graphs: bool = True,
                between=None) -> tuple[float, float]:
    """One decode step of `batch` sequences at `context` cached tokens, as the worker runs it (replayed as
    a CUDA graph where the stage is accelerated, a GPU; else eagerly; `between()`, if given, untimed ahead
    of each timed run): (seconds per layer of the layers' work, seconds of the host's layout of the step)."""
    kv, requests = filled_pool(stage, [context + 1] * batch)
    hidden = torch.randn(batch, stage.model.hidden_size, device=device).to(next(stage.parameters()).dtype)
    if graphs and _accelerated(stage, device):
        captured = DecodeGraphs(stage, kv, batch, sizes=(batch,))
        step = _time(lambda: captured.run(requests, [context] * batch, hidden), device)   # layout, copy, replay
        layers = _time(captured.graphs[batch][0].replay, device, before=between)   # on the inputs the last step staged
        host = max(0.0, step - layers) + time_bookkeeping(kv, requests, [context] * batch, hidden, layout=False)
        return layers / len(stage.layers), host
    items = [(kv.pages_of[r], context, 1) for r in requests]
    host = _time(lambda: BatchPlan.build(items, kv.page_tokens, device), device) \
        + time_bookkeeping(kv, requests, [context] * batch, hidden, layout=False)
    plan = BatchPlan.build(items, kv.page_tokens, device)
    return _time(lambda: stage(hidden, plan, kv), device, before=between) / len(stage.layers), host


def time_bookkeeping(kv: KVPool, requests: list[str], positions: list[int], hidden: torch.Tensor,
                     layout: bool) -> float:
    """Seconds of the worker's bookkeeping for one decode step outside the stage's kernels: forming the batch
    from the queue and checking each request's KV (runtime/worker.py `_take_batch` and `_admit`, run on a
    stand-in holding the queue and the pool), concatenating the inputs, splitting the output into one
    message per next hop (`_step`'s part, repeated here: it runs between the stage and the sockets); and,
    with `layout`, the step's layout for a CUDA graph (runtime.graphs.StepLayout)."""
    from types import SimpleNamespace

    from runtime.worker import Item, Worker

    rows = list(hidden.split(1))
    path = ["a:0", "b:0", "c:0"]
    config = SimpleNamespace(limits=SimpleNamespace(max_batch_tokens=len(requests)))

    def step() -> None:
        worker = SimpleNamespace(config=config, kv=kv, queue=deque(
            Item(r, p, 1, path, 0, row, None) for r, p, row in zip(requests, positions, rows)))
        ready = Worker._admit(worker, Worker._take_batch(worker))
        if layout:
            StepLayout(kv, [(i.rid, i.pos, i.count) for i in ready], len(ready), len(ready))
        out = torch.cat([i.data for i in ready])
        by_hop: dict[str, list] = {}
        offset = 0
        for item in ready:
            by_hop.setdefault(item.path[item.hop + 1], []).append((item, out[offset:offset + item.count]))
            offset += item.count
        for pairs in by_hop.values():
            _ = {"kind": "work", "items": [i.header(i.hop + 1) for i, _ in pairs]}
            torch.cat([h for _, h in pairs])

    return _time(step, "cpu", min_runs=20)


def time_host_round(model: ModelSpec, batch: int) -> float:
    """Seconds of the runtime host's loop for one round of `batch` decode tokens of one path: decoding the
    last stage's message, streaming each token to its request, and sending the next step on (encoded as
    for the wire, not sent: the hop's cost is hop_ms)."""
    from runtime import wire
    from runtime.config import HostSpec, Limits, RuntimeConfig, WorkerSpec
    from runtime.host import Host

    worker = WorkerSpec("w:0", "w", "127.0.0.1", 1, "cpu", 0, model.layers, batch, (("coordinator", 1.0),),
                        kv_tokens=1 << 40)
    config = RuntimeConfig("profile", model, "fp32", HostSpec("coordinator", "127.0.0.1", 1, 1, (("w:0", 1.0),)),
                           (worker,), limits=Limits(max_seq_len=1 << 20))
    host = Host(config)
    host.state = {"w:0": "alive"}
    host._send = lambda node, header, tensors=(): bool(wire.encode(header, tensors))
    requests = [host.submit([1], 1 << 19) for _ in range(batch)]
    while not host.submissions.empty():
        host.waiting.append(host.submissions.get_nowait())
    host._admit()
    host._flush_lanes()
    message = wire.encode({"kind": "tokens", "node": "w:0",
                           "items": [{"rid": r.wire_id, "token": 7} for r in requests]}, ())

    def round_() -> None:
        host._handle(*wire.decode(message))
        host._flush_lanes()

    try:
        return _time(round_, "cpu", min_runs=20)
    finally:   # the host's wake-up pipe (it never started its engine thread or sockets)
        os.close(host.wake_r)
        os.close(host.wake_w)


def time_prefill(stage: Stage, tokens: int, prompt_tokens: int, device: str, between=None) -> float:
    """Seconds per layer of prefilling `tokens` tokens in prompts of at most `prompt_tokens`, as the worker
    runs it: one mixed-step CUDA graph where the stage is accelerated and the step fits one (the graph's
    replay alone: its host layout is the step's, charged as `step_overhead_ms`), else eagerly."""
    sizes = [prompt_tokens] * (tokens // prompt_tokens) + ([tokens % prompt_tokens] if tokens % prompt_tokens else [])
    kv, requests = filled_pool(stage, sizes)
    hidden = torch.randn(tokens, stage.model.hidden_size, device=device).to(next(stage.parameters()).dtype)
    items = [(r, 0, n) for r, n in zip(requests, sizes)]
    if _accelerated(stage, device) and tokens <= MIXED_TOKENS[-1]:
        captured = MixedGraphs(stage, kv, tokens, len(items), sizes=(tokens,))
        size = captured.fits(items)
        if size:
            captured.run(items, hidden, size)   # stages the inputs the replays read
            return _time(captured.graphs[size][0].replay, device) / len(stage.layers)
    plan = BatchPlan.build([(kv.pages_of[r], 0, n) for r, n in zip(requests, sizes)], kv.page_tokens, device)
    return _time(lambda: stage(hidden, plan, kv), device, before=between) / len(stage.layers)


def device_memory(device: str) -> tuple[str, int]:
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return props.name, props.total_memory
    return platform.processor() or platform.machine(), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def runs_bf16(device: str) -> bool:
    """Whether the device computes in bfloat16: CUDA says so itself (compute capability 8.0+); on a CPU,
    torch runs bfloat16 where a small matmul in it succeeds."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        ones = torch.ones(4, 4, dtype=torch.bfloat16, device=device)
        return bool(torch.isfinite((ones @ ones).float()).all())
    except RuntimeError:
        return False


def time_head(model: ModelSpec, batch: int, *, dtype: str, device: str, between=None) -> float:
    """Seconds of the last stage's work after its layers for one decode step of `batch` sequences: the
    final norm, the LM head (vocab x hidden, the largest matrix of a small model) and greedy sampling,
    ending when the ids are on the host (as the worker's sample_batch ends)."""
    gen = torch.Generator(device=device).manual_seed(0)
    head = (torch.randn(model.vocab_size, model.hidden_size, generator=gen, device=device)
            / math.sqrt(model.hidden_size)).to(TORCH_DTYPES[dtype])
    norm = torch.ones(model.hidden_size, dtype=head.dtype, device=device)
    hidden = torch.randn(batch, model.hidden_size, generator=gen, device=device).to(head.dtype)

    def step() -> list[int]:
        x = hidden.float()
        x = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + model.rms_norm_eps)).to(head.dtype) * norm
        return torch.argmax(F.linear(x, head).float(), dim=-1).tolist()

    return _time(step, device, before=between)


def time_embed(model: ModelSpec, tokens: int, *, dtype: str, device: str) -> float:
    """Seconds of the first stage's embedding of `tokens` token ids."""
    table = torch.zeros(model.vocab_size, model.hidden_size, dtype=TORCH_DTYPES[dtype], device=device)
    ids = torch.randint(0, model.vocab_size, (tokens,), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return _time(lambda: (F.embedding(ids, table), sync()), device)


HOP_ROUNDS = 400


def _echo(port: int, back: int, rounds: int) -> None:
    """The far end of the hop timings, in a process of its own: receive each message, decode it, note when
    (the machine's monotonic clock, which both ends read), encode it again and send it back, as a worker
    passes work on."""
    import zmq

    from runtime import wire

    torch.set_num_threads(1)
    context = zmq.Context()
    inbox, outbox = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    inbox.bind(f"tcp://127.0.0.1:{port}")
    outbox.connect(f"tcp://127.0.0.1:{back}")
    for _ in range(rounds):
        header, tensors = wire.decode(inbox.recv_multipart(copy=False))
        header["at"] = time.perf_counter()
        outbox.send_multipart(wire.encode(header, tuple(tensors)), copy=False)
    inbox.close()
    outbox.close()
    context.term()


def _ping_pong(hidden_size: int, *, dtype: str, device: str, batch: int, waits_s: tuple[float, ...],
               rounds: int) -> dict[float, tuple[float, float]]:
    """Messages of `batch` decode tokens' hidden states to another process and straight back, `rounds` for
    each wait in `waits_s` (how long the far end has waited for the message): by wait, the median half
    round trip and the median one-way time (sent here to decoded there)."""
    import multiprocessing

    import zmq

    from runtime import wire

    context = zmq.Context()
    inbox, outbox = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    back = inbox.bind_to_random_port("tcp://127.0.0.1")
    probe = context.socket(zmq.PULL)   # a free port for the far end's inbox
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    far = multiprocessing.get_context("spawn").Process(target=_echo, args=(port, back, rounds * len(waits_s)),
                                                       daemon=True)
    far.start()
    outbox.connect(f"tcp://127.0.0.1:{port}")
    hidden = torch.randn(batch, hidden_size, device=device).to(TORCH_DTYPES[dtype])
    items = [{"rid": f"r{i}", "pos": 100 + i, "n": 1, "path": ["a", "b", "c"], "hop": 1, "lane": 0} for i in range(batch)]
    times = {}
    try:
        for wait in waits_s:
            trips, one_way = [], []
            for _ in range(rounds):
                if wait:
                    time.sleep(wait)   # the far end waits as long for this message
                started = time.perf_counter()
                outbox.send_multipart(wire.encode({"kind": "work", "items": items}, (hidden,)), copy=False)
                header, _ = wire.decode(inbox.recv_multipart(copy=False), device)
                trips.append(time.perf_counter() - started)
                one_way.append(header["at"] - started)
            skip = rounds // 10   # the first rounds include starting and connecting
            times[wait] = (statistics.median(trips[skip:]) / 2, statistics.median(one_way[skip:]))
        far.join(timeout=10)
    finally:
        if far.is_alive():
            far.kill()
        inbox.close(linger=0)
        outbox.close(linger=0)
        context.term()
    return times


def time_hop(hidden_size: int, *, dtype: str, device: str, batch: int = 1, rounds: int = HOP_ROUNDS) -> float:
    """Seconds of one message between stages beyond its bytes on the link: `batch` decode tokens' hidden
    states taken off the device, framed (runtime.wire), sent over ZeroMQ on loopback TCP to another process
    (woken by it, as the next worker is), decoded there; half the median round trip of a ping-pong whose
    far end sends each message straight back, and this end puts it back on the device."""
    return _ping_pong(hidden_size, dtype=dtype, device=device, batch=batch, waits_s=(0.0,), rounds=rounds)[0.0][0]


WAKE_ROUNDS = 40


def time_wake(stage: Stage, *, context: int, device: str, dtype: str, between=None,
              waits_ms: tuple[float, ...] = WAKE_WAITS_MS, rounds: int = WAKE_ROUNDS) -> tuple[tuple[float, float], ...]:
    """What a step costs a stage that has waited for it, beyond the back-to-back figures (ms, by the wait
    in ms): the message that wakes it arrives later (one-way time to a process that waited, less one to
    a process that did not) and the step runs slower (a decode step of one sequence after `between()` and
    the wait, less one after `between()` alone). A worker waits between its steps whenever the pipeline
    has fewer lanes in flight than stages: at one request in flight, most of every token."""
    waits = tuple(ms / 1e3 for ms in waits_ms)
    hops = _ping_pong(stage.model.hidden_size, dtype=dtype, device=device, batch=1, waits_s=(0.0, *waits),
                      rounds=rounds)
    layers = len(stage.layers)
    plain = time_decode(stage, 1, context, device, between=between)[0] * layers
    points = []
    for ms, wait in zip(waits_ms, waits):
        def waited(wait: float = wait) -> None:
            if between is not None:
                between()
            time.sleep(wait)

        step = time_decode(stage, 1, context, device, between=waited)[0] * layers - plain
        hop = hops[wait][1] - hops[0.0][1]
        points.append((ms, 1e3 * max(0.0, step + hop)))
    return tuple(points)


def profile(stage: Stage, *, device: str, dtype: str, context: int = 256, prompt_tokens: int = 512,
            decode_batches=DECODE_BATCHES, prefill_tokens=PREFILL_TOKENS) -> Profile:
    name, memory = device_memory(device)
    stage.accelerate()   # time what the worker runs
    model = stage.model
    cpu = not device.startswith("cuda")
    rest = RestOfModel(model, dtype) if cpu else None   # a CPU's caches, shared
    rounds = CPU_ROUNDS if cpu else 1
    layers = rest and rest.reader(len(stage.layers) * model.layer_params())
    timed = interleaved(decode_batches, lambda b: time_decode(stage, b, context, device, between=layers), rounds)
    decode = tuple((b, 1e3 * layer_s) for b, (layer_s, _) in timed.items())
    host = tuple((b, 1e3 * host_s) for b, (_, host_s) in timed.items())
    prefill = tuple((n, 1e3 * s) for n, (s,) in interleaved(
        prefill_tokens, lambda n: (time_prefill(stage, n, prompt_tokens, device, between=layers),), rounds).items())
    head_between = rest and rest.reader(model.head_params())
    head = tuple((b, 1e3 * s) for b, (s,) in interleaved(
        decode_batches, lambda b: (time_head(model, b, dtype=dtype, device=device, between=head_between),),
        rounds).items())
    coordinator = tuple((b, 1e3 * time_host_round(model, b)) for b in decode_batches)
    embed = tuple((n, 1e3 * time_embed(model, n, dtype=dtype, device=device)) for n in (1, *prefill_tokens))
    hop = 1e3 * time_hop(model.hidden_size, dtype=dtype, device=device)
    wake = time_wake(stage, context=context, device=device, dtype=dtype, between=layers)
    return Profile(device, name, dtype, model.id, len(stage.layers), context, prompt_tokens, decode, prefill,
                   memory, runs_bf16(device), head, embed, hop, host, coordinator, wake)


def gpu_section(result: Profile, name: str, memory: str, command: str) -> str:
    """A measured [gpu NAME] section for a cluster file (docs/formats.md)."""
    def table(points):
        return ", ".join(f"{x:g}: {ms:.4g}" for x, ms in points)

    return "\n".join([
        f"[gpu {name}]",
        f"# {command}",
        f"# {result.device_name} ({result.device}), {result.model} layers in {result.dtype}; per-layer ms, median of "
        f"runs over {result.layers_timed} layers; decode at {result.context} cached tokens, prefill in prompts of "
        f"<= {result.prompt_tokens} tokens; {time.strftime('%Y-%m-%d')}",
        f"name = {result.device_name}", f"memory = {memory}", f"bf16 = {'yes' if result.bf16 else 'no'}",
        f"decode_ms = {table(result.decode_ms)}", f"prefill_ms = {table(result.prefill_ms)}",
        *(["# outside the layers: final norm + LM head + greedy sampling per decode step, embedding per "
           "batch of tokens, one hop's message (ZeroMQ on loopback)",
           f"head_ms = {table(result.head_ms)}", f"embed_ms = {table(result.embed_ms)}",
           f"hop_ms = {result.hop_ms:.4g}"] if result.head_ms else []),
        *(["# the host's part of a step (batch formation, layout, copy to the device) by sequences in it",
           f"step_overhead_ms = {table(result.host_ms)}"] if result.host_ms else []),
        *(["# the coordinator's loop (the runtime's host, on this machine) for a round of N sequences' tokens",
           f"host_step_ms = {table(result.coordinator_ms)}"] if result.coordinator_ms else []),
        *(["# a step of a stage that waited N ms for it, beyond the figures above: its message wakes a",
           "# sleeping worker, its step runs cold",
           f"wake_ms = {table(result.wake_ms)}"] if result.wake_ms else []), ""])
