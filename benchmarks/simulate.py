"""Simulator speed: simulated seconds per wall second and events per second, 8 to 128 GPUs.

    python benchmarks/simulate.py                 # the table (median of 3 runs per row)
    python benchmarks/simulate.py --target        # the 24-GPU, three-region, offline 60 s + 600 s run
    python benchmarks/simulate.py --sizes 8,24 --runs 1 --duration 120

Clusters are generated into a temporary folder: hosts of 4 GPUs of one catalog type, spread over
regions (fast links inside a region, slower ones between regions, the coordinator in the first), and
placed with the `chains` method (fast) through planner.plan.solve. Not part of the test run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from planner.cluster import load_cluster
from planner.layout import Layout
from planner.plan import solve
from planner.report import plan_layout
from simulator import SimConfig, parse_workload, simulate

# (GPU type, GPUs per host) per region, cycled as the cluster grows: a Helix-like mix of datacenter
# cards (A100) with cheaper inference cards (L4, T4) in other regions.
REGION_GPUS = (("a100-40gb", 4), ("l4", 4), ("t4", 4), ("a10", 4))
INTRA_REGION = "10 Gbit/s, 0.2 ms"
INTER_REGION = ("1 Gbit/s, 10 ms", "1 Gbit/s, 25 ms", "500 Mbit/s, 40 ms")


def cluster_text(gpus: int, regions: int, model: str = "llama-2-70b") -> str:
    """A cluster file of `gpus` GPUs in `regions` regions (hosts of 4 GPUs, one GPU type per region)."""
    hosts: list[tuple[str, str, int, int]] = []   # (name, type, count, region)
    left, host = gpus, 0
    while left > 0:
        region = host % regions
        gpu, per_host = REGION_GPUS[region % len(REGION_GPUS)]
        count = min(per_host, left)
        hosts.append((f"r{region}h{host}", gpu, count, region))
        left -= count
        host += 1
    lines = ["[cluster]", f"model = {model}", "dtype = fp16", f"coordinator = {hosts[0][0]}", ""]
    for name, gpu, count, region in hosts:
        lines += [f"[host {name}]", f"gpus = {gpu} * {count}", "gpu_link = 16 GB/s, 0.01 ms", f"region = r{region}", ""]
    lines += ["[network]", f"default = {INTER_REGION[0]}"]
    for i, (a, _, _, ra) in enumerate(hosts):
        for b, _, _, rb in hosts[i + 1:]:
            link = INTRA_REGION if ra == rb else INTER_REGION[(ra + rb) % len(INTER_REGION)]
            lines.append(f"{a} -- {b} = {link}")
    return "\n".join(lines) + "\n"


def make_layout(gpus: int, regions: int, folder: Path) -> Layout:
    path = folder / f"bench-{gpus}gpu-{regions}r.ini"
    path.write_text(cluster_text(gpus, regions))
    plan = solve(load_cluster(path), "chains", time_limit=30.0)
    return plan_layout(plan)


def run(layout: Layout, workload: str, duration: float, warmup: float) -> tuple[float, int, float]:
    began = time.perf_counter()
    result = simulate(layout, SimConfig(workload=parse_workload(workload), duration_s=duration, warmup_s=warmup))
    return time.perf_counter() - began, result.events, result.decode_throughput


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,16,24,48,64,128")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--target", action="store_true", help="only the 24-GPU three-region offline run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.target:
            layout = make_layout(24, 3, folder)
            wall, events, tokens = run(layout, "offline", args.duration, args.warmup)
            print(f"24 GPUs, 3 regions, offline, {args.warmup:g} s warm-up + {args.duration:g} s: "
                  f"{wall:.2f} s wall, {events:,} events, {tokens:,.0f} tokens/s simulated, "
                  f"peak RSS {peak_rss_mb():.0f} MB")
            return
        print(f"{'GPUs':>5} {'regions':>7} {'workload':>14} {'wall s':>7} {'sim s / wall s':>14} "
              f"{'events/s':>10} {'events':>9} {'tokens/s':>9}")
        for gpus in [int(x) for x in args.sizes.split(",")]:
            regions = 2 if gpus <= 8 else 3 if gpus <= 48 else 4
            layout = make_layout(gpus, regions, folder)
            offline_rate = None
            for workload in ("offline", "poisson"):
                if workload == "poisson":  # half the offline throughput, in requests/s
                    mean_output = layout.cluster.workload.output_tokens
                    workload = f"poisson:{0.5 * offline_rate / mean_output:.3g}"
                runs = [run(layout, workload, args.duration, args.warmup) for _ in range(args.runs)]
                wall = statistics.median(r[0] for r in runs)
                events, tokens = runs[0][1], runs[0][2]
                offline_rate = offline_rate or tokens
                simulated = args.duration + args.warmup
                print(f"{gpus:>5} {regions:>7} {workload:>14} {wall:>7.2f} {simulated / wall:>14.0f} "
                      f"{events / wall:>10,.0f} {events:>9,} {tokens:>9,.0f}", flush=True)
        print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
