"""The runtime config: one JSON file the host and every worker read (`planner export --to runtime` writes it).

    {"format": "layer-planner-runtime/1", "layout": "...", "model": {...ModelSpec...}, "dtype": "fp16",
     "checkpoint": "/models/qwen3-14b" | null, "routing": "maxflow", "seed": 0,
     "host": {"name": "host1", "address": "10.0.0.1", "port": 5600, "http_port": 8000,
              "next": [["host1:0", 1397.25]]},
     "workers": [{"node": "host1:0", "host": "host1", "address": "10.0.0.1", "port": 5601, "device": "cuda:0",
                  "start": 0, "end": 5, "kv_slots": 256, "kv_tokens": null, "threads": null,
                  "next": [["host2:0", 1397.25]], "ranks": [], "tp_port": null}, ...],
     "limits": {"max_seq_len": 4096, "max_batch_tokens": 512, "heartbeat_s": 0.25, "dead_after_s": 3.0,
                "gpu_memory_utilization": 0.9, "kv_block_tokens": 16, "cuda_graphs": true, "lanes": 0}}

A worker is a pipeline unit: one GPU, or a tensor-parallel group (node "host2:0+host2:1") whose `ranks`
list its GPUs in rank order, each with its device and the port of its step inbox; rank 0 is the group's
face (it listens on the unit's `port`) and hosts the group's torch.distributed rendezvous on `tp_port`.
`Shard` says which heads and MLP columns a rank holds (Megatron-LM's column/row split).

KV memory is paged (runtime.kvcache): `kv_slots` is how many requests a worker holds at once (its decode
batch limit, up to 256), `kv_tokens` how many tokens of KV its pool holds; null sizes the pool at start
from the memory left after the weights (gpu_memory_utilization of the GPU, as vLLM does; on a CPU,
kv_slots x max_seq_len tokens).

`next` lists a unit's next hops with the layout's max-flow tokens/s on each edge (0 where the flow
leaves an edge unused); the last stage's next hop is "coordinator". They come from planner.routing's
RouteGraph, the graph the simulator routes over, and the host rebuilds that graph from them.
Nothing here imports torch: the exporter writes this format with the planner alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from planner.catalog import ModelSpec
from planner.errors import InputError
from planner.routing import COORDINATOR, ROUTERS, RouteGraph

FORMAT = "layer-planner-runtime/1"
CONFIG_FILE = "runtime.json"
DEFAULT_PORT = 5600           # the host's ZeroMQ inbox; a host's workers take the ports after it
DEFAULT_HTTP_PORT = 8000
MAX_KV_SLOTS = 256            # requests a worker holds KV for at once (also its decode batch limit), as vLLM's max_num_seqs


@dataclass(frozen=True)
class Limits:
    max_seq_len: int = 4096        # prompt + output tokens of one request
    max_batch_tokens: int = 512    # tokens one worker step takes: decode tokens first, then prompts (chunked)
    heartbeat_s: float = 0.25      # how often a worker says it is alive
    dead_after_s: float = 3.0      # silence after which the host declares a worker dead
    gpu_memory_utilization: float = 0.9  # share of a GPU's memory the worker may use (weights + KV + graphs)
    kv_block_tokens: int = 16      # tokens per KV page (vLLM's default block size)
    cuda_graphs: bool = True       # replay decode steps as CUDA graphs on GPUs (False: eager, for debugging)
    lanes: int = 0                 # decode micro-batches per path (0: one per stage of the path, as vLLM)


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of a tensor-parallel group of `size` GPUs: its share of every layer (Megatron-LM's split).

    q/k/v and gate/up are split by output column, o and down by input row: rank r holds query heads
    [r H/size, (r+1) H/size), their KV heads and intermediate columns [r I/size, (r+1) I/size). With
    fewer KV heads than ranks (GQA), each KV head is replicated on the size/Hkv ranks whose query heads
    read it, as vLLM does.
    """

    rank: int = 0
    size: int = 1

    def heads(self, model: ModelSpec) -> range:
        per = model.attention_heads // self.size
        return range(self.rank * per, (self.rank + 1) * per)

    def kv_heads(self, model: ModelSpec) -> range:
        if model.kv_heads >= self.size:
            per = model.kv_heads // self.size
            return range(self.rank * per, (self.rank + 1) * per)
        first = self.rank * model.kv_heads // self.size   # replicated: the KV head of this rank's query heads
        return range(first, first + 1)

    def columns(self, model: ModelSpec) -> range:
        per = model.intermediate_size // self.size
        return range(self.rank * per, (self.rank + 1) * per)


def shard_error(model: ModelSpec, size: int) -> str | None:
    """Why `model` cannot be split over a tensor-parallel group of `size` GPUs (None when it can)."""
    if model.attention_heads % size:
        return f"{model.attention_heads} attention heads do not split over {size} GPUs"
    if model.kv_heads % size and size % model.kv_heads:
        return f"{model.kv_heads} KV heads neither split over nor replicate evenly on {size} GPUs"
    if model.intermediate_size % size:
        return f"intermediate size {model.intermediate_size} does not split over {size} GPUs"
    return None


@dataclass(frozen=True)
class RankSpec:
    """One GPU of a tensor-parallel group: its node name, device and step inbox port."""

    node: str
    device: str
    port: int


@dataclass(frozen=True)
class WorkerSpec:
    node: str
    host: str
    address: str
    port: int
    device: str
    start: int
    end: int
    kv_slots: int
    next: tuple[tuple[str, float], ...]
    kv_tokens: int | None = None   # tokens of KV the pool holds (None: sized from memory at start)
    threads: int | None = None     # torch CPU threads (None: torch's default)
    ranks: tuple[RankSpec, ...] = ()   # a tensor-parallel group's GPUs in rank order; () for one GPU
    tp_port: int | None = None     # the group's torch.distributed rendezvous, on the face's address

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.address}:{self.port}"

    @property
    def tp(self) -> int:
        return max(1, len(self.ranks))

    def rank_endpoint(self, rank: int) -> str:
        return f"tcp://{self.address}:{self.ranks[rank].port}"


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    port: int
    http_port: int
    next: tuple[tuple[str, float], ...]

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.address}:{self.port}"


@dataclass(frozen=True)
class RuntimeConfig:
    layout: str
    model: ModelSpec
    dtype: str
    host: HostSpec
    workers: tuple[WorkerSpec, ...]
    checkpoint: str | None = None
    routing: str = "maxflow"
    seed: int = 0
    limits: Limits = Limits()

    def worker(self, node: str) -> WorkerSpec:
        for w in self.workers:
            if w.node == node:
                return w
        raise InputError(f"no worker {node} in the runtime config", field="--node",
                         fix=f"name one of {', '.join(w.node for w in self.workers)}")

    def member(self, node: str) -> tuple[WorkerSpec, int]:
        """(the unit, the rank) of a process name: a GPU of a tensor-parallel group (its rank), or a unit's
        own name (rank 0, the face)."""
        for w in self.workers:
            for rank, r in enumerate(w.ranks):
                if r.node == node:
                    return w, rank
        return self.worker(node), 0

    def processes(self) -> list[str]:
        """The name of every process to start: each GPU of a group, each other unit."""
        return [r.node for w in self.workers for r in w.ranks] + [w.node for w in self.workers if not w.ranks]

    def endpoint(self, name: str) -> str:
        """ZeroMQ address of a worker, or of the host for 'coordinator'."""
        return self.host.endpoint if name == COORDINATOR else self.worker(name).endpoint

    def route_graph(self) -> RouteGraph:
        successors = {COORDINATOR: tuple(n for n, _ in self.host.next)}
        weights = {(COORDINATOR, n): w for n, w in self.host.next}
        for w in self.workers:
            successors[w.node] = tuple(n for n, _ in w.next)
            weights.update({(w.node, n): f for n, f in w.next})
        return RouteGraph(successors, weights)


def config_json(config: RuntimeConfig) -> dict:
    return {"format": FORMAT, **asdict(config)}


def write_runtime_config(config: RuntimeConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_json(config), indent=2) + "\n")
    return path


def _hops(raw, where: str, path: Path) -> tuple[tuple[str, float], ...]:
    try:
        return tuple((str(n), float(w)) for n, w in raw)
    except (TypeError, ValueError):
        raise InputError("is not a list of [NODE, TOKENS_PER_S]", file=path, field=where,
                         fix="re-export with `planner export`") from None


def read_runtime_config(path: str | Path) -> RuntimeConfig:
    """Load and check a runtime config (written by `planner export --to runtime`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such runtime config", file=path, fix="write one with `planner export LAYOUT --to runtime DIR`")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc}", file=path, fix="re-export with `planner export`") from None
    if raw.get("format") != FORMAT:
        raise InputError(f"format is {raw.get('format')!r}, not {FORMAT!r}", file=path, field="format",
                         fix="re-export with this version's `planner export`")
    try:
        model = ModelSpec(**raw["model"])
        host = HostSpec(**{**raw["host"], "next": _hops(raw["host"]["next"], "host.next", path)})
        workers = tuple(WorkerSpec(**{**w, "next": _hops(w["next"], f"workers.{w.get('node')}.next", path),
                                      "ranks": tuple(RankSpec(**r) for r in w.get("ranks", ()))})
                        for w in raw["workers"])
        config = RuntimeConfig(layout=raw.get("layout", ""), model=model, dtype=raw["dtype"], host=host,
                               workers=workers, checkpoint=raw.get("checkpoint"), routing=raw.get("routing", "maxflow"),
                               seed=int(raw.get("seed", 0)), limits=Limits(**raw.get("limits", {})))
    except (KeyError, TypeError) as exc:
        raise InputError(f"malformed: {exc}", file=path, fix="re-export with `planner export`") from None
    if not isinstance(config.limits.lanes, int) or config.limits.lanes < 0:
        raise InputError(f"lanes is {config.limits.lanes!r}", file=path, field="limits.lanes",
                         fix="give a whole number >= 0 (0: one per stage of a path)")
    names = {w.node for w in workers}
    for hop, _ in host.next:
        if hop not in names:
            raise InputError(f"next hop {hop} is not a worker", file=path, field="host.next", fix="re-export")
    for w in workers:
        for hop, _ in w.next:
            if hop != COORDINATOR and hop not in names:
                raise InputError(f"next hop {hop} is not a worker", file=path, field=f"workers.{w.node}.next",
                                 fix="re-export")
    for w in workers:
        reason = shard_error(model, w.tp) if w.ranks else None
        if reason or (w.ranks and w.tp_port is None):
            raise InputError(f"tensor-parallel group {w.node}: {reason or 'no tp_port'}", file=path,
                             field=f"workers.{w.node}", fix="re-export")
    if config.routing not in ROUTERS:
        raise InputError(f"unknown routing policy '{config.routing}'", file=path, field="routing",
                         fix=f"use one of {', '.join(ROUTERS)}")
    return config
