"""Max flow and the balanced max flow (planner/flow.py): same value and cut, traffic spread over links."""

import pytest

from planner.cluster import load_cluster
from planner.flow import COORDINATOR, BalancedFlow, balanced_flow, max_flow
from planner.problem import Placement, PlacementProblem

# One GPU holds the first half of Qwen3-14B and may hand off to either of two identical hosts, each
# over its own 400 Mbit/s link: one link could carry the whole flow, at 90% utilisation.
FORK = """\
[cluster]
model = qwen3-14b
dtype = fp16
coordinator = gateway

[host gateway]
gpus =

[host front]
gpus = rtx4090

[host left]
gpus = rtx4090

[host right]
gpus = rtx4090

[network]
default = 10 Gbit/s, 0.1 ms
front -- left = 400 Mbit/s, {left_ms} ms
front -- right = 400 Mbit/s, {right_ms} ms
"""
HALF = {"front:0": (0, 20), "left:0": (20, 40), "right:0": (20, 40)}
# 21 layers in front: the back hosts' 19 layers and LM head (about two layers' time) then serve more than
# the front does, so one of them alone can take the whole flow too
FRONT_HEAVY = {"front:0": (0, 21), "left:0": (21, 40), "right:0": (21, 40)}


def fork(write_ini, left_ms: float = 1.0, right_ms: float = 1.0,
         ranges: dict = HALF) -> tuple[PlacementProblem, Placement]:
    cluster = load_cluster(write_ini(FORK.format(left_ms=left_ms, right_ms=right_ms)))
    return PlacementProblem(cluster), Placement(ranges)


def test_augmenting_paths_leave_a_parallel_link_idle_and_balancing_splits_it(write_ini):
    problem, placement = fork(write_ini, ranges=FRONT_HEAVY)
    plain, balanced = max_flow(problem, placement), balanced_flow(problem, placement)
    assert balanced.value == pytest.approx(plain.value, rel=1e-6)
    assert balanced.cut == plain.cut == ("front:0",)
    # the scenario: one link alone can carry the flow, so augmenting paths use only one
    assert sorted(plain.edge_flows.get(("front:0", side), 0.0) for side in ("left:0", "right:0"))[0] == 0.0
    left, right = (balanced.edge_flows[("front:0", side)] for side in ("left:0", "right:0"))
    # even, to the width of one segment of the piecewise-linear queueing cost
    assert abs(left - right) <= 0.05 * problem.link_capacity("front", "left")
    assert left + right == pytest.approx(balanced.value, rel=1e-6)
    assert balanced.node_flow["left:0"] == pytest.approx(left, rel=1e-6)
    assert balanced.edge_flows[("left:0", COORDINATOR)] == pytest.approx(left, rel=1e-6)


def test_balancing_favours_the_shorter_link_without_leaving_the_longer_idle(write_ini):
    problem, placement = fork(write_ini, left_ms=1.0, right_ms=40.0)
    balanced = balanced_flow(problem, placement)
    left, right = (balanced.edge_flows.get(("front:0", side), 0.0) for side in ("left:0", "right:0"))
    assert left > right > 0
    assert left + right == pytest.approx(max_flow(problem, placement).value, rel=1e-6)


def test_balanced_flow_of_a_placement_without_flow_is_empty(write_ini):
    problem, _ = fork(write_ini)
    stranded = Placement({"left:0": (20, 40), "right:0": (20, 40)})  # nothing holds layer 0
    flow = balanced_flow(problem, stranded)
    assert flow.value == 0.0 and flow.edge_flows == {} and flow.cut == ()


def test_one_balanced_flow_solver_at_changing_capacities_matches_fresh_solves(write_ini):
    problem, placement = fork(write_ini)
    solver = BalancedFlow(problem, placement)
    for capacity in ({"front:0": 300.0, "left:0": 500.0, "right:0": 100.0},
                     {"front:0": 800.0, "left:0": 200.0, "right:0": 200.0}):  # the GPUs bind: a cut of two
        again, fresh = solver(capacity), balanced_flow(problem, placement, capacity)
        assert again.value == pytest.approx(fresh.value, rel=1e-9)
        assert again.edge_flows == pytest.approx(fresh.edge_flows, rel=1e-6)
        assert again.cut == fresh.cut
    assert again.value == pytest.approx(400.0, rel=1e-6) and again.cut == ("left:0", "right:0")
