"""The plan's lane count (planner/lanes.py): the model against the simulator, the choice, and the layout key
that carries it to the simulator and the runtime."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from conftest import HETERO, ROOT, run_planner
from planner import lanes as lane_model
from planner.cluster import load_cluster
from planner.layout import read_layout, write_layout
from planner.plan import score
from planner.report import plan_json, plan_layout
from planner.problem import PlacementProblem
from planner.serving import _Units, estimate
from planner.solvers.base import SolveResult
from simulator import SimConfig, parse_workload, simulate
from simulator.workload import Offline

LAYOUTS = ROOT / "layouts"
OFFLINE = SimConfig(workload=parse_workload("offline"), duration_s=120, warmup_s=60)


def _simulated(layout, lanes: int | None):
    result = simulate(dataclasses.replace(layout, lanes=lanes), OFFLINE)
    return result.decode_throughput, result.tpot["mean"]


def test_the_lane_model_follows_the_simulator_on_hetero():
    """hetero's four-stage chain: the model's round trip for 2, 3 and 6 lanes, relative to one per stage, is
    within 10% of the simulator's (fewer lanes are faster here until the trip turns latency-bound; more are
    slower), and the count the estimate chooses serves more in the simulator than one lane per stage."""
    layout = read_layout(LAYOUTS / "hetero.ini")
    problem = PlacementProblem(layout.cluster)
    one_per_stage = estimate(problem, layout.placement, lanes=False)
    paths = [(p.nodes, p.tokens_per_s * p.tpot_s, p.tpot_s) for p in one_per_stage.paths]
    units = _Units(problem, layout.placement)
    default = lane_model.round_trips(units, paths, None)[paths[0][0]]
    _, sim_default = _simulated(layout, None)
    for lanes in (2, 3, 6):
        modelled = lane_model.round_trips(units, paths, lanes)[paths[0][0]] / default
        _, sim_tpot = _simulated(layout, lanes)
        assert modelled == pytest.approx(sim_tpot / sim_default, rel=0.10), lanes
    served = estimate(problem, layout.placement)
    assert served.lanes in (2, 3)
    assert _simulated(layout, served.lanes)[0] > 1.05 * _simulated(layout, None)[0]
    choice = lane_model.choose(units, list(one_per_stage.paths))
    assert choice.lanes == served.lanes and choice.gain >= lane_model.MIN_GAIN
    # the estimate serves the gain, its flows carry it, and its TPOT is the shorter round trip's
    assert served.throughput == pytest.approx(one_per_stage.throughput * choice.gain, rel=1e-6)
    assert served.flow.value * served.load == pytest.approx(served.throughput, rel=1e-6)
    assert served.tpot_s < one_per_stage.tpot_s
    assert any(note.startswith("lanes: ") for note in served.notes)


def test_paths_that_share_a_stage_keep_one_lane_per_stage():
    layout = read_layout(LAYOUTS / "mixed-campus.ini")
    problem = PlacementProblem(layout.cluster)
    served = estimate(problem, layout.placement, lanes=False)
    nodes = [n for p in served.paths for n in p.nodes]
    assert len(nodes) > len(set(nodes))   # the case: stages on several paths
    assert lane_model.choose(_Units(problem, layout.placement), list(served.paths)).lanes is None
    assert estimate(problem, layout.placement).lanes is None


def test_under_a_tpot_limit_the_lanes_cut_the_load_less():
    """A TPOT limit that the chosen lanes meet at full load, one lane per stage only at a lower load."""
    layout = read_layout(LAYOUTS / "hetero.ini")
    free = estimate(PlacementProblem(layout.cluster), layout.placement)
    limit = free.tpot_s * 1.01
    limited = PlacementProblem(layout.cluster, max_tpot_s=limit)
    laned = estimate(limited, layout.placement, max_tpot_s=limit)
    one_per_stage = estimate(limited, layout.placement, max_tpot_s=limit, lanes=False)
    assert laned.lanes == free.lanes and laned.tpot_s <= limit and one_per_stage.tpot_s <= limit * (1 + 1e-6)
    assert laned.throughput == pytest.approx(free.throughput, rel=1e-6)
    assert one_per_stage.load < 1 and one_per_stage.throughput < laned.throughput


def test_only_the_runtime_engine_gets_a_lane_count():
    """vLLM runs one micro-batch per pipeline stage and offers no other count: a vllm plan has none."""
    layout = read_layout(LAYOUTS / "hetero.ini")
    result = SolveResult("hand", layout.placement, "given", 0.0)
    runtime = score(PlacementProblem(load_cluster(HETERO)), result)
    vllm = score(PlacementProblem(load_cluster(HETERO, engine="vllm")), result)
    assert runtime.lanes in (2, 3) and vllm.lanes is None
    assert plan_layout(runtime).lanes == runtime.lanes and plan_json(runtime)["lanes"] == runtime.lanes


def test_the_layout_carries_the_count_to_the_simulator_and_the_runtime(tmp_path, run_cli):
    layout = dataclasses.replace(read_layout(LAYOUTS / "hetero.ini"), lanes=3)
    path = tmp_path / "layout.ini"
    write_layout(path, layout)
    assert read_layout(path).lanes == 3
    sim = json.loads(run_planner("simulate", path, "--duration", "20", "--json").stdout)
    assert sim["settings"]["lanes"] == 3
    told = json.loads(run_planner("simulate", path, "--duration", "20", "--microbatches", "1", "--json").stdout)
    assert told["settings"]["lanes"] == 1
    for given, expected in ((None, 3), ("0", 0)):
        out = tmp_path / f"export-{given}"
        code, _, err = run_cli("export", path, "--to", "runtime", out, *(("--lanes", given) if given else ()))
        assert code == 0, err
        assert json.loads((out / "runtime.json").read_text())["limits"]["lanes"] == expected


@pytest.mark.parametrize("value", ["0", "two"])
def test_a_bad_lane_count_in_a_layout_is_a_one_line_error(tmp_path, value):
    text = (LAYOUTS / "hetero.ini").read_text().replace("[layout]\n", f"[layout]\nlanes = {value}\n", 1)
    text = text.replace("cluster = ../profiles/hetero.ini", f"cluster = {HETERO}")
    path = tmp_path / "layout.ini"
    path.write_text(text)
    done = run_planner("simulate", path, "--duration", "10")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "lanes" in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_a_vllm_export_says_the_lanes_do_not_apply(tmp_path, run_cli):
    """vLLM has no lane setting: exporting a layout planned with lanes warns in one line and still writes."""
    layout = dataclasses.replace(read_layout(LAYOUTS / "l20x4.ini"), lanes=2)
    path = tmp_path / "layout.ini"
    write_layout(path, layout)
    code, _, err = run_cli("export", path, "--to", "vllm", tmp_path / "out")
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "lanes = 2" in warned[0] and "--to vllm" in warned[0]
    assert (tmp_path / "out" / "router.json").exists()


def test_the_lane_model_charges_waking_as_the_simulator_does(tmp_path):
    """With a measured wake_ms, a stage that waits between its lanes' visits pays for waking: at one request
    in flight each of the two stages waits for the other's step, and both the model's round trip and the
    simulator's TPOT rise by about two wakes (1.5 ms each)."""
    from test_charges import WAKE, _layout

    trips = {}
    for keys in ("", WAKE):
        layout = _layout(tmp_path, keys, "m * 2", (0, 18, 36))
        problem = PlacementProblem(layout.cluster)
        paths = [(p.nodes, 1.0, p.tpot_s) for p in estimate(problem, layout.placement, lanes=False).paths]
        modelled = lane_model.round_trips(_Units(problem, layout.placement), paths, 1)[paths[0][0]]
        one = dataclasses.replace(OFFLINE, workload=Offline(1))
        trips[keys] = (modelled, simulate(dataclasses.replace(layout, lanes=1), one).tpot["mean"])
    model_rise, sim_rise = (trips[WAKE][i] - trips[""][i] for i in (0, 1))
    assert sim_rise == pytest.approx(3.0e-3, rel=1e-6)
    assert model_rise == pytest.approx(sim_rise, rel=0.2)


def _words(text: str) -> str:
    return " ".join(text.split())   # rich wraps lines at the terminal's width


def _figure(text: str, label: str) -> float:
    return float(re.search(label + r" ([0-9,.]+) tokens/s", _words(text)).group(1).replace(",", ""))


def test_an_estimate_above_the_static_max_flow_says_why(tmp_path):
    """The static max flow and its upper bound count each stage at its batch with one lane per stage; a plan
    of fewer lanes may be estimated above both, and `solve` and `simulate` then say so rather than print a
    bound that its own estimate passes. The even split of replicas-8b runs 2 lanes per path there."""
    for method, passes in (("even", True), ("chains", False)):
        out = tmp_path / f"{method}.ini"
        done = run_planner("solve", ROOT / "profiles" / "replicas-8b.ini", "--engine", "runtime", "--method", method,
                           "--out", out)
        assert done.returncode == 0, done.stderr
        served = _figure(done.stdout, "predicted serving throughput")
        assert (served > _figure(done.stdout, "static max flow")) is passes, done.stdout
        assert ("at one lane per stage, which 2 lanes per path pass" in _words(done.stdout)) is passes
        simulated = _words(run_planner("simulate", out, "--duration", "10").stdout)
        assert ("at one lane per stage, which" in simulated) is passes, simulated
