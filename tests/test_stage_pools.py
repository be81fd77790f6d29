"""Stages of identical GPU groups, and the optimiser on skewed regions with a remote coordinator:
placements fit, cover every layer, and the reported numbers are the independent evaluator's."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.cluster import load_cluster
from planner.errors import SolveError
from planner.flow import max_flow
from planner.plan import solve
from planner.problem import PlacementProblem
from planner.solvers.baselines import METHODS as BASELINES
from planner.solvers.stage_pools import region_chain_placements, stage_pool_placements, stage_pools, stages_at
from planner.synthetic import write_regional_cluster

# the Helix three-region shape, scaled down: one region has the big GPU, no region holds the model
SMALL_REGIONS = ({"a100-40gb": 1}, {"t4": 3, "l4": 1}, {"l4": 2, "t4": 2})


@pytest.fixture(scope="module")
def problem(tmp_path_factory: pytest.TempPathFactory) -> PlacementProblem:
    path = write_regional_cluster(tmp_path_factory.mktemp("pools") / "c.ini", SMALL_REGIONS, static=True,
                                  seed=1, model="llama-30b")
    return PlacementProblem(load_cluster(path))


def test_pools_fit_and_cover_every_layer(problem: PlacementProblem) -> None:
    placements = stage_pool_placements(problem)
    assert placements
    values = [max_flow(problem, p).value for p in placements]
    assert values == sorted(values, reverse=True) and values[0] > 0
    for placement in placements:
        held = [0] * problem.layers
        for name, (start, end) in placement.used().items():
            assert problem.fits(name, start, end)
            for layer in range(start, end):
                held[layer] += 1
        assert min(held) >= 1


def test_pools_serve_what_they_target(problem: PlacementProblem) -> None:
    """Each stage of the pools at a target serves it: members' capacities add up to the target."""
    target = max_flow(problem, stage_pool_placements(problem)[0]).value * 0.9
    stages = stages_at(problem, target)
    assert stages is not None and sum(s.layers for s in stages) >= problem.layers
    for stage in stages:
        assert len({problem.by_name[n].gpu for n in stage.nodes}) == 1  # identical GPUs
        assert sum(problem.capacity(n, 1, 1 + stage.layers) for n in stage.nodes) >= target * (1 - 1e-9)
    assert stages_at(problem, problem.upper_bound() * 1.01) is None  # nothing beats the bound


def test_optimiser_beats_every_baseline_and_reports_the_evaluators_number(problem: PlacementProblem) -> None:
    plan = solve(problem.cluster, "milp", time_limit=5)
    assert plan.serving.max_flow == pytest.approx(max_flow(problem, plan.placement).value, rel=1e-9)
    assert plan.serving.max_flow <= plan.upper_bound * (1 + 1e-9)
    pools = solve(problem.cluster, "stages", time_limit=5)
    assert pools.serving.max_flow == pytest.approx(max_flow(problem, pools.placement).value, rel=1e-9)
    assert plan.serving.max_flow >= pools.serving.max_flow * (1 - 1e-9)
    for name in BASELINES:
        try:
            baseline = solve(problem.cluster, name, time_limit=5)
        except SolveError:
            continue
        assert plan.serving.max_flow >= baseline.serving.max_flow * (1 - 1e-9), name


def test_stages_method_refuses_a_model_that_does_not_fit(tmp_path: Path) -> None:
    path = write_regional_cluster(tmp_path / "c.ini", ({"t4": 1}, {"t4": 1}), static=True, model="llama-30b")
    problem = PlacementProblem(load_cluster(path, check_fit=False))
    with pytest.raises(SolveError, match="stages"):
        stage_pools(problem, time_limit=2)


HELIX = Path(__file__).resolve().parent.parent / "profiles" / "helix"


def test_region_chains_on_the_published_three_region_cluster() -> None:
    """Helix's own 24-GPU three-region instance (its tables and links, profiles/helix/): region chains
    beat both Helix's MILP (1,212.18 tokens/s after 2,695 s of Gurobi) and the hand layout of issue 17
    (1,347.9), every stage serving the target and every crossing spread over several host pairs."""
    cluster = load_cluster(HELIX / "three-regions24.ini")
    problem = PlacementProblem(cluster)
    chains = region_chain_placements(problem)
    assert chains
    best = chains[0]
    value = max_flow(problem, best).value
    assert value >= 1347.9
    held = [0] * problem.layers
    for name, (start, end) in best.used().items():
        assert problem.fits(name, start, end)
        for layer in range(start, end):
            held[layer] += 1
    assert min(held) >= 1
    # no region holds the model: the chain crosses regions, and no crossing rests on one host pair
    region = {n.name: cluster.host(n.host).region for n in problem.nodes}
    used = best.used()
    for boundary in range(1, problem.layers):
        ending = [n for n, (_, e) in used.items() if e == boundary]
        starting = [n for n, (s, _) in used.items() if s == boundary]
        if ending and starting and {region[n] for n in ending}.isdisjoint(region[n] for n in starting):
            assert len(ending) * len(starting) >= 2
    # the default method keeps it (it is a warm start) and reports the evaluator's number
    plan = solve(cluster, "milp", time_limit=10)
    assert plan.serving.max_flow >= value * (1 - 1e-9)
    assert plan.serving.max_flow == pytest.approx(max_flow(problem, plan.placement).value, rel=1e-9)
