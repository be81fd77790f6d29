"""Helix's simulator as an outside judge of our layouts (issue 15).

    python benchmarks/helix_judge.py [LAYOUT.ini ...] [--published] [--helix-repo DIR] [--python PY]

Each layout is written with `planner export --to helix` (solution, topology and simulator cluster
files) and played by the simulator published with Helix (Mei et al., ASPLOS'25; repository
Thesys-lab/Helix-ASPLOS25), in its offline mode as its artifact evaluation runs it: MaxFlow scheduling,
KV expectation high-water mark 0.85, output-length ratio 1, 20 initial queries, new ones fed while the
KV bottleneck is under 0.8, Azure-conversation lengths, seed 0, 60 s warm-up + 600 s measured. Printed
per layout: decode tokens/s in the window, mean per-token (decode) latency, mean prompt latency.

Helix's code is run, never copied: `--helix-repo` is a checkout or a bare clone (its HEAD is unpacked
into a temporary folder; default $HELIX_REPO). When it is absent the script says so and exits 0. Helix needs networkx,
matplotlib and gurobipy importable by `--python` (a separate virtual environment; the project does not
depend on them); the gurobipy import is only needed because Helix's layout module imports it.

One run-time patch, in the child process only: Helix's ClusterSimulator keeps every processed event in
a list and a dict that nothing reads except a duplicate-event assertion, which grows to gigabytes on
this cluster. The child replaces them by a set of event ids (the assertion still holds): our default
plan of profiles/helix-single24.ini then peaks at 5.6 GB (the 12-stage chain) to 6.9 GB (the 20-stage one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HELIX_REPO = os.environ.get("HELIX_REPO")  # a checkout or bare clone of Thesys-lab/Helix-ASPLOS25
PUBLISHED = "artifact_evaluation/single_cluster"  # the paper's single-region 24-GPU cluster
# all the judge needs of Helix's repository: its simulator, and the published layout's files
HELIX_PARTS = ("simulator", f"{PUBLISHED}/config", f"{PUBLISHED}/layout_llama70b/ilp")


# ---- child: runs inside the interpreter that has Helix's dependencies --------------------------------

class _EventIds(dict):
    """Keeps only the keys: `uid in previous_events_dict` is all Helix asks of it."""

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, None)


class _Discarded(list):
    def append(self, item) -> None:  # written, never read
        pass


def _child(work: Path, helix: Path, warmup: float, duration: float) -> dict:
    sys.path.insert(0, str(helix))
    from simulator.event_simulator import cluster_simulator as cs
    from simulator.event_simulator.request import RequestPhase
    from simulator.initial_layout.layout_synthesizer import LayoutMethod, LayoutSynthesizer
    from simulator.model_manager.model_manager import ModelName
    from simulator.scheduler.base_scheduler import SchedulingMethod
    from simulator.scheduler.global_maxflow.global_maxflow_scheduler import KVParameters, SchedulingMode
    from simulator.trace_generator.simulator_query_feeder import OfflineRequestFeeder

    plain_init = cs.ClusterSimulator.__init__

    def lean_init(self, *args, **kwargs) -> None:
        plain_init(self, *args, **kwargs)
        self.previous_events_list, self.previous_events_dict = _Discarded(), _EventIds()

    cs.ClusterSimulator.__init__ = lean_init

    spec = json.loads((work / "spec.json").read_text())
    machines = spec["machines"]
    synthesizer = LayoutSynthesizer(complete_cluster_file_name=str(work / "cluster.ini"),
                                    machine_profile_name=str(work / "machine_profiles.ini"),
                                    model_name=ModelName.LLaMa70B, workspace_path=str(work / "helix-workspace"),
                                    layout_method=LayoutMethod.LoadExisting, machine_num_dict=machines)
    cluster_file = synthesizer.synthesize(args={"solution_file_name": str(work / "solution.ini"),
                                                "simulator_cluster_file_name": str(work / "simulator_cluster.ini")})
    simulator = cs.ClusterSimulator(model_name=ModelName.LLaMa70B, machine_num_dict=machines)
    simulator.from_ini_file(config_file_name=cluster_file)
    simulator.init_scheduler(scheduling_method=SchedulingMethod.MaxFlow,
                             args={"kv_param": KVParameters(expected_kv_hwm=0.85, expected_output_length_ratio=1),
                                   "scheduling_mode": SchedulingMode.Offline})
    simulator.init_query_manager()
    simulator.mark_as_ready()
    loaded = synthesizer.set_layout(simulator=simulator)
    simulator.update_scheduler()
    feeder = OfflineRequestFeeder(initial_query_count=20, start_time=loaded, duration=warmup + duration,
                                  stop_at_duration=True, feed_hwm=0.8, seed=0)
    feeder.auto_simulate(simulator=simulator, watch_items=["all"], watch_interval=200)

    start, end = loaded + warmup, loaded + warmup + duration
    decode, prompt = [], []
    for when, request in simulator.finished_requests.values():
        if start <= when <= end:
            took = request.location_history[-1][1] - request.location_history[0][1]
            (prompt if request.phase == RequestPhase.Initialization else decode).append(took)
    return {"decode_tokens_per_s": len(decode) / duration,
            "per_token_latency_s": sum(decode) / max(len(decode), 1),
            "prompt_latency_s": sum(prompt) / max(len(prompt), 1),
            "prompts_finished": len(prompt), "warmup_s": warmup, "duration_s": duration}


# ---- parent: exports each layout and runs the child ------------------------------------------------

def _helix_tree(repo: Path, into: Path) -> Path | None:
    """A folder holding Helix's `simulator/` package: the checkout itself, or HEAD of a bare clone."""
    if (repo / "simulator" / "event_simulator").is_dir():
        return repo
    if not (repo / "HEAD").is_file():
        return None
    archive = subprocess.run(["git", "--git-dir", str(repo), "archive", "HEAD", *HELIX_PARTS],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _machine_profiles(layout) -> str:
    """Helix's machine profile file for the GPU types of a layout: memory and NIC speeds per type."""
    from planner.export.helix import _bw, _nic, compute_nodes, machine_type

    cluster = layout.cluster
    coordinator = max((cluster.coordinator_link(h.name) for h in cluster.hosts if h.gpus),
                      key=lambda link: link.bandwidth_bytes_per_s)
    lines = ["# Written by benchmarks/helix_judge.py from the layout's cluster file.",
             "[SourceNode]", "inbound_nic_speed = -1", f"outbound_nic_speed = {_bw(coordinator)}",
             "disk_speed = -1", "vram_size = -1", "",
             "[SinkNode]", f"inbound_nic_speed = {_bw(coordinator)}", "outbound_nic_speed = -1",
             "disk_speed = -1", "vram_size = -1", ""]
    seen = set()
    for node in compute_nodes(layout):
        name = machine_type(node.gpu)
        if name in seen:
            continue
        seen.add(name)
        nic = _nic(layout, node.host)
        memory = cluster.gpu_types[node.gpu].memory_bytes or 0
        lines += [f"[{name}]", f"inbound_nic_speed = {nic}", f"outbound_nic_speed = {nic}",
                  "disk_speed = 1000.0 * mbps", f"vram_size = {memory / 1e6:.1f} * MB", ""]
    return "\n".join(lines)


def judge(layout_path: Path, helix: Path, python: str, warmup: float, duration: float) -> dict:
    from planner.export.helix import compute_nodes, machine_type, simulator_text, solution_text, topology_text
    from planner.layout import read_layout

    layout = read_layout(layout_path)
    if layout.cluster.model.id != "llama-2-70b":
        raise SystemExit(f"{layout_path}: the judge runs Helix's LLaMA-2-70B profiles; this layout serves "
                         f"{layout.cluster.model.id}")
    with tempfile.TemporaryDirectory(prefix="helix-judge-") as tmp:
        work = Path(tmp)
        # what `planner export --to helix` writes, less the real system's file (it needs IP addresses)
        for name, text in (("solution.ini", solution_text(layout)), ("cluster.ini", topology_text(layout)),
                           ("simulator_cluster.ini", simulator_text(layout))):
            (work / name).write_text(text)
        (work / "machine_profiles.ini").write_text(_machine_profiles(layout))
        machines = Counter(machine_type(n.gpu) for n in compute_nodes(layout))
        (work / "spec.json").write_text(json.dumps({"machines": dict(machines)}))
        return _run_child(work, helix, python, warmup, duration, str(layout_path))


def judge_published(helix: Path, python: str, warmup: float, duration: float) -> dict:
    """Helix's own ILP layout of the 24-GPU cluster, from its own files: the judge's reference run."""
    with tempfile.TemporaryDirectory(prefix="helix-judge-") as tmp:
        work = Path(tmp)
        for source, name in (("config/cluster24.ini", "cluster.ini"), ("config/machine_profiles.ini", "machine_profiles.ini"),
                             ("layout_llama70b/ilp/ilp_sol.ini", "solution.ini"),
                             ("layout_llama70b/ilp/simulator_cluster.ini", "simulator_cluster.ini")):
            (work / name).write_text((helix / PUBLISHED / source).read_text())
        (work / "spec.json").write_text(json.dumps({"machines": {"A100": 4, "L4": 8, "T4": 12}}))
        return _run_child(work, helix, python, warmup, duration, "Helix's published layout")


def _run_child(work: Path, helix: Path, python: str, warmup: float, duration: float, what: str) -> dict:
    child = subprocess.run([python, __file__, "--child", str(work), "--helix-tree", str(helix),
                            "--warmup", str(warmup), "--duration", str(duration)],
                           capture_output=True, text=True, check=False, cwd=work)
    if child.returncode != 0:
        raise SystemExit(f"Helix's simulator failed on {what}:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layouts", nargs="*", type=Path)
    parser.add_argument("--helix-repo", type=Path, default=Path(HELIX_REPO) if HELIX_REPO else None,
                        help="Helix's repository, a checkout or a bare clone (default: $HELIX_REPO)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with Helix's dependencies")
    parser.add_argument("--published", action="store_true",
                        help="also run Helix's own ILP layout of its 24-GPU cluster (LLaMA-2-70B) from its files")
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--helix-tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = _child(args.child, args.helix_tree, args.warmup, args.duration)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="helix-src-") as tmp:
        helix = _helix_tree(args.helix_repo, Path(tmp)) if args.helix_repo else None
        if helix is None:
            print(f"skipped: no Helix repository at {args.helix_repo} (set --helix-repo or HELIX_REPO)", file=sys.stderr)
            return 0
        if args.published:
            result = judge_published(helix, args.python, args.warmup, args.duration)
            print(json.dumps({"layout": f"Helix {PUBLISHED}/layout_llama70b/ilp", **result}))
        for layout in args.layouts:
            result = judge(layout, helix, args.python, args.warmup, args.duration)
            print(json.dumps({"layout": str(layout), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
