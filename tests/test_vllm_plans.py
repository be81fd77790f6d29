"""--engine vllm: the optimiser returns only what vLLM can run, so `planner export --to vllm` always accepts
it (planner/solvers/vllm_plans.py, the rules in planner/vllm_runnable.py); compare shows what it costs."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import HETERO, PROFILES, run_planner
from planner.cluster import load_cluster
from planner.errors import SolveError
from planner.export.vllm import export_vllm
from planner.layout import read_layout, write_layout
from planner.plan import solve
from planner.problem import Placement, PlacementProblem
from planner.report import plan_layout
from planner.serving import estimate
from planner.synthetic import cluster_text, regional_cluster_text
from planner.vllm_runnable import MAX_HOSTS_PER_CHAIN, vllm_chains


def _serve_args(script: Path) -> tuple[dict[str, str], list[tuple[str, int, int]]]:
    """A serve-dN.sh's vllm flags and its stage comment: [(unit, start, end)] in stage order."""
    text = script.read_text()
    (line,) = [l for l in text.splitlines() if l.startswith("exec vllm serve")]
    words = shlex.split(line.replace('"$MODEL"', "MODEL"))
    flags = {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--") and i + 1 < len(words)}
    (partition,) = re.findall(r"^export VLLM_PP_LAYER_PARTITION=(\S+)$", text, flags=re.M)
    flags["partition"] = partition.strip("'\"")
    stages = [(name, int(s), int(e)) for name, s, e in re.findall(r"stage \d+: (\S+) \[(\d+), (\d+)\)", text)]
    return flags, stages


def _check_export_says_what_the_plan_says(layout_path: Path, out: Path) -> None:
    """Every unit of the plan is a stage of exactly one deployment, with the plan's range, and each
    deployment's vLLM flags (TP, PP, layer partition) are its stages'."""
    layout = read_layout(layout_path)
    units = layout.placement.units()
    seen = {}
    for script in sorted(out.glob("serve-d*.sh")):
        flags, stages = _serve_args(script)
        assert stages, script.read_text()
        assert stages[0][1] == 0 and stages[-1][2] == layout.cluster.model.layers
        assert all(a[2] == b[1] for a, b in zip(stages, stages[1:]))  # each stage starts where one ends
        assert flags["partition"] == ",".join(str(e - s) for _, s, e in stages)
        assert int(flags["--pipeline-parallel-size"]) == len(stages)
        assert {len(layout.placement.members(name)) for name, _, _ in stages} == {int(flags["--tensor-parallel-size"])}
        hosts = list(dict.fromkeys(name.split(":")[0] for name, _, _ in stages))
        assert len(hosts) <= MAX_HOSTS_PER_CHAIN
        for name, s, e in stages:
            assert name not in seen
            seen[name] = (s, e)
    assert seen == units
    weights = json.loads((out / "router.json").read_text())
    assert len(weights) == len(list(out.glob("serve-d*.sh"))) and sum(weights.values()) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("cluster", [PROFILES / "l20x4-10g.ini", HETERO])
def test_solve_engine_vllm_exports_with_to_vllm(tmp_path, cluster):
    layout, out = tmp_path / "plan.ini", tmp_path / "vllm"
    solved = run_planner("solve", cluster, "--engine", "vllm", "--time-limit", "10", "--out", layout)
    assert solved.returncode == 0, solved.stderr
    assert "vLLM-runnable" in solved.stdout
    exported = run_planner("export", layout, "--to", "vllm", out)
    assert exported.returncode == 0, exported.stderr
    _check_export_says_what_the_plan_says(layout, out)


def test_bundled_plans_are_what_the_clusters_allow():
    """Seed 004's cluster at 10 Gbit/s gets TP 2 x PP 2 (as run by hand); hetero one four-stage chain over
    both hosts, each host's GPUs together (the runtime plan visits host1 twice, which vLLM cannot run)."""
    l20 = solve(load_cluster(PROFILES / "l20x4-10g.ini", engine="vllm"), "milp", time_limit=10)
    assert set(l20.placement.units()) == {"head:0+head:1", "worker:0+worker:1"}
    hetero = solve(load_cluster(HETERO, engine="vllm"), "milp", time_limit=10)
    (chain,) = vllm_chains(hetero.cluster, hetero.placement)
    hosts = [u.host for u in chain]
    assert len(chain) == 4 and hosts[0] == hosts[1] != hosts[2] == hosts[3]
    assert hetero.serving.throughput > 0


def _with_addresses(text: str) -> str:
    """Give every GPU host an address (generated clusters have none), so chains may span two hosts."""
    count = iter(range(1, 10_000))
    return re.sub(r"^(\[host (?!coord\])[^\]]+\])$", lambda m: f"{m.group(1)}\naddress = 10.1.{next(count)}.1",
                  text, flags=re.M)


SHAPES = [  # (name, INI text): generated clusters of a few shapes, each with a vLLM-runnable plan
    ("4 hosts x 2 GPUs, two types, qwen3-8b", cluster_text({"rtx4090": 4, "a10": 4}, model="qwen3-8b", regions=2,
                                                            seed=1, gpus_per_host=2)),
    ("2 regions, 4 GPUs per host, qwen3-32b, addresses", _with_addresses(
        cluster_text({"l20": 4, "rtx3090": 4, "a10": 4}, model="qwen3-32b", regions=2, seed=2, gpus_per_host=4))),
    ("one GPU per host, qwen3-14b on 24 GB cards, addresses", _with_addresses(
        regional_cluster_text(({"rtx4090": 3, "a10": 2}, {"l4": 3, "rtx3090": 2}), model="qwen3-14b", seed=3))),
    ("one GPU per host, qwen3-14b, no addresses (single-host chains only)",
     regional_cluster_text(({"a100-40gb": 2, "rtx4090": 2}, {"l4": 4}), model="qwen3-14b", seed=4)),
]


@pytest.mark.parametrize("name, text", SHAPES, ids=[s[0] for s in SHAPES])
def test_every_engine_vllm_plan_on_generated_clusters_exports(tmp_path, name, text):
    path = tmp_path / "cluster.ini"
    path.write_text(text)
    cluster = load_cluster(path, engine="vllm")
    plan = solve(cluster, "milp", time_limit=8)
    assert plan.serving.throughput > 0
    chains = vllm_chains(cluster, plan.placement)
    for chain in chains:
        assert len({u.tp for u in chain}) == 1 and len({u.host for u in chain}) <= MAX_HOSTS_PER_CHAIN
        if len({u.host for u in chain}) > 1:
            assert all(cluster.host(u.host).address for u in chain)
    # the chains are apart: the prediction credits no token crossing between deployments, so it is the
    # sum of each chain's own (2% for the estimate's damped fixed point)
    problem = PlacementProblem(cluster)
    alone = 0.0
    for chain in chains:
        names = {m for u in chain for m in plan.placement.members(u.name)}
        ranges = {n: span if n in names else (0, 0) for n, span in plan.placement.ranges.items()}
        alone += estimate(problem, Placement(ranges, tuple(g for g in plan.placement.tp_groups if g[0] in names))).throughput
    assert plan.serving.throughput == pytest.approx(alone, rel=0.02)
    layout_path = tmp_path / "plan.ini"
    write_layout(layout_path, plan_layout(plan))
    export_vllm(read_layout(layout_path), tmp_path / "vllm", layout_path=str(layout_path))
    _check_export_says_what_the_plan_says(layout_path, tmp_path / "vllm")


def test_vllm_plan_serves_at_least_every_vllm_runnable_baseline():
    cluster = load_cluster(PROFILES / "mixed-campus.ini", engine="vllm")
    best = solve(cluster, "milp", time_limit=20).serving.throughput
    for method in ("tp-pp", "replicas", "even", "separate"):
        try:
            plan = solve(cluster, method)
            vllm_chains(cluster, plan.placement)
        except Exception:  # the method has no plan here, or vLLM cannot run it
            continue
        assert best >= plan.serving.throughput * (1 - 1e-6), method


def test_no_vllm_runnable_plan_is_a_one_line_error(tmp_path):
    """LLaMA-2-70B over one-GPU hosts: a vLLM chain spans at most two hosts, and no two hold 80 layers."""
    path = tmp_path / "helix.ini"
    path.write_text(_with_addresses(regional_cluster_text(({"a100-40gb": 2}, {"t4": 4, "l4": 2}), seed=0)))
    result = run_planner("solve", path, "--engine", "vllm", "--time-limit", "5")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: no vLLM-runnable plan:") and "of the 80 layers" in lines[0]
    assert "at most two hosts" in lines[0] and "--engine runtime" in lines[0]
    assert "Traceback" not in result.stderr
    # the same cluster plans for the runtime, which runs any chain
    assert solve(load_cluster(path), "milp", time_limit=5).serving.throughput > 0
    with pytest.raises(SolveError, match="no vLLM-runnable plan"):
        solve(load_cluster(path, engine="vllm"), "milp", time_limit=5)


def test_chains_are_paired_so_that_vllm_can_run_them(tmp_path):
    """Two chains meet at layer 20 on four hosts; whichever stage the flows favour, the split into chains
    is the one vLLM can run (one TP size each), the same rules the optimiser builds by."""
    text = "\n".join(["[cluster]", "model = qwen3-14b", "dtype = fp16", "coordinator = a", ""] + [
        line for i, host in enumerate("abcd") for line in
        (f"[host {host}]", "gpus = rtx4090 * 2", "gpu_link = 31.5 GB/s, 0.01 ms", f"address = 10.0.0.{i + 1}", "")]
        + ["[network]", "default = 10 Gbit/s, 0.2 ms", ""])
    path = tmp_path / "four.ini"
    path.write_text(text)
    cluster = load_cluster(path)
    ranges = dict.fromkeys((n.name for n in cluster.nodes()), (0, 0))
    ranges.update({"a:0": (0, 20), "b:0": (20, 40), "c:0": (0, 20), "c:1": (0, 20), "d:0": (20, 40), "d:1": (20, 40)})
    placement = Placement(ranges, (("c:0", "c:1"), ("d:0", "d:1")))
    flows = {("a:0", "d:0+d:1"): 100.0, ("c:0+c:1", "b:0"): 100.0}  # the flows cross between the chains
    chains = vllm_chains(cluster, placement, flows)
    assert sorted([u.name for u in chain] for chain in chains) == [["a:0", "b:0"], ["c:0+c:1", "d:0+d:1"]]


def test_compare_shows_what_the_vllm_constraint_costs():
    result = run_planner("compare", HETERO, "--methods", "milp", "--time-limit", "8", "--no-simulate",
                         "--no-match-tpot", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    plans = {entry["solved_for"]: entry for entry in row["engine_plans"]}
    assert set(plans) == {"runtime", "vllm"}
    assert plans["vllm"]["vllm_runnable"] and plans["vllm"]["vllm_refusal"] is None
    assert plans["runtime"]["vllm_runnable"] == (plans["runtime"]["vllm_refusal"] is None)
    for entry in plans.values():
        for engine in ("runtime", "vllm"):
            assert entry["predictions"][engine]["throughput_tokens_per_s"] > 0
    # the runtime plan as the runtime predicts it is the table's own row
    assert plans["runtime"]["predictions"]["runtime"]["throughput_tokens_per_s"] == row["throughput_tokens_per_s"]
    text = run_planner("compare", HETERO, "--methods", "milp", "--time-limit", "8", "--no-simulate", "--no-match-tpot")
    assert text.returncode == 0, text.stderr
    assert "what vLLM can run" in text.stdout and "planning only what vLLM can run" in text.stdout
