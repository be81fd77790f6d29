"""Helix (ASPLOS'25) files from a layout: `planner export LAYOUT --to helix OUT/` (seed 000).

Writes the four files a Helix user has, in Helix's own formats (docs/formats.md, "Helix files"):
  solution.ini             [Settings] offset=2, [Solution] compute_node_{i+2}=[layer ids]
  cluster.ini              the simulator's topology (NodeNames, SourceNode, SinkNode, ComputeNode-i, Link-a-b)
  simulator_cluster.ini    the simulator's machines and the directed links valid for the placement
  real_sys_config.txt      the real system's machines with IP addresses, in/out nodes and layer ranges
Compute node i is the i-th GPU that holds layers (cluster-file order: host, then device index). GPUs the
plan leaves idle are left out of every file (and named in a comment): Helix's verifier requires every
compute node to hold at least one layer, so a plan with idle GPUs written with them would be refused.
Helix's bandwidth units are byte-based: its `mbps` is 1e6 and divides sizes in bytes, so a link of
B bytes/s is written `B/1e6 * mbps` (10 Gbit/s = 1.25 GB/s -> `1250.0 * mbps`), never divided by 8 again.
"""

from __future__ import annotations

from pathlib import Path

from planner.cluster import Link
from planner.errors import InputError
from planner.layout import Layout
from planner.problem import PlacementProblem

OFFSET = 2
DISK_SPEED = "1000.0 * mbps"   # not in our cluster files; Helix's machine profiles use this figure
# Helix's simulator looks a GPU's profile up by its own machine-type name (simulator/model_manager/)
HELIX_MACHINE_TYPES = {"a100-40gb": "A100", "l4": "L4", "t4": "T4", "v100": "V100"}


def machine_type(gpu: str) -> str:
    """Helix's name for a GPU type where Helix has a profile of it; else our type id."""
    return HELIX_MACHINE_TYPES.get(gpu, gpu)


def _bw(link: Link) -> str:
    return f"{link.bandwidth_bytes_per_s / 1e6:.1f} * mbps"


def _lat(link: Link) -> str:
    return f"{link.latency_s * 1e3:g} * MilliSec"


def compute_nodes(layout: Layout) -> list:
    """The GPUs that hold layers, in cluster-file order: Helix's compute nodes 0, 1, ..."""
    return [n for n in layout.cluster.nodes() if layout.placement.ranges[n.name][1] > layout.placement.ranges[n.name][0]]


def _idle_note(layout: Layout) -> list[str]:
    idle = [n.name for n in layout.cluster.nodes() if n not in compute_nodes(layout)]
    return [f"# Idle in this plan, so not compute nodes here: {', '.join(idle)}."] if idle else []


def helix_links(layout: Layout) -> list[tuple[str | int, str | int]]:
    """Directed links valid for the placement, as Helix's planner writes them: source -> i iff i starts
    at layer 0, i -> sink iff i ends at the last layer, i -> j iff i ends where j starts (and the hosts are
    linked); then one pass dropping links into nodes with no way out and out of nodes with no way in."""
    cluster, layers = layout.cluster, layout.cluster.model.layers
    nodes = compute_nodes(layout)
    spans = {i: layout.placement.ranges[n.name] for i, n in enumerate(nodes)}
    used = list(spans)
    links: list[tuple[str | int, str | int]] = []
    for i in used:
        if spans[i][0] == 0 and cluster.coordinator_link(nodes[i].host):
            links.append(("source", i))
    for i in used:
        for j in used:
            if i != j and spans[i][1] == spans[j][0] and _link(layout, i, j):
                links.append((i, j))
    for i in used:
        if spans[i][1] == layers and cluster.coordinator_link(nodes[i].host):
            links.append((i, "sink"))
    has_out = {a for a, _ in links}
    links = [(a, b) for a, b in links if b == "sink" or b in has_out]
    has_in = {b for _, b in links}
    links = [(a, b) for a, b in links if a == "source" or a in has_in]
    return links


def _link(layout: Layout, i: int, j: int) -> Link | None:
    nodes = compute_nodes(layout)
    a, b = nodes[i].host, nodes[j].host
    return layout.cluster.host(a).gpu_link if a == b else layout.cluster.link(a, b)


def _link_of(layout: Layout, a: str | int, b: str | int) -> Link:
    nodes = compute_nodes(layout)
    if a == "source":
        return layout.cluster.coordinator_link(nodes[b].host)
    if b == "sink":
        return layout.cluster.coordinator_link(nodes[a].host)
    return _link(layout, a, b)


def _name(x: str | int) -> str:
    return x if isinstance(x, str) else f"compute_node_{x + OFFSET}"


def solution_text(layout: Layout) -> str:
    lines = [*_idle_note(layout), "[Settings]", f"offset={OFFSET}", "", "[Solution]"]
    for i, node in enumerate(compute_nodes(layout)):
        start, end = layout.placement.ranges[node.name]
        lines.append(f"compute_node_{i + OFFSET}=[{', '.join(str(x) for x in range(start, end))}]")
    return "\n".join(lines) + "\n"


def topology_text(layout: Layout) -> str:
    """Helix's cluster file: every linked pair once (a < b), source/sink links for hosts the coordinator reaches."""
    cluster = layout.cluster
    nodes = compute_nodes(layout)
    n = len(nodes)
    reach = [i for i, node in enumerate(nodes) if cluster.coordinator_link(node.host)]
    neighbours = {i: [j for j in range(n) if j != i and _link(layout, i, j)] for i in range(n)}
    lines = [f"# Written by `planner export --to helix` from {cluster.path.name} (model {cluster.model.id}).",
             "# Bandwidths in Helix's byte-based units (mbps = 1e6 bytes/s), latencies in MilliSec.",
             *_idle_note(layout), "",
             "[NodeNames]", f"total_compute_nodes={n}", "",
             "[SourceNode]", f"connected_nodes={reach}", "", "[SinkNode]", f"connected_nodes={reach}", ""]
    for i, node in enumerate(nodes):
        connected = (["source"] if i in reach else []) + neighbours[i] + (["sink"] if i in reach else [])
        lines += [f"[ComputeNode-{i}]", f"type={machine_type(node.gpu)}", f"connected_nodes={connected}", ""]
    for i in reach:
        link = cluster.coordinator_link(nodes[i].host)
        lines += [f"[Link-source-{i}]", f"bandwidth={_bw(link)}", f"latency={_lat(link)}", ""]
    for i in range(n):
        for j in neighbours[i]:
            if j > i:
                link = _link(layout, i, j)
                lines += [f"[Link-{i}-{j}]", f"bandwidth={_bw(link)}", f"latency={_lat(link)}", ""]
    for i in reach:
        link = cluster.coordinator_link(nodes[i].host)
        lines += [f"[Link-{i}-sink]", f"bandwidth={_bw(link)}", f"latency={_lat(link)}", ""]
    return "\n".join(lines)


def _nic(layout: Layout, host: str) -> str:
    """A host's NIC speed: the fastest network link it has (its GPU link on a one-host cluster)."""
    cluster = layout.cluster
    links = [cluster.link(host, h.name) for h in cluster.hosts if h.name != host]
    links = [l for l in links if l] or [cluster.host(host).gpu_link]
    return _bw(max(links, key=lambda l: l.bandwidth_bytes_per_s))


def simulator_text(layout: Layout) -> str:
    cluster = layout.cluster
    layers = cluster.model.layers
    problem = PlacementProblem(cluster)
    nodes = compute_nodes(layout)
    coord_links = [cluster.coordinator_link(h.name) for h in cluster.hosts if h.gpus]
    coord = _bw(max((l for l in coord_links if l), key=lambda l: l.bandwidth_bytes_per_s))
    links = helix_links(layout)
    lines = ["[Coordinator]", f"inbound_nic_speed={coord}", f"outbound_nic_speed={coord}", "",
             "[MachineTypes]", f"types={list(dict.fromkeys(machine_type(n.gpu) for n in nodes))}", "",
             "[ComputeNodes]", f"names={[_name(i) for i in range(len(nodes))]}", ""]
    for i, node in enumerate(nodes):
        start, end = layout.placement.ranges[node.name]
        k = end - start
        kv = problem.cost_of(node.name).kv_tokens(k, start == 0, end == layers) * k if k else 0
        memory = cluster.gpu_types[node.gpu].memory_bytes or 0
        nic = _nic(layout, node.host)
        lines += [f"[{_name(i)}]", f"vram_size={memory / 1e6:.1f} * MB", f"inbound_nic_speed={nic}",
                  f"outbound_nic_speed={nic}", f"disk_speed={DISK_SPEED}", f'machine_type="{machine_type(node.gpu)}"',
                  f"kv_cache_capacity={int(kv)}", "activation_backup_capacity=0", ""]
    names = [f"link_{_name(a)}_{_name(b)}" for a, b in links]
    lines += ["[Links]", f"names={names}", ""]
    for (a, b), name in zip(links, names):
        link = _link_of(layout, a, b)
        lines += [f"[{name}]", f"in={_name(a)}", f"out={_name(b)}", f"latency={_lat(link)}",
                  f"bandwidth={_bw(link)}", ""]
    return "\n".join(lines)


def real_sys_text(layout: Layout, layout_path: str = "") -> str:
    cluster = layout.cluster
    nodes = compute_nodes(layout)
    links = helix_links(layout)

    def ip(host: str) -> str:
        address = cluster.host(host).address
        if not address:
            raise InputError(f"host {host} has no address; Helix's real-system config needs each GPU's IP",
                             file=layout_path or None, fix=f"add `address = IP` to [host {host}] in {cluster.path.name}")
        return address

    def mid(x: str | int) -> int:
        return 0 if isinstance(x, str) else x + 1

    blocks = [["machine_id: 0", f"ip_address: {ip(cluster.coordinator_host)}",
               f"in_nodes: {' '.join(str(mid(a)) for a, b in links if b == 'sink')}",
               f"out_nodes: {' '.join(str(mid(b)) for a, b in links if a == 'source')}",
               "start_layer: -1", "end_layer: -1"]]
    for i, node in enumerate(nodes):
        start, end = layout.placement.ranges[node.name]
        blocks.append([f"machine_id: {i + 1}", f"ip_address: {ip(node.host)}",
                       f"in_nodes: {' '.join(str(mid(a)) for a, b in links if b == i)}",
                       f"out_nodes: {' '.join(str(mid(b)) for a, b in links if a == i)}",
                       f"start_layer: {start}", f"end_layer: {end}"])
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def export_helix(layout: Layout, out_dir: str | Path, *, layout_path: str = "", **_options) -> list[Path]:
    if layout.placement.tp_groups:
        raise InputError("the layout has tensor-parallel groups; Helix places layers on single GPUs only",
                         file=layout_path or None, field="[layout] tp_groups",
                         fix="plan without groups (e.g. --method chains or even)")
    if not helix_links(layout):
        raise InputError("no chain of GPUs joins the coordinator's input to its output", file=layout_path or None,
                         field="[nodes]", fix="re-plan the layout")
    real_sys = real_sys_text(layout, layout_path)  # refuses missing addresses before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"solution.ini": solution_text(layout), "cluster.ini": topology_text(layout),
             "simulator_cluster.ini": simulator_text(layout), "real_sys_config.txt": real_sys}
    written = []
    for name, text in files.items():
        (out_dir / name).write_text(text)
        written.append(out_dir / name)
    return written
