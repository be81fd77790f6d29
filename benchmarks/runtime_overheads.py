"""The runtime's fixed costs outside the layers, on this machine: the `runtime` engine's Overheads
(planner/engines.py, docs/cost-model.md#work-outside-the-layers).

    python benchmarks/runtime_overheads.py [--hidden 4096] [--batches 1,16,64] [--dtype bf16]

hop: one `work` message between two processes as the runtime sends it (runtime/wire.py: msgpack header with
     one item per request + the batch's hidden states as a raw frame; ZeroMQ PUSH/PULL over loopback TCP):
     half the median round trip of a ping-pong, so encode + send + receive + decode, bytes included (on
     loopback the bytes are a memory copy: a few microseconds for [64, 4096] bf16).
step: the worker's per-step bookkeeping outside the stage's kernels for a decode batch of B requests
     (runtime/worker.py `_take_batch`, `_admit`, `_step`): forming the batch from the queue, the step's layout
     for its CUDA graph (runtime.graphs.StepLayout),
     concatenating the inputs, and splitting the output into one message header per next hop.
Median of repeated runs, one torch thread (as each worker runs). Needs `pip install -e .[runtime]`.
"""

from __future__ import annotations

import argparse

import torch

from runtime.checkpoint import TORCH_DTYPES
from runtime.kvcache import KVPool
from runtime.profile import time_bookkeeping, time_hop


def step_ms(batch: int, hidden: int, dtype: torch.dtype) -> float:
    """The worker's bookkeeping for one decode step of `batch` requests, outside the stage's kernels."""
    kv = KVPool(1, batch * (-(-(300 + batch) // 16)), 16, 1, 8, max_seqs=batch, max_seq_len=301 + batch,
                dtype=dtype, device="cpu")
    for i in range(batch):
        kv.admit(f"r{i}")
        kv.grow(f"r{i}", 301 + i)
    requests = [f"r{i}" for i in range(batch)]
    return 1e3 * time_bookkeeping(kv, requests, [300 + i for i in range(batch)], torch.randn(batch, hidden).to(dtype),
                                  layout=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=4096, help="hidden size (Qwen3-8B: 4096)")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--dtype", default="bf16", choices=sorted(TORCH_DTYPES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = TORCH_DTYPES[args.dtype]   # for the step's rows; the hop takes the dtype's name
    print(f"| batch | hop ms (one message, [B, {args.hidden}] {args.dtype}) | step ms (worker bookkeeping) |")
    print("|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",")):
        print(f"| {batch} | {1e3 * time_hop(args.hidden, dtype=args.dtype, device='cpu', batch=batch):.3f} | "
              f"{step_ms(batch, args.hidden, dtype):.3f} |", flush=True)


if __name__ == "__main__":
    main()
