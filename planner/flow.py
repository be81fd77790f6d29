"""Max-flow evaluator: scores any placement, independent of the solver that produced it.

Graph: coordinator -> GPUs holding layer 0 -> ... -> GPUs holding the last layer -> coordinator.
A token goes from a GPU ending at boundary b to a GPU starting at b (exact chaining). Traffic between
two hosts at one boundary shares that link's capacity (a hub node per host pair and boundary); each
GPU is split into in/out nodes carrying its capacity. A tensor-parallel group (Placement.tp_groups) is
one graph node named by its members joined with '+' ('head:0+head:1'); node_flow and edge_flows use
that name.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from planner.problem import Placement, PlacementProblem

SOURCE, SINK = "coordinator:in", "coordinator:out"
COORDINATOR = "coordinator"


@dataclass(frozen=True)
class FlowResult:
    value: float                                   # tokens/s from coordinator back to coordinator
    node_flow: dict[str, float]                    # tokens/s through each used unit (GPU or TP group)
    edge_flows: dict[tuple[str, str], float]       # (from, to) -> tokens/s; 'coordinator' at both ends
    cut: tuple[str, ...]                           # what binds: nodes and links on a minimum cut


def _hub(src_host: str, dst_host: str, boundary: int) -> str:
    return f"link:{src_host}->{dst_host}@{boundary}"


def build_graph(problem: PlacementProblem, placement: Placement,
                node_capacity: dict[str, float] | None = None) -> nx.DiGraph:
    """The flow network of a placement; `node_capacity` (by unit name) overrides the problem's capacities."""
    layers = problem.layers
    used = placement.units()
    graph = nx.DiGraph()
    graph.add_node(SOURCE)
    graph.add_node(SINK)
    starts: dict[int, list[str]] = {}
    ends: dict[int, list[str]] = {}
    for name, (start, end) in used.items():
        cap = node_capacity[name] if node_capacity else problem.capacity(name, start, end)
        graph.add_edge(f"{name}:in", f"{name}:out", capacity=cap, kind="node", node=name)
        starts.setdefault(start, []).append(name)
        ends.setdefault(end, []).append(name)
    for name in starts.get(0, []):
        host = problem.host_of(name)
        hub = _hub(COORDINATOR, host, 0)
        graph.add_edge(SOURCE, hub, capacity=problem.coordinator_capacity(host), kind="link", link=(COORDINATOR, host, 0))
        graph.add_edge(hub, f"{name}:in")
    for name in ends.get(layers, []):
        host = problem.host_of(name)
        hub = _hub(host, COORDINATOR, layers)
        graph.add_edge(hub, SINK, capacity=problem.coordinator_capacity(host), kind="link", link=(host, COORDINATOR, layers))
        graph.add_edge(f"{name}:out", hub)
    for boundary in sorted(set(starts) & set(ends)):
        if boundary in (0, layers):
            continue
        for a in ends[boundary]:
            for c in starts[boundary]:
                if a == c:
                    continue
                ha, hc = problem.host_of(a), problem.host_of(c)
                cap = problem.link_capacity(ha, hc)
                if cap <= 0:
                    continue
                hub_out, hub_in = _hub(ha, hc, boundary) + ":tx", _hub(ha, hc, boundary) + ":rx"
                graph.add_edge(f"{a}:out", hub_out)
                graph.add_edge(hub_out, hub_in, capacity=cap, kind="link", link=(ha, hc, boundary))
                graph.add_edge(hub_in, f"{c}:in")
    return graph


def _path_flows(flow: dict, graph: nx.DiGraph, used: dict[str, tuple[int, int]]) -> dict[tuple[str, str], float]:
    """Node-to-node flows: split each hub's flow among its senders and receivers by proportion."""
    edges: dict[tuple[str, str], float] = {}

    def add(a: str, b: str, value: float) -> None:
        if value > 1e-9:
            edges[(a, b)] = edges.get((a, b), 0.0) + value

    for u, v, data in graph.edges(data=True):
        if data.get("kind") != "link":
            continue
        total = flow[u][v]
        if total <= 1e-12:
            continue
        senders = {p.removesuffix(":out"): flow[p][u] for p in graph.predecessors(u) if flow[p][u] > 0} \
            if u != SOURCE else {COORDINATOR: total}
        receivers = {s.removesuffix(":in"): flow[v][s] for s in graph.successors(v) if flow[v][s] > 0} \
            if v != SINK else {COORDINATOR: total}
        # a hub is shared: pair senders with receivers in order, as a transport would (exact totals)
        send, recv = sorted(senders.items()), sorted(receivers.items())
        i = j = 0
        s_left = send[0][1] if send else 0.0
        r_left = recv[0][1] if recv else 0.0
        while i < len(send) and j < len(recv):
            amount = min(s_left, r_left)
            add(send[i][0], recv[j][0], amount)
            s_left -= amount
            r_left -= amount
            if s_left <= 1e-12:
                i += 1
                s_left = send[i][1] if i < len(send) else 0.0
            if r_left <= 1e-12:
                j += 1
                r_left = recv[j][1] if j < len(recv) else 0.0
    return edges


def max_flow(problem: PlacementProblem, placement: Placement,
             node_capacity: dict[str, float] | None = None) -> FlowResult:
    """Static max flow of a placement, with node-to-node flows and the binding cut."""
    used = placement.units()
    graph = build_graph(problem, placement, node_capacity)
    # Edmonds-Karp: preflow-push trips over float capacities (networkx index errors)
    value, flow = nx.maximum_flow(graph, SOURCE, SINK, flow_func=nx.algorithms.flow.edmonds_karp)
    node_flow = {name: flow[f"{name}:in"].get(f"{name}:out", 0.0) for name in used}
    cut: tuple[str, ...] = ()
    if value > 0:
        _, (reach, _rest) = nx.minimum_cut(graph, SOURCE, SINK, flow_func=nx.algorithms.flow.edmonds_karp)
        binding = []
        for u, v, data in graph.edges(data=True):
            if u in reach and v not in reach and "capacity" in data:
                if data["kind"] == "node":
                    binding.append(data["node"])
                else:
                    a, b, boundary = data["link"]
                    binding.append(f"{a}->{b} link at layer {boundary}")
        cut = tuple(sorted(binding))
    return FlowResult(value=value, node_flow=node_flow, edge_flows=_path_flows(flow, graph, used), cut=cut)
