"""What vLLM can run, in one place: the optimiser (`--engine vllm`) builds only what this accepts, and
`planner export --to vllm` exports with it, so a plan solved for vLLM always exports.

vLLM runs a pipeline as one deployment: `--tensor-parallel-size T --pipeline-parallel-size P` with every
stage a unit of T GPUs of one host, stages in order (`VLLM_PP_LAYER_PARTITION` may be uneven). A layout is
runnable when its units split into such chains, each from layer 0 to the last layer, sharing no stage:
- one TP size on every stage of a chain, dividing the model's attention heads;
- a chain's stages on one host are consecutive: Ray hands a host's GPUs out together, so a chain that
  leaves a host and comes back would not get the plan's stage order;
- at most two hosts per chain: vLLM's Ray executor (0.33) ranks the driver's host first and the others by
  Ray node id, which `ray start` draws at random, so no launch order pins a third host's place;
- every host of a multi-host chain has an `address` (Ray joins hosts on it).
Several chains are several deployments behind a router. Why each rule: docs/exports.md#vllm-seed-004.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.cluster import Cluster
from planner.problem import Placement

MAX_HOSTS_PER_CHAIN = 2
SEARCH_STEPS = 100_000  # chain decompositions tried before giving up (a layout has few ambiguous boundaries)


@dataclass(frozen=True)
class Unit:
    """One pipeline stage: a GPU or a tensor-parallel group, with the layers it holds."""

    name: str                 # the layout's unit name (GPU or 'h:0+h:1')
    host: str
    indices: tuple[int, ...]  # CUDA device indices on the host
    start: int
    end: int

    @property
    def tp(self) -> int:
        return len(self.indices)


class NotRunnable(Exception):
    """vLLM cannot run a layout: what is wrong and how to fix it (exporters turn it into an InputError)."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem} ({fix})")


def units_of(cluster: Cluster, placement: Placement) -> list[Unit]:
    by_name = {n.name: n for n in cluster.nodes()}
    units = []
    for name, (start, end) in placement.units().items():
        members = placement.members(name)
        units.append(Unit(name, by_name[members[0]].host, tuple(by_name[m].index for m in members), start, end))
    return units


def chain_fault(cluster: Cluster, chain: list[Unit]) -> NotRunnable | None:
    """Why vLLM cannot run `chain` (units in stage order; a prefix of a chain is judged the same way,
    every rule holding for a chain holds for its prefixes), or None."""
    path = " -> ".join(u.name for u in chain)
    sizes = sorted({u.tp for u in chain})
    if len(sizes) > 1:
        return NotRunnable(f"the chain {path} mixes tensor-parallel sizes {'/'.join(map(str, sizes))}; vLLM runs "
                           "one TP size on every pipeline stage",
                           "re-plan with `--engine vllm` or `--method tp-pp`, or export with `--to runtime`")
    hosts = [u.host for u in chain]
    seen = list(dict.fromkeys(hosts))
    if [h for i, h in enumerate(hosts) if i == 0 or hosts[i - 1] != h] != seen:
        return NotRunnable(f"the chain {path} leaves a host and comes back; Ray numbers a host's GPUs together, "
                           "so vLLM's stage order would not match", "re-plan so each host's stages are consecutive "
                           "(`--engine vllm`)")
    if len(seen) > MAX_HOSTS_PER_CHAIN:
        return NotRunnable(f"the chain {path} spans {len(seen)} hosts; vLLM's Ray executor ranks the hosts after "
                           f"the driver's ({seen[0]}) by Ray node id, which is random per `ray start`, so its stage "
                           "order would not follow the plan", "export with `--to runtime`, or re-plan with "
                           "`--engine vllm` so that each chain spans at most two hosts")
    heads = cluster.model.attention_heads
    if heads % sizes[0]:
        return NotRunnable(f"vLLM needs the {heads} attention heads to divide by the tensor-parallel size "
                           f"{sizes[0]}", "re-plan with another TP size")
    if len(seen) > 1:
        missing = [h for h in seen if not cluster.host(h).address]
        if missing:
            return NotRunnable(f"host {missing[0]} has no address, which Ray needs to join hosts",
                               "add `address = IP` to its [host] section in the cluster file")
    return None


def vllm_chains(cluster: Cluster, placement: Placement,
                flows: dict[tuple[str, str], float] | None = None) -> list[list[Unit]]:
    """The placement's chains, each a list of units in stage order from layer 0 to the last layer, every
    one runnable by vLLM; raises NotRunnable (the first reason met) when no split into such chains exists.
    Where several stages start at a layer, the same host comes first, then the most planned flow."""
    layers = cluster.model.layers
    flows = flows or {}
    units = units_of(cluster, placement)
    if not units:
        raise NotRunnable("no GPU holds layers", "re-plan the layout")
    starting: dict[int, list[Unit]] = {}
    ending: dict[int, list[Unit]] = {}
    for u in units:
        starting.setdefault(u.start, []).append(u)
        ending.setdefault(u.end, []).append(u)
    for b in sorted(set(starting) | set(ending)):
        if b in (0, layers):
            continue
        ins, outs = ending.get(b, []), starting.get(b, [])
        if not ins or not outs:
            u = (outs or ins)[0]
            raise NotRunnable(f"{u.name} holds [{u.start}, {u.end}) but no GPU {'ends' if outs else 'starts'} at "
                              f"layer {b}: vLLM pipelines need each stage to start where the previous one ends",
                              "re-plan with `--engine vllm` or `--method tp-pp`")
        if len(ins) != len(outs):
            raise NotRunnable(f"at layer {b}, {len(ins)} stage(s) ({', '.join(u.name for u in ins)}) feed "
                              f"{len(outs)} ({', '.join(u.name for u in outs)}): stages shared between chains, "
                              "which vLLM pipelines cannot do", "re-plan with `--engine vllm` or `--method tp-pp`")
    firsts = starting.get(0, [])
    if len(firsts) != len(ending.get(layers, [])):
        raise NotRunnable(f"{len(firsts)} stage(s) hold layer 0 but {len(ending.get(layers, []))} hold the last "
                          "layer: chains cannot be separated", "re-plan with `--engine vllm` or `--method tp-pp`")
    first_fault: list[NotRunnable] = []
    steps = [0]

    def extend(chain: list[Unit], taken: frozenset[str], done: list[list[Unit]]) -> list[list[Unit]] | None:
        steps[0] += 1
        fault = chain_fault(cluster, chain)
        if fault is not None:
            first_fault.append(fault)
            return None
        current = chain[-1]
        if current.end == layers:
            return complete(taken, done + [chain])
        options = [u for u in starting[current.end] if u.name not in taken]
        options.sort(key=lambda u: (u.host != current.host, u.host not in {c.host for c in chain},
                                    -flows.get((current.name, u.name), 0.0)))
        for u in options:
            if steps[0] > SEARCH_STEPS:
                return None
            found = extend(chain + [u], taken | {u.name}, done)
            if found is not None:
                return found
        return None

    def complete(taken: frozenset[str], done: list[list[Unit]]) -> list[list[Unit]] | None:
        if len(done) == len(firsts):
            return done
        first = firsts[len(done)]
        return extend([first], taken | {first.name}, done)

    chains = complete(frozenset(), [])
    if chains is None:
        raise first_fault[0] if first_fault else NotRunnable(
            "too many ways to split the layout into chains to check", "re-plan with `--engine vllm`")
    return chains
