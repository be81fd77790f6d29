"""`planner export --to runtime`: a runtime config built from a layout, and per-host launch scripts.

The config's format (runtime.config) is the runtime's; this module fills it from a layout: one worker per
pipeline unit, next hops from the routing graph, addresses from the cluster, and writes OUT/runtime.json
and OUT/launch-HOST.sh. Nothing here imports torch: exporting needs only the planner.
"""

from __future__ import annotations

import inspect
import os
import random
import socket
import time
from pathlib import Path

from planner.errors import InputError
from planner.export.shell import default_to
from planner.layout import Layout
from planner.problem import PlacementProblem
from planner.routing import COORDINATOR, ROUTERS, RouteGraph
from runtime.config import (CONFIG_FILE, DEFAULT_HTTP_PORT, DEFAULT_PORT, MAX_KV_SLOTS, Limits, RankSpec,
                            RuntimeConfig, WorkerSpec, HostSpec, shard_error, write_runtime_config)

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
                   kv_slots: int | None = None, kv_tokens: int | None = None,
                   threads: int | None = None) -> RuntimeConfig:
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
        slots = kv_slots or MAX_KV_SLOTS
        tokens = kv_tokens or (_cpu_kv_tokens(problem, name, start, end, slots * limits.max_seq_len)
                               if device == "cpu" else None)
        face_port = port(node.host)
        ranks: tuple[RankSpec, ...] = ()
        if len(members) > 1:  # rank 0 listens on the unit's port; the others on their own
            ranks = (RankSpec(members[0], device_of(members[0]), face_port),
                     *(RankSpec(m, device_of(m), port(node.host)) for m in members[1:]))
        workers.append(WorkerSpec(
            node=name, host=node.host, address=address(node.host), port=face_port, device=device_of(members[0]),
            start=start, end=end, kv_slots=slots, kv_tokens=tokens,
            next=tuple((n, graph.weights[(name, n)]) for n in graph.successors[name]), threads=threads,
            ranks=ranks, tp_port=port(node.host) if ranks else None))
    coordinator = cluster.coordinator_host
    host = HostSpec(coordinator, address(coordinator), next(ports) if local else base_port,
                    next(ports) if local else http_port,
                    tuple((n, graph.weights[(COORDINATOR, n)]) for n in graph.successors[COORDINATOR]))
    return RuntimeConfig(layout=layout_path, model=cluster.model, dtype=cluster.dtype, host=host,
                         workers=tuple(workers), checkpoint=checkpoint, routing=routing, seed=seed, limits=limits)


def _cpu_kv_tokens(problem: PlacementProblem, name: str, start: int, end: int, most: int) -> int:
    """KV tokens for a worker on a CPU: what the cost model fits beside the weights, at most `most`.
    (A GPU worker sizes its pool from the memory it finds at start instead.)"""
    cost = problem.cost_of(name)
    tokens = cost.kv_tokens(end - start, start == 0, end == problem.cluster.model.layers)
    return max(1, min(most, int(tokens)))


def launch_scripts(config: RuntimeConfig, config_name: str = CONFIG_FILE) -> dict[str, str]:
    """host name -> a bash script starting that host's workers (and, on the coordinator, the host)."""
    hosts = sorted({w.host for w in config.workers} | {config.host.name})
    scripts = {}
    for host in hosts:
        lines = ["#!/usr/bin/env bash",
                 f"# {host}: started by `planner export`; run it on {host} with the checkpoint at $CHECKPOINT.",
                 "# Stops every process it started when one of them exits or on Ctrl-C.",
                 "set -euo pipefail", 'cd "$(dirname "$0")"',
                 default_to("CHECKPOINT", config.checkpoint or ""),
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
