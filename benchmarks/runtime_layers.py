"""Per-layer decode and prefill times of the runtime's own layers on a GPU, against planner.costmodel.

    python benchmarks/runtime_layers.py --model qwen3-8b --gpu h100 --dtype bf16 [--out result.json]

Random weights shaped like the catalog model (a middle stage of --layers layers, runtime.profile), the
worker's exact forward pass (eager PyTorch, as the runtime runs it). Also times, per layer: the same
decode step captured in a CUDA graph (the kernels without eager launch overhead), the seven weight
matrix products alone (what a fused, graph-captured engine is left with), and the device's two
ceilings (a device-to-device copy, a large bf16 matrix product), so each figure can be read against a floor.
Prints a table; --out writes every number as JSON. docs/runtime.md reports a run on a lent H100.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planner.catalog import load_gpu_catalog, load_model_catalog  # noqa: E402
from planner.costmodel import GpuCost, Workload  # noqa: E402
from runtime.model import Attention, BatchPlan, attend  # noqa: E402
from runtime.profile import random_stage, time_decode, time_prefill  # noqa: E402


def median_seconds(fn, runs: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def ceilings() -> dict:
    n = 1 << 28  # 512 MiB of bf16 each way
    a, b = torch.randn(n, device="cuda", dtype=torch.bfloat16), torch.empty(n, device="cuda", dtype=torch.bfloat16)
    copy_s = median_seconds(lambda: b.copy_(a), runs=10)
    m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    gemm_s = median_seconds(lambda: m @ m, runs=10)
    return {"copy_bytes_per_s": 2 * n * 2 / copy_s, "bf16_flops": 2 * 8192 ** 3 / gemm_s}


def linear_only_s(stage, rows: int) -> float:
    """The layer's seven weight matrix products on `rows` tokens, nothing else (per layer)."""
    layer = stage.layers[0]
    x = torch.randn(rows, stage.model.hidden_size, device="cuda", dtype=next(stage.parameters()).dtype)
    attn, mlp = layer.self_attn, layer.mlp
    q_width = stage.model.attention_heads * stage.model.head_dim
    o_in = torch.randn(rows, q_width, device="cuda", dtype=x.dtype)
    up_in = torch.randn(rows, stage.model.intermediate_size, device="cuda", dtype=x.dtype)

    def run():
        attn.q_proj(x), attn.k_proj(x), attn.v_proj(x), attn.o_proj(o_in)
        mlp.gate_proj(x), mlp.up_proj(x), mlp.down_proj(up_in)

    with torch.inference_mode():
        return median_seconds(run)


def graphed_decode_s(stage, batch: int, context: int) -> float:
    """The same decode step captured in a CUDA graph and replayed: the runtime's kernels without the
    launch overhead of eager PyTorch (per layer)."""
    kv = stage.new_kv(batch, context + 1)
    plan = BatchPlan.build([(slot, context, 1) for slot in range(batch)], "cuda")
    hidden = torch.randn(batch, stage.model.hidden_size, device="cuda", dtype=next(stage.parameters()).dtype)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            stage(hidden, plan, kv)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        stage(hidden, plan, kv)
    return median_seconds(graph.replay) / len(stage.layers)


def sdpa_decode(q, plan, keys, values):
    """The alternative decode attention: SDPA with a mask and enable_gqa (its math kernel expands K/V per
    query head), for --decode-attention sdpa."""
    count = plan.decode_count
    slots, positions = plan.token_slots[:count], plan.positions[:count]
    ks, vs = keys[slots, :, :plan.decode_length], values[slots, :, :plan.decode_length]
    mask = torch.arange(plan.decode_length, device=q.device)[None, :] <= positions[:, None]
    return attend(q[:, :, None, :], ks, vs, mask[:, None, None, :])[:, :, 0, :]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qwen3-8b")
    parser.add_argument("--gpu", default="h100", help="catalog GPU whose cost model the figures are compared with")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=None, help="cached tokens per sequence (default: the "
                        "cost model's mean context, prompt + half the output of its workload)")
    parser.add_argument("--decode-batches", default="1,8,32,64,128,256")
    parser.add_argument("--prefill-tokens", default="128,512,1024,2048,4096")
    parser.add_argument("--decode-attention", choices=["grouped", "sdpa"], default="grouped",
                        help="grouped: the runtime's; sdpa: torch SDPA with a mask, for comparison")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.decode_attention == "sdpa":
        Attention._decode = staticmethod(sdpa_decode)
    model = load_model_catalog()[args.model]
    cost = GpuCost(load_gpu_catalog()[args.gpu], model, args.dtype)
    context = args.context or int(Workload().mean_context)
    stage = random_stage(model, args.layers, dtype=args.dtype, device="cuda")
    device = torch.cuda.get_device_name()
    result = {"device": device, "torch": torch.__version__, "model": args.model, "gpu_model": args.gpu,
              "dtype": args.dtype, "decode_attention": args.decode_attention, "layers_timed": args.layers, "context": context, "ceilings": ceilings(),
              "decode": [], "prefill": []}
    for batch in (int(x) for x in args.decode_batches.split(",")):
        measured = time_decode(stage, batch, context, "cuda")
        predicted = cost.decode_s(1, batch, context)
        graphed = graphed_decode_s(stage, batch, context)
        result["decode"].append({"batch": batch, "measured_ms": measured * 1e3, "graphed_ms": graphed * 1e3,
                                 "graphed_ratio": graphed / predicted, "linear_only_ms":
                                 linear_only_s(stage, batch) * 1e3, "cost_model_ms": predicted * 1e3,
                                 "ratio": measured / predicted})
    for tokens in (int(x) for x in args.prefill_tokens.split(",")):
        measured = time_prefill(stage, tokens, tokens, "cuda")     # one prompt of `tokens` tokens
        predicted = cost.prefill_s(1, tokens)
        result["prefill"].append({"tokens": tokens, "measured_ms": measured * 1e3, "linear_only_ms":
                                  linear_only_s(stage, tokens) * 1e3, "cost_model_ms": predicted * 1e3,
                                  "ratio": measured / predicted})
    ceil = result["ceilings"]
    print(f"{device}, torch {torch.__version__}: copy {ceil['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write), "
          f"bf16 matmul {ceil['bf16_flops'] / 1e12:.0f} TFLOP/s; {args.model} layer in {args.dtype}, context {context}")
    print(f"{'decode batch':>14} {'measured ms':>12} {'graphed ms':>11} {'linears ms':>11} {'cost model ms':>14} "
          f"{'ratio':>6} {'graphed/model':>14}")
    for row in result["decode"]:
        print(f"{row['batch']:>14} {row['measured_ms']:>12.4f} {row['graphed_ms']:>11.4f} {row['linear_only_ms']:>11.4f} "
              f"{row['cost_model_ms']:>14.4f} {row['ratio']:>6.2f} {row['graphed_ratio']:>14.2f}")
    print(f"{'prefill tokens':>14} {'measured ms':>12} {'linears ms':>11} {'cost model ms':>14} {'ratio':>6}")
    for row in result["prefill"]:
        print(f"{row['tokens']:>14} {row['measured_ms']:>12.4f} {row['linear_only_ms']:>11.4f} "
              f"{row['cost_model_ms']:>14.4f} {row['ratio']:>6.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.1f} s)")
