"""KV-bound admission along a path (issue 15): a request reserves its prompt + output KV on every stage
of its path when admitted, so the sequences in flight on a path are bounded by its scarcest stage's KV
(a stage shared by several paths splits its KV among them), and throughput = in flight / round trip.
Held in the serving estimate and the simulator alike; and the default method does not pick the
placement that static max flow prefers when that one starves for KV."""

import textwrap

import pytest

from planner.cluster import load_cluster
from planner.layout import Layout
from planner.plan import solve
from planner.problem import Placement, PlacementProblem
from planner.serving import estimate
from simulator import SimConfig, simulate
from simulator.workload import Offline

# Two GPU types with the same speed; `cramped` keeps KV for 51,200 tokens per layer whatever it holds:
# 40 requests of the default workload (1024 + 256 tokens), where `roomy` keeps room for hundreds.
SCARCE = """\
[cluster]
model = llama-2-70b
dtype = fp16
coordinator = gate

[gpu roomy]
max_layers = 40
decode_ms = 1: {roomy_decode}
prefill_ms = 64: 0.6, 256: 1.5, 2048: 10
kv_tokens = 1: 2000000, 40: 1000000

[gpu cramped]
max_layers = 40
decode_ms = 1: 0.5, 64: 0.8, 256: 2.0
prefill_ms = 64: 0.6, 256: 1.5, 2048: 10
kv_tokens = 1: 51200, 40: 51200

[host gate]
gpus =

[host a]
gpus = roomy * {roomy}

[host b]
gpus = cramped

[network]
default = 10 Gbit/s, 0.5 ms
"""
IN_FLIGHT = 40  # 51,200 KV tokens per layer / 1,280 tokens per request

# `quick` computes three times as fast as `roomy` but its KV room collapses as it holds more layers
# (like a GPU whose memory goes to weights): static max flow favours loading it up, serving does not.
STARVING = """\
[cluster]
model = qwen2.5-0.5b
dtype = fp16
coordinator = gate

[gpu quick]
max_layers = 20
decode_ms = 1: 0.3, 64: 0.4, 256: 1.0
prefill_ms = 64: 0.4, 256: 0.8, 2048: 5
kv_tokens = 1: 400000, 6: 40000, 12: 4000, 20: 1400

[gpu roomy]
max_layers = 12
decode_ms = 1: 1.0, 64: 1.3, 256: 3.0
prefill_ms = 64: 1.2, 256: 2.5, 2048: 16
kv_tokens = 1: 2000000, 12: 200000

[host gate]
gpus =

[host q]
gpus = quick * 2

[host r]
gpus = roomy * 2

[network]
default = 10 Gbit/s, 0.5 ms
"""
# The single chain with the most static max flow on STARVING (found by enumerating every chain of one
# to three GPUs, 4,092 placements): `quick` GPUs of 9 and 10 layers, KV room for 17 and 8 requests.
STARVED_CHAIN = {"q:0": (0, 9), "q:1": (9, 19), "r:0": (19, 24), "r:1": (0, 0)}


def cluster(tmp_path, text: str, name: str, **values):
    path = tmp_path / f"{name}.ini"
    path.write_text(textwrap.dedent(text.format(**values) if values else text))
    return load_cluster(path)


def simulated(c, placement: Placement, served, lengths: str = "fixed"):
    layout = Layout(c, "test", placement, served.flow.edge_flows, {}, served.lanes)
    return simulate(layout, SimConfig(workload=Offline(), lengths=lengths, duration_s=300, warmup_s=60))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A two-stage chain whose second stage holds KV for 40 requests; the first for hundreds."""
    c = cluster(tmp_path_factory.mktemp("scarce"), SCARCE, "scarce", roomy=1, roomy_decode="0.5, 64: 0.8, 256: 2.0")
    placement = Placement({"a:0": (0, 40), "b:0": (40, 80)})
    return c, placement, estimate(PlacementProblem(c), placement)


def test_the_scarcest_stage_bounds_the_sequences_in_flight(chain):
    c, placement, served = chain
    problem = PlacementProblem(c)
    batches = {n: problem.cost(n).max_batch(e - s, s == 0, e == 80) for n, (s, e) in placement.ranges.items()}
    assert min(batches.values()) == IN_FLIGHT and max(batches.values()) > 5 * IN_FLIGHT
    # throughput = in flight / round trip, in flight = the path's scarcest KV
    assert served.throughput * served.tpot_s == pytest.approx(IN_FLIGHT, rel=0.02)
    # KV, not compute, is the limit: the stages' compute (static max flow) would carry more
    assert served.throughput < 0.8 * served.max_flow


@pytest.mark.parametrize("lengths", ["fixed", "lognormal"])
def test_the_simulator_admits_as_many_as_the_scarcest_stage_holds(chain, lengths):
    c, placement, served = chain
    result = simulated(c, placement, served, lengths)
    cramped = next(s for s in result.stages if s.name == "b:0")
    assert cramped.peak_kv > 0.95  # admission fills the scarce stage's KV ...
    roomy = next(s for s in result.stages if s.name == "a:0")
    assert roomy.peak_kv < 0.1     # ... while the roomy one holds the same sequences in a fraction of its own
    assert result.decode_throughput * result.tpot["mean"] == pytest.approx(IN_FLIGHT, rel=0.1)
    assert result.decode_throughput == pytest.approx(served.throughput, rel=0.15)


def test_a_shared_scarce_stage_splits_its_kv_among_the_paths(tmp_path):
    """Two roomy GPUs feed one cramped one: the sequences on both paths together fit its KV once."""
    c = cluster(tmp_path, SCARCE, "shared", roomy=2, roomy_decode="2.0, 64: 4.0, 256: 12.0")
    placement = Placement({"a:0": (0, 40), "a:1": (0, 40), "b:0": (40, 80)})
    served = estimate(PlacementProblem(c), placement)
    assert sum(p.tokens_per_s * p.tpot_s for p in served.paths) == pytest.approx(IN_FLIGHT, rel=0.02)
    result = simulated(c, placement, served)
    assert result.decode_throughput * result.tpot["mean"] == pytest.approx(IN_FLIGHT, rel=0.1)
    assert result.decode_throughput == pytest.approx(served.throughput, rel=0.15)


def test_the_default_plan_is_not_the_kv_starved_max_flow_chain(tmp_path):
    c = cluster(tmp_path, STARVING, "starving")
    problem = PlacementProblem(c)
    starved = Placement(STARVED_CHAIN)
    plan = solve(c, "milp", time_limit=10)
    assert plan.placement != starved
    # the starved chain keeps few requests in flight, so the default plan serves far more, and simulates so
    starved_served = estimate(problem, starved)
    assert plan.serving.throughput > 2 * starved_served.throughput
    ours = simulated(c, plan.placement, plan.serving)
    theirs = simulated(c, starved, starved_served)
    assert ours.decode_throughput > 1.5 * theirs.decode_throughput
