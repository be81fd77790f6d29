"""Plans vLLM can run (`--engine vllm`): a search over chain structures, not a filter on other plans.

What vLLM runs (planner/vllm_runnable.py, the exporter's rules): independent chains, each of stages of
one tensor-parallel size T on at most two hosts, a host's stages consecutive. So a chain is a *template*:
T, the host (or the ordered host pair) it runs on, and how many stages of each GPU type each host gives
it, in stage order. For one template the best layer split is exact: at a target rate R every stage takes
as many layers as it serves at R (its embedding or LM-head role counted), R is feasible when they cover the
model, and the best R is one of the finitely many capacities, found by bisection; the hops (coordinator,
the host pair's link, each host's GPU link) cap it. Which templates to run side by side is a small integer
programme: copies of templates, each using its GPUs of each host and type, at most the GPUs there are, most
total rate (HiGHS through pulp). Chains are independent deployments behind a router, so rates add up.

With latency models a rate depends on the round trip, as in the default method: rounds quote capacities
at the best candidate's TPOT (and 1.5x, 2.25x of it), re-pack, and the serving estimator picks the plan.
Chains are kept apart (no two of different make-up end a stage at one layer), so that the estimate does
not credit tokens crossing between deployments. docs/planner.md#plans-an-engine-can-run.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import pulp

from planner.errors import SolveError
from planner.problem import Placement, PlacementProblem, group_name
from planner.quiet import solver_stdout_silenced
from planner.serving import estimate
from planner.solvers import baselines
from planner.solvers.base import Progress, SolveResult
from planner.vllm_runnable import MAX_HOSTS_PER_CHAIN, NotRunnable, Unit, chain_fault, vllm_chains

TP_DEGREES = (1, 2, 4, 8)
ROUNDS = 4
STRETCH = (1.5, 2.25)  # each round also packs at these multiples of its round trip
RESERVED_SCORINGS = 3  # kept for the caller's re-scoring (serving estimate, round-trip max flow), as the default method
APART_SHARES = (0.97, 0.94, 0.9, 0.85, 0.8, 0.7)  # rates a chain may drop to, to keep its stage ends apart
UNIFORM_SETS = 4  # shapes, by rate per GPU, also scored as uniform deployments (one shape, many copies)
THREADS = 2  # every HiGHS run in one process uses one thread count (planner/solvers/milp.py)


@dataclass(frozen=True)
class Template:
    """One chain shape: TP size and its stages in order, each (host, GPU type)."""

    tp: int
    stages: tuple[tuple[str, str], ...]

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h for h, _ in self.stages))

    def usage(self) -> dict[tuple[str, str], int]:
        """GPUs used per (host, type)."""
        used: dict[tuple[str, str], int] = {}
        for stage in self.stages:
            used[stage] = used.get(stage, 0) + self.tp
        return used

    def describe(self) -> str:
        per = "" if self.tp == 1 else f" of {self.tp}"
        hosts = " + ".join(f"{h} ({', '.join(f'{n} stage(s){per} {g}' for g, n in _counts(self, h).items())})"
                           for h in self.hosts)
        return f"TP {self.tp} x PP {len(self.stages)} on {hosts}"


def _counts(template: Template, host: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for h, gpu in template.stages:
        if h == host:
            counts[gpu] = counts.get(gpu, 0) + 1
    return counts


@dataclass(frozen=True)
class Chain:
    template: Template
    rate: float                   # tokens/s at the problem's quoted round trip
    spans: tuple[int, ...]        # layers per stage, in order


class _Rates:
    """Chain rates of templates on one problem (capacities quoted at its round trip), cached by the
    stage representatives and hop capacities that decide them."""

    def __init__(self, problem: PlacementProblem) -> None:
        self.problem = problem
        self.layers = problem.layers
        self._tables: dict[tuple[str, bool, bool], list[float]] = {}
        self._chains: dict[tuple, tuple[float, tuple[int, ...]]] = {}

    def representative(self, host: str, gpu: str, tp: int) -> str:
        """A unit of `tp` GPUs of type `gpu` on `host` (all such units cost the same)."""
        names = [n.name for n in self.problem.nodes if n.host == host and n.gpu == gpu][:tp]
        return names[0] if tp == 1 else group_name(names)

    def table(self, unit: str, first: bool, last: bool) -> list[float]:
        """Prefix minimum of the unit's capacity at 1, 2, ... layers in this role: entry k-1 is the most
        rate at which every span of 1..k layers serves (a span cut short must still serve)."""
        key = (unit, first, last)
        if key not in self._tables:
            cost = self.problem.cost_of(unit)
            prefix, low = [], math.inf
            for k in range(1, min(cost.max_layers(first=first, last=last), self.layers) + 1):
                low = min(low, cost.capacity(k, self.problem.rtt_s, first=first, last=last))
                prefix.append(low)
            self._tables[key] = prefix
        return self._tables[key]

    def hop_cap(self, template: Template) -> float:
        p = self.problem
        hosts = [h for h, _ in template.stages]
        caps = [p.coordinator_capacity(hosts[0]), p.coordinator_capacity(hosts[-1])]
        caps += [p.link_capacity(a, b) for a, b in zip(hosts, hosts[1:])]
        return min(caps)

    def chain(self, template: Template) -> Chain:
        units = [self.representative(h, g, template.tp) for h, g in template.stages]
        n, layers = len(units), self.layers
        if n > layers:
            return Chain(template, 0.0, ())
        roles = [(i == 0, i == n - 1) for i in range(n)]
        hop = self.hop_cap(template)
        key = (tuple(units), hop)
        if key not in self._chains:
            self._chains[key] = self._best_split([self.table(u, f, l) for u, (f, l) in zip(units, roles)], hop)
        rate, spans = self._chains[key]
        return Chain(template, rate, spans)

    def most_layers(self, template: Template, rate: float) -> list[int]:
        """Layers each stage of the template serves at `rate`, in its role."""
        units = [self.representative(h, g, template.tp) for h, g in template.stages]
        n = len(units)
        return [_most_layers(self.table(u, i == 0, i == n - 1), rate) for i, u in enumerate(units)]

    def _best_split(self, tables: list[list[float]], hop: float) -> tuple[float, tuple[int, ...]]:
        layers = self.layers
        if len(tables) == 1:  # the whole model on one unit
            table = tables[0]
            return (min(table[layers - 1], hop), (layers,)) if len(table) >= layers else (0.0, ())

        def spans_at(rate: float) -> tuple[int, ...] | None:
            most = [_most_layers(t, rate) for t in tables]
            if min(most) < 1 or sum(most) < layers:
                return None
            spans, covered = [], 0
            for i, k in enumerate(most):  # earlier stages take what they serve, leaving one layer per later one
                take = layers - covered if i == len(most) - 1 else min(k, layers - covered - (len(most) - 1 - i))
                spans.append(take)
                covered += take
            return tuple(spans)

        values = sorted({v for t in tables for v in t if 0 < v < hop} | ({hop} if 0 < hop < math.inf else set()))
        low, high, best = 0, len(values) - 1, (0.0, ())
        while low <= high:
            mid = (low + high) // 2
            spans = spans_at(values[mid])
            if spans is None:
                high = mid - 1
            else:
                best, low = (values[mid], spans), mid + 1
        return best


def _most_layers(prefix_min: list[float], rate: float) -> int:
    """Largest k with prefix_min[k - 1] >= rate (prefix_min does not rise along k)."""
    low, high = 0, len(prefix_min)
    while low < high:
        mid = (low + high) // 2
        if prefix_min[mid] >= rate:
            low = mid + 1
        else:
            high = mid
    return low


def _runnable_hosts(problem: PlacementProblem, hosts: tuple[str, ...], tp: int) -> bool:
    """Whether the exporter's rules allow a chain over these hosts at this TP size (planner/vllm_runnable)."""
    probe = [Unit(f"{h}-probe", h, tuple(range(tp)), 0, 0) for h in hosts]
    return chain_fault(problem.cluster, probe) is None


def templates(problem: PlacementProblem) -> list[Template]:
    """Every chain shape vLLM can run on the cluster: TP size, one host or an ordered host pair, how many
    stages each host gives of each GPU type (a host's types in every order)."""
    heads = problem.cluster.model.attention_heads
    hosts = problem.hosts_with_gpus()
    stock = {h: {} for h in hosts}
    for node in problem.nodes:
        stock[node.host][node.gpu] = stock[node.host].get(node.gpu, 0) + 1
    found = []
    for tp in TP_DEGREES:
        if heads % tp:
            continue
        options = {h: _host_options(stock[h], tp) for h in hosts}
        for count in range(1, MAX_HOSTS_PER_CHAIN + 1):
            for order in itertools.permutations(hosts, count):
                if any(not options[h] for h in order) or not _runnable_hosts(problem, order, tp):
                    continue
                if count > 1 and any(problem.link_capacity(a, b) <= 0 for a, b in zip(order, order[1:])):
                    continue
                for parts in itertools.product(*(options[h] for h in order)):
                    stages = tuple((h, gpu) for h, part in zip(order, parts) for gpu in part)
                    found.append(Template(tp, stages))
    return found


def _host_options(stock: dict[str, int], tp: int) -> list[tuple[str, ...]]:
    """A host's stage sequences at TP size `tp`: every count of units per GPU type (at least one unit),
    types in every order (units of one type are interchangeable)."""
    ranges = [range(n // tp + 1) for n in stock.values()]
    options = []
    for counts in itertools.product(*ranges):
        chosen = [(gpu, c) for gpu, c in zip(stock, counts) if c]
        if not chosen:
            continue
        for order in itertools.permutations(chosen):
            options.append(tuple(gpu for gpu, c in order for _ in range(c)))
    return options


def _stock(problem: PlacementProblem) -> dict[tuple[str, str], int]:
    """GPUs per (host, type)."""
    stock: dict[tuple[str, str], int] = {}
    for node in problem.nodes:
        stock[node.host, node.gpu] = stock.get((node.host, node.gpu), 0) + 1
    return stock


def pack(problem: PlacementProblem, chains: list[Chain], deadline: float) -> tuple[list[Chain], str]:
    """Copies of chains that use no more GPUs of any host and type than there are, with the most total
    rate; (chosen chains, HiGHS status: optimal | time_limit)."""
    useful = [c for c in chains if c.rate > 0]
    if not useful:
        return [], "optimal"
    stock = _stock(problem)
    lp = pulp.LpProblem("vllm_chains", pulp.LpMaximize)
    copies = [lp.add_variable(f"x{i}", 0, cat="Integer") for i in range(len(useful))]
    lp += pulp.lpSum(c.rate * x for c, x in zip(useful, copies))
    users: dict[tuple[str, str], list] = {}
    for chain, x in zip(useful, copies):
        for key, n in chain.template.usage().items():
            users.setdefault(key, []).append(n * x)
    for key, terms in users.items():
        lp += pulp.lpSum(terms) <= stock[key]
    limit = max(deadline - time.perf_counter(), 0.5)
    with solver_stdout_silenced():
        lp.solve(pulp.HiGHS(msg=False, timeLimit=limit, threads=THREADS))
    chosen = []
    for chain, x in zip(useful, copies):
        chosen += [chain] * int(round(x.value() or 0))
    if not chosen:  # HiGHS stopped before a solution: the best single chain
        chosen = [max(useful, key=lambda c: c.rate)]
    status = "optimal" if pulp.LpStatus[lp.status] == "Optimal" else "time_limit"
    return chosen, status


def placement_of(problem: PlacementProblem, chains: list[Chain]) -> Placement:
    """Concrete GPUs for the chains: each stage takes the host's next free GPUs of its type (index order)."""
    free = {}
    for node in problem.nodes:
        free.setdefault((node.host, node.gpu), []).append(node.name)
    ranges = {n.name: (0, 0) for n in problem.nodes}
    groups = []
    for chain in chains:
        start = 0
        for (host, gpu), span in zip(chain.template.stages, chain.spans):
            members = free[host, gpu][:chain.template.tp]
            free[host, gpu] = free[host, gpu][chain.template.tp:]
            for m in members:
                ranges[m] = (start, start + span)
            if len(members) > 1:
                groups.append(tuple(members))
            start += span
    return Placement(ranges, tuple(groups))


def _candidates(problem: PlacementProblem, shapes: list[Template], deadline: float) -> tuple[list[list[Chain]], str]:
    """Chain sets worth scoring at this problem's quoted round trip: the best packing, the best packing of
    each TP size alone, and the best single chain."""
    rates = _Rates(problem)
    chains = [rates.chain(t) for t in shapes]
    stock = _stock(problem)
    best, status = pack(problem, chains, deadline)
    sets = [best] if best else []
    for tp in sorted({c.template.tp for c in chains if c.rate > 0}):
        alone, _ = pack(problem, [c for c in chains if c.template.tp == tp], deadline)
        if alone:
            sets.append(alone)
    single = max((c for c in chains if c.rate > 0), key=lambda c: c.rate, default=None)
    if single is not None:
        sets.append([single])
    # one shape copied as often as the GPUs allow, for the shapes with the most rate per GPU: uniform
    # deployments that the packing, among its many optima, may not pick (it cannot see TPOT)
    per_gpu = sorted((c for c in chains if c.rate > 0), key=lambda c: -c.rate / sum(c.template.usage().values()))
    for chain in per_gpu[:UNIFORM_SETS]:
        copies = min(stock[key] // n for key, n in chain.template.usage().items())
        sets.append([chain] * copies)
    return [_apart(rates, chains) for chains in sets], status


def _apart(rates: _Rates, chains: list[Chain]) -> list[Chain]:
    """The same chains, each split (at its own rate) so that no two chains of different shapes end a stage at
    the same layer, and every stage as far below its most layers as the others (more KV room): where two
    chains meet at a layer, the flow evaluator would pass tokens from one to the other, which two vLLM
    deployments cannot do. Copies of one shape share their split (they are interchangeable). A chain that
    cannot keep apart at its rate may drop to APART_SHARES of it; one that cannot at all keeps its split
    (the set is then not scored: chains_meet)."""
    layers = rates.layers
    taken: dict[tuple, set[int]] = {}
    placed: dict[tuple, tuple[int, ...]] = {}
    spread = []
    for chain in chains:
        kind = (chain.template.tp, tuple(gpu for _, gpu in chain.template.stages), chain.rate)
        if kind not in placed:
            forbidden = set().union(*(b for k, b in taken.items() if k != kind)) if taken else set()
            spans = None
            # a little below its rate a chain's stages take more layers, so there is room to keep apart
            for share in (1.0, *APART_SHARES) if len(chain.spans) > 1 else ():
                spans = _split_avoiding(rates.most_layers(chain.template, chain.rate * share), layers, forbidden)
                if spans:
                    break
            placed[kind] = spans or chain.spans
            taken[kind] = set(itertools.accumulate(placed[kind][:-1]))
        spread.append(Chain(chain.template, chain.rate, placed[kind]))
    return spread


def chains_meet(problem: PlacementProblem, chains: list[list[Unit]]) -> bool:
    """Whether two chains of different make-up end a stage at the same layer. The flow evaluator and the
    serving estimate would pass tokens from one to the other there, which two vLLM deployments cannot
    do, so such a plan's figures would overstate it (on a generated 12-GPU cluster, 698 tokens/s predicted
    for chains that serve 494 apart). Copies of one make-up (same GPU types, TP size and spans) may meet:
    they are interchangeable, and crossing between them serves no more."""
    kinds = [tuple((problem.by_name[problem.group_members(u.name)[0]].gpu, u.tp, u.start, u.end) for u in chain)
             for chain in chains]
    seen: dict[int, tuple] = {}
    for kind, chain in zip(kinds, chains):
        for u in chain[:-1]:
            if seen.setdefault(u.end, kind) != kind:
                return True
    return False


def _split_avoiding(most: list[int], layers: int, forbidden: set[int]) -> tuple[int, ...] | None:
    """Spans k_i in 1..most[i] adding up to `layers`, no stage boundary in `forbidden`, the largest share
    k_i / most[i] as small as it can be (dynamic programme over stage and boundary); None if none exists."""
    n = len(most)
    if min(most) < 1:
        return None
    # best[i][b]: (worst share so far, previous boundary) for stages 0..i-1 ending at layer b
    best: list[dict[int, tuple[float, int]]] = [{0: (0.0, -1)}]
    for i in range(n):
        row: dict[int, tuple[float, int]] = {}
        for b, (worst, _) in best[i].items():
            for k in range(1, most[i] + 1):
                end = b + k
                if end > layers or (i < n - 1 and (end in forbidden or end == layers)):
                    continue
                if i == n - 1 and end != layers:
                    continue
                value = max(worst, k / most[i])
                if end not in row or value < row[end][0]:
                    row[end] = (value, b)
        best.append(row)
    if layers not in best[n]:
        return None
    spans, b = [], layers
    for i in range(n, 0, -1):
        previous = best[i][b][1]
        spans.append(b - previous)
        b = previous
    return tuple(reversed(spans))


def infeasible_reason(problem: PlacementProblem, shapes: list[Template]) -> str:
    """One line: why no chain vLLM can run serves the model here."""
    layers = problem.layers
    rates = _Rates(problem)

    def holds(t: Template) -> int:
        units = [rates.representative(h, g, t.tp) for h, g in t.stages]
        n = len(units)
        return sum(problem.cost_of(u).max_layers(first=i == 0, last=i == n - 1) for i, u in enumerate(units))

    rules = ("vLLM runs chains of one tensor-parallel size over at most two hosts (its Ray executor ranks "
             "further hosts by random node id), and a chain over two hosts needs both hosts' `address`")
    fix = "plan with `--engine runtime` and export with `--to runtime`"
    if not shapes:
        return f"no vLLM-runnable plan: no chain shape exists on this cluster ({rules}); {fix}"
    most = max(shapes, key=holds)
    if holds(most) < layers:
        missing = [h.name for h in problem.cluster.hosts if h.gpus and not h.address]
        hint = (f"; hosts without an address ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}) "
                "can only run single-host chains") if missing else ""
        return (f"no vLLM-runnable plan: the chain that holds most, {most.describe()}, holds {holds(most)} of the "
                f"{layers} layers ({rules}{hint}); {fix}")
    return (f"no vLLM-runnable plan: every chain that holds the {layers} layers ({most.describe()} and others) "
            f"lacks a link to the coordinator or between its hosts ({rules}); {fix}")


def vllm_plans(problem: PlacementProblem, *, time_limit: float = 60.0, seed: int = 0,
               progress: Progress | None = None) -> SolveResult:
    """The default method for `--engine vllm`: the best set of vLLM-runnable chains (module docstring)."""
    began = time.perf_counter()
    deadline = began + time_limit * 0.97  # the caller re-scores the placement within the user's limit
    say = progress or (lambda message: None)
    shapes = templates(problem)
    say(f"vLLM chains: {len(shapes)} chain shapes")
    scored: dict[tuple, tuple | None] = {}
    best = None
    status = "feasible"  # each chain's split is exact; which set of chains serves most, the estimate judges
    slowest = 0.0  # longest scoring so far: a scoring starts only while it and the caller's re-scoring fit
    unfinished = None  # the best set whose estimate the deadline cut: returned only if none finished
    cut_short = 0

    def consider(placement: Placement, what: str) -> None:
        nonlocal best, slowest, status, unfinished, cut_short
        key = tuple(sorted(placement.used().items())) + placement.tp_groups
        if key in scored or not placement.used():
            return
        if (best or unfinished) is not None and time.perf_counter() + (RESERVED_SCORINGS + 1) * slowest > deadline:
            status = "time_limit"
            return
        if chains_meet(problem, vllm_chains(problem.cluster, placement)):
            scored[key] = None  # its figures would credit tokens crossing between deployments
            return
        scoring = time.perf_counter()
        served = estimate(problem, placement, max_tpot_s=problem.max_tpot_s, max_ttft_s=problem.max_ttft_s,
                          deadline=deadline)
        slowest = max(slowest, time.perf_counter() - scoring)
        rank = (served.throughput, -(served.tpot_s or 0.0))
        if not served.complete:  # figures from a fixed point that had not settled: not ranked with the rest
            scored[key], status, cut_short = None, "time_limit", cut_short + 1
            if unfinished is None or rank > unfinished[0]:
                unfinished = (rank, placement, what, served)
            return
        scored[key] = rank
        if best is None or rank > best[0]:
            best = (rank, placement, what, served)

    rtt = 0.0
    packing = 0.0  # longest packing of one quote so far: a quote starts only while it and a scoring fit
    for round_no in range(1 if problem.static else ROUNDS):
        quotes = [rtt] + ([rtt * s for s in STRETCH] if rtt > 0 else [])
        for quote in quotes:
            if best is not None and time.perf_counter() + packing + (RESERVED_SCORINGS + 1) * slowest > deadline:
                status = "time_limit"
                break
            started = time.perf_counter()
            sets, packed = _candidates(problem.with_rtt(quote), shapes, deadline)
            packing = max(packing, time.perf_counter() - started)
            status = status if packed == "optimal" else "time_limit"
            for chains in sets:
                consider(placement_of(problem, chains), "; ".join(
                    f"{c.template.describe()}, stages {'/'.join(map(str, c.spans))}" for c in chains))
        if round_no == 0:
            # what people run on vLLM today (tp-pp, replicas, ...), where vLLM can run it: never below them
            for name, method in baselines.METHODS.items():
                if time.perf_counter() > deadline:
                    break
                try:
                    placement = method(problem, time_limit=max(1.0, time_limit / 20), seed=seed,
                                       progress=lambda m: None).placement
                    vllm_chains(problem.cluster, placement)
                except (SolveError, NotRunnable):
                    continue
                consider(placement, f"as --method {name}")
        if best is None:
            if unfinished is None:
                raise SolveError(infeasible_reason(problem, shapes))
            best = unfinished  # no estimate finished within the time limit (a note says so)
            break
        served = best[3]
        if problem.static or served.tpot_s is None or abs(served.tpot_s - rtt) <= 0.02 * max(rtt, 1e-9):
            break
        say(f"vLLM chains, round {round_no + 1}: best serves {served.throughput:,.0f} tok/s")
        rtt = served.tpot_s
    _, placement, what, served = best
    try:
        chains = vllm_chains(problem.cluster, placement)  # the exporter's check: a plan from here always exports
    except NotRunnable as exc:
        raise SolveError(f"internal: the vLLM search built a plan vLLM cannot run: {exc}") from None
    notes = (f"vLLM-runnable: {len(chains)} deployment(s) ({what})",
             f"vLLM chains: {len(shapes)} chain shapes, {sum(v is not None for v in scored.values())} chain sets "
             "scored by the serving estimate"
             + ("" if problem.static else " with capacities consistent with their own round trips"))
    if cut_short:
        notes += (f"time limit: {cut_short} chain set(s) not ranked, their serving estimates cut short by the "
                  "deadline" + ("; no estimate finished, so the plan is the best of those" if best is unfinished
                                else ""),)
    return SolveResult("milp", placement, status, time.perf_counter() - began, gap=None, bound=None, notes=notes)
