"""Placement methods: invariants every registered method keeps, the baselines' own promises, and
tensor-parallel groups through problem, cost model, flow, serving, report, plot and layout files."""

from __future__ import annotations

import textwrap
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest

from planner.cluster import Link, load_cluster
from planner.costmodel import GpuCost
from planner.errors import SolveError
from planner.flow import COORDINATOR, max_flow
from planner.problem import Placement, PlacementProblem
from planner.solvers.base import no_progress
from planner.problem import split_evenly
from planner.solvers.registry import METHODS

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
BUNDLED = ["hetero", "l20x4", "a10x8", "mixed-campus"]
MAY_REFUSE = {"replicas"}  # needs a GPU or TP group that holds the whole model: not every bundled cluster has one
TIME_LIMIT = 2.0  # seconds, for methods that optimise (keeps this file fast)
REL = 1e-6

# A static throughput table cluster (Helix-style [gpu] sections) on a small inline model; host c mixes types.
STATIC = """\
[cluster]
model = tiny
dtype = fp16
coordinator = a

[model tiny]
family = qwen3
layers = 12
hidden_size = 1024
intermediate_size = 3072
attention_heads = 16
kv_heads = 8
head_dim = 64
vocab_size = 32000

[gpu fast]
memory = 40 GB
max_layers = 6
throughput = 2400, 1190, 790, 590, 470, 390

[gpu slow]
memory = 16 GB
max_layers = 3
throughput = 900, 440, 290

[host a]
gpus = fast * 2

[host b]
gpus = slow * 3

[host c]
gpus = fast, slow

[network]
default = 1 Gbit/s, 1 ms
a -- b = 10 Gbit/s, 0.2 ms
"""

# Measured latency tables next to roofline GPUs, a coordinator-only gateway.
MEASURED = """\
[cluster]
model = qwen3-8b
dtype = fp16
coordinator = gw

[gpu l4m]
memory = 24 GB
max_layers = 12
decode_ms = 2: 0.9, 8: 1.0, 32: 1.2, 100: 1.9
prefill_ms = 250: 2, 1000: 7, 4000: 26
kv_tokens = 1: 400000, 4: 90000, 12: 20000

[host gw]
gpus =

[host m1]
gpus = l4m * 4
gpu_link = 16 GB/s, 0.01 ms

[host r1]
gpus = rtx4090 * 2
gpu_link = 31.5 GB/s, 0.01 ms

[network]
default = 10 Gbit/s, 0.2 ms
"""

# Roofline GPUs of three kinds on three hosts, one link much slower than the rest.
ROOFLINE = """\
[cluster]
model = qwen3-8b
dtype = fp16
coordinator = a

[host a]
gpus = l20 * 4
gpu_link = 25 GB/s, 0.01 ms

[host b]
gpus = t4 * 2

[host c]
gpus = rtx3090

[network]
default = 10 Gbit/s, 0.2 ms
a -- c = 100 Mbit/s, 5 ms
"""

GENERATED = {"static": STATIC, "measured": MEASURED, "roofline": ROOFLINE}
CLUSTERS = BUNDLED + list(GENERATED)


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clusters")
    for name, text in GENERATED.items():
        (folder / f"{name}.ini").write_text(textwrap.dedent(text))
    return folder


@pytest.fixture(scope="module")
def problems(generated_dir):
    @lru_cache(maxsize=None)
    def problem(name: str) -> PlacementProblem:
        path = PROFILES / f"{name}.ini" if name in BUNDLED else generated_dir / f"{name}.ini"
        return PlacementProblem(load_cluster(path))
    return problem


@pytest.fixture(scope="module")
def solved(problems):
    @lru_cache(maxsize=None)
    def solve(method: str, cluster: str, run: int = 0):
        problem = problems(cluster)
        try:
            return METHODS[method](problem, time_limit=TIME_LIMIT, seed=0, progress=no_progress)
        except SolveError as exc:  # allowed on generated clusters only; the bundled ones must place
            if cluster in BUNDLED and method not in MAY_REFUSE:
                raise
            return exc
    return solve


def _ok(solved, method, cluster):
    result = solved(method, cluster)
    if isinstance(result, SolveError):
        pytest.skip(f"{method} cannot place {cluster}: {result}")
    return result


# ---- invariants of every registered method ------------------------------------------------------

@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("method", list(METHODS))
def test_placement_is_valid(method, cluster, solved, problems):
    problem, result = problems(cluster), _ok(solved, method, cluster)
    placement = result.placement
    assert result.method == method
    assert set(placement.ranges) == {n.name for n in problem.nodes}
    for name, (start, end) in placement.ranges.items():
        assert 0 <= start <= end <= problem.layers, (name, start, end)
    for group in placement.tp_groups:  # one host, one type, one range
        assert problem.group_members("+".join(group)) == tuple(group)
        assert len({placement.ranges[m] for m in group}) == 1
    for unit, (start, end) in placement.units().items():
        assert problem.fits(unit, start, end), f"{unit} = [{start}, {end}) does not fit"


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("method", list(METHODS))
def test_flow_is_consistent(method, cluster, solved, problems):
    problem, placement = problems(cluster), _ok(solved, method, cluster).placement
    units = placement.units()
    flow = max_flow(problem, placement)
    assert flow.value > 0
    scale = max(flow.value, 1.0)
    inflow, outflow = Counter(), Counter()
    for (a, b), value in flow.edge_flows.items():
        assert value > 0
        outflow[a] += value
        inflow[b] += value
        if a == COORDINATOR:
            assert units[b][0] == 0, f"coordinator feeds {b}, which does not hold layer 0"
        elif b == COORDINATOR:
            assert units[a][1] == problem.layers, f"{a} returns to the coordinator without the last layer"
        else:
            assert units[a][1] == units[b][0], f"{a} {units[a]} -> {b} {units[b]} does not chain"
    assert outflow[COORDINATOR] == pytest.approx(flow.value, rel=REL)
    assert inflow[COORDINATOR] == pytest.approx(flow.value, rel=REL)
    for unit, (start, end) in units.items():
        through = flow.node_flow.get(unit, 0.0)
        assert inflow[unit] == pytest.approx(outflow[unit], rel=REL, abs=REL * scale), unit
        assert through == pytest.approx(inflow[unit], rel=REL, abs=REL * scale), unit
        assert through <= problem.capacity(unit, start, end) * (1 + REL) + 1e-9, unit


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("method", list(METHODS))
def test_deterministic(method, cluster, solved):
    first, second = solved(method, cluster, 0), solved(method, cluster, 1)
    if isinstance(first, SolveError):
        assert isinstance(second, SolveError) and str(first) == str(second)
        return
    same = (first.placement.ranges, first.placement.tp_groups) == (second.placement.ranges,
                                                                   second.placement.tp_groups)
    if not same and "time_limit" in (first.status, second.status):
        pytest.skip("stopped by the wall-clock time limit: the layout depended on machine load")
    assert same


# Qwen3-14B on one 2080 Ti and one 4090: it only just fits, and no single GPU type holds it
ONE_2080TI_ONE_4090 = """\
    [cluster]
    model = qwen3-14b
    dtype = fp16
    [host h1]
    gpus = rtx2080ti
    [host h2]
    gpus = rtx4090
    [network]
    default = 10 Gbit/s, 0.2 ms
    """

@pytest.mark.parametrize("method", list(METHODS))
def test_refuses_with_solve_error_or_places(method, write_ini):
    """A cluster that only just fits (one 2080 Ti, one 4090): a method either places or says why."""
    path = write_ini(ONE_2080TI_ONE_4090)
    problem = PlacementProblem(load_cluster(path))
    try:
        result = METHODS[method](problem, time_limit=TIME_LIMIT, seed=0, progress=no_progress)
    except SolveError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert max_flow(problem, result.placement).value > 0
    for unit, span in result.placement.units().items():
        assert problem.fits(unit, *span)


# ---- the baselines' own promises -----------------------------------------------------------------

def test_even_on_hetero_is_ten_layers_per_gpu(solved):
    ranges = solved("even", "hetero").placement.ranges
    assert ranges == {"host1:0": (0, 10), "host1:1": (10, 20), "host2:0": (20, 30), "host2:1": (30, 40)}


def test_greedy_starts_the_chain_with_the_fastest_gpu(solved):
    ranges = solved("greedy", "hetero").placement.ranges
    # the RTX 4090s are faster than the 2080 Tis; host2:0 comes first by name and takes all it can hold
    assert ranges["host2:0"][0] == 0 and ranges["host2:0"][1] >= 20


def test_greedy_places_every_gpu_it_can(solved):
    used = solved("greedy", "mixed-campus").placement.used()
    assert len(used) == 10


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_swarm_stages_are_equal_pools(cluster, solved, problems):
    problem, result = problems(cluster), _ok(solved, "swarm", cluster)
    spans = sorted(set(result.placement.used().values()))
    assert spans == split_evenly(problem.layers, len(spans))


def _chains_of_one_type(problem, placement):
    """Per GPU type, its ranges decompose into chains 0 -> last layer: at every boundary as many GPUs
    of the type end as start."""
    by_type: dict[str, list[tuple[int, int]]] = {}
    for name, span in placement.used().items():
        by_type.setdefault(problem.by_name[name].gpu, []).append(span)
    for gpu, spans in by_type.items():
        starts = Counter(s for s, _ in spans)
        ends = Counter(e for _, e in spans)
        assert starts[0] == ends[problem.layers] >= 1, gpu
        for boundary in set(starts) | set(ends):
            if boundary not in (0, problem.layers):
                assert starts[boundary] == ends[boundary], (gpu, boundary)
    return by_type


@pytest.mark.parametrize("cluster", BUNDLED)
def test_separate_builds_chains_of_one_gpu_type(cluster, solved, problems):
    problem, result = problems(cluster), solved("separate", cluster)
    by_type = _chains_of_one_type(problem, result.placement)
    if cluster == "mixed-campus":  # two 4090s or two 3090s cannot hold Qwen3-32B; four A10s and two L20s can
        assert set(by_type) == {"a10", "l20"}
    if cluster == "hetero":
        assert set(by_type) == {"rtx4090"}


def test_separate_refuses_when_no_type_holds_the_model(write_ini):
    path = write_ini(ONE_2080TI_ONE_4090)
    with pytest.raises(SolveError, match="separate"):
        METHODS["separate"](PlacementProblem(load_cluster(path)), time_limit=1, seed=0, progress=no_progress)


def test_tp_pp_on_l20x4_beats_or_matches_tp2_pp2(solved, problems):
    problem, result = problems("l20x4"), solved("tp-pp", "l20x4")
    groups = (("head:0", "head:1"), ("worker:0", "worker:1"))
    reference = Placement({"head:0": (0, 40), "head:1": (0, 40), "worker:0": (40, 80), "worker:1": (40, 80)},
                          groups)
    for unit, span in reference.units().items():
        assert problem.fits(unit, *span)
    assert max_flow(problem, result.placement).value >= max_flow(problem, reference).value * (1 - REL)
    for group in result.placement.tp_groups:
        assert len({problem.by_name[m].host for m in group}) == 1


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_tp_pp_groups_are_uniform(cluster, solved, problems):
    problem, result = problems(cluster), _ok(solved, "tp-pp", cluster)
    sizes = {len(g) for g in result.placement.tp_groups}
    assert len(sizes) <= 1
    grouped = {m for g in result.placement.tp_groups for m in g}
    if sizes:  # uniform TP: every used GPU is in a group of that size
        assert grouped == set(result.placement.used())
    spans = sorted(set(result.placement.units().values()))
    assert spans == split_evenly(problem.layers, len(spans))


# ---- tensor-parallel groups through the model ----------------------------------------------------

def test_group_cost_scales_memory_speed_and_adds_all_reduces(gpus, models):
    model, l20 = models["qwen2.5-72b"], gpus["l20"]
    one = GpuCost(l20, model, "bf16")
    link = Link(25e9, 10e-6)
    two = GpuCost(l20, model, "bf16", tp=2, tp_link=link)
    free = GpuCost(l20, model, "bf16", tp=2)
    assert two.usable_bytes() == pytest.approx(2 * one.usable_bytes())
    assert two.max_layers() > 2 * one.max_layers() - 2
    rows = 32
    by_hand = 2 * (2 - 1) / 2 * rows * model.hidden_size * 2 / 25e9 + 2 * (2 - 1) * 10e-6
    assert two.all_reduce_s(rows) == pytest.approx(by_hand)
    assert one.all_reduce_s(rows) == 0 and free.all_reduce_s(rows) == 0
    # two all-reduces per layer on top of the doubled roofline
    assert two.decode_s(10, rows) == pytest.approx(free.decode_s(10, rows) + 10 * 2 * by_hand)
    assert free.decode_s(10, rows) < one.decode_s(10, rows)
    assert two.prefill_s(10, 1000) > free.prefill_s(10, 1000)


def test_group_cost_of_a_static_table_doubles_capacity(problems):
    problem = problems("static")
    assert problem.capacity("a:0+a:1", 0, 3) == pytest.approx(2 * problem.capacity("a:0", 0, 3))
    assert problem.max_layers("a:0+a:1", 0, 12) == 12 and problem.max_layers("a:0", 0, 12) == 6
    assert problem.group_capacity(("a:0", "a:1"), 0, 3) == problem.capacity("a:0+a:1", 0, 3)
    assert problem.fits("a:0+a:1", 0, 12) and not problem.fits("a:0", 0, 12)


def test_group_names_are_checked(problems):
    problem = problems("static")
    with pytest.raises(ValueError, match="spans hosts"):
        problem.cost_of("a:0+b:0")
    with pytest.raises(ValueError, match="mixes"):
        problem.cost_of("c:0+c:1")
    with pytest.raises(KeyError):
        problem.cost_of("a:0+a:9")
    assert problem.host_of("b:0+b:1") == "b"


def test_placement_units_and_validation():
    placement = Placement({"a:0": (0, 6), "a:1": (0, 6), "b:0": (6, 12), "b:1": (0, 0)}, (("a:0", "a:1"),))
    assert placement.units() == {"a:0+a:1": (0, 6), "b:0": (6, 12)}
    assert placement.used() == {"a:0": (0, 6), "a:1": (0, 6), "b:0": (6, 12)}
    assert placement.unit_of("a:1") == "a:0+a:1" and placement.unit_of("b:0") == "b:0"
    assert placement.members("a:0+a:1") == ("a:0", "a:1") and placement.members("b:0") == ("b:0",)
    with pytest.raises(ValueError):
        Placement({"a:0": (0, 6), "a:1": (0, 5)}, (("a:0", "a:1"),))
    assert Placement({"a:0": (0, 6)}).units() == {"a:0": (0, 6)}


def test_flow_names_a_group_by_its_members(problems):
    problem = problems("static")
    placement = Placement({"a:0": (0, 12), "a:1": (0, 12), "b:0": (0, 0), "b:1": (0, 0), "b:2": (0, 0),
                           "c:0": (0, 0), "c:1": (0, 0)}, (("a:0", "a:1"),))
    flow = max_flow(problem, placement)
    assert set(flow.node_flow) == {"a:0+a:1"}
    assert flow.value == pytest.approx(problem.capacity("a:0+a:1", 0, 12))
    assert set(flow.edge_flows) == {(COORDINATOR, "a:0+a:1"), ("a:0+a:1", COORDINATOR)}


def test_grouped_plan_serves_reports_plots_and_round_trips(problems, tmp_path):
    from rich.console import Console

    from planner.layout import read_layout, write_layout
    from planner.plan import score
    from planner.plot import plot_layout
    from planner.report import chain_text, plan_json, plan_layout, print_plan

    problem = problems("l20x4")
    result = METHODS["tp-pp"](problem, time_limit=1, seed=0, progress=no_progress)
    assert result.placement.tp_groups
    plan = score(problem, result)
    assert 0 < plan.serving.throughput <= plan.serving.max_flow * (1 + REL)
    assert plan.serving.tpot_s > 0 and set(plan.serving.node_capacity) == set(result.placement.units())
    data = plan_json(plan)
    assert data["tp_groups"] == [list(g) for g in result.placement.tp_groups]
    assert any("+" in f["to"] for f in data["flows"])
    console = Console(record=True, width=160)
    print_plan(console, plan)
    assert "tp2" in console.export_text()
    assert "+" in chain_text(plan)
    plot_layout(plan, str(tmp_path / "plan.png"))
    assert (tmp_path / "plan.png").stat().st_size > 0
    write_layout(tmp_path / "plan.ini", plan_layout(plan))
    back = read_layout(tmp_path / "plan.ini")
    assert back.placement == result.placement
    assert "tp_groups" not in back.figures


def test_ungrouped_placements_are_unchanged(problems):
    """With no groups, units are GPUs and every figure is the GPU's own."""
    problem = problems("hetero")
    placement = Placement({"host1:0": (0, 10), "host1:1": (10, 20), "host2:0": (20, 30), "host2:1": (30, 40)})
    assert placement.units() == placement.used()
    flow = max_flow(problem, placement)
    assert set(flow.node_flow) == set(placement.ranges)
    assert problem.cost_of("host1:0") is problem.cost("host1:0") is problem.costs["rtx2080ti"]
