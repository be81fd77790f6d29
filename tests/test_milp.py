"""The optimiser against brute force on tiny clusters, and its numbers against the independent evaluator."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from planner.cluster import load_cluster
from planner.errors import InputWarning
from planner.flow import max_flow
from planner.plan import solve
from planner.problem import Placement, PlacementProblem
from planner.solvers.milp import solve_max_flow
from planner.solvers.optimiser import heuristic_starts

TINY_MODEL = """
[model tiny]
family = qwen3
layers = {layers}
hidden_size = 1024
intermediate_size = 3072
attention_heads = 16
kv_heads = 8
head_dim = 128
vocab_size = 1000
"""


def _starts(problem: PlacementProblem) -> list[Placement]:
    """The optimiser's warm starts for the MILP, as `planner solve` gives them."""
    return heuristic_starts(problem, 0, time.perf_counter(), 30)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tiny.ini"
    path.write_text(body)
    return path


def brute_force(problem: PlacementProblem) -> float:
    """Best static max flow over every assignment of a range (or nothing) to every GPU."""
    spans = [(0, 0)] + [(s, e) for s in range(problem.layers) for e in range(s + 1, problem.layers + 1)]
    names = [n.name for n in problem.nodes]
    best = 0.0
    every_layer = set(range(problem.layers))
    for choice in itertools.product(spans, repeat=len(names)):
        if not every_layer.issubset(layer for s, e in choice for layer in range(s, e)):
            continue  # a layer nobody holds: no flow
        ranges = dict(zip(names, choice))
        if all(e == s or problem.fits(n, s, e) for n, (s, e) in ranges.items()):
            best = max(best, max_flow(problem, Placement(ranges)).value)
    return best


# a cluster head with two GPU kinds of static tables, shared by cases below
FAST_AND_SLOW = """
[cluster]
model = tiny
coordinator = a
[gpu fast]
max_layers = 4
throughput = 1000, 480, 300, 200
[gpu slow]
max_layers = 2
throughput = 400, 190
"""

STATIC_CASES = [
    # three GPU kinds with static tables, one slow cross-host link
    FAST_AND_SLOW + """[gpu mid]
max_layers = 3
throughput = 600, 290, 180
[host a]
gpus = fast, slow
[host b]
gpus = mid
[network]
a -- b = 2 MB/s, 1 ms
""",
    # two hosts of identical GPUs (interchangeability must not lose optima)
    """
[cluster]
model = tiny
coordinator = a
[gpu g]
max_layers = 3
throughput = 900, 420, 260
[host a]
gpus = g * 2
[host b]
gpus = g
[network]
default = 100 Mbit/s, 1 ms
""",
]


@pytest.mark.parametrize("case", range(len(STATIC_CASES)))
def test_milp_matches_brute_force(tmp_path: Path, case: int) -> None:
    cluster = load_cluster(_write(tmp_path, TINY_MODEL.format(layers=4) + STATIC_CASES[case]))
    problem = PlacementProblem(cluster)
    outcome = solve_max_flow(problem, time_limit=30, warm_starts=_starts(problem))
    assert outcome.status == "optimal"
    assert outcome.objective == pytest.approx(brute_force(problem), rel=1e-6)
    # the reported number is the independent evaluator's
    assert max_flow(problem, outcome.placement).value == pytest.approx(outcome.objective, rel=1e-9)
    assert outcome.bound >= outcome.objective * (1 - 1e-9)
    assert problem.upper_bound() >= outcome.objective * (1 - 1e-9)


def test_a_table_that_rises_is_planned_as_given(tmp_path: Path) -> None:
    """A published table may rise at one entry (noise): the optimum may use that entry, and the default
    method must find it. Here 'noisy' serves 320 tokens/s holding 3 layers but 300 holding 2: the best
    placement (brute force) puts 3 layers on it and 1 on 'one'."""
    body = TINY_MODEL.format(layers=4) + """
[cluster]
model = tiny
coordinator = a
[gpu noisy]
max_layers = 4
throughput = 1000, 300, 320, 200
[gpu one]
max_layers = 1
throughput = 330
[host a]
gpus = noisy, one
"""
    with pytest.warns(InputWarning, match=r"\[gpu noisy\] throughput: entry 3 \(320\)"):
        cluster = load_cluster(_write(tmp_path, body))
    problem = PlacementProblem(cluster)
    best = brute_force(problem)
    assert best == pytest.approx(320.0)
    plan = solve(cluster, "milp", time_limit=30)
    assert plan.serving.max_flow == pytest.approx(best, rel=1e-6)
    assert plan.result.status == "optimal"
    assert max_flow(problem, plan.placement).value == pytest.approx(plan.serving.max_flow, rel=1e-9)
    assert problem.upper_bound() >= best * (1 - 1e-9)


def test_milp_roofline_matches_brute_force(tmp_path: Path) -> None:
    body = TINY_MODEL.format(layers=5) + """
[cluster]
model = tiny
coordinator = a
[host a]
gpus = rtx2080ti, t4
[host b]
gpus = rtx4090
[network]
a -- b = 1 Gbit/s, 0.5 ms
"""
    problem = PlacementProblem(load_cluster(_write(tmp_path, body)))
    outcome = solve_max_flow(problem, time_limit=30, warm_starts=_starts(problem))
    assert outcome.status == "optimal"
    assert outcome.objective == pytest.approx(brute_force(problem), rel=1e-6)


def test_optimiser_beats_even_split_on_hetero() -> None:

    cluster = load_cluster(Path(__file__).parent.parent / "profiles" / "hetero.ini")
    best = solve(cluster, "milp", time_limit=20)
    even = solve(cluster, "even")
    assert best.serving.throughput > 1.5 * even.serving.throughput
    assert best.serving.max_flow == pytest.approx(max_flow(best.problem, best.placement).value, rel=1e-9)


def _best_ordered_chain(problem: PlacementProblem) -> float:
    """Brute force over every ordered subset of GPUs, each order given its best layer split."""
    from planner.solvers.chains import split_chain

    names = [n.name for n in problem.nodes]
    return max(split_chain(problem, list(order))[0]
               for size in range(1, len(names) + 1) for order in itertools.permutations(names, size))


CHAIN_CASE = FAST_AND_SLOW + """[host a]
gpus = fast, slow
[host b]
gpus = slow, slow
[host c]
gpus = fast
[network]
default = 1 Gbit/s, 1 ms
a -- b = 150 KB/s, 5 ms
b -- c = 200 KB/s, 5 ms
"""


def test_best_chain_matches_brute_force_over_orders(tmp_path: Path) -> None:
    from planner.solvers.pipeline_dp import best_chain

    problem = PlacementProblem(load_cluster(_write(tmp_path, TINY_MODEL.format(layers=7) + CHAIN_CASE)))
    rate, spans = best_chain(problem)
    assert rate == pytest.approx(_best_ordered_chain(problem), rel=1e-9)
    assert rate > 0
    # the spans chain exactly from layer 0 to the last layer and the evaluator agrees with the rate
    assert [s for _, s, _ in spans][0] == 0 and spans[-1][2] == problem.layers
    assert all(a[2] == b[1] for a, b in zip(spans, spans[1:]))
    placement = Placement({**{n.name: (0, 0) for n in problem.nodes}, **{n: (s, e) for n, s, e in spans}})
    assert max_flow(problem, placement).value == pytest.approx(rate, rel=1e-9)


@pytest.mark.parametrize("size,seed", [(8, 8), (10, 10)])
def test_small_multi_region_static_clusters_are_proven_optimal(tmp_path: Path, size: int, seed: int) -> None:
    """Helix-shaped clusters (one GPU per host, three regions joined by ~12.5 MB/s): proven, not
    just solved, and every returned number is the evaluator's."""
    from planner.synthetic import write_cluster
    from planner.solvers.milp import covering_refutes

    mix = {8: {"a100-40gb": 2, "l4": 2, "t4": 4}, 10: {"a100-40gb": 2, "l4": 3, "t4": 5}}[size]
    cluster = load_cluster(write_cluster(tmp_path / "c.ini", mix, regions=3, static=True, seed=seed))
    plan = solve(cluster, "milp", time_limit=60)
    assert plan.result.status == "optimal" and plan.result.gap == pytest.approx(0.0, abs=2e-4)
    assert plan.serving.max_flow == pytest.approx(max_flow(plan.problem, plan.placement).value, rel=1e-9)
    # the proof's relaxation is not vacuous: it admits the plan's own value
    assert not covering_refutes(plan.problem, plan.serving.max_flow * 0.999, time_limit=30)
    assert plan.upper_bound >= plan.serving.max_flow * (1 - 1e-9)


def test_optimiser_chooses_tensor_parallel_groups_when_they_serve_more() -> None:
    """Seed 004: Qwen2.5-72B on two hosts of two L20s. No single L20 holds a quarter of the model with
    KV room to spare, so the optimiser must group each host's pair (the grouping is its choice, not a
    baseline's), serve at least what the uniform TP x PP baseline serves, and say why."""
    cluster = load_cluster(Path(__file__).parent.parent / "profiles" / "l20x4.ini")
    best = solve(cluster, "milp", time_limit=30)
    tp_pp = solve(cluster, "tp-pp")
    flat = solve(cluster, "chains")
    assert best.placement.tp_groups, "expected tensor-parallel groups"
    assert all(len({best.problem.host_of(m) for m in g}) == 1 for g in best.placement.tp_groups)
    assert best.serving.throughput >= tp_pp.serving.throughput * (1 - 1e-6)
    assert best.serving.throughput > flat.serving.throughput
    notes = " ".join(best.result.notes)
    assert "tensor parallelism" in notes and "without tensor-parallel groups serves" in notes
    # the upper bound counts tensor-parallel units too
    assert best.upper_bound >= best.serving.max_flow * (1 - 1e-9)


def test_milp_places_tensor_parallel_units_on_one_host(tmp_path: Path) -> None:
    """A static tiny cluster where a pair of small GPUs only helps as a TP2 unit: the exact model's
    units come back as valid groups, and the result is at least the best single-GPU plan."""
    body = TINY_MODEL.format(layers=4) + """
[cluster]
model = tiny
coordinator = a
[gpu small]
max_layers = 2
throughput = 500, 240
[host a]
gpus = small * 2
gpu_link = 50 GB/s, 0.01 ms
[host b]
gpus = small * 2
gpu_link = 50 GB/s, 0.01 ms
[network]
a -- b = 10 Gbit/s, 1 ms
"""
    problem = PlacementProblem(load_cluster(_write(tmp_path, body)))
    outcome = solve_max_flow(problem, time_limit=30, warm_starts=_starts(problem))
    flat = brute_force(problem)
    assert outcome.objective >= flat * (1 - 1e-9)
    for group in outcome.placement.tp_groups:
        problem.group_members("+".join(group))  # raises unless one host, one type
    assert max_flow(problem, outcome.placement).value == pytest.approx(outcome.objective, rel=1e-9)


HELIX_30B_T4 = (1987.96933583407, 901.9376894944129, 539.0387352860497, 404.2621425031171, 285.3446689050558,
                331.3431275280855)  # Helix's T4 table for LLaMA-30B (profiles/helix/), rising at 6 layers
HELIX_30B_L4 = (2485.538093984443, 1145.043877646622, 763.5176797357898, 480.9921941878029, 384.9009498403431,
                286.5874097546421)


def test_helix_30b_instance_is_proven_optimal() -> None:
    """LLaMA-30B on 4 L4 + 6 T4 with Helix's own tables, which rise at one entry each: the default
    method proves the optimum Gurobi proved after 3,803 s (286.5874 tokens/s)."""
    with pytest.warns(InputWarning, match="planning with the numbers as given"):
        cluster = load_cluster(Path(__file__).resolve().parent.parent / "profiles" / "helix" / "llama30b-l4t4.ini")
    plan = solve(cluster, "milp", time_limit=60)
    assert plan.result.status == "optimal"
    assert plan.serving.max_flow == pytest.approx(286.5874097546, rel=1e-6)
    assert plan.serving.max_flow == pytest.approx(max_flow(plan.problem, plan.placement).value, rel=1e-9)
    assert plan.upper_bound >= plan.serving.max_flow * (1 - 1e-9)


def test_helix_tables_on_a_small_instance_match_brute_force(tmp_path: Path) -> None:
    """The same published (non-monotone) tables on a six-layer model, three hosts: proven optimal, and
    the value is brute force's over every assignment."""
    body = TINY_MODEL.format(layers=6) + f"""
[cluster]
model = tiny
coordinator = a
[gpu t4]
max_layers = 6
throughput = {", ".join(map(repr, HELIX_30B_T4))}
[gpu l4]
max_layers = 6
throughput = {", ".join(map(repr, HELIX_30B_L4))}
[host a]
gpus = t4
[host b]
gpus = t4
[host c]
gpus = l4
[network]
default = 1 GB/s, 1 ms
"""
    with pytest.warns(InputWarning):
        cluster = load_cluster(_write(tmp_path, body))
    problem = PlacementProblem(cluster)
    plan = solve(cluster, "milp", time_limit=30)
    assert plan.result.status == "optimal"
    assert plan.serving.max_flow == pytest.approx(brute_force(problem), rel=1e-6)
