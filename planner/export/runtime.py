"""The runtime config: one JSON file the host and every worker read, built from a layout.

    {"format": "layer-planner-runtime/1", "layout": "...", "model": {...ModelSpec...}, "dtype": "fp16",
     "checkpoint": "/models/qwen3-14b" | null, "routing": "maxflow", "seed": 0,
     "host": {"name": "host1", "address": "10.0.0.1", "port": 5600, "http_port": 8000,
              "next": [["host1:0", 1397.25]]},
     "workers": [{"node": "host1:0", "host": "host1", "address": "10.0.0.1", "port": 5601, "device": "cuda:0",
                  "start": 0, "end": 5, "kv_slots": 32, "threads": null, "next": [["host2:0", 1397.25]],
                  "ranks": [], "tp_port": null}, ...],
     "limits": {"max_seq_len": 4096, "max_batch_tokens": 512, "heartbeat_s": 0.25, "dead_after_s": 3.0}}

A worker is a pipeline unit: one GPU, or a tensor-parallel group (node "host2:0+host2:1") whose `ranks`
list its GPUs in rank order, each with its device and the port of its step inbox; rank 0 is the group's
face (it listens on the unit's `port`) and hosts the group's torch.distributed rendezvous on `tp_port`.
`Shard` says which heads and MLP columns a rank holds (Megatron-LM's column/row split).

`next` lists a unit's next hops with the layout's max-flow tokens/s on each edge (0 where the flow
leaves an edge unused); the last stage's next hop is "coordinator". They come from planner.routing's
RouteGraph, the graph the simulator routes over, and the host rebuilds that graph from them.
Nothing here imports torch: exporting needs only the planner.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from planner.catalog import ModelSpec
from planner.errors import InputError
from planner.layout import Layout
from planner.problem import PlacementProblem
from planner.routing import COORDINATOR, ROUTERS, RouteGraph

FORMAT = "layer-planner-runtime/1"
CONFIG_FILE = "runtime.json"
DEFAULT_PORT = 5600           # the host's ZeroMQ inbox; a host's workers take the ports after it
DEFAULT_HTTP_PORT = 8000
MAX_KV_SLOTS = 64             # requests a worker keeps KV for at once (also its decode batch limit)


@dataclass(frozen=True)
class Limits:
    max_seq_len: int = 4096        # prompt + output tokens of one request
    max_batch_tokens: int = 512    # tokens one worker step takes: decode tokens first, then whole prompts
    heartbeat_s: float = 0.25      # how often a worker says it is alive
    dead_after_s: float = 3.0      # silence after which the host declares a worker dead


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


def free_ports(count: int, address: str = "127.0.0.1", seed: int | None = None) -> list[int]:
    """Ports nobody listens on now, below Linux's ephemeral range (32768-60999).

    Not port 0's pick: the OS hands those same ports to outgoing connections, and ZeroMQ's reconnects
    open many, so one could take a port between this check and the worker's bind. Another program may
    still take one meanwhile; that is rare, and the bind then fails loudly.
    """
    rng = random.Random(seed if seed is not None else time.time_ns() ^ os.getpid())
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 32768)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
        ports.append(port)
    return ports


def runtime_config(layout: Layout, *, layout_path: str = "", checkpoint: str | None = None, device: str = "cuda",
                   local: bool = False, base_port: int = DEFAULT_PORT, http_port: int = DEFAULT_HTTP_PORT,
                   routing: str = "maxflow", seed: int = 0, limits: Limits = Limits(),
                   kv_slots: int | None = None, threads: int | None = None) -> RuntimeConfig:
    """One worker per pipeline unit (a GPU, or a tensor-parallel group of one process per GPU), next hops
    from the routing graph, addresses from the cluster.

    device: 'cuda' (each GPU its host's cuda:INDEX) or 'cpu'. local: every process on this machine, on
    loopback, on free ports (base_port ignored).
    """
    cluster, placement = layout.cluster, layout.placement
    for group in placement.tp_groups:
        reason = shard_error(cluster.model, len(group))
        if reason:
            raise InputError(f"group {'+'.join(group)}: {reason}", file=layout_path, field="[layout] tp_groups",
                             fix="use groups whose size divides the model's heads and intermediate size")
    if routing not in ROUTERS:
        raise InputError(f"unknown routing policy '{routing}'", field="--routing", fix=f"use one of {', '.join(ROUTERS)}")
    problem = PlacementProblem(cluster)
    graph = RouteGraph.build(problem, placement, layout.flows)
    if not graph.successors.get(COORDINATOR):
        raise InputError("no GPU holds layer 0", file=layout_path, field="[nodes]", fix="re-plan the layout")
    units = placement.units()
    by_name = {n.name: n for n in cluster.nodes()}
    processes = sum(len(placement.members(u)) + (len(placement.members(u)) > 1) for u in units)
    ports = iter(free_ports(processes + 2) if local else ())

    def address(host: str) -> str:
        return "127.0.0.1" if local else (cluster.host(host).address or host)

    next_port: dict[str, int] = {}

    def port(host: str) -> int:
        if local:
            return next(ports)
        next_port[host] = next_port.get(host, base_port) + 1
        return next_port[host]

    def device_of(gpu: str) -> str:
        return "cpu" if device == "cpu" else f"cuda:{by_name[gpu].index}"

    workers = []
    for name, (start, end) in units.items():
        members = placement.members(name)
        node = by_name[members[0]]
        slots = kv_slots or _default_slots(problem, name, start, end, limits.max_seq_len)
        face_port = port(node.host)
        ranks: tuple[RankSpec, ...] = ()
        if len(members) > 1:  # rank 0 listens on the unit's port; the others on their own
            ranks = (RankSpec(members[0], device_of(members[0]), face_port),
                     *(RankSpec(m, device_of(m), port(node.host)) for m in members[1:]))
        workers.append(WorkerSpec(
            node=name, host=node.host, address=address(node.host), port=face_port, device=device_of(members[0]),
            start=start, end=end, kv_slots=slots,
            next=tuple((n, graph.weights[(name, n)]) for n in graph.successors[name]), threads=threads,
            ranks=ranks, tp_port=port(node.host) if ranks else None))
    coordinator = cluster.coordinator_host
    host = HostSpec(coordinator, address(coordinator), next(ports) if local else base_port,
                    next(ports) if local else http_port,
                    tuple((n, graph.weights[(COORDINATOR, n)]) for n in graph.successors[COORDINATOR]))
    return RuntimeConfig(layout=layout_path, model=cluster.model, dtype=cluster.dtype, host=host,
                         workers=tuple(workers), checkpoint=checkpoint, routing=routing, seed=seed, limits=limits)


def _default_slots(problem: PlacementProblem, name: str, start: int, end: int, max_seq_len: int) -> int:
    """Requests of max_seq_len tokens whose KV fits beside the weights (the cost model's memory), 1..64."""
    cost = problem.cost_of(name)
    tokens = cost.kv_tokens(end - start, start == 0, end == problem.cluster.model.layers)
    return max(1, min(MAX_KV_SLOTS, int(tokens // max_seq_len)))


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


def with_checkpoint(config: RuntimeConfig, checkpoint: str | None) -> RuntimeConfig:
    return config if checkpoint is None else replace(config, checkpoint=str(checkpoint))


def launch_scripts(config: RuntimeConfig, config_name: str = CONFIG_FILE) -> dict[str, str]:
    """host name -> a bash script starting that host's workers (and, on the coordinator, the host)."""
    hosts = sorted({w.host for w in config.workers} | {config.host.name})
    scripts = {}
    for host in hosts:
        lines = ["#!/usr/bin/env bash",
                 f"# {host}: started by `planner export`; run it on {host} with the checkpoint at $CHECKPOINT.",
                 "# Stops every process it started when one of them exits or on Ctrl-C.",
                 "set -euo pipefail", 'cd "$(dirname "$0")"',
                 f'CHECKPOINT="${{CHECKPOINT:-{config.checkpoint or ""}}}"',
                 'if [ -z "$CHECKPOINT" ]; then echo "set CHECKPOINT to the model directory" >&2; exit 2; fi',
                 "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT INT TERM"]
        for w in config.workers:  # a tensor-parallel group: one process per GPU, each naming its GPU
            for node in ([r.node for r in w.ranks] if w.ranks else [w.node]) if w.host == host else ():
                lines.append(f'planner worker --config {config_name} --node {node} --checkpoint "$CHECKPOINT" &')
        if host == config.host.name:
            lines.append(f'planner host --config {config_name} --checkpoint "$CHECKPOINT" &')
        lines += ["wait -n", ""]
        scripts[host] = "\n".join(lines)
    return scripts


def export_runtime(layout: Layout, out_dir: str | Path, **options) -> list[Path]:
    """Write OUT/runtime.json and OUT/launch-HOST.sh for each host; returns the paths written."""
    out_dir = Path(out_dir)
    known = inspect.signature(runtime_config).parameters  # options of other exporters are not ours
    config = runtime_config(layout, **{k: v for k, v in options.items() if k in known})
    written = [write_runtime_config(config, out_dir / CONFIG_FILE)]
    for host, text in launch_scripts(config).items():
        script = out_dir / f"launch-{host}.sh"
        script.write_text(text)
        script.chmod(0o755)
        written.append(script)
    return written
