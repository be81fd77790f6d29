"""Cluster files: hosts, GPUs, links and the model to serve, parsed and validated once, at the edge.

Format: docs/formats.md. Every error names the file, the section and key,
and the fix; nothing downstream re-validates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from planner.catalog import (DTYPE_BYTES, GpuSpec, ModelSpec, load_gpu_catalog,
                             load_model_catalog, parse_gpu, parse_model)
from planner.costmodel import CostParams, GpuCost, Workload
from planner.engines import DEFAULT_ENGINE, ENGINES, limits
from planner.errors import InputError
from planner.ini import NAME, SectionReader, read_ini
from planner.units import format_bytes, parse_bandwidth, parse_time

COORDINATOR = "coordinator"
ADDRESS = re.compile(r"[A-Za-z0-9._:-]+")   # a host name, an IPv4 or an IPv6 address
DEFAULT_GPU_LINK = "16 GB/s, 0.01 ms"  # PCIe 4.0 x16 in practice, when a host does not say
BF16_FREE_DTYPE = "fp16"


@dataclass(frozen=True)
class Link:
    bandwidth_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True)
class Host:
    name: str
    gpus: tuple[str, ...]          # GPU type ids, one per device index
    gpu_link: Link                 # between GPUs of this host
    address: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class Node:
    """One GPU of the cluster, named HOST:INDEX."""

    name: str
    host: str
    index: int
    gpu: str


@dataclass(frozen=True)
class Cluster:
    path: Path
    model: ModelSpec
    dtype: str
    coordinator_host: str
    hosts: tuple[Host, ...]
    gpu_types: dict[str, GpuSpec]
    default_link: Link | None
    pair_links: dict[frozenset[str], Link]
    coordinator_links: dict[str, Link]
    workload: Workload = Workload()
    cost_params: CostParams = field(default_factory=CostParams)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def engine(self) -> str:
        """The serving engine whose speed the cost model predicts (planner/engines.py)."""
        return self.cost_params.engine

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def nodes(self) -> list[Node]:
        return [Node(f"{h.name}:{i}", h.name, i, gpu) for h in self.hosts for i, gpu in enumerate(h.gpus)]

    def link(self, host_a: str, host_b: str) -> Link | None:
        """Link between two hosts (the host's gpu_link within one host); None where none exists."""
        if host_a == host_b:
            return self.host(host_a).gpu_link
        return self.pair_links.get(frozenset((host_a, host_b)), self.default_link)

    def coordinator_link(self, host: str) -> Link | None:
        """Link between the coordinator process and a host's GPUs."""
        if host in self.coordinator_links:
            return self.coordinator_links[host]
        return self.link(self.coordinator_host, host)

    def cost(self, gpu_id: str, tp: int = 1, tp_link: Link | None = None) -> GpuCost:
        """Costs of one GPU of a type, or of a tensor-parallel group of `tp` of them joined by `tp_link`."""
        return GpuCost(self.gpu_types[gpu_id], self.model, self.dtype, self.workload, self.cost_params,
                       tp=tp, tp_link=tp_link)

    @property
    def has_latency(self) -> bool:
        """True when every GPU type has a latency model (roofline or measured), not a static table."""
        return all(not g.is_static for g in self.gpu_types.values())

    def activation_bytes_per_token(self) -> int:
        return self.model.hidden_size * DTYPE_BYTES[self.dtype]


_PAIR = re.compile(r"^\s*(\S+)\s*--\s*(\S+)\s*$")
_GPU_COUNT = re.compile(r"^\s*(\S+)\s*\*\s*(\S+)\s*$")


def _parse_link(reader: SectionReader, key: str, default: str | None = None) -> Link:
    raw = reader.text(key, default)
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) != 2:
        raise reader.fail(key, f"'{raw}' is not 'BANDWIDTH, LATENCY'", "write e.g. '10 Gbit/s, 0.2 ms'")
    try:
        bandwidth, latency = parse_bandwidth(parts[0]), parse_time(parts[1])
    except ValueError as exc:
        raise reader.fail(key, str(exc), "write e.g. '10 Gbit/s, 0.2 ms'") from None
    if bandwidth <= 0:
        raise reader.fail(key, "bandwidth must be positive", "give the link's rate, e.g. '1 Gbit/s'")
    return Link(bandwidth, latency)


def _parse_gpu_list(reader: SectionReader, known: dict[str, GpuSpec]) -> tuple[str, ...]:
    gpus: list[str] = []
    for item in reader.items("gpus", "write 'TYPE * N' or 'TYPE, TYPE' with no empty item", empty=True):
        match = _GPU_COUNT.match(item)
        name, count = (match.group(1), match.group(2)) if match else (item, "1")
        if not count.isdigit() or int(count) == 0:
            raise reader.fail("gpus", f"'{item}' has count '{count}'", "write 'TYPE * N' with N >= 1")
        if name not in known:
            raise reader.fail("gpus", f"unknown GPU type '{name}'",
                              f"use one of {', '.join(sorted(known))} or define [gpu {name}]")
        gpus += [name] * int(count)
    return tuple(gpus)


def _engine_params(engine: str) -> CostParams:
    """The cost model's assumptions for `engine`: its constants and how much one iteration takes in."""
    iteration = limits(engine)
    return replace(CostParams(), engine=engine, max_batch=iteration.max_batch,
                   prefill_chunk_tokens=iteration.prefill_chunk_tokens)


def load_cluster(path: str | Path, *, check_fit: bool = True, engine: str | None = None) -> Cluster:
    """Read and validate a cluster file, to be costed for `engine` (None: the file's `engine`, else the
    default). Raises InputError naming file, field and fix."""
    path = Path(path)
    if engine is not None and engine not in ENGINES:
        raise InputError(f"unknown engine '{engine}'", field="--engine", fix=f"use one of {', '.join(ENGINES)}")
    ini = read_ini(path, "cluster file")
    if "cluster" not in ini:
        raise InputError("missing [cluster] section", file=path, fix="add [cluster] with 'model = ...'")
    for section in ini.sections():
        kind = section.split()[0]
        if kind not in ("cluster", "host", "network", "gpu", "model", "workload") or \
                (kind in ("host", "gpu", "model") and len(section.split()) != 2):
            raise InputError(f"unknown section [{section}]", file=path,
                             fix="sections are [cluster], [host NAME], [network], [gpu NAME], [model NAME], [workload]")

    gpu_types = dict(load_gpu_catalog())
    models = dict(load_model_catalog())
    for section in ini.sections():
        kind, _, name = section.partition(" ")
        if kind == "gpu":
            gpu_types[name] = parse_gpu(path, section, name, ini[section])
        elif kind == "model":
            models[name] = parse_model(path, section, name, ini[section])

    top = SectionReader(path, "cluster", ini["cluster"])
    top.unknown_keys({"model", "dtype", "coordinator", "engine"})
    if engine is None:   # the engine the cluster serves with: the commands' default for --engine
        engine = top.text("engine", DEFAULT_ENGINE)
        if engine not in ENGINES:
            raise top.fail("engine", f"unknown engine '{engine}'", f"use one of {', '.join(ENGINES)}")
    model_id = top.text("model")
    if model_id not in models:
        raise top.fail("model", f"unknown model '{model_id}'",
                       f"use one of {', '.join(sorted(models))} or define [model {model_id}]")
    dtype = top.text("dtype", BF16_FREE_DTYPE)
    if dtype not in DTYPE_BYTES:
        raise top.fail("dtype", f"unknown dtype '{dtype}'", f"use one of {', '.join(DTYPE_BYTES)}")

    hosts: list[Host] = []
    for section in ini.sections():
        kind, _, name = section.partition(" ")
        if kind != "host":
            continue
        r = SectionReader(path, section, ini[section])
        r.unknown_keys({"gpus", "gpu_link", "address", "region"})
        if not NAME.fullmatch(name) or name == COORDINATOR:
            raise InputError(f"host name {name!r} " + ("is reserved for the coordinator's end of links"
                                                       if name == COORDINATOR else "has characters other than "
                                                       "letters, digits, '.', '_' and '-'"),
                             file=path, field=f"[{section}]", fix="rename the host, e.g. [host gpu-box-1]")
        address = r.text("address", "") or None
        if address is not None and not ADDRESS.fullmatch(address):
            raise r.fail("address", f"{address!r} is not a host name or an IP address",
                         "write e.g. 'address = 10.0.0.2' or 'address = gpu-box-1.lan'")
        gpus = _parse_gpu_list(r, gpu_types)
        if dtype == "bf16":
            for gpu in gpus:
                if not gpu_types[gpu].bf16:
                    raise InputError(f"{gpu} has no bf16 support", file=path, field="[cluster] dtype",
                                     fix="use 'dtype = fp16' for this cluster")
        hosts.append(Host(name, gpus, _parse_link(r, "gpu_link", DEFAULT_GPU_LINK), address,
                          r.text("region", "") or None))
    if not hosts:
        raise InputError("no [host NAME] sections", file=path, fix="add a [host NAME] with 'gpus = TYPE * N'")
    if not any(h.gpus for h in hosts):
        raise InputError("the cluster has zero GPUs", file=path, field="[host ...] gpus",
                         fix="give at least one host 'gpus = TYPE * N'")
    host_names = {h.name for h in hosts}
    coordinator = top.text("coordinator", hosts[0].name)
    if coordinator not in host_names:
        raise top.fail("coordinator", f"unknown host '{coordinator}'", f"name one of {', '.join(sorted(host_names))}")

    default_link, pair_links, coordinator_links = None, {}, {}
    if "network" in ini:
        r = SectionReader(path, "network", ini["network"])
        for key in ini["network"]:
            if key == "default":
                default_link = _parse_link(r, key)
                continue
            match = _PAIR.match(key)
            if not match:
                raise r.fail(key, "is not 'default' or 'HOST -- HOST'", "write e.g. 'host1 -- host2 = 10 Gbit/s, 0.2 ms'")
            a, b = match.groups()
            for end in (a, b):
                if end != COORDINATOR and end not in host_names:
                    raise r.fail(key, f"unknown host '{end}'", f"name one of {', '.join(sorted(host_names))} or 'coordinator'")
            if a == b:
                raise r.fail(key, "links a host to itself", "set a host's internal link with gpu_link in [host]")
            link = _parse_link(r, key)
            other = b if a == COORDINATOR else a
            if (COORDINATOR in (a, b) and other in coordinator_links) or frozenset((a, b)) in pair_links:
                raise r.fail(key, "sets a link that another line already set (links go both ways)",
                             "keep one line per pair of hosts")
            if COORDINATOR in (a, b):
                coordinator_links[other] = link
            else:
                pair_links[frozenset((a, b))] = link

    cluster = Cluster(path=path, model=models[model_id], dtype=dtype, coordinator_host=coordinator,
                      hosts=tuple(hosts), gpu_types={g: gpu_types[g] for h in hosts for g in h.gpus},
                      default_link=default_link, pair_links=pair_links, coordinator_links=coordinator_links,
                      workload=_parse_workload(path, ini), cost_params=_engine_params(engine))
    request = cluster.workload.prompt_tokens + cluster.workload.output_tokens
    if request > cluster.model.max_position_embeddings:
        where = "[workload]" if "workload" in ini else "[cluster] model"
        raise InputError(f"a request of {cluster.workload.prompt_tokens} + {cluster.workload.output_tokens} tokens is "
                         f"longer than {model_id}'s context ({cluster.model.max_position_embeddings} tokens)",
                         file=path, field=where, fix="shorten prompt_tokens / output_tokens in [workload]")
    _check_reachable(cluster)
    if check_fit:
        _check_fit(cluster)
    return cluster


def _parse_workload(path: Path, ini) -> Workload:
    if "workload" not in ini:
        return Workload()
    r = SectionReader(path, "workload", ini["workload"])
    r.unknown_keys({"prompt_tokens", "output_tokens"})
    default = Workload()
    return Workload(r.positive_int("prompt_tokens", default.prompt_tokens),
                    r.positive_int("output_tokens", default.output_tokens))


def _check_reachable(cluster: Cluster) -> None:
    # A walk over a handful of hosts; networkx would cost 0.3 s of import on every command that loads a
    # cluster (`planner show` must start in well under a second).
    names = [h.name for h in cluster.hosts]
    neighbours: dict[str, set[str]] = {name: set() for name in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if cluster.link(a, b) is not None:
                neighbours[a].add(b)
                neighbours[b].add(a)
    for host in cluster.coordinator_links:  # 'coordinator -- HOST' reaches HOST directly
        neighbours[cluster.coordinator_host].add(host)
        neighbours[host].add(cluster.coordinator_host)
    reachable, frontier = {cluster.coordinator_host}, [cluster.coordinator_host]
    while frontier:
        for other in neighbours[frontier.pop()] - reachable:
            reachable.add(other)
            frontier.append(other)
    for host in cluster.hosts:
        if host.gpus and host.name not in reachable:
            raise InputError(f"host '{host.name}' cannot be reached from the coordinator ({cluster.coordinator_host})",
                             file=cluster.path, field="[network]",
                             fix=f"add '{cluster.coordinator_host} -- {host.name} = BANDWIDTH, LATENCY' or a default")


def _check_fit(cluster: Cluster) -> None:
    """Refuse a model that cannot fit in the cluster's memory at all, saying how much is missing."""
    model = cluster.model
    capacity_layers = 0
    for node in cluster.nodes():
        capacity_layers += cluster.cost(node.gpu).max_layers()
    if capacity_layers >= model.layers and _edges_fit(cluster):
        return
    layer_bytes = cluster.cost(cluster.nodes()[0].gpu).layer_bytes
    missing = max(model.layers - capacity_layers, 1)
    raise InputError(
        f"{model.id} ({model.layers} layers of {format_bytes(layer_bytes)} in {cluster.dtype}) does not fit: "
        f"the GPUs hold at most {capacity_layers} layers with KV room, about {format_bytes(missing * layer_bytes)} short",
        file=cluster.path, field="[host ...] gpus",
        fix="add GPUs, use GPUs with more memory, or choose a smaller model or dtype")


def _edges_fit(cluster: Cluster) -> bool:
    """Some GPU must hold layer 0 with the embeddings, and some GPU the last layer with the LM head."""
    costs = [cluster.cost(n.gpu) for n in cluster.nodes()]
    return any(c.max_layers(first=True) >= 1 for c in costs) and any(c.max_layers(last=True) >= 1 for c in costs)
