"""planner show CLUSTER.ini"""

from __future__ import annotations

import click
from planner.cli.console import make_console
from rich.table import Table

from planner.cluster import load_cluster
from planner.units import format_bandwidth, format_bytes, format_time


@click.command()
@click.argument("cluster_file", type=click.Path())
def show(cluster_file: str) -> None:
    """Print a cluster: hosts, GPUs, links, and each GPU type's memory, layer limit and capacity."""
    cluster = load_cluster(cluster_file)
    console = make_console()
    model = cluster.model
    console.print(f"[bold]{cluster.path}[/]: {model.id} ({model.layers} layers, hidden {model.hidden_size}) "
                  f"in {cluster.dtype}, coordinator on {cluster.coordinator_host}; workload "
                  f"{cluster.workload.prompt_tokens} prompt + {cluster.workload.output_tokens} output tokens")

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
