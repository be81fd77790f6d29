"""Cost model: roofline shape, memory limits checked by hand, measured and static tables."""

import math
from dataclasses import replace

import pytest

from planner.catalog import GpuSpec, LatencyTable
from planner.costmodel import CostParams, GpuCost, NoLatencyModel, Workload
from planner.engines import efficiency

GIB = 1024**3


@pytest.fixture(scope="module")
def qwen14(models):
    return models["qwen3-14b"]


@pytest.fixture(scope="module")
def ti(gpus, qwen14):
    return GpuCost(gpus["rtx2080ti"], qwen14, "fp16")


@pytest.fixture(scope="module")
def ada(gpus, qwen14):
    return GpuCost(gpus["rtx4090"], qwen14, "fp16")


# ---- memory, by hand ---------------------------------------------------------------------------

# Qwen3-14B (config.json): hidden 5120, intermediate 17408, 40 heads, 8 KV heads, head_dim 128, vocab 151936
HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 5120, 17408, 40, 8, 128, 151936
FP16 = 2
# one layer: q (5120 x 5120), k and v (5120 x 1024 each), o (5120 x 5120), q/k norms (2 x 128),
# gate/up/down (3 x 5120 x 17408), two RMSNorms (2 x 5120)
LAYER_PARAMS = (HIDDEN * HEADS * HEAD_DIM + 2 * HIDDEN * KV_HEADS * HEAD_DIM + HEADS * HEAD_DIM * HIDDEN
                + 2 * HEAD_DIM + 3 * HIDDEN * INTER + 2 * HIDDEN)
LAYER_BYTES = LAYER_PARAMS * FP16                      # 330,311,936 params = 660,623,872 B (630 MiB)
KV_BYTES_PER_TOKEN = 2 * KV_HEADS * HEAD_DIM * FP16    # K and V: 4,096 B per token per layer
EMBEDDING_BYTES = VOCAB * HIDDEN * FP16                # 1,555,824,640 B (1.45 GiB)
PER_LAYER = LAYER_BYTES + 4096 * KV_BYTES_PER_TOKEN    # 677,401,088 B: weights + KV room for one 4k request


def test_bytes_by_hand(ti):
    assert LAYER_PARAMS == 330_311_936
    assert ti.layer_bytes == LAYER_BYTES == 660_623_872
    assert ti.kv_bytes_per_token == KV_BYTES_PER_TOKEN == 4096
    assert ti.embedding_bytes == EMBEDDING_BYTES == 1_555_824_640
    assert ti.head_bytes == (VOCAB * HIDDEN + HIDDEN) * FP16


def test_max_layers_rtx2080ti_by_hand(ti):
    memory = 11264 * 1024**2                            # nvidia-smi: 11264 MiB = 11 GiB
    usable = memory * 0.9 - 1 * GIB                     # 8.9 GiB = 9,556,302,233.6 B
    assert ti.usable_bytes() == pytest.approx(usable)
    assert usable / PER_LAYER == pytest.approx(14.107, abs=1e-3)                       # -> 14
    assert (usable - EMBEDDING_BYTES) / PER_LAYER == pytest.approx(11.811, abs=1e-3)   # -> 11
    assert ti.max_layers() == math.floor(usable / PER_LAYER) == 14
    assert ti.max_layers(first=True) == math.floor((usable - EMBEDDING_BYTES) / PER_LAYER) == 11


def test_max_layers_rtx4090_by_hand(ada):
    memory = 24564 * 1024**2                            # nvidia-smi: 24564 MiB (23.99 GiB)
    usable = memory * 0.9 - 1 * GIB                     # 20.59 GiB = 22,107,756,953.6 B
    assert ada.usable_bytes() == pytest.approx(usable)
    assert usable / PER_LAYER == pytest.approx(32.636, abs=1e-3)                       # -> 32
    assert (usable - EMBEDDING_BYTES) / PER_LAYER == pytest.approx(30.339, abs=1e-3)   # -> 30
    assert ada.max_layers() == 32
    assert ada.max_layers(first=True) == 30


def test_last_stage_holds_the_lm_head(ti, ada):
    # the LM head is an untied copy of vocab x hidden plus the final norm: as heavy as the embedding
    assert ti.max_layers(last=True) == 11
    assert ada.max_layers(last=True) == 30
    assert ada.max_layers(first=True, last=True) < ada.max_layers(first=True)


def test_kv_tokens_by_hand(ti):
    usable = 11 * GIB * 0.9 - 1 * GIB
    for k in (1, 5, 14):
        assert ti.kv_tokens(k) == int((usable - k * LAYER_BYTES) // (k * KV_BYTES_PER_TOKEN))
    assert ti.kv_tokens(0) == 0
    assert ti.kv_tokens(20) == 0  # weights alone overflow


def test_max_batch_is_capped_and_shrinks(ti):
    request_tokens = 1024 + 256  # admission reserves the whole prompt + output
    assert ti.max_batch(1) == 256                        # vLLM's max_num_seqs
    assert ti.max_batch(10) == int(ti.kv_tokens(10) // request_tokens) < 256
    batches = [ti.max_batch(k) for k in range(1, ti.max_layers() + 1)]
    assert batches == sorted(batches, reverse=True)
    assert batches[-1] >= 1


def test_fp32_doubles_bytes(gpus, qwen14):
    fp32 = GpuCost(gpus["a100-80gb"], qwen14, "fp32")
    fp16 = GpuCost(gpus["a100-80gb"], qwen14, "fp16")
    assert fp32.layer_bytes == 2 * fp16.layer_bytes
    assert fp32.kv_bytes_per_token == 2 * fp16.kv_bytes_per_token


# ---- time ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gpu_id", ["rtx2080ti", "rtx4090", "a10", "h100"])
def test_decode_monotone_in_batch(gpus, qwen14, gpu_id):
    cost = GpuCost(gpus[gpu_id], qwen14, "fp16")
    times = [cost.decode_s(1, b) for b in range(1, 513)]
    assert all(b >= a for a, b in zip(times, times[1:]))
    assert cost.decode_s(3, 64) == pytest.approx(3 * cost.decode_s(1, 64))  # linear in layers


def test_decode_batch1_is_bandwidth_bound(ti, gpus):
    p = efficiency("runtime", "rtx2080ti")
    bandwidth = gpus["rtx2080ti"].memory_bandwidth_bytes_per_s    # 616 GB/s
    expected = LAYER_BYTES / (bandwidth * p.memory_efficiency) + p.layer_overhead_s  # ~1.37 ms
    assert ti.decode_s(1, 1) == pytest.approx(expected, rel=0.01)
    # exactly: the weights plus one sequence's KV cache at the mean context
    kv = (1024 + 128) * KV_BYTES_PER_TOKEN
    assert ti.decode_s(1, 1) == pytest.approx((LAYER_BYTES + kv) / (bandwidth * p.memory_efficiency)
                                              + p.layer_overhead_s)


def test_prefill_2048_is_compute_bound(ti, gpus):
    p = efficiency("runtime", "rtx2080ti")
    gpu = gpus["rtx2080ti"]
    linear = LAYER_PARAMS - 2 * HEAD_DIM - 2 * HIDDEN   # weights in matmuls
    flops = 2048 * 2 * linear + 4 * HEADS * HEAD_DIM * 2048 * 1024   # GEMMs + causal attention
    compute = flops / (gpu.fp16_flops * p.compute_efficiency)
    memory = (LAYER_BYTES + 2048 * KV_BYTES_PER_TOKEN) / (gpu.memory_bandwidth_bytes_per_s * p.memory_efficiency)
    assert compute > 10 * memory
    assert ti.prefill_s(1, 2048) == pytest.approx(compute + p.layer_overhead_s)


def test_prefill_in_chunks_costs_a_weight_read_per_chunk(ti, gpus):
    """Per output token, a prompt costs its chunks' passes: the same attention FLOPs as one pass over the
    whole prompt, plus one weight read per chunk where a chunk is too small to be compute-bound."""
    k, prompt = 10, 1024
    whole = ti.prefill_s(k, prompt)
    for batch in (1, 20, 51.2):
        chunk = 256 - batch
        chunked = prompt / chunk * ti.prefill_s(k, chunk, (prompt - chunk) / 2)
        assert chunked >= whole * (1 - 1e-9)
        iterations = max(1 / batch, prompt / (chunk * 256))   # each pays the step overhead
        assert ti.seconds_per_output_token(k, batch) == pytest.approx(
            ti.decode_s(k, batch) / batch + chunked / 256 + iterations * ti.step_overhead_s(batch))
    # attention adds up: the chunks' causal attention over the prompt is the whole pass's
    free = replace(efficiency("runtime", "rtx2080ti"), layer_overhead_s=0.0)
    flops_bound = GpuCost(gpus["rtx2080ti"], ti.model, "fp16", efficiency=free)
    chunk = 128
    assert prompt / chunk * flops_bound.prefill_s(1, chunk, (prompt - chunk) / 2) == pytest.approx(
        flops_bound.prefill_s(1, prompt), rel=1e-3)


def test_rtx4090_beats_rtx2080ti(ti, ada):
    for batch in (1, 16, 256):
        assert ada.decode_s(1, batch) < ti.decode_s(1, batch)
    for tokens in (128, 2048):
        assert ada.prefill_s(1, tokens) < ti.prefill_s(1, tokens)
    for k in range(1, ti.max_layers() + 1):
        assert ada.capacity(k) > ti.capacity(k)
    assert ada.max_layers() > ti.max_layers()


# ---- capacity -----------------------------------------------------------------------------------

@pytest.mark.parametrize("gpu_id", ["rtx2080ti", "rtx4090", "l20", "a10"])
def test_capacity_non_increasing_in_layers(gpus, qwen14, gpu_id):
    cost = GpuCost(gpus[gpu_id], qwen14, "fp16")
    caps = [cost.capacity(k) for k in range(1, cost.max_layers() + 1)]
    assert all(c > 0 for c in caps)
    assert all(b <= a for a, b in zip(caps, caps[1:]))
    assert cost.capacity(0) == 0.0
    assert cost.capacity_table() == caps


def test_capacity_non_increasing_in_rtt(ti, ada):
    for cost in (ti, ada):
        for k in (1, 5, 10):
            caps = [cost.capacity(k, rtt) for rtt in (0.0, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)]
            assert all(b <= a for a, b in zip(caps, caps[1:]))
            assert cost.capacity(k, 1.0) == pytest.approx(min(cost.capacity(k), cost.max_batch(k) / 1.0))


def test_capacity_formula(ti):
    k = 10
    batch = ti.max_batch(k)
    step = min(batch, 256 * 256 / 1280)  # an iteration's token budget, shared with prefill
    chunk = 256 - step                      # what the budget leaves after the decode batch: 204.8 tokens
    per_token = ti.decode_s(k, step) / step + 1024 / chunk * ti.prefill_s(k, chunk, (1024 - chunk) / 2) / 256 \
        + ti.step_overhead_s(step) / step                # one iteration per decode step of `step` sequences
    assert ti.capacity(k) == pytest.approx(1 / per_token)
    assert ti.capacity(k, 0.5) == pytest.approx(min(1 / per_token, batch / 0.5))


def test_capacity_zero_when_nothing_fits(ti):
    assert ti.capacity(20) == 0.0


def test_workload_changes_capacity(gpus, qwen14):
    short = GpuCost(gpus["rtx4090"], qwen14, "fp16", Workload(128, 512))
    long = GpuCost(gpus["rtx4090"], qwen14, "fp16", Workload(8192, 64))
    assert short.capacity(20) > long.capacity(20)


# ---- measured and static tables -----------------------------------------------------------------

def test_latency_table_interpolates_and_extrapolates():
    table = LatencyTable(((2, 0.010), (8, 0.016), (32, 0.040)))
    assert table.seconds(1) == 0.010                      # below the first point: the first value
    assert table.seconds(2) == pytest.approx(0.010)
    assert table.seconds(5) == pytest.approx(0.013)       # halfway between 2 and 8
    assert table.seconds(20) == pytest.approx(0.028)      # halfway between 8 and 32
    assert table.seconds(32) == pytest.approx(0.040)
    assert table.seconds(56) == pytest.approx(0.064)      # last slope: 1 ms per sequence
    assert table.seconds(132) == pytest.approx(0.140)


def test_latency_table_never_falls_past_its_end():
    table = LatencyTable(((1, 0.010), (4, 0.008)))
    assert table.seconds(100) == pytest.approx(0.008)


def test_measured_gpu_uses_its_tables(qwen14):
    gpu = GpuSpec(id="m", name="m", memory_bytes=24e9,
                  decode_ms=LatencyTable(((2, 6.9e-3), (8, 7.0e-3), (32, 8.0e-3))),
                  prefill_ms=LatencyTable(((250, 12e-3), (1000, 38e-3))),
                  kv_tokens=((1, 400_000), (3, 100_000)))
    cost = GpuCost(gpu, qwen14, "fp16")
    assert cost.decode_s(4, 20) == pytest.approx(4 * 7.5e-3)
    assert cost.prefill_s(2, 625) == pytest.approx(2 * 25e-3)
    assert cost.prefill_s(1, 2000) == pytest.approx(38e-3 + 1000 * 26e-3 / 750)
    assert cost.kv_tokens(2) == 250_000                   # interpolated between measured points
    assert cost.max_layers() == GpuCost(GpuSpec(id="r", name="r", memory_bytes=24e9), qwen14, "fp16").max_layers()


def test_static_throughput_table(qwen14):
    gpu = GpuSpec(id="s", name="s", memory_bytes=None, max_layers=12, throughput=(2400.0, 1190.0, 790.0))
    cost = GpuCost(gpu, qwen14, "fp16")
    assert [cost.capacity(k) for k in (1, 2, 3)] == [2400.0, 1190.0, 790.0]
    assert cost.capacity(4) == pytest.approx(790.0 * 3 / 4)    # 1/k beyond the table's end
    assert cost.capacity(6) == pytest.approx(790.0 * 3 / 6)
    assert cost.capacity(3, rtt_s=10.0) == 790.0              # no latency model: rtt does not apply
    assert cost.max_layers() == 12
    assert not cost.has_latency
    with pytest.raises(NoLatencyModel):
        cost.decode_s(1, 1)
    with pytest.raises(NoLatencyModel):
        cost.prefill_s(1, 128)


# ---- engines ------------------------------------------------------------------------------------

def test_runtime_is_the_default_engine(gpus, qwen14):
    default = GpuCost(gpus["l4"], qwen14, "fp16")
    runtime = GpuCost(gpus["l4"], qwen14, "fp16", params=CostParams(engine="runtime"))
    assert default.decode_s(1, 16) == runtime.decode_s(1, 16)
    assert default.efficiency == efficiency("runtime", "l4")


def test_vllm_constants_differ_by_gpu_class(gpus, qwen14):
    l4, a100 = efficiency("vllm", "l4"), efficiency("vllm", "a100-80gb")
    assert l4.compute_efficiency < 0.5 < a100.compute_efficiency  # the 72 W L4 does not reach its tensor peak
    assert efficiency("vllm", "rtx4090") == efficiency("vllm", "some-custom-gpu")  # the default row
    with pytest.raises(ValueError, match="unknown engine"):
        efficiency("tensorrt", "l4")


def test_vllm_overlap_adds_part_of_the_shorter_side(gpus, qwen14):
    """vLLM decode at batch 64: memory and compute time half overlap (fitted to Helix's profiles)."""
    e = efficiency("vllm", "a100-40gb")
    cost = GpuCost(gpus["a100-40gb"], qwen14, "fp16", params=CostParams(engine="vllm"))
    gpu, linear = gpus["a100-40gb"], qwen14.linear_params()
    memory = (cost.layer_bytes + 64 * 1000 * cost.kv_bytes_per_token) / (gpu.memory_bandwidth_bytes_per_s * e.memory_efficiency)
    compute = 64 * (2 * linear + 4 * 5120 * 1000) / (gpu.fp16_flops * e.decode_compute_efficiency)
    assert cost.decode_s(1, 64, 1000) == pytest.approx(max(memory, compute) + 0.5 * min(memory, compute) + e.layer_overhead_s)


def test_measured_tables_replace_every_engine_s_roofline(qwen14):
    """A GPU given as measured tables has no roofline figures: the tables are its speed on any engine."""
    table = LatencyTable(((1, 5e-3), (64, 9e-3)))
    gpu = GpuSpec(id="y", name="y", memory_bytes=24 * GIB, decode_ms=table, prefill_ms=table)
    for engine in ("runtime", "vllm"):
        assert GpuCost(gpu, qwen14, "fp16", params=CostParams(engine=engine)).decode_s(2, 1) == pytest.approx(10e-3)
