"""The placement problem every solver shares: GPUs, their capacities per layer range, and links.

Built once from a cluster; solvers and evaluators see only this, never INI files.
Capacities are in output tokens/s (see docs/planner.md for the units of static tables).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from planner.cluster import Cluster, Link, Node
from planner.costmodel import GpuCost

TOKEN_ID_BYTES = 4  # the coordinator sends token ids in and receives sampled ids back


@dataclass(frozen=True)
class Placement:
    """Half-open layer range [start, end) per node name; start == end leaves the node unused."""

    ranges: dict[str, tuple[int, int]]

    def used(self) -> dict[str, tuple[int, int]]:
        return {n: r for n, r in self.ranges.items() if r[1] > r[0]}


class PlacementProblem:
    """A cluster seen as a placement problem: nodes, capacities for each range, link capacities."""

    def __init__(self, cluster: Cluster, rtt_s: float = 0.0) -> None:
        self.cluster = cluster
        self.layers = cluster.model.layers
        self.nodes: list[Node] = cluster.nodes()
        self.by_name = {n.name: n for n in self.nodes}
        self.costs: dict[str, GpuCost] = {g: cluster.cost(g) for g in cluster.gpu_types}
        self.rtt_s = rtt_s  # the round trip node capacities are quoted for (0: compute bound only)
        self.static = not cluster.has_latency

    def with_rtt(self, rtt_s: float) -> "PlacementProblem":
        return PlacementProblem(self.cluster, rtt_s)

    # ---- nodes --------------------------------------------------------------------------------

    def cost(self, node: str) -> GpuCost:
        return self.costs[self.by_name[node].gpu]

    def max_layers(self, node: str, start: int, end: int) -> int:
        return self.cost(node).max_layers(first=start == 0, last=end == self.layers)

    def fits(self, node: str, start: int, end: int) -> bool:
        return 0 <= start < end <= self.layers and end - start <= self.max_layers(node, start, end)

    def capacity(self, node: str, start: int, end: int, rtt_s: float | None = None) -> float:
        """Output tokens/s of `node` holding [start, end)."""
        rtt = self.rtt_s if rtt_s is None else rtt_s
        return self.cost(node).capacity(end - start, rtt, first=start == 0, last=end == self.layers)

    # ---- links --------------------------------------------------------------------------------

    @cached_property
    def activation_bytes_per_token(self) -> float:
        """Bytes a link carries per output token: one hidden vector per decode step, plus the prompt's
        hidden vectors amortised over the output (static tables count opaque tokens: one vector each)."""
        vector = self.cluster.activation_bytes_per_token()
        if self.static:
            return vector
        workload = self.cluster.workload
        return vector * (1 + workload.prompt_tokens / workload.output_tokens)

    @cached_property
    def token_id_bytes_per_token(self) -> float:
        if self.static:
            return TOKEN_ID_BYTES
        workload = self.cluster.workload
        return TOKEN_ID_BYTES * (1 + workload.prompt_tokens / workload.output_tokens)

    def link(self, host_a: str, host_b: str) -> Link | None:
        return self.cluster.link(host_a, host_b)

    def link_capacity(self, host_a: str, host_b: str) -> float:
        """Tokens/s a host-to-host link carries (0 without a link)."""
        link = self.cluster.link(host_a, host_b)
        return link.bandwidth_bytes_per_s / self.activation_bytes_per_token if link else 0.0

    def coordinator_capacity(self, host: str) -> float:
        link = self.cluster.coordinator_link(host)
        return link.bandwidth_bytes_per_s / self.token_id_bytes_per_token if link else 0.0

    def upper_bound(self) -> float:
        """Throughput no placement beats: every GPU's best per-layer rate pooled over all layers,
        and the coordinator's links."""
        per_layer = sum(max((self.cost(n.name).capacity(k, 0.0) * k
                             for k in range(1, self.cost(n.name).max_layers() + 1)), default=0.0)
                        for n in self.nodes)
        coordinator = sum(self.coordinator_capacity(h.name) for h in self.cluster.hosts if h.gpus)
        return min(per_layer / self.layers, coordinator) if self.layers else 0.0

    def hosts_with_gpus(self) -> list[str]:
        return [h.name for h in self.cluster.hosts if h.gpus]

