"""Work outside the layers is charged, the same amounts by the cost model, the serving estimate and the
simulator: the last stage's head, the first stage's embedding, each message's fixed cost and each
iteration's step overhead (docs/cost-model.md#work-outside-the-layers)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import run_planner
from planner.catalog import GpuSpec, LatencyTable, load_gpu_catalog, load_model_catalog
from planner.cluster import load_cluster
from planner.costmodel import GpuCost, LOGIT_BYTES
from planner.engines import overheads
from planner.errors import InputError
from planner.layout import Layout, predicted as layout_estimate
from planner.problem import Placement, PlacementProblem
from planner.serving import estimate
from simulator import SimConfig, simulate
from simulator.workload import Offline, Request
from simulator.stage import Cohort, Stage

QWEN8 = load_model_catalog()["qwen3-8b"]
TABLE = LatencyTable(((1, 1.0e-3), (64, 2.0e-3)))


def measured(**outside) -> GpuSpec:
    return GpuSpec(id="m", name="m", memory_bytes=80e9, decode_ms=TABLE, prefill_ms=TABLE, **outside)


def cluster_text(gpu_keys: str, gpus: str = "m * 1") -> str:
    return f"""\
[cluster]
model = qwen3-8b
dtype = bf16
coordinator = h

[host h]
gpus = {gpus}
gpu_link = 100 GB/s, 0.01 ms

[gpu m]
memory = 80 GiB
bf16 = yes
decode_ms = 1: 0.3, 16: 0.35, 64: 0.5, 256: 1.2
prefill_ms = 16: 0.4, 256: 2.0, 2048: 15
{gpu_keys}
"""


# ---- the loader ---------------------------------------------------------------------------------------

def test_loader_reads_the_keys_in_seconds(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text(cluster_text("head_ms = 1: 0.9, 64: 1.1\nembed_ms = 1: 0.02, 256: 0.05\n"
                                 "hop_ms = 0.25\nstep_overhead_ms = 0.125"))
    gpu = load_cluster(path).gpu_types["m"]
    assert gpu.head_ms.seconds(32.5) == pytest.approx(1.0e-3)          # interpolated as decode_ms is
    assert gpu.embed_ms.seconds(1) == pytest.approx(0.02e-3)
    assert gpu.hop_s == pytest.approx(0.25e-3) and gpu.step_overhead_s == pytest.approx(0.125e-3)
    cost = load_cluster(path).cost("m")
    assert cost.hop_s == pytest.approx(0.25e-3) and cost.step_overhead_s(16) == pytest.approx(0.125e-3)


def test_keys_are_optional_and_the_engine_fills_in(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text(cluster_text(""))
    for engine in ("runtime", "vllm"):
        cost = load_cluster(path, engine=engine).cost("m")
        assert cost.hop_s == overheads(engine).hop_s
        assert cost.step_overhead_s() == overheads(engine).step_s


@pytest.mark.parametrize("line, problem", [
    ("head_ms = 1: fast", "is not numeric"),
    ("head_ms = 4: 1.0, 2: 0.9", "not sorted"),
    ("embed_ms = 1 0.02", "is not 'N: value'"),
    ("hop_ms = -0.1", "must be a finite number of milliseconds >= 0"),
    ("hop_ms = 0.2 ms", "is not a number of milliseconds"),
    ("step_overhead_ms = nan", "must be a finite number of milliseconds >= 0"),
    ("wake_ms = 5: 0.4, 1: 0.1", "not sorted"),
    ("wake_ms = 1: -0.1", "negative or zero"),
    ("wake_ms = 0.4", "is not 'N: value'"),
])
def test_loader_refuses_malformed_values_in_one_line(tmp_path, line, problem):
    path = tmp_path / "bad.ini"
    path.write_text(cluster_text(line))
    with pytest.raises(InputError) as error:
        load_cluster(path)
    message = str(error.value)
    key = line.split("=")[0].strip()
    assert "bad.ini" in message and f"[gpu m] {key}" in message and problem in message
    assert "\n" not in message
    result = run_planner("show", path)   # what a user sees: one line, status 2, no traceback
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and f"[gpu m] {key}" in result.stderr


def test_outside_keys_make_a_section_measured(tmp_path):
    """hop_ms beside datasheet figures mixes two forms: refused, not silently ignored."""
    path = tmp_path / "mixed.ini"
    path.write_text("[cluster]\nmodel = qwen3-8b\n\n[host h]\ngpus = m\n\n"
                    "[gpu m]\nmemory = 80 GiB\nmemory_bandwidth = 1 TB/s\nfp16_tflops = 100\nhop_ms = 0.1\n")
    with pytest.raises(InputError, match="mixes the measured and roofline forms"):
        load_cluster(path)


# ---- the cost model -----------------------------------------------------------------------------------

def test_head_from_the_roofline_reads_the_lm_head_every_step():
    """Qwen3-8B's head is 151,936 x 4096 weights: ~3.2 layers' worth of bytes, read at every decode step."""
    h100 = load_gpu_catalog()["h100"]
    cost = GpuCost(h100, QWEN8, "bf16")
    head_bytes = (QWEN8.vocab_size * QWEN8.hidden_size + QWEN8.hidden_size) * 2
    moved = head_bytes + 8 * QWEN8.hidden_size * 2 + 2 * 8 * QWEN8.vocab_size * LOGIT_BYTES
    flops = 2 * 8 * QWEN8.vocab_size * QWEN8.hidden_size
    assert cost.head_s(8) == pytest.approx(cost._roofline(moved, flops, cost.efficiency.decode_compute_efficiency))
    assert cost.head_s(1) > 2.5 * cost.decode_s(1, 1, 0)   # 2.6 layers, each with its fixed 85 us
    assert 0 < cost.embed_s(1) < cost.decode_s(1, 1, 0) / 2   # negligible, but counted


def test_measured_gpu_without_head_ms_scales_a_layer_by_bytes():
    cost = GpuCost(measured(), QWEN8, "bf16")
    moved = cost.head_bytes + 4 * QWEN8.hidden_size * 2 + 2 * 4 * QWEN8.vocab_size * LOGIT_BYTES
    assert cost.head_s(4) == pytest.approx(TABLE.seconds(4) * moved / cost.layer_bytes)


def test_last_stage_pays_the_head_per_step_and_per_prompt():
    cost = GpuCost(measured(head_ms=LatencyTable(((1, 0.8e-3), (64, 1.6e-3)))), QWEN8, "bf16")
    batch, output = 16, cost.workload.output_tokens
    plain = cost.seconds_per_output_token(4, batch)
    with_head = cost.seconds_per_output_token(4, batch, last=True)
    assert with_head - plain == pytest.approx(cost.head_s(batch) / batch + 0.8e-3 / output)


def test_first_stage_pays_the_embedding_of_every_token():
    cost = GpuCost(measured(embed_ms=LatencyTable(((1, 0.01e-3), (256, 0.2e-3)))), QWEN8, "bf16")
    batch, prompt, output = 16, cost.workload.prompt_tokens, cost.workload.output_tokens
    chunk = 256 - batch
    extra = cost.seconds_per_output_token(4, batch, first=True) - cost.seconds_per_output_token(4, batch)
    assert extra == pytest.approx(cost.embed_s(batch) / batch + prompt / chunk * cost.embed_s(chunk) / output)


def test_every_iteration_pays_the_step_overhead():
    with_overhead = GpuCost(measured(step_overhead_s=0.5e-3), QWEN8, "bf16")
    without = GpuCost(measured(step_overhead_s=0.0), QWEN8, "bf16")
    batch, prompt, output = 16, 1024, 256
    iterations = max(1 / batch, prompt / ((256 - batch) * output))
    assert with_overhead.seconds_per_output_token(4, batch) - without.seconds_per_output_token(4, batch) == \
        pytest.approx(iterations * 0.5e-3)


# ---- the simulator: one iteration ---------------------------------------------------------------------

def _iteration_s(cost: GpuCost, span: tuple[int, int], sequences: int) -> float:
    """Length of one decode iteration of `sequences` sequences at a stage holding `span` of 36 layers."""
    stage = Stage("s", "h", cost, span, 36, 256, 8192, (0.0, 1e9))
    stage.ready[0] = Cohort(0, 0, list(range(sequences)), sequences * 1000)
    stage.start(0.0)
    (end, *_), = stage.loop.heap   # the one event: the iteration's end
    return end


@pytest.mark.parametrize("n", [1, 16, 48])
def test_a_stage_with_the_head_is_slower_by_exactly_head_ms(n):
    cost = GpuCost(measured(head_ms=LatencyTable(((1, 0.8e-3), (64, 1.6e-3))), step_overhead_s=0.0), QWEN8, "bf16")
    assert _iteration_s(cost, (30, 36), n) - _iteration_s(cost, (24, 30), n) == \
        pytest.approx(0.8e-3 + 0.8e-3 * (n - 1) / 63)


def test_a_stage_with_the_embedding_is_slower_by_exactly_embed_ms():
    cost = GpuCost(measured(embed_ms=LatencyTable(((1, 0.05e-3), (64, 0.1e-3))), step_overhead_s=0.0), QWEN8, "bf16")
    assert _iteration_s(cost, (0, 6), 64) - _iteration_s(cost, (6, 12), 64) == pytest.approx(0.1e-3)


def test_an_iteration_is_longer_by_exactly_the_step_overhead():
    slow = GpuCost(measured(step_overhead_s=0.7e-3), QWEN8, "bf16")
    fast = GpuCost(measured(step_overhead_s=0.0), QWEN8, "bf16")
    assert _iteration_s(slow, (6, 12), 8) - _iteration_s(fast, (6, 12), 8) == pytest.approx(0.7e-3)


def test_a_prompt_finishing_at_the_last_stage_pays_the_head_once():
    cost = GpuCost(measured(head_ms=LatencyTable(((1, 0.8e-3), (64, 1.6e-3))), step_overhead_s=0.0), QWEN8, "bf16")

    def prefill_iteration(span):
        stage = Stage("s", "h", cost, span, 36, 256, 8192, (0.0, 1e9))
        stage.prefill.append([Request(0, 0.0, 200, 16), 200, 0])
        stage.start(0.0)
        (end, *_), = stage.loop.heap
        return end

    assert prefill_iteration((30, 36)) - prefill_iteration((24, 30)) == pytest.approx(0.8e-3)


# ---- hops: the simulator and the serving estimate agree ---------------------------------------------

def _layout(tmp_path, keys: str, gpus: str = "m * 1", split: tuple[int, ...] = (0, 36)) -> Layout:
    path = tmp_path / f"c{abs(hash((keys, gpus, split)))}.ini"
    path.write_text(cluster_text(keys, gpus))
    cluster = load_cluster(path)
    ranges = {f"h:{i}": (a, b) for i, (a, b) in enumerate(zip(split, split[1:]))}
    placement = Placement(ranges)
    flows = {("coordinator", "h:0"): 1.0, **{(f"h:{i}", f"h:{i + 1}"): 1.0 for i in range(len(ranges) - 1)},
             (f"h:{len(ranges) - 1}", "coordinator"): 1.0}
    return Layout(cluster, "hand", placement, flows, {})


ONE_IN_FLIGHT = SimConfig(workload=Offline(in_flight=1), lengths="fixed", duration_s=60, warmup_s=5)


@pytest.mark.parametrize("stages, hops", [((0, 36), 2), ((0, 18, 36), 3)])
def test_each_hop_adds_hop_ms_to_tpot_in_the_simulator(tmp_path, stages, hops):
    """One request in flight: every round trip crosses `hops` messages, each hop_ms later."""
    base = simulate(_layout(tmp_path, "hop_ms = 0", "m * 2", stages), ONE_IN_FLIGHT).tpot["mean"]
    slow = simulate(_layout(tmp_path, "hop_ms = 2.5", "m * 2", stages), ONE_IN_FLIGHT).tpot["mean"]
    assert slow - base == pytest.approx(hops * 2.5e-3, rel=1e-6)


@pytest.mark.parametrize("stages, hops", [((0, 36), 2), ((0, 18, 36), 3)])
def test_each_hop_adds_hop_ms_to_the_serving_estimate(tmp_path, stages, hops):
    def tpot(keys):
        layout = _layout(tmp_path, keys, "m * 2", stages)
        return layout_estimate(layout).paths[0].tpot_s

    assert tpot("hop_ms = 2.5") - tpot("hop_ms = 0") == pytest.approx(hops * 2.5e-3, rel=1e-3)


def test_the_coordinator_loop_is_charged_once_per_round(tmp_path):
    layout = _layout(tmp_path, "hop_ms = 0\nstep_overhead_ms = 0")
    runtime = simulate(layout, ONE_IN_FLIGHT).tpot["mean"]
    vllm_cluster = load_cluster(layout.cluster.path, engine="vllm")
    vllm = simulate(replace(layout, cluster=vllm_cluster), ONE_IN_FLIGHT).tpot["mean"]
    assert runtime - vllm == pytest.approx(overheads("runtime").host_step_s - overheads("vllm").host_step_s, rel=1e-6)



# ---- waking: a step after a wait costs wake_ms more, in the simulator and the serving estimate --------

WAKE = "wake_ms = 0.2: 0, 1: 0.1, 5: 1.5, 20: 1.5"   # the shape `planner profile` measures on a CPU


def test_wake_ms_is_read_by_the_wait_and_flat_past_the_longest(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text(cluster_text(WAKE))
    cost = load_cluster(path).cost("m")
    assert [cost.wake_s(ms / 1e3) * 1e3 for ms in (0, 0.1, 0.6, 3, 5, 20, 1000)] == \
        pytest.approx([0, 0, 0.05, 0.8, 1.5, 1.5, 1.5])
    (tmp_path / "none.ini").write_text(cluster_text(""))
    assert not load_cluster(tmp_path / "none.ini").cost("m").wakes
    shown = json.loads(run_planner("show", path, "--json").stdout)["gpu_types"]["m"]["outside_layers"]["wake_ms"]
    assert shown == pytest.approx({"0.2": 0.0, "1": 0.1, "5": 1.5, "20": 1.5})


def test_one_request_in_flight_wakes_every_stage_every_token(tmp_path):
    """With one request in flight each stage waits for the other's step (over 5 ms here), so each of its
    steps costs the table's 1.5 ms more: TPOT rises by exactly stages x 1.5 ms."""
    base = simulate(_layout(tmp_path, "", "m * 2", (0, 18, 36)), ONE_IN_FLIGHT)
    woken = simulate(_layout(tmp_path, WAKE, "m * 2", (0, 18, 36)), ONE_IN_FLIGHT)
    assert woken.tpot["mean"] - base.tpot["mean"] == pytest.approx(2 * 1.5e-3, rel=1e-6)


def test_a_saturated_pipeline_hardly_waits(tmp_path):
    """At full load the stages wait only for hops (under 1 ms): the estimate and the simulator charge
    under 2%."""
    plain, woken = (_layout(tmp_path, keys, "m * 2", (0, 18, 36)) for keys in ("", WAKE))
    assert layout_estimate(woken).tpot_s == pytest.approx(layout_estimate(plain).tpot_s, rel=0.02)
    busy = SimConfig(workload=Offline(), lengths="fixed", duration_s=30, warmup_s=10)
    assert simulate(woken, busy).tpot["mean"] == pytest.approx(simulate(plain, busy).tpot["mean"], rel=0.02)


def test_a_stage_that_waits_for_a_slower_one_pays_within_its_slack(tmp_path):
    """A 6-layer stage feeding a 30-layer one waits for it every step: the estimate charges it the wake,
    which the slow stage's pace absorbs (TPOT unchanged), and so does the simulator."""
    plain, woken = (_layout(tmp_path, keys, "m * 2", (0, 6, 36)) for keys in ("", WAKE))
    fast, slow = (layout_estimate(layout) for layout in (plain, woken))
    assert slow.tpot_s == pytest.approx(fast.tpot_s, rel=0.01)   # the slow stage waits only for hops
    assert slow.ttft_s - fast.ttft_s == pytest.approx(1.5e-3, rel=0.05)   # a prompt wakes the fast one
    busy = SimConfig(workload=Offline(), lengths="fixed", duration_s=30, warmup_s=10)
    assert simulate(woken, busy).tpot["mean"] == pytest.approx(simulate(plain, busy).tpot["mean"], rel=0.02)

# ---- the command line ---------------------------------------------------------------------------------

def test_a_cluster_with_the_keys_solves_and_simulates(tmp_path):
    path = tmp_path / "measured.ini"
    path.write_text(cluster_text("head_ms = 1: 0.9, 64: 1.1, 256: 1.9\nembed_ms = 1: 0.02, 256: 0.05\n"
                                 "hop_ms = 0.3\nstep_overhead_ms = 0.2", "m * 2"))
    solved = run_planner("solve", path, "--out", tmp_path / "layout.ini", "--json")
    assert solved.returncode == 0, solved.stderr
    plan = json.loads(solved.stdout)
    simulated = run_planner("simulate", tmp_path / "layout.ini", "--duration", "60", "--json")
    assert simulated.returncode == 0, simulated.stderr
    result = json.loads(simulated.stdout)
    assert result["decode_throughput_tokens_per_s"] > 0
    # the charges move both alike: simulated throughput within the agreement band of the prediction
    predicted = result["reference"]["predicted_throughput_tokens_per_s"]
    assert predicted and abs(result["decode_throughput_tokens_per_s"] / predicted - 1) <= 0.15, (plan, result)


def test_show_json_tells_the_charges(tmp_path):
    path = tmp_path / "measured.ini"
    path.write_text(cluster_text("head_ms = 1: 0.9, 64: 1.1\nhop_ms = 0.3"))
    result = run_planner("show", path, "--json")
    assert result.returncode == 0, result.stderr
    outside = json.loads(result.stdout)["gpu_types"]["m"]["outside_layers"]
    assert outside["head_ms"]["1"] == pytest.approx(0.9) and outside["head_ms"]["64"] == pytest.approx(1.1)
    assert outside["hop_ms"] == pytest.approx(0.3)
    assert outside["step_overhead_ms"]["1"] == outside["step_overhead_ms"]["256"] == \
        pytest.approx(overheads("runtime").step_s * 1e3)
    assert outside["host_step_ms"]["1"] == outside["host_step_ms"]["256"] == \
        pytest.approx(overheads("runtime").host_step_s * 1e3)


def test_a_step_overhead_table_grows_with_the_step(tmp_path):
    """`step_overhead_ms` by sequences (what `planner profile` writes): interpolated like the other tables,
    charged per iteration at its batch by the planner and shown by `planner show --json`."""
    path = tmp_path / "measured.ini"
    path.write_text(cluster_text("step_overhead_ms = 1: 0.2, 64: 0.4, 256: 1.2"))
    cost = load_cluster(path).cost("m")
    assert [cost.step_overhead_s(b) * 1e3 for b in (1, 32.5, 64, 256, 512)] == \
        pytest.approx([0.2, 0.3, 0.4, 1.2, 1.2 + 256 * 0.8 / 192])   # past the end: the last slope
    (tmp_path / "flat.ini").write_text(cluster_text("step_overhead_ms = 0.2"))
    flat = load_cluster(tmp_path / "flat.ini").cost("m")
    layers = 4   # the table's growth reaches the planner's cost of a token at large batches only
    assert cost.seconds_per_output_token(layers, 1) == pytest.approx(flat.seconds_per_output_token(layers, 1))
    assert cost.seconds_per_output_token(layers, 256) > flat.seconds_per_output_token(layers, 256)
    shown = json.loads(run_planner("show", path, "--json").stdout)["gpu_types"]["m"]["outside_layers"]
    assert shown["step_overhead_ms"]["1"] == pytest.approx(0.2) and shown["step_overhead_ms"]["256"] == pytest.approx(1.2)


def test_the_coordinators_loop_by_message_size_lengthens_a_busy_round_trip(tmp_path):
    """`host_step_ms` by sequences (what `planner profile` writes): charged per message the coordinator
    sends, so it costs a large batch more than a small one, in the estimate and in the simulator alike."""
    (tmp_path / "table.ini").write_text(cluster_text("host_step_ms = 1: 0.1, 256: 2.6"))
    (tmp_path / "flat.ini").write_text(cluster_text("host_step_ms = 0.1"))
    table, flat = (load_cluster(tmp_path / f"{n}.ini") for n in ("table", "flat"))
    assert table.cost("m").host_step_s(128.5) == pytest.approx(1.35e-3)
    placement = Placement({name: (0, table.model.layers) if i == 0 else (0, 0)
                           for i, name in enumerate(PlacementProblem(table).by_name)})
    slow, fast = (estimate(PlacementProblem(c), placement) for c in (table, flat))
    assert slow.tpot_s > fast.tpot_s and slow.ttft_s == pytest.approx(fast.ttft_s)   # a prompt: one sequence
    config = SimConfig(workload=Offline(64), lengths="fixed", duration_s=30, warmup_s=10)
    simulated = [simulate(Layout(c, "hand", placement, e.flow.edge_flows, {}), config).tpot["mean"]
                 for c, e in ((table, slow), (flat, fast))]
    assert simulated[0] > simulated[1]
