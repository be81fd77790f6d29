"""The helix engine (planner/engines.py): each path's sequences move as one group, so the planner builds a
fast trunk with slow branches (planner/solvers/branches.py), the estimate rates paths by their group's round
trip (planner/lanes.py: grouped) and the simulator runs one lane per path. Against Helix's own simulator:
docs/planner.md#the-helix-24-gpu-cluster."""

from __future__ import annotations

import json

import pytest

from conftest import PROFILES, ROOT, run_planner
from planner.cluster import load_cluster
from planner.layout import read_layout
from planner.plan import score
from planner.problem import Placement, PlacementProblem
from planner import lanes as lane_model
from planner.serving import _Units, estimate
from planner.solvers.base import SolveResult
from planner.solvers.branches import branch_placements
from simulator import SimConfig, parse_workload, simulate

HELIX24 = PROFILES / "helix-single24.ini"
LAYOUTS = ROOT / "layouts"
OFFLINE = SimConfig(workload=parse_workload("offline"), duration_s=300, warmup_s=60)


def _paths(placement, layers: int) -> list[list[str]]:
    """Every coordinator-to-coordinator chain of GPUs whose ranges meet end to start."""
    spans = {n: r for n, r in placement.ranges.items() if r[1] > r[0]}
    paths, frontier = [], [[n] for n, r in spans.items() if r[0] == 0]
    while frontier:
        path = frontier.pop()
        end = spans[path[-1]][1]
        if end == layers:
            paths.append(path)
        frontier += [path + [n] for n, r in spans.items() if r[0] == end and n not in path]
    return paths


def test_the_cluster_file_names_its_engine_and_the_default_plan_branches_ahead_of_the_a100s():
    """profiles/helix-single24.ini says `engine = helix`: `planner solve` plans for Helix's scheduling, and
    the plan is a trunk of the four A100s, each with fewer than the 12 layers a chain gives them (KV room
    for more requests), fed by parallel L4/T4 branches: a request's path holds only one branch."""
    done = run_planner("solve", HELIX24, "--time-limit", "30", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["engine"] == "helix"
    cluster = load_cluster(HELIX24)
    ranges = {n["name"]: (n["start_layer"], n["end_layer"]) for n in plan["nodes"]}
    a100s = [n.name for n in cluster.nodes() if n.gpu == "a100-40gb"]
    assert all(0 < ranges[n][1] - ranges[n][0] <= 11 for n in a100s)
    paths = _paths(Placement(ranges), cluster.model.layers)
    assert all(set(a100s) <= set(p) for p in paths)   # the trunk: every path passes every A100
    first_stages = {p[0] for p in paths}
    assert len(first_stages) >= 2                       # parallel branches
    # planning for the engine pays: 1.5x what the runtime's plan (a 20-stage chain) serves on Helix
    # (the trunk-and-branches candidates make the difference: stage pools alone reach 1.33x)
    chain = read_layout(LAYOUTS / "helix-single24-runtime.ini")
    assert plan["throughput_tokens_per_s"] > 1.5 * estimate(PlacementProblem(chain.cluster), chain.placement).throughput


def test_the_engine_option_overrides_the_cluster_file():
    plain = load_cluster(HELIX24)
    runtime = load_cluster(HELIX24, engine="runtime")
    assert plain.engine == "helix" and runtime.engine == "runtime"
    assert plain.cost_params.prefill_chunk_tokens == 2048 and runtime.cost_params.prefill_chunk_tokens == 256


def test_an_unknown_engine_in_a_cluster_file_is_a_one_line_error(tmp_path):
    text = HELIX24.read_text().replace("engine = helix", "engine = sglang")
    bad = tmp_path / "c.ini"
    bad.write_text(text)
    done = run_planner("show", bad)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "engine" in lines[0] and "sglang" in lines[0] and "helix" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_group_round_trip_walks_every_stage_at_the_whole_batch():
    """With one group per path a chain's round trip is at least the sum of its stages' steps at the whole
    group's batch (no lanes overlap); one lane per stage pipelines them and is shorter."""
    layout = read_layout(LAYOUTS / "helix-single24-chain20.ini")
    problem = PlacementProblem(layout.cluster)
    served = estimate(problem, layout.placement)
    assert layout.cluster.engine == "helix" and len([p for p in served.paths if p.tokens_per_s > 0]) == 1
    path = next(p for p in served.paths if p.tokens_per_s > 0)
    held = path.tokens_per_s * path.tpot_s
    units = _Units(problem, layout.placement)
    steps = sum(lane_model._Stage(units, n).step_s(held) for n in path.nodes)
    assert path.tpot_s >= steps
    piped = lane_model.round_trips(units, [(path.nodes, held, path.tpot_s)], None)[path.nodes]
    assert piped < 0.7 * path.tpot_s


def test_the_branch_candidates_keep_every_gpu_within_its_memory():
    problem = PlacementProblem(load_cluster(HELIX24))
    found = branch_placements(problem)
    assert found
    for placement in found:
        for name, (start, end) in placement.ranges.items():
            assert end == start or problem.fits(name, start, end)
        assert _paths(placement, problem.layers)


def test_the_simulator_runs_one_lane_per_path_and_ranks_branches_above_the_chain_as_helix_does():
    """Helix's simulator serves the default plan's structure (branches into A100s of 10 layers) at 269.6
    tokens/s and the 20-stage chain at 161.4 (docs/planner.md#the-helix-24-gpu-cluster); ours, on the helix
    engine, must rank them the same way, by a wide margin."""
    default = simulate(read_layout(LAYOUTS / "helix-single24-default.ini"), OFFLINE)
    chain = simulate(read_layout(LAYOUTS / "helix-single24-chain20.ini"), OFFLINE)
    assert default.settings["lanes"] == chain.settings["lanes"] == 1
    assert default.settings["token_budget"] == 2048
    assert default.decode_throughput > 1.5 * chain.decode_throughput


@pytest.mark.parametrize("engine", ["runtime", "vllm"])
def test_other_engines_keep_their_own_scheduling(engine):
    """The group model is the helix engine's alone: the same chain on the runtime or vLLM pipelines its lanes."""
    layout = read_layout(LAYOUTS / "helix-single24-chain20.ini")
    result = SolveResult("hand", layout.placement, "given", 0.0)
    helix = score(PlacementProblem(layout.cluster), result)
    other = score(PlacementProblem(load_cluster(HELIX24, engine=engine)), result)
    assert other.serving.tpot_s < 0.7 * helix.serving.tpot_s


def test_exporting_a_helix_plan_to_another_engine_warns(tmp_path):
    """A plan made for Helix's scheduling runs on the bundled runtime, but not as predicted: one warning line."""
    done = run_planner("export", LAYOUTS / "helix-single24-default.ini", "--to", "runtime", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "helix engine" in warned[0] and "--engine runtime" in warned[0]
    assert (tmp_path / "out" / "runtime.json").is_file()


def test_helix_plans_keep_to_single_gpus():
    """Helix places layers on single GPUs only (its export refuses groups): on l20x4, where the runtime's plan
    pairs the GPUs of each host for tensor parallelism, the helix plan does not."""
    runtime = json.loads(run_planner("solve", PROFILES / "l20x4.ini", "--time-limit", "5", "--json").stdout)
    helix = run_planner("solve", PROFILES / "l20x4.ini", "--engine", "helix", "--time-limit", "5", "--json")
    assert helix.returncode == 0, helix.stderr
    assert runtime.get("tp_groups") and not json.loads(helix.stdout).get("tp_groups")


@pytest.mark.parametrize("name", ["helix-single24-default", "helix-single24-chain20", "helix-single24-helix-ilp"])
def test_the_group_estimate_agrees_with_the_simulator(name):
    """On the helix engine the estimate (one group per path, in flight filled to KV) and the simulator (one
    lane per path) agree within 15% on throughput and TPOT, fixed lengths, automatic warm-up + 600 s (with
    300 s the default plan's admission has not settled: docs/simulator.md#agreement-with-the-planner)."""
    layout = read_layout(LAYOUTS / f"{name}.ini")
    predicted = estimate(PlacementProblem(layout.cluster), layout.placement)
    simulated = simulate(layout, SimConfig(workload=parse_workload("offline"), lengths="fixed", duration_s=600))
    assert simulated.decode_throughput / predicted.throughput == pytest.approx(1, abs=0.15)
    assert simulated.tpot["mean"] / predicted.tpot_s == pytest.approx(1, abs=0.15)
