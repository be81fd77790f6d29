"""The Helix paper's 24-GPU cluster (profiles/helix-single24.ini, LLaMA-2-70B on 4 A100 + 8 L4 + 12 T4 with
Helix's own per-layer tables and KV room): what our planner predicts and our simulator serves for

- `default`: the default method's plan (`planner solve`, --time-limit, default 60 s) for the cluster
  file's engine, helix (each path's sequences move as one group),
- `runtime`: the default method's plan for the bundled runtime (`--engine runtime`), scored for helix,
- `helix-ilp`: Helix's published ILP layout of this cluster (artifact_evaluation/single_cluster/
  layout_llama70b/ilp/ilp_sol.ini of Thesys-lab/Helix-ASPLOS25), read as our layout: exact chaining,
  so its overlapping ranges (Helix runs part of a node's layers) carry only where boundaries meet,
- `chain20`: the 20-stage chain issue 15 measured (A100s 12 layers each, then L4s and T4s 2 each,
  the last four T4s idle).

    python benchmarks/helix_single24.py [--time-limit 60] [--write-layouts]

Per layout: static max flow; the serving estimate (tokens/s, TPOT, TTFT, sequences in flight = sum over
paths of rate x TPOT, and the KV-limited batch of the path's scarcest stage); our simulator, offline,
60 s warm-up + 600 s, fixed and lognormal lengths (tokens/s, mean TPOT, in flight = tokens/s x TPOT).
`--write-layouts` writes them to layouts/helix-single24-*.ini, which benchmarks/helix_judge.py plays in
Helix's own simulator.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from planner.cluster import load_cluster
from planner.layout import Layout, write_layout
from planner.plan import Plan, score, solve
from planner.problem import Placement, PlacementProblem
from planner.report import plan_layout
from planner.solvers.base import SolveResult
from simulator import SimConfig, simulate
from simulator.workload import Offline

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "profiles" / "helix-single24.ini"
# Helix's ILP solution: compute_node_K (offset 2) holds these layers; our host nJ is Helix's node J = K - 2
HELIX_ILP = {2: (7, 11), 3: (34, 38), 4: (23, 25), 5: (53, 60), 6: (77, 80), 7: (53, 60), 8: (68, 77),
             9: (26, 30), 10: (30, 34), 11: (37, 49), 12: (60, 68), 13: (42, 49), 14: (33, 37), 15: (38, 42),
             16: (3, 7), 17: (0, 3), 18: (11, 14), 19: (14, 23), 20: (46, 53), 21: (42, 46), 22: (25, 26),
             23: (53, 60), 24: (49, 53), 25: (26, 33)}


def helix_ilp(problem: PlacementProblem) -> Placement:
    ranges = {n.name: (0, 0) for n in problem.nodes}
    ranges.update({f"n{k - 2:02d}:0": span for k, span in HELIX_ILP.items()})
    return Placement(ranges)


def chain20(problem: PlacementProblem) -> Placement:
    """A100s first with 12 layers each, then every L4 and the first eight T4s with 2 each."""
    by_gpu = {gpu: [n.name for n in problem.nodes if n.gpu == gpu] for gpu in ("a100-40gb", "l4", "t4")}
    stages = [(n, 12) for n in by_gpu["a100-40gb"]] + [(n, 2) for n in by_gpu["l4"] + by_gpu["t4"][:8]]
    ranges, start = {n.name: (0, 0) for n in problem.nodes}, 0
    for name, k in stages:
        ranges[name] = (start, start + k)
        start += k
    assert start == problem.layers
    return Placement(ranges)


def given(problem: PlacementProblem, name: str, placement: Placement) -> Plan:
    return score(problem, SolveResult(name, placement, "given", 0.0))


def in_flight(plan: Plan) -> tuple[float, int]:
    """Sequences in flight by the estimate, and the KV-limited batch of the scarcest stage on its paths."""
    serving, problem = plan.serving, plan.problem
    flying = sum(p.tokens_per_s * p.tpot_s for p in serving.paths)
    ranges = plan.placement.units()
    scarcest = min(problem.cost(n).max_batch(ranges[n][1] - ranges[n][0], ranges[n][0] == 0,
                                             ranges[n][1] == problem.layers)
                   for p in serving.paths if p.tokens_per_s > 1e-6 for n in p.nodes)
    return flying, scarcest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--write-layouts", action="store_true")
    args = parser.parse_args()
    cluster = load_cluster(CLUSTER)
    problem = PlacementProblem(cluster)
    runtime = solve(load_cluster(CLUSTER, engine="runtime"), "milp", time_limit=args.time_limit)
    plans = {"default": solve(cluster, "milp", time_limit=args.time_limit),
             "runtime": given(problem, "runtime", runtime.placement),
             "helix-ilp": given(problem, "helix-ilp", helix_ilp(problem)),
             "chain20": given(problem, "chain20", chain20(problem))}
    print("| layout | static max flow | predicted tok/s | TPOT s | TTFT s | in flight (scarcest stage) "
          "| sim tok/s fixed / lognormal | sim TPOT s | sim in flight |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, plan in plans.items():
        layout: Layout = plan_layout(plan)
        if args.write_layouts:
            write_layout(ROOT / "layouts" / f"helix-single24-{name}.ini", layout)
        runs = [simulate(layout, SimConfig(workload=Offline(), lengths=lengths, duration_s=600, warmup_s=60))
                for lengths in ("fixed", "lognormal")]
        s = plan.serving
        flying, scarcest = in_flight(plan)
        print(f"| {name} | {s.max_flow:,.0f} | {s.throughput:,.0f} | {s.tpot_s:.2f} | {s.ttft_s:.2f} "
              f"| {flying:.0f} ({scarcest}) | {runs[0].decode_throughput:,.0f} / {runs[1].decode_throughput:,.0f} "
              f"| {runs[0].tpot['mean']:.2f} / {runs[1].tpot['mean']:.2f} "
              f"| {runs[0].decode_throughput * runs[0].tpot['mean']:.0f} / "
              f"{runs[1].decode_throughput * runs[1].tpot['mean']:.0f} |")


if __name__ == "__main__":
    main()
