"""The simulator judges the planner: predicted serving throughput and TPOT within 15% of the simulated
ones on the bundled layouts and a generated 24-GPU cluster, and the planner's ranking of methods holds."""

from dataclasses import replace
from pathlib import Path

import pytest

from planner.cluster import load_cluster
from planner.layout import Layout, predicted as layout_estimate, read_layout
from planner.plan import solve
from planner.problem import Placement, PlacementProblem
from planner.report import plan_layout
from planner.serving import estimate
from planner.synthetic import write_cluster
from simulator import SimConfig, simulate
from simulator.workload import Offline

LAYOUTS = Path(__file__).resolve().parent.parent / "layouts"
OFFLINE = SimConfig(workload=Offline(), lengths="fixed", duration_s=300)   # automatic warm-up
TOLERANCE = 0.15


def _agreement(layout) -> tuple[float, float]:
    predicted = layout_estimate(layout)
    simulated = simulate(layout, OFFLINE)
    return (simulated.decode_throughput / predicted.throughput, simulated.tpot["mean"] / predicted.tpot_s)


@pytest.mark.parametrize("name", ["hetero", "a10x8", "mixed-campus"])
def test_bundled_layouts_agree_within_15_percent(name):
    throughput, tpot = _agreement(read_layout(LAYOUTS / f"{name}.ini"))
    assert abs(throughput - 1) <= TOLERANCE, throughput
    assert abs(tpot - 1) <= TOLERANCE, tpot


def test_slow_link_layout_throughput_agrees():
    throughput, _ = _agreement(read_layout(LAYOUTS / "l20x4.ini"))
    assert abs(throughput - 1) <= TOLERANCE, throughput


@pytest.mark.xfail(strict=True, reason=(
    "l20x4 (100 Mbit/s between hosts), every request the same length: the planner's FIFO link wait "
    "(Pollaczek-Khinchine, random arrivals) puts TPOT at ~1.3x the simulated mean of this clockwork load; "
    "throughput agrees (docs/simulator.md#agreement-with-the-planner)"))
def test_slow_link_layout_tpot_agrees():
    _, tpot = _agreement(read_layout(LAYOUTS / "l20x4.ini"))
    assert abs(tpot - 1) <= TOLERANCE, tpot


def test_slow_link_layout_tpot_agrees_with_varied_lengths():
    layout = read_layout(LAYOUTS / "l20x4.ini")
    predicted = layout_estimate(layout)
    simulated = simulate(layout, replace(OFFLINE, lengths="lognormal"))
    assert abs(simulated.tpot["mean"] / predicted.tpot_s - 1) <= TOLERANCE


DEEP_CHAIN = """\
[cluster]
model = llama-2-70b
dtype = fp16
coordinator = east

[host east]
gpus = a100-40gb * 8

[host west]
gpus = l4 * 8

[host south]
gpus = t4 * 8

[network]
default = 1 Gbit/s, 10 ms
"""


def test_deep_chain_agrees_within_15_percent(tmp_path):
    """LLaMA-2-70B as one 24-stage pipeline of lightly loaded stages over three hosts, where a prompt's
    chunks, each a prefill pass, cost more than one pass over the prompt (0.88x before the cost model
    charged them, 0.91x after). Identical requests run in waves, so the window is long."""
    path = tmp_path / "deep.ini"
    path.write_text(DEEP_CHAIN)
    cluster = load_cluster(path)
    ranges, start = {}, 0
    for host, per in (("east", 4), ("west", 3), ("south", 3)):
        for i in range(8):
            ranges[f"{host}:{i}"] = (start, start + per)
            start += per
    placement = Placement(ranges)
    predicted = estimate(PlacementProblem(cluster), placement)
    layout = Layout(cluster, "chain", placement, predicted.flow.edge_flows, {}, predicted.lanes)
    simulated = simulate(layout, replace(OFFLINE, duration_s=1200))
    assert len(predicted.paths) == 1 and len(predicted.paths[0].nodes) == 24
    assert abs(simulated.decode_throughput / predicted.throughput - 1) <= TOLERANCE
    assert abs(simulated.tpot["mean"] / predicted.tpot_s - 1) <= TOLERANCE


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "gen24.ini"
    return write_cluster(path, {"a100-40gb": 4, "l4": 8, "t4": 12}, regions=3, seed=24)


def test_generated_24_gpu_cluster_agrees_within_15_percent(generated: Path):
    layout = plan_layout(solve(load_cluster(generated), "separate"))
    throughput, tpot = _agreement(layout)
    assert abs(throughput - 1) <= TOLERANCE, throughput
    assert abs(tpot - 1) <= TOLERANCE, tpot


def test_planner_ranking_of_methods_holds_in_simulation():
    """On hetero: every method the planner ranks clearly apart (by more than the 15% agreement band) is
    ranked the same way by the simulator, and the default method is first in both."""
    cluster = load_cluster(LAYOUTS.parent / "profiles" / "hetero.ini")
    rows = []
    for method in ("milp", "even", "greedy", "separate", "tp-pp", "replicas"):
        plan = solve(cluster, method, time_limit=20)
        rows.append((method, plan.serving.throughput, simulate(plan_layout(plan), OFFLINE).decode_throughput))
    best_planned = max(rows, key=lambda r: r[1])[0]
    best_simulated = max(rows, key=lambda r: r[2])[0]
    assert best_planned == best_simulated == "milp"
    for a in rows:
        for b in rows:
            if a[1] > b[1] * (1 + 2 * TOLERANCE):
                assert a[2] > b[2], (a, b)
