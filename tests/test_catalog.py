"""GPU and model catalogs: everything loads, and the figures agree with published totals."""

import pytest

from planner.catalog import GpuSpec, ModelSpec

REQUIRED_GPUS = ["rtx2080ti", "rtx4090", "l20", "a10", "a100-40gb", "a100-80gb", "l4", "t4", "v100", "h100"]
REQUIRED_MODELS = ["qwen3-0.6b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b", "qwen2.5-7b", "qwen2.5-14b",
                   "qwen2.5-32b", "qwen2.5-72b", "llama-2-70b", "llama-30b"]


def total_params(m: ModelSpec) -> int:
    """Decoder layers + embedding + final norm + LM head (counted once when tied to the embedding)."""
    head = m.head_params() - (m.vocab_size * m.hidden_size if m.tie_word_embeddings else 0)
    return m.layers * m.layer_params() + m.embedding_params() + head


@pytest.mark.parametrize("gpu_id", REQUIRED_GPUS)
def test_required_gpus_present(gpus, gpu_id):
    assert gpu_id in gpus


def test_every_gpu_is_a_complete_roofline_entry(gpus):
    for gpu_id, gpu in gpus.items():
        assert isinstance(gpu, GpuSpec)
        assert gpu.id == gpu_id and gpu.name
        assert gpu.memory_bytes and gpu.memory_bytes > 4 * 1024**3, gpu_id
        assert gpu.memory_bandwidth_bytes_per_s and gpu.memory_bandwidth_bytes_per_s > 100e9, gpu_id
        assert gpu.fp16_flops and gpu.fp16_flops > 10e12, gpu_id
        assert not gpu.is_static and not gpu.is_measured


@pytest.mark.parametrize("gpu_id", ["rtx2080ti", "t4", "v100"])
def test_pre_ampere_gpus_have_no_bf16(gpus, gpu_id):
    assert gpus[gpu_id].bf16 is False


@pytest.mark.parametrize("gpu_id", ["rtx4090", "l20", "a10", "a100-40gb", "a100-80gb", "l4", "h100"])
def test_ampere_and_later_have_bf16(gpus, gpu_id):
    assert gpus[gpu_id].bf16 is True


def test_catalog_figures_of_the_promised_gpus(gpus):
    # memory as nvidia-smi reports it (memory.total, MiB)
    assert gpus["rtx2080ti"].memory_bytes == 11264 * 1024**2 == 11 * 1024**3
    assert gpus["rtx2080ti"].memory_bandwidth_bytes_per_s == pytest.approx(616e9)
    assert gpus["rtx2080ti"].fp16_flops == pytest.approx(53.8e12)   # FP32 accumulate, not 107.6
    assert gpus["rtx4090"].memory_bytes == 24564 * 1024**2
    assert gpus["l20"].memory_bytes == 46068 * 1024**2       # 48 GB with ECC on: 15/16 of it
    assert gpus["a10"].memory_bytes == 23028 * 1024**2
    assert gpus["rtx4090"].memory_bandwidth_bytes_per_s == pytest.approx(1008e9)
    assert gpus["rtx4090"].fp16_flops == pytest.approx(165.2e12)    # FP32 accumulate, not 330.3
    assert gpus["rtx4090"].fp16_flops > gpus["rtx2080ti"].fp16_flops


@pytest.mark.parametrize("model_id", REQUIRED_MODELS)
def test_required_models_present(models, model_id):
    assert model_id in models


def test_every_model_loads_consistently(models):
    for model_id, m in models.items():
        assert isinstance(m, ModelSpec)
        assert m.id == model_id
        assert m.layers > 0 and m.attention_heads % m.kv_heads == 0
        assert m.family in ("qwen3", "qwen2", "llama")
        assert m.layer_params() > m.linear_params() > 0
        assert m.hf_name


@pytest.mark.parametrize("model_id, published", [
    ("qwen3-0.6b", 0.6e9),
    ("qwen3-4b", 4.0e9),
    ("qwen3-8b", 8.2e9),
    ("qwen3-14b", 14.8e9),
    ("qwen3-32b", 32.8e9),
    ("qwen2.5-7b", 7.61e9),
    ("qwen2.5-14b", 14.7e9),
    ("qwen2.5-32b", 32.5e9),
    ("qwen2.5-72b", 72.7e9),
    ("llama-2-70b", 69.0e9),
    ("llama-30b", 32.5e9),
])
def test_parameter_counts_match_published_totals(models, model_id, published):
    assert total_params(models[model_id]) == pytest.approx(published, rel=0.02)


def test_qwen3_14b_layer_by_hand(models):
    m = models["qwen3-14b"]
    attention = 5120 * (40 * 128) + 2 * 5120 * (8 * 128) + (40 * 128) * 5120 + 2 * 128  # q, k, v, o, q/k norm
    mlp = 3 * 5120 * 17408
    assert m.layer_params() == attention + mlp + 2 * 5120
    assert not m.qkv_bias


def test_qwen2_has_qkv_bias(models):
    m = models["qwen2.5-7b"]
    assert m.qkv_bias
    q, kv = 28 * 128, 4 * 128
    no_bias = 3584 * (q + 2 * kv) + q * 3584 + 3 * 3584 * 18944 + 2 * 3584
    assert m.layer_params() == no_bias + q + 2 * kv


def test_qwen3_06b_head_dim_is_not_derived(models):
    m = models["qwen3-0.6b"]
    assert m.hidden_size // m.attention_heads == 64
    assert m.head_dim == 128
    assert m.tie_word_embeddings


def test_llama_30b_is_multi_head(models):
    m = models["llama-30b"]
    assert m.kv_heads == m.attention_heads == 52
