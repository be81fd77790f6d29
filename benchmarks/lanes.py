"""The plan's lane count against the simulator, on generated clusters (docs/planner.md#lanes).

    python benchmarks/lanes.py [--time-limit 20] [--duration 300]

Each case is a cluster from planner.synthetic (GPU mix, model, regions, GPUs per host, seed; regions
125 MB/s and 5 ms apart) solved by the default method. Printed per case: the lane count the plan chose
(- for one per stage), its predicted output tokens/s, and the simulator's (offline, fixed lengths, 60 s
warm-up + --duration) with that count and, where a count was chosen, with one lane per stage instead:
does the count the estimate picks serve more where it runs? Not part of the test run.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

from planner.cluster import load_cluster
from planner.plan import solve
from planner.report import plan_layout
from planner.solvers.registry import DEFAULT_METHOD
from planner.synthetic import write_cluster
from simulator import SimConfig, parse_workload, simulate

# (GPUs, model, regions, seed, GPUs per host)
CASES = (
    ({"rtx4090": 4, "rtx2080ti": 4}, "qwen3-14b", 1, 1, 4),
    ({"a10": 4, "l20": 2}, "qwen3-32b", 2, 2, 2),
    ({"l4": 6, "t4": 6}, "qwen3-8b", 1, 3, 2),
    ({"a100-40gb": 2, "l4": 4}, "llama-2-70b", 2, 4, 2),
    ({"rtx4090": 2, "a10": 4}, "qwen3-32b", 1, 5, 2),
    ({"l20": 4}, "qwen2.5-72b", 1, 6, 4),
    ({"rtx2080ti": 6, "rtx4090": 2}, "qwen3-8b", 2, 7, 1),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=300.0)
    args = parser.parse_args()
    config = SimConfig(workload=parse_workload("offline"), duration_s=args.duration, warmup_s=60.0)
    print("| GPUs | model | lanes | predicted tok/s | simulated | simulated, one lane per stage | gain |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for gpus, model, regions, seed, per_host in CASES:
            path = write_cluster(Path(tmp) / f"case{seed}.ini", gpus, model=model, regions=regions, seed=seed,
                                 gpus_per_host=per_host, region_bandwidth_mb_s=125, region_latency_ms=5)
            plan = solve(load_cluster(path), DEFAULT_METHOD, time_limit=args.time_limit)
            layout = plan_layout(plan)
            served = simulate(layout, config).decode_throughput
            mix = " + ".join(f"{n} {gpu}" for gpu, n in gpus.items())
            if plan.lanes is None:
                print(f"| {mix} | {model} | - | {plan.serving.throughput:,.0f} | {served:,.0f} | | |", flush=True)
                continue
            one_per_stage = simulate(dataclasses.replace(layout, lanes=None), config).decode_throughput
            print(f"| {mix} | {model} | {plan.lanes} | {plan.serving.throughput:,.0f} | {served:,.0f} "
                  f"| {one_per_stage:,.0f} | {served / one_per_stage - 1:+.0%} |", flush=True)


if __name__ == "__main__":
    main()
