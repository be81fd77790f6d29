"""The simulator's results, frozen: small layouts under several workloads, seeds and routing policies,
compared with snapshots recorded from the simulator before its hot path was optimised (issue 15,
item 6). A speed change must leave every figure of a seeded run as it was.

What is compared, per case: the whole `planner simulate --json` document except `wall_seconds`,
the throughput series, and for each latency sample list (TTFT, TPOT, E2E) its length, its exact sum
(math.fsum, independent of order) and its first and last values. Integers and strings must be equal;
floats must be equal to 1e-12 relative: the simulator's own arithmetic is kept bit for bit, but the
summaries (mean, percentiles) are numpy's, whose summation order may change between numpy releases
(CI runs the newest ones).

The snapshots (tests/data/sim-snapshot/snapshots.json) were recorded from the unoptimised simulator:
first from main, then, when the work outside the layers became charged (head, embedding, hops, step
overhead), from that change's own unoptimised simulator, which the optimised one matches; then again
when the coordinator began holding each path's lanes together (a first token waits for its lane, a
prompt rides with its lane's next step; one lane per stage by default); then when a closed loop's next
request began arriving after the lanes leaving at that instant, as a client's does; then when TTFT and
the admission wait began to be sampled at the first token rather than at completion. Never re-record them
to make a speed change pass. Re-record (`python
tests/test_simulator_snapshot.py --record`) only when what the simulator models changes on purpose
(the cost model, stage or routing semantics), in the commit that changes it, saying so.

The cases use their own copies of the clusters (tests/data/sim-snapshot/), so edits to profiles/ or
layouts/ do not move them; catalog, cost-model or routing changes do, by design.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from planner.layout import read_layout
from simulator import SimConfig, parse_workload, simulate
from simulator.metrics import SimResult

DATA = Path(__file__).resolve().parent / "data" / "sim-snapshot"
SNAPSHOTS = DATA / "snapshots.json"
RELATIVE = 1e-12

# name -> (layout, SimConfig keywords); workloads are parse_workload specs. Short runs, so the file is fast.
CASES: dict[str, tuple[str, dict]] = {
    # one chain of four GPUs on two hosts, closed loop
    "hetero-offline-fixed": ("hetero", dict(workload="offline", lengths="fixed", warmup_s=10.0, duration_s=60.0)),
    "hetero-offline-lognormal-auto-warmup": ("hetero", dict(workload="offline:64", lengths="lognormal", seed=3,
                                                            warmup_s=None, duration_s=30.0)),
    # two tensor-parallel groups over a 100 Mbit/s link, two micro-batches per path
    "l20x4-tp-offline-uniform-2lanes": ("l20x4", dict(workload="offline", lengths="uniform", seed=1,
                                                      microbatches=2, warmup_s=60.0, duration_s=600.0)),
    # two regions and a remote gateway, shared middle stages (six paths)
    "mixed-campus-poisson-lognormal": ("mixed-campus", dict(workload="poisson:1.5", lengths="lognormal", seed=2,
                                                             warmup_s=10.0, duration_s=60.0)),
    "mixed-campus-offline-random": ("mixed-campus", dict(workload="offline", lengths="lognormal", seed=4,
                                                          scheduler="random", warmup_s=10.0, duration_s=40.0)),
    # three regions, remote coordinator, two stages shared by paths from two regions
    "regions3-offline-lognormal": ("regions3", dict(workload="offline", lengths="lognormal", seed=5,
                                                     warmup_s=10.0, duration_s=40.0)),
    "regions3-poisson-shortest-queue": ("regions3", dict(workload="poisson:6", lengths="uniform", seed=6,
                                                          scheduler="shortest-queue", microbatches=2,
                                                          token_budget=128, warmup_s=5.0, duration_s=40.0)),
    "regions3-offline-round-robin": ("regions3", dict(workload="offline:200", lengths="fixed", seed=7,
                                                       scheduler="round-robin", warmup_s=10.0, duration_s=30.0)),
    "regions3-trace": ("regions3", dict(workload=f"trace:{DATA / 'trace.csv'}", seed=8,
                                        warmup_s=0.0, duration_s=30.0)),
}


def run_case(name: str) -> dict:
    layout_name, keywords = CASES[name]
    config = dict(keywords)
    config["workload"] = parse_workload(config["workload"])
    result = simulate(read_layout(DATA / f"layout-{layout_name}.ini"), SimConfig(**config))
    return figures(result)


def figures(result: SimResult) -> dict:
    document = result.to_json()
    del document["wall_seconds"]   # the only figure that may change
    document["settings"] = {k: v for k, v in document["settings"].items() if k != "workload"} | \
        {"workload": Path(result.settings["workload"]).name}   # a trace's label holds its absolute path
    document["throughput_series"] = list(result.throughput_series)
    document["samples"] = {key: {"count": len(values), "fsum": math.fsum(values),
                                 "head": list(values[:5]), "tail": list(values[-5:])}
                           for key, values in result.samples.items()}
    return document


def differences(expected, actual, where: str = "") -> list[str]:
    """Where two JSON-like values differ: ints, strings and None exactly, floats to RELATIVE."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{where}: keys {sorted(set(expected) ^ set(actual))}"] if set(expected) != set(actual) else []
        for key in expected.keys() & actual.keys():
            found += differences(expected[key], actual[key], f"{where}.{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items, now {len(actual)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(expected, (int, float)) and isinstance(actual, (int, float)) and \
                math.isclose(expected, actual, rel_tol=RELATIVE, abs_tol=0.0):
            return []
        return [f"{where}: {expected!r}, now {actual!r}"]
    return [] if expected == actual and type(expected) is type(actual) else [f"{where}: {expected!r}, now {actual!r}"]


@pytest.fixture(scope="module")
def snapshots() -> dict:
    return json.loads(SNAPSHOTS.read_text())


def test_every_case_has_a_snapshot(snapshots):
    assert set(snapshots) == set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_results_match_the_snapshot(name, snapshots):
    found = differences(snapshots[name], run_case(name))
    assert not found, f"{name} differs from its snapshot in {len(found)} places: " + "; ".join(found[:10])


def test_the_comparison_sees_a_change(snapshots):
    """The checker itself: a last-bit change of a float, or one more event, is a difference."""
    name = next(iter(CASES))
    changed = json.loads(json.dumps(snapshots[name]))
    changed["decode_throughput_tokens_per_s"] *= 1 + 1e-10
    changed["events"] += 1
    assert len(differences(snapshots[name], changed)) == 2
    assert differences(snapshots[name], json.loads(json.dumps(snapshots[name]))) == []


def record() -> None:
    SNAPSHOTS.write_text(json.dumps({name: run_case(name) for name in CASES}, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(CASES)} cases into {SNAPSHOTS}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_simulator_snapshot.py --record  (read the module docstring first)")
    record()
