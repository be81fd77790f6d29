"""Simulator speed: simulated seconds per wall second and events per second, 8 to 128 GPUs.

    python benchmarks/simulate.py                 # the table (median of 3 runs per row)
    python benchmarks/simulate.py --target        # the 24-GPU, three-region, offline 60 s + 600 s run
    python benchmarks/simulate.py --sizes 8,24 --runs 1 --duration 120
    python benchmarks/simulate.py --busy          # the busy case (issue 15): 24 GPUs, 3 regions, Qwen3-32B
    python benchmarks/simulate.py --busy --baseline /path/to/old/checkout --runs 5
    python benchmarks/simulate.py --busy --pure   # also this checkout's pure-Python simulator, side by side

Clusters are generated into a temporary folder: hosts of 4 GPUs of one catalog type, spread over
regions (fast links inside a region, slower ones between regions, the coordinator in the first), and
placed with the `chains` method (fast) through planner.plan.solve. Not part of the test run.

`--busy`: a 24-GPU three-region cluster from planner.synthetic.regional_cluster_text (RTX 4090, RTX
2080 Ti, A10 and L20, one GPU per host, a remote coordinator, 10-15 MB/s links between regions),
Qwen3-32B, placed by the default method, simulated offline for 60 s + 600 s. The MILP is time-limited,
so its placement can move between solves: the one timed is kept in benchmarks/busy/ (cluster.ini, the
generator's output; layout.ini, a 60 s solve); `--layout FILE` times another (solved now and written
there when FILE does not exist, `--layout new.ini` to re-solve). Each run
is a fresh process (`planner simulate` as a user runs it); with `--baseline DIR` every run of this
checkout is paired with one of the checkout at DIR (its `simulator` and `planner` put first on the
path) on the same layout, alternating, so both see the same machine load; `--pure` adds this checkout
with the compiled modules turned off (LAYER_PLANNER_PURE_SIMULATOR=1, setup.py). Printed per checkout:
whether the simulator ran compiled,
process wall seconds (interpreter start, imports, reading the layout and the run), seconds inside the
run (the result's wall_seconds) and the CPU seconds of the run (less sensitive to other jobs on a shared
machine), events, events/s, simulated seconds per wall second inside the run, and the process's peak
RSS; medians over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from planner.cluster import load_cluster
from planner.layout import Layout, read_layout, write_layout
from planner.plan import solve
from planner.report import plan_layout
from planner.solvers.registry import DEFAULT_METHOD
from planner.synthetic import regional_cluster_text
from simulator import SimConfig, parse_workload, simulate

# (GPU type, GPUs per host) per region, cycled as the cluster grows: a Helix-like mix of datacenter
# cards (A100) with cheaper inference cards (L4, T4) in other regions.
REGION_GPUS = (("a100-40gb", 4), ("l4", 4), ("t4", 4), ("a10", 4))
INTRA_REGION = "10 Gbit/s, 0.2 ms"
INTER_REGION = ("1 Gbit/s, 10 ms", "1 Gbit/s, 25 ms", "500 Mbit/s, 40 ms")
# The busy case of issue 15 (item 6): 24 GPUs of four kinds in three regions, Qwen3-32B.
BUSY_REGIONS = ({"rtx4090": 6, "l20": 2}, {"rtx2080ti": 6, "a10": 2}, {"a10": 4, "l20": 4})
BUSY_MODEL = "qwen3-32b"
BUSY_SOLVE_S = 60.0
BUSY_LAYOUT = Path(__file__).resolve().parent / "busy" / "layout.ini"


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


def busy_layout(path: Path) -> Path:
    """The busy case's layout file: `path` if it exists, else solved now and written there, its cluster
    file beside it (a layout names its cluster file)."""
    if path.exists():
        return path
    cluster = path.parent / f"{path.stem}-cluster.ini"
    cluster.write_text(regional_cluster_text(BUSY_REGIONS, model=BUSY_MODEL, seed=0))
    write_layout(path, plan_layout(solve(load_cluster(cluster), DEFAULT_METHOD, time_limit=BUSY_SOLVE_S)))
    return path


def child(layout_path: str, duration: float, warmup: float) -> None:
    """One run in this process (the simulator on sys.path, whichever checkout that is); JSON on stdout."""
    began = time.perf_counter()
    layout = read_layout(layout_path)
    cpu = time.process_time()
    result = simulate(layout, SimConfig(workload=parse_workload("offline"), duration_s=duration, warmup_s=warmup))
    cpu = time.process_time() - cpu
    print(json.dumps({"run_s": result.wall_seconds, "run_cpu_s": cpu, "events": result.events,
                      "tokens": result.decode_throughput,
                      "after_import_s": time.perf_counter() - began, "peak_rss_mb": peak_rss_mb(),
                      "simulator": str(Path(sys.modules["simulator"].__file__).parent),
                      "compiled": getattr(sys.modules["simulator"], "COMPILED_RUNNING", False)}))


def timed_process(checkout: Path, extra_env: dict[str, str], layout: Path, duration: float, warmup: float) -> dict:
    # the checkout first; what the path held after it (dependencies installed with --target, say)
    path = os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, **extra_env)
    began = time.perf_counter()
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(layout),
                          "--duration", str(duration), "--warmup", str(warmup)],
                         env=env, check=True, capture_output=True, text=True).stdout
    figures = json.loads(out)
    figures["wall_s"] = time.perf_counter() - began
    return figures


def busy(args: argparse.Namespace) -> None:
    layout = busy_layout(Path(args.layout) if args.layout else BUSY_LAYOUT)
    here = Path(__file__).resolve().parent.parent
    from simulator.native import PURE_ENV   # here, not at the top: a baseline's child may predate it

    # row -> (checkout, environment added)
    checkouts: dict[str, tuple[Path, dict[str, str]]] = {"this checkout": (here, {})}
    if args.pure:
        checkouts["pure Python"] = (here, {PURE_ENV: "1"})
    if args.baseline:
        checkouts["baseline"] = (Path(args.baseline).resolve(), {})
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    for _ in range(args.runs):
        for name, (checkout, extra_env) in checkouts.items():
            runs[name].append(timed_process(checkout, extra_env, layout, args.duration, args.warmup))
    simulated = args.duration + args.warmup
    print(f"busy case: {layout.name}, offline, {args.warmup:g} s warm-up + {args.duration:g} s, "
          f"medians of {args.runs} runs, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'checkout':>14} {'compiled':>8} {'wall s':>7} {'run s':>6} {'run CPU s':>9} {'events':>9} {'events/s':>9} "
          f"{'sim s / run s':>13} {'peak RSS MB':>11} {'tokens/s':>9}")
    for name, figures in runs.items():
        wall = statistics.median(f["wall_s"] for f in figures)
        run_s = statistics.median(f["run_s"] for f in figures)
        cpu_s = statistics.median(f["run_cpu_s"] for f in figures)
        events = figures[0]["events"]
        compiled = "yes" if figures[0]["compiled"] else "no"
        print(f"{name:>14} {compiled:>8} {wall:>7.2f} {run_s:>6.2f} {cpu_s:>9.2f} {events:>9,} {events / run_s:>9,.0f} "
              f"{simulated / run_s:>13.0f} {statistics.median(f['peak_rss_mb'] for f in figures):>11.0f} "
              f"{figures[0]['tokens']:>9,.1f}")
        print(f"{'':>14} seconds inside each run: {', '.join(format(f['run_s'], '.2f') for f in figures)}")
    this = runs["this checkout"]
    for name, figures in runs.items():
        if name == "this checkout":
            continue
        same = all(f["events"] == this[0]["events"] and f["tokens"] == this[0]["tokens"] for f in this + figures)
        ratio = statistics.median(f["run_s"] for f in figures) / statistics.median(f["run_s"] for f in this)
        cpu_ratio = statistics.median(f["run_cpu_s"] for f in figures) / statistics.median(f["run_cpu_s"] for f in this)
        print(f"this checkout against {name}, inside the run: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU; "
              f"events and throughput identical: {same}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,16,24,48,64,128")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--target", action="store_true", help="only the 24-GPU three-region offline run")
    parser.add_argument("--busy", action="store_true", help="the busy case: 24 GPUs, 3 regions, Qwen3-32B, MILP")
    parser.add_argument("--layout", help="--busy: time this layout file (solved and written there if missing)")
    parser.add_argument("--baseline", help="--busy: another checkout to time side by side, on the same layout")
    parser.add_argument("--pure", action="store_true",
                        help="--busy: also time this checkout's pure-Python simulator (not the compiled one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.duration, args.warmup)
        return
    if args.busy:
        busy(args)
        return
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
