"""Max-flow evaluator: scores any placement, independent of the solver that produced it.

Graph: coordinator -> GPUs holding layer 0 -> ... -> GPUs holding the last layer -> coordinator.
A token goes from a GPU ending at boundary b to a GPU starting at b (exact chaining). Traffic between
two hosts at one boundary shares that link's capacity (a hub node per host pair and boundary); each
GPU is split into in/out nodes carrying its capacity. A tensor-parallel group (Placement.tp_groups) is
one graph node named by its members joined with '+' ('head:0+head:1'); node_flow and edge_flows use
that name.

`max_flow` finds a max flow (solvers score placements by its value); `balanced_flow` finds the one of
the same value that spreads traffic over the links (the serving estimator and routing use its split).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import highspy
import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix, csc_matrix, vstack

from planner.cluster import Link
from planner.problem import Placement, PlacementProblem
from planner.quiet import solver_stdout_silenced

SOURCE, SINK = "coordinator:in", "coordinator:out"
COORDINATOR = "coordinator"

# balanced_flow's queueing cost u / (1 - u) of a link, linear between these utilisations
UTILISATION_BREAKS = tuple(i / 20 for i in range(20)) + (0.99, 1.0)


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


def _min_cut(graph: nx.DiGraph, flow: dict[str, dict[str, float]]) -> tuple[str, ...]:
    """What binds a max flow: the capacitated edges of the minimum cut nearest the sink (the same for
    every max flow): nodes that reach the sink through edges with room left or flow to push back."""
    residual = nx.DiGraph()
    residual.add_node(SINK)
    for u, v, data in graph.edges(data=True):
        sent = flow[u].get(v, 0.0)
        if "capacity" not in data or data["capacity"] - sent > 1e-6 * max(data["capacity"], 1.0):
            residual.add_edge(u, v)
        if sent > 1e-9:
            residual.add_edge(v, u)
    sink_side = nx.ancestors(residual, SINK) | {SINK}
    binding = []
    for u, v, data in graph.edges(data=True):
        if u not in sink_side and v in sink_side and "capacity" in data:
            if data["kind"] == "node":
                binding.append(data["node"])
            else:
                a, b, boundary = data["link"]
                binding.append(f"{a}->{b} link at layer {boundary}")
    return tuple(sorted(binding))


def max_flow(problem: PlacementProblem, placement: Placement,
             node_capacity: dict[str, float] | None = None) -> FlowResult:
    """Static max flow of a placement, with node-to-node flows and the binding cut."""
    used = placement.units()
    graph = build_graph(problem, placement, node_capacity)
    # Edmonds-Karp: preflow-push trips over float capacities (networkx index errors)
    residual = nx.algorithms.flow.edmonds_karp(graph, SOURCE, SINK)
    value = residual.graph["flow_value"]
    flow = {u: {v: max(data["flow"], 0.0) for v, data in residual[u].items() if graph.has_edge(u, v)}
            for u in graph}
    node_flow = {name: flow[f"{name}:in"].get(f"{name}:out", 0.0) for name in used}
    cut = _min_cut(graph, flow) if value > 0 else ()
    return FlowResult(value=value, node_flow=node_flow, edge_flows=_path_flows(flow, graph, used), cut=cut)


def _congestion(u: float) -> float:
    """Tokens queued or in service at an M/M/1 server at utilisation u, finite (steep) beyond 0.99."""
    return u / (1 - u) if u <= 0.99 else 99.0 + (u - 0.99) * 1e4


def hop_link(problem: PlacementProblem, a: str, b: str) -> Link | None:
    """The link between two hosts, or between the coordinator and a host ('coordinator' at either end)."""
    if COORDINATOR in (a, b):
        return problem.cluster.coordinator_link(b if a == COORDINATOR else a)
    return problem.link(a, b)


class BalancedFlow:
    """`balanced_flow` of one placement at changing GPU capacities: the LPs are built once, and only the
    GPUs' bounds change between calls (the serving estimator's fixed point calls it every step). Each LP
    stays loaded in its own HiGHS instance and is re-solved from the previous call's basis: on a
    128-GPU placement a warm re-solve takes a twentieth of a fresh one (0.02 s against 0.4 s). The max
    flow's value is unique whatever the basis; where several flows of that value cost the same, a warm
    start may return another of them than a fresh solve would (docs/planner.md#serving-estimator)."""

    def __init__(self, problem: PlacementProblem, placement: Placement) -> None:
        self.problem, self.placement = problem, placement
        self.graph = graph = build_graph(problem, placement)
        self.edges = edges = list(graph.edges(data=True))
        columns: list[tuple[int, float | None, float]] = []  # (edge, upper bound, cost per token/s): a GPU
        self.node_column: dict[str, int] = {}              # or free edge is one column, a link one per segment
        for i, (_, _, data) in enumerate(edges):
            capacity = data.get("capacity")
            if capacity is None or data["kind"] == "node":
                if capacity is not None:
                    self.node_column[data["node"]] = len(columns)
                columns.append((i, capacity, 0.0))
                continue
            delay = hop_link(problem, *data["link"][:2]).latency_s
            for low, high in zip(UTILISATION_BREAKS, UTILISATION_BREAKS[1:]):
                slope = (_congestion(high) - _congestion(low)) / (high - low)
                columns.append((i, capacity * (high - low), delay + (slope / capacity if capacity > 0 else 0.0)))
        inner = {node: row for row, node in enumerate(n for n in graph.nodes if n not in (SOURCE, SINK))}
        entries = []   # (row, column, coefficient): inflow - outflow = 0 at every inner node
        for column, (i, _, _) in enumerate(columns):
            u, v, _ = edges[i]
            entries += [(inner[node], column, sign) for node, sign in ((u, -1.0), (v, 1.0)) if node in inner]
        rows, cols, signs = zip(*entries) if entries else ((), (), ())
        conservation = coo_matrix((signs, (rows, cols)), shape=(len(inner), len(columns)))
        self.columns = columns
        self.edge_of_column = np.array([i for i, _, _ in columns], dtype=np.int64)
        self.upper = np.array([np.inf if upper is None else upper for _, upper, _ in columns])
        leaving = np.array([1.0 if edges[i][0] == SOURCE else 0.0 for i, _, _ in columns])
        zeros = np.zeros(len(inner))
        # the max flow's value; then the least queueing cost among flows of (nearly) that value, the
        # value held by one more row, `leaving` >= value, whose lower bound each call sets
        self._most = _loaded_lp(-leaving, conservation.tocsc(), zeros, zeros, self.upper)
        self._cheapest = _loaded_lp(np.array([c for _, _, c in columns]),
                                    vstack([conservation, coo_matrix(leaving[None, :])]).tocsc(),
                                    np.append(zeros, 0.0), np.append(zeros, np.inf), self.upper)
        self._value_row = len(inner)
        self._last: dict[str, dict[str, float]] | None = None  # the last call's flow by edge, if an LP's

    def __call__(self, node_capacity: dict[str, float] | None = None, *, cut: bool = True) -> FlowResult:
        """The balanced max flow with these GPU capacities (by unit name; the problem's when None).
        Without `cut` its binding cut is left empty (`with_cut` adds it to the last call's flow): a
        loop of calls needs only the last one's."""
        self._last = None
        graph = self.graph
        names = list(self.node_column)
        index = np.array([self.node_column[name] for name in names], dtype=np.int32)
        upper = np.array([node_capacity[name] for name in names], dtype=float) if node_capacity \
            else self.upper[index]
        for name, capacity in zip(names, upper):
            graph[f"{name}:in"][f"{name}:out"]["capacity"] = float(capacity)  # what _min_cut reads
        with solver_stdout_silenced():
            most = _solve(self._most, index, upper)
        if most is None:
            return max_flow(self.problem, self.placement, node_capacity)
        value = -most[1]
        if value <= 1e-9:
            return FlowResult(0.0, {name: 0.0 for name in self.placement.units()}, {}, ())
        self._cheapest.changeRowBounds(self._value_row, value * (1 - 1e-9), highspy.kHighsInf)
        with solver_stdout_silenced():
            cheapest = _solve(self._cheapest, index, upper)
        if cheapest is None:
            return max_flow(self.problem, self.placement, node_capacity)
        # columns of one edge (a link's segments) add up to its flow
        on_edge = np.bincount(self.edge_of_column, weights=cheapest[0], minlength=len(self.edges))
        flow: dict[str, dict[str, float]] = {node: {} for node in graph.nodes}
        for (u, v, _), amount in zip(self.edges, on_edge.tolist()):
            flow[u][v] = amount
        used = self.placement.units()
        node_flow = {name: flow[f"{name}:in"].get(f"{name}:out", 0.0) for name in used}
        self._last = flow
        return FlowResult(value, node_flow, _path_flows(flow, graph, used), _min_cut(graph, flow) if cut else ())

    def with_cut(self, last: FlowResult) -> FlowResult:
        """`last`, the flow this solver returned last, with its binding cut (a fallback's or an empty
        flow's is there already)."""
        return last if self._last is None else replace(last, cut=_min_cut(self.graph, self._last))


def _loaded_lp(cost: np.ndarray, matrix: csc_matrix, row_lower: np.ndarray, row_upper: np.ndarray,
               upper: np.ndarray) -> highspy.Highs:
    """A HiGHS instance holding min cost.x with row_lower <= matrix x <= row_upper, 0 <= x <= upper."""
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = matrix.shape[1], matrix.shape[0]
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, np.zeros(matrix.shape[1]), upper
    lp.row_lower_, lp.row_upper_ = row_lower, row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = matrix.indptr, matrix.indices, matrix.data
    with solver_stdout_silenced():  # HiGHS prints its banner when the first instance is made
        highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.passModel(lp)
    return highs


def _solve(highs: highspy.Highs, columns: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Re-solve with these columns' upper bounds, from the last basis: the solution and its objective,
    or None if HiGHS finds no optimum."""
    if len(columns):
        highs.changeColsBounds(len(columns), columns, np.zeros(len(columns)), upper)
    highs.run()
    if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return np.array(highs.getSolution().col_value), highs.getInfo().objective_function_value


def balanced_flow(problem: PlacementProblem, placement: Placement,
                  node_capacity: dict[str, float] | None = None) -> FlowResult:
    """A max flow that spreads its traffic over the links: the same value and cut as `max_flow`, but
    among all flows of that value the one that keeps the fewest tokens on the links, queued (u / (1 - u)
    at utilisation u, an M/M/1 queue) or in flight (latency x tokens/s).

    Augmenting paths may push everything through one of two parallel links and leave the other idle;
    requests routed by such a flow queue on the busy link while holding KV cache everywhere. GPUs carry
    no cost: a GPU's capacity is mostly its KV cache turned over once per round trip, and sending flow
    around a full one along a longer path holds more KV, not less (docs/planner.md#serving-estimator).
    Two LPs (HiGHS): the max flow value, then the least cost at that value, u / (1 - u) piecewise linear.
    Falls back to `max_flow` if either LP fails.
    """
    return BalancedFlow(problem, placement)(node_capacity)
