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


TP_SIZES = (2, 4, 8)  # tensor-parallel group sizes the optimiser considers within a host
GROUP_SEPARATOR = "+"  # a tensor-parallel group's unit name: its members joined, e.g. 'head:0+head:1'


def group_name(members: tuple[str, ...] | list[str]) -> str:
    return GROUP_SEPARATOR.join(members)


def split_evenly(layers: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges of `parts` stages as equal as possible, the first ones one layer longer."""
    base, extra = divmod(layers, parts)
    ranges, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


@dataclass(frozen=True)
class Placement:
    """Half-open layer range [start, end) per node name; start == end leaves the node unused.

    `tp_groups` lists tensor-parallel groups: GPUs of one host that hold the same range, each with a
    1/len(group) share of every layer's weights, and act as ONE pipeline unit. Every member carries the
    group's range in `ranges`. The flow evaluator and the serving estimator see *units*: a group (named
    by its members joined with '+') or a GPU outside any group. With no groups, units are the GPUs.
    """

    ranges: dict[str, tuple[int, int]]
    tp_groups: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for group in self.tp_groups:
            if len(group) < 2:
                raise ValueError(f"tensor-parallel group {group} needs at least two GPUs")
            spans = {self.ranges.get(m) for m in group}
            if len(spans) != 1 or None in spans:
                raise ValueError(f"members of tensor-parallel group {group_name(group)} must hold one range")
            if seen & set(group):
                raise ValueError(f"a GPU of {group_name(group)} is in two tensor-parallel groups")
            seen |= set(group)

    def used(self) -> dict[str, tuple[int, int]]:
        """GPUs holding layers (group members listed one by one)."""
        return {n: r for n, r in self.ranges.items() if r[1] > r[0]}

    def units(self) -> dict[str, tuple[int, int]]:
        """Pipeline units holding layers: tensor-parallel groups by unit name, other GPUs by name."""
        group_of = {m: g for g in self.tp_groups for m in g}
        units: dict[str, tuple[int, int]] = {}
        for name, span in self.ranges.items():
            if span[1] <= span[0]:
                continue
            group = group_of.get(name)
            if group is None:
                units[name] = span
            elif name == group[0]:
                units[group_name(group)] = span
        return units

    def unit_of(self, node: str) -> str:
        """The unit a GPU belongs to: its group's name, or its own."""
        for group in self.tp_groups:
            if node in group:
                return group_name(group)
        return node

    def members(self, unit: str) -> tuple[str, ...]:
        """GPUs of a unit (one for a GPU outside any group)."""
        for group in self.tp_groups:
            if group_name(group) == unit:
                return group
        return (unit,)


class PlacementProblem:
    """A cluster seen as a placement problem: nodes, capacities for each range, link capacities."""

    def __init__(self, cluster: Cluster, rtt_s: float = 0.0, *, max_tpot_s: float | None = None,
                 max_ttft_s: float | None = None) -> None:
        self.cluster = cluster
        self.max_tpot_s, self.max_ttft_s = max_tpot_s, max_ttft_s  # the user's latency limits
        self.layers = cluster.model.layers
        self.nodes: list[Node] = cluster.nodes()
        self.by_name = {n.name: n for n in self.nodes}
        self.costs: dict[str, GpuCost] = {g: cluster.cost(g) for g in cluster.gpu_types}
        self.rtt_s = rtt_s  # the round trip node capacities are quoted for (0: compute bound only)
        self.static = not cluster.has_latency
        self._group_costs: dict[str, GpuCost] = {}

    def with_rtt(self, rtt_s: float) -> "PlacementProblem":
        return PlacementProblem(self.cluster, rtt_s, max_tpot_s=self.max_tpot_s, max_ttft_s=self.max_ttft_s)

    # ---- nodes --------------------------------------------------------------------------------

    def cost_of(self, name: str) -> GpuCost:
        """Costs of a unit: a GPU by node name, or a tensor-parallel group by its unit name
        ('head:0+head:1': GPUs of one host and one type; see GpuCost for the group's model)."""
        if name in self.by_name:
            return self.costs[self.by_name[name].gpu]
        if name not in self._group_costs:
            members = self.group_members(name)
            first = self.by_name[members[0]]
            host = self.cluster.host(first.host)
            self._group_costs[name] = self.cluster.cost(first.gpu, tp=len(members), tp_link=host.gpu_link)
        return self._group_costs[name]

    cost = cost_of  # every per-unit question takes a node name or a group's unit name

    def group_members(self, name: str) -> tuple[str, ...]:
        """The GPUs of a unit name; a group must be 2+ distinct GPUs of one host and one GPU type."""
        if name in self.by_name:
            return (name,)
        members = tuple(name.split(GROUP_SEPARATOR))
        unknown = [m for m in members if m not in self.by_name]
        if unknown:
            raise KeyError(f"no GPU named {unknown[0]!r} (unit {name!r})")
        nodes = [self.by_name[m] for m in members]
        if len(set(members)) != len(members) or len(members) < 2:
            raise ValueError(f"tensor-parallel group {name!r} needs two or more distinct GPUs")
        if len({n.host for n in nodes}) != 1:
            raise ValueError(f"tensor-parallel group {name!r} spans hosts; a group lives in one host")
        if len({n.gpu for n in nodes}) != 1:
            raise ValueError(f"tensor-parallel group {name!r} mixes GPU types")
        return members

    def host_of(self, name: str) -> str:
        """Host of a GPU or of a tensor-parallel group."""
        if name in self.by_name:
            return self.by_name[name].host
        return self.by_name[self.group_members(name)[0]].host

    def max_layers(self, node: str, start: int, end: int) -> int:
        return self.cost_of(node).max_layers(first=start == 0, last=end == self.layers)

    def fits(self, node: str, start: int, end: int) -> bool:
        """Whether a GPU (or a tensor-parallel group, by unit name) holds [start, end) with KV room."""
        return 0 <= start < end <= self.layers and end - start <= self.max_layers(node, start, end)

    def capacity(self, node: str, start: int, end: int, rtt_s: float | None = None) -> float:
        """Output tokens/s of `node` (a GPU or a group's unit name) holding [start, end)."""
        rtt = self.rtt_s if rtt_s is None else rtt_s
        return self.cost_of(node).capacity(end - start, rtt, first=start == 0, last=end == self.layers)

    def group_capacity(self, group: tuple[str, ...] | list[str], start: int, end: int,
                       rtt_s: float | None = None) -> float:
        """Output tokens/s of the tensor-parallel group `group` (node names) holding [start, end)."""
        members = tuple(group)
        name = members[0] if len(members) == 1 else group_name(members)
        return self.capacity(name, start, end, rtt_s)

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

    @cached_property
    def _upper_bound(self) -> float:
        # A placement serving T tokens/s pushes T through every layer, and a GPU holding k layers passes
        # at most min(capacity(k), T) of it. Summed over layers: L x T <= sum over GPUs of
        # k x min(capacity(k), T) for their k (0 for unused GPUs). The right side, each GPU at its best
        # k, grows slower than L x T, so the largest T that satisfies it is found by bisection. Clamping
        # at T matters when GPUs are short of memory: a fast GPU that fits 20 layers covers 20, however
        # fast it is (the unclamped sum credits it with the layers a slower GPU cannot hold).
        # A tensor-parallel unit of t GPUs counts per GPU: k x min(capacity, T) / t.
        layers = self.layers
        options = []  # (GPUs of a type, [(unit size, rate at k = 1, 2, ...)])
        for _, count, units in self.unit_kinds():
            tables = []
            for tp, names in units.items():
                for name in names:
                    cost = self.cost(name)
                    rates = [max(cost.capacity(k, 0.0, first=f, last=e) for f in (False, True)
                                 for e in (False, True) if k <= cost.max_layers(first=f, last=e))
                             for k in range(1, min(cost.max_layers(), layers) + 1)]
                    tables.append((tp, rates))
            options.append((count, tables))

        def covered(target: float) -> float:  # layers' worth of rate T the GPUs can cover
            return sum(count * max((k * min(rate, target) / tp for tp, rates in tables
                                    for k, rate in enumerate(rates, 1)), default=0.0)
                       for count, tables in options) / target

        # covered(T) <= (sum of each GPU's best k x rate) / T, so no T above that sum / layers is reached
        # (whatever the shape of the tables: published ones need not fall with k)
        low, high = 0.0, sum(count * max((k * rate / tp for tp, rates in tables for k, rate in enumerate(rates, 1)),
                                         default=0.0) for count, tables in options) / max(layers, 1)
        for _ in range(100):
            mid = (low + high) / 2
            if mid > 0 and covered(mid) >= layers * (1 - 1e-9):  # tolerance: k T / T may round down
                low = mid
            else:
                high = mid
        coordinator = sum(self.coordinator_capacity(h.name) for h in self.cluster.hosts if h.gpus)
        return min(high, coordinator) if layers else 0.0

    def upper_bound(self) -> float:
        """Throughput no placement beats (at capacities with no round-trip bound): the layers' worth of
        rate the GPUs can cover, and the coordinator's links."""
        return self._upper_bound

    def unit_kinds(self) -> list[tuple[str, int, dict[int, list[str]]]]:
        """Per GPU type: how many there are, and for each unit size (1, or a tensor-parallel group
        within a host) the unit names that stand for it, one per host that can form it."""
        kinds = []
        for gpu in dict.fromkeys(n.gpu for n in self.nodes):
            names = [n.name for n in self.nodes if n.gpu == gpu]
            units: dict[int, list[str]] = {1: [names[0]]}
            for host in dict.fromkeys(self.by_name[n].host for n in names):
                on_host = [n for n in names if self.by_name[n].host == host]
                for tp in TP_SIZES:
                    if tp <= len(on_host):
                        units.setdefault(tp, []).append(group_name(on_host[:tp]))
            kinds.append((gpu, len(names), units))
        return kinds

    def hosts_with_gpus(self) -> list[str]:
        return [h.name for h in self.cluster.hosts if h.gpus]

