"""planner show CLUSTER.ini"""

from __future__ import annotations

import json

import click
from planner.cli.console import make_console
from planner.cli.options import engine_option
from rich.table import Table

from planner.cluster import Cluster, Link, load_cluster
from planner.costmodel import WAKE_WAITS_MS
from planner.units import format_bandwidth, format_bytes, format_time

DECODE_BATCHES = tuple(2**i for i in range(9))          # 1, 2, 4, ..., 256 sequences
DECODE_CONTEXTS = (1024, 4096)                          # tokens each sequence holds
PREFILL_TOKENS = tuple(128 * 2**i for i in range(7))    # 128, 256, ..., 8192 prompt tokens


@click.command()
@click.argument("cluster_file", type=click.Path())
@engine_option()
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: the cluster and, per GPU type, memory, layer limits, capacity table "
                   "and per-layer decode and prefill times.")
def show(cluster_file: str, engine: str, as_json: bool) -> None:
    """Print a cluster: hosts, GPUs, links, and each GPU type's memory, layer limit and capacity."""
    cluster = load_cluster(cluster_file, engine=engine)
    if as_json:
        click.echo(json.dumps(show_json(cluster), indent=2))
        return
    console = make_console()
    model = cluster.model
    console.print(f"[bold]{cluster.path}[/]: {model.id} ({model.layers} layers, hidden {model.hidden_size}) "
                  f"in {cluster.dtype} on the {cluster.engine} engine, coordinator on {cluster.coordinator_host}; "
                  f"workload {cluster.workload.prompt_tokens} prompt + {cluster.workload.output_tokens} output tokens")

    hosts = Table(title="Hosts")
    for col in ("host", "GPUs", "GPU link", "address", "region"):
        hosts.add_column(col)
    for h in cluster.hosts:
        gpus = ", ".join(f"{g} x{h.gpus.count(g)}" for g in dict.fromkeys(h.gpus)) or "(none)"
        link = f"{format_bandwidth(h.gpu_link.bandwidth_bytes_per_s)}, {format_time(h.gpu_link.latency_s)}"
        hosts.add_row(h.name, gpus, link if h.gpus else "-", h.address or "-", h.region or "-")
    console.print(hosts)

    links = Table(title="Links between hosts")
    for col in ("from", "to", "bandwidth", "latency"):
        links.add_column(col)
    names = [h.name for h in cluster.hosts]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            link = cluster.link(a, b)
            if link:
                links.add_row(a, b, format_bandwidth(link.bandwidth_bytes_per_s), format_time(link.latency_s))
    for h in cluster.hosts:
        link = cluster.coordinator_link(h.name)
        if h.gpus and link and h.name in cluster.coordinator_links:
            links.add_row("coordinator", h.name, format_bandwidth(link.bandwidth_bytes_per_s), format_time(link.latency_s))
    if cluster.default_link:
        d = cluster.default_link
        links.caption = f"any other pair: {format_bandwidth(d.bandwidth_bytes_per_s)}, {format_time(d.latency_s)}"
    console.print(links)

    for gpu_id, gpu in cluster.gpu_types.items():
        cost = cluster.cost(gpu_id)
        kind = "static throughput table" if gpu.is_static else ("measured latency" if gpu.is_measured else "roofline")
        memory = format_bytes(gpu.memory_bytes) if gpu.memory_bytes else "-"
        console.print(f"\n[bold]{gpu_id}[/] ({gpu.name}): {memory}, {kind}; one layer = "
                      f"{format_bytes(cost.layer_bytes)}; max layers {cost.max_layers()} "
                      f"({cost.max_layers(first=True)} with embeddings, {cost.max_layers(last=True)} with LM head)")
        table = Table(show_edge=False)
        table.add_column("layers", justify="right")
        table.add_column("tokens/s", justify="right")
        if cost.has_latency:
            for col in ("KV tokens/layer", "in flight", "step batch", "decode step", "prefill"):
                table.add_column(col, justify="right")
        for k, cap in enumerate(cost.capacity_table(), start=1):
            row = [str(k), f"{cap:,.0f}"]
            if cost.has_latency:
                batch = cost.max_batch(k)
                step = cost.step_batch(k)
                row += [f"{cost.kv_tokens(k):,}", str(batch), f"{step:.0f}", format_time(cost.decode_s(k, max(step, 1))),
                        format_time(cost.prefill_s(k, cluster.workload.prompt_tokens))]
            table.add_row(*row)
        console.print(table)


def _link(link: Link | None) -> dict | None:
    return None if link is None else {"bandwidth_bytes_per_s": link.bandwidth_bytes_per_s, "latency_s": link.latency_s}


def show_json(cluster: Cluster) -> dict:
    """What `planner show --json` prints: the cluster, and for each GPU type what the cost model predicts
    for the cluster's engine, so a measurement can be held against it (times per layer, in ms)."""
    names = [h.name for h in cluster.hosts]
    links = [{"from": a, "to": b, **_link(cluster.link(a, b))}
             for i, a in enumerate(names) for b in names[i + 1:] if cluster.link(a, b)]
    gpu_types = {}
    for gpu_id, gpu in cluster.gpu_types.items():
        cost = cluster.cost(gpu_id)
        rows = []
        for k, capacity in enumerate(cost.capacity_table(), start=1):
            row = {"layers": k, "tokens_per_s": capacity}
            if cost.has_latency:
                row |= {"kv_tokens_per_layer": cost.kv_tokens(k), "in_flight": cost.max_batch(k),
                        "step_batch": cost.step_batch(k)}
            rows.append(row)
        entry = {"name": gpu.name, "memory_bytes": gpu.memory_bytes,
                 "speed_from": "static throughput table" if gpu.is_static else
                 ("measured latency" if gpu.is_measured else "roofline"),
                 "layer_bytes": cost.layer_bytes,
                 "max_layers": {"plain": cost.max_layers(), "with_embeddings": cost.max_layers(first=True),
                                "with_lm_head": cost.max_layers(last=True)},
                 "capacity": rows, "decode_ms": None, "prefill_ms": None, "outside_layers": None}
        if cost.has_latency:
            entry["outside_layers"] = {  # docs/cost-model.md#work-outside-the-layers
                "head_ms": {str(b): cost.head_s(b) * 1e3 for b in DECODE_BATCHES},
                "embed_ms": {str(t): cost.embed_s(t) * 1e3 for t in (1, *PREFILL_TOKENS)},
                "hop_ms": cost.hop_s * 1e3,
                "step_overhead_ms": {str(b): cost.step_overhead_s(b) * 1e3 for b in DECODE_BATCHES},
                "host_step_ms": {str(b): cost.host_step_s(b) * 1e3 for b in DECODE_BATCHES},
                "wake_ms": {f"{ms:g}": cost.wake_s(ms / 1e3) * 1e3 for ms in WAKE_WAITS_MS}}
            entry["decode_ms"] = {str(c): {str(b): cost.decode_s(1, b, c) * 1e3 for b in DECODE_BATCHES}
                                  for c in DECODE_CONTEXTS}
            entry["prefill_ms"] = {str(t): cost.prefill_s(1, t) * 1e3 for t in PREFILL_TOKENS}
        gpu_types[gpu_id] = entry
    return {
        "cluster": {"path": str(cluster.path), "model": cluster.model.id, "layers": cluster.model.layers,
                    "dtype": cluster.dtype, "engine": cluster.engine, "coordinator": cluster.coordinator_host,
                    "workload": {"prompt_tokens": cluster.workload.prompt_tokens,
                                 "output_tokens": cluster.workload.output_tokens},
                    "hosts": [{"name": h.name, "gpus": list(h.gpus), "gpu_link": _link(h.gpu_link),
                               "address": h.address, "region": h.region} for h in cluster.hosts],
                    "links": links, "default_link": _link(cluster.default_link)},
        "decode_ms_keys": "context tokens -> batch (sequences) -> ms per layer per step",
        "prefill_ms_keys": "prompt tokens -> ms per layer, a fresh prompt",
        "gpu_types": gpu_types,
    }
