"""Serving engines and their efficiency constants: the table the cost model's roofline is derated by.

A plan runs on an engine, and the same layer runs at a different speed on each:

* `runtime`: this project's bundled pipeline runtime (runtime/): torch layers, one kernel per op. Its
  constants were measured on a lent H100 (docs/runtime.md); a GPU section's measured `decode_ms` /
  `prefill_ms` tables (`planner profile` times the runtime's layers) replace them.
* `vllm`: vLLM, a CUDA-graph engine with fused QKV / gate-up GEMMs and paged attention. Its constants
  are fitted to the per-layer vLLM profiles published with Helix (ASPLOS'25), profiles/calibration/;
  the fit and every point's error: docs/cost-model.md#engines-and-calibration, benchmarks/calibration.py.
* `helix`: Helix (Mei et al., ASPLOS'25), whose compute nodes run vLLM's layers (its simulator times them
  by the same per-layer vLLM profiles, so the layer constants are vLLM's) but schedule differently: a node
  runs one layer per iteration over whatever waits at it, so a path's decoding sequences move as **one
  group** that walks the path stage after stage, with no micro-batches in flight at once; prompts run
  whole; admission is by KV alone (docs/simulator.md#helixs-simulator-as-a-judge, read from its code).

Where the physics differs by GPU class, a class has its own row: the L4 and T4 are 70-72 W cards
whose clocks drop under sustained tensor load, so their prefill reaches under half the tensor peak
that A100 and V100 prefill reaches about three quarters of.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("runtime", "vllm", "helix")
DEFAULT_ENGINE = "runtime"  # the constants the cost model has always had describe the runtime
LANE_ENGINES = ("runtime",)  # engines a plan can tell how many lanes a path runs (vLLM: one per pipeline stage)
GROUP_ENGINES = ("helix",)   # engines that run each path's decoding sequences as one group (one lane per path)
SINGLE_GPU_ENGINES = ("helix",)  # engines that place layers on single GPUs only (Helix has no tensor parallelism)


@dataclass(frozen=True)
class Limits:
    """How much one iteration of a stage takes in."""

    max_batch: int             # most sequences a stage holds and decodes in one step
    prefill_chunk_tokens: int  # most prompt tokens one iteration takes (a longer prompt is split)


# vLLM's max_num_seqs and chunked-prefill budget, which the runtime takes as its defaults too.
_CHUNKED = Limits(max_batch=256, prefill_chunk_tokens=256)
# Helix: no cap on sequences but the KV (its largest per-iteration decode cap in its LLaMA-2-70B model
# files is 480 tokens, `decode_max_tokens_dict`; 280-380 on L4 and T4), and prompts whole up to its
# MAX_INPUT_LEN of 2,048 tokens (simulator/event_simulator/utils.py).
_HELIX_LIMITS = Limits(max_batch=480, prefill_chunk_tokens=2048)


def limits(engine: str) -> Limits:
    """How much one iteration takes in on `engine`."""
    if engine in ("runtime", "vllm"):
        return _CHUNKED
    if engine == "helix":
        return _HELIX_LIMITS
    raise ValueError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")


@dataclass(frozen=True)
class Efficiency:
    """How close one engine gets to a GPU's datasheet peaks, per decoder layer."""

    memory_efficiency: float          # share of peak DRAM bandwidth that weight and KV reads reach
    compute_efficiency: float         # share of peak tensor FLOP/s that prefill GEMMs reach
    decode_compute_efficiency: float  # share of peak tensor FLOP/s that decode GEMMs (few rows) reach
    layer_overhead_s: float           # fixed time per layer per step: launches, norms, rotary, sync
    overlap: float                    # 1: a layer's memory and compute time overlap fully (roofline max);
    #                                   0: they add. time = max(m, c) + (1 - overlap) * min(m, c)

    def roofline_s(self, memory_s: float, compute_s: float) -> float:
        """Time of one layer's kernels that move bytes for `memory_s` and compute for `compute_s`."""
        return max(memory_s, compute_s) + (1.0 - self.overlap) * min(memory_s, compute_s) + self.layer_overhead_s


# The runtime: measured on a lent H100 (bf16, Qwen3-8B layers inside a CUDA graph, benchmarks/runtime_layers.py, since replaced by benchmarks/runtime_gpu.py,
# docs/runtime.md "Measured: Qwen3-8B layers on an H100"): weight GEMVs reach 0.51-0.57 of datasheet
# bandwidth, prefill GEMMs 0.70-0.74 of peak, everything else ~85 us per layer. One row for every GPU:
# no other GPU has been measured with the runtime.
_RUNTIME = Efficiency(memory_efficiency=0.55, compute_efficiency=0.70, decode_compute_efficiency=0.70,
                      layer_overhead_s=85e-6, overlap=1.0)

# vLLM: fitted to Helix's per-layer vLLM profiles of LLaMA-2-70B and LLaMA-30B (profiles/calibration/);
# the per-class rows are the GPUs those profiles measured, the default row their A100/V100 mean.
# Fitted by grid search (max |error| over the compared points, docs/cost-model.md): overlap 0.5, 10 us per layer
# (CUDA graphs replay a layer's kernels with no launch gaps) and decode GEMMs at half the tensor peak are
# shared; bandwidth and prefill efficiency are per class. The default row (every other GPU) takes the
# A100's, the most recent datacenter part measured.
_VLLM_DEFAULT = Efficiency(memory_efficiency=0.82, compute_efficiency=0.83, decode_compute_efficiency=0.50,
                           layer_overhead_s=10e-6, overlap=0.5)
_VLLM_BY_CLASS: dict[str, Efficiency] = {
    #                  bandwidth  prefill  decode GEMM  per layer  overlap
    "a100": Efficiency(0.82,      0.83,    0.50,        10e-6,     0.5),
    "v100": Efficiency(0.80,      0.76,    0.50,        10e-6,     0.5),
    "l4": Efficiency(0.87,        0.44,    0.50,        10e-6,     0.5),   # 72 W: prefill clocks drop
    "t4": Efficiency(0.72,        0.45,    0.50,        10e-6,     0.5),   # 70 W: prefill clocks drop
}

# GPU catalog ids (profiles/gpus.ini) -> the class whose row they use; the rest use the engine's default
GPU_CLASS = {"a100-40gb": "a100", "a100-80gb": "a100", "v100": "v100", "v100-32gb": "v100", "l4": "l4", "t4": "t4"}


@dataclass(frozen=True)
class Overheads:
    """An engine's fixed costs outside the layers' kernels (docs/cost-model.md#work-outside-the-layers).
    A measured GPU section's `hop_ms` / `step_overhead_ms` replace the first two for that GPU type."""

    hop_s: float        # one message between stages: serialise, send, receive, deserialise (not the bytes)
    step_s: float       # one iteration at a stage: batch formation and bookkeeping outside the kernels
    host_step_s: float  # the coordinator's loop, once per message it sends to a path's first stage


# The runtime: msgpack + ZeroMQ over loopback TCP and the worker's Python bookkeeping per step, measured at
# a batch of 8-16 on the 2-core development machine (benchmarks/runtime_overheads.py: hop 0.40-0.47 ms,
# step 0.15-0.22 ms; docs/cost-model.md#work-outside-the-layers). The host's loop per round is the same
# kind of O(batch) Python and is given the worker's figure (not measured apart).
_RUNTIME_OVERHEADS = Overheads(hop_s=0.45e-3, step_s=0.20e-3, host_step_s=0.20e-3)
# vLLM: not measured here. Stages exchange intermediate tensors with torch.distributed send/recv, and
# since v0.6 the scheduler's CPU work overlaps the GPU's (multi-step / async scheduling), so only a
# small gap between CUDA-graph replays is exposed; an order-of-magnitude assumption, stated as such.
_VLLM_OVERHEADS = Overheads(hop_s=0.10e-3, step_s=0.10e-3, host_step_s=0.0)


def overheads(engine: str) -> Overheads:
    """The fixed costs outside the layers that `engine` runs with."""
    if engine == "runtime":
        return _RUNTIME_OVERHEADS
    if engine in ("vllm", "helix"):   # Helix's overheads are not measured either: vLLM's assumption
        return _VLLM_OVERHEADS
    raise ValueError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")


def efficiency(engine: str, gpu_id: str) -> Efficiency:
    """The constants `engine` runs with on GPU type `gpu_id`."""
    if engine == "runtime":
        return _RUNTIME
    if engine in ("vllm", "helix"):   # Helix runs vLLM's layers
        return _VLLM_BY_CLASS.get(GPU_CLASS.get(gpu_id, ""), _VLLM_DEFAULT)
    raise ValueError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")
