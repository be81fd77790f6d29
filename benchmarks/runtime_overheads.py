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
import multiprocessing as mp
import statistics
import time

import torch
import zmq

from runtime import wire
from runtime.checkpoint import TORCH_DTYPES
from runtime.kvcache import KVPool
from runtime.profile import time_bookkeeping

ROUNDS = 400


def _header(batch: int, hop: int) -> dict:
    return {"kind": "work", "items": [{"rid": f"r{i}", "pos": 300 + i, "n": 1, "path": ["a:0", "b:0", "c:0"],
                                       "hop": hop} for i in range(batch)]}


def _echo(port: int, back: int, rounds: int) -> None:
    """The far end: receive each message, decode it, encode it again and send it back."""
    torch.set_num_threads(1)
    context = zmq.Context()
    inbox, outbox = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    inbox.bind(f"tcp://127.0.0.1:{port}")
    outbox.connect(f"tcp://127.0.0.1:{back}")
    for _ in range(rounds):
        header, tensors = wire.decode(inbox.recv_multipart(copy=False))
        outbox.send_multipart(wire.encode(header, tuple(tensors)), copy=False)
    inbox.close()
    outbox.close()
    context.term()


def hop_ms(batch: int, hidden: int, dtype: torch.dtype, port: int) -> float:
    """Half the median round trip of one message of `batch` items and [batch, hidden] hidden states."""
    far = mp.get_context("spawn").Process(target=_echo, args=(port, port + 1, ROUNDS), daemon=True)
    far.start()
    context = zmq.Context()
    outbox, inbox = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    inbox.bind(f"tcp://127.0.0.1:{port + 1}")
    outbox.connect(f"tcp://127.0.0.1:{port}")
    hidden_states = torch.randn(batch, hidden).to(dtype)
    header = _header(batch, 1)
    trips = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        outbox.send_multipart(wire.encode(header, (hidden_states,)), copy=False)
        wire.decode(inbox.recv_multipart(copy=False))
        trips.append(time.perf_counter() - started)
    far.join(timeout=10)
    outbox.close()
    inbox.close()
    context.term()
    return 1e3 * statistics.median(trips[ROUNDS // 10:]) / 2   # the first rounds include connecting


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
    parser.add_argument("--port", type=int, default=47310)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = TORCH_DTYPES[args.dtype]
    print(f"| batch | hop ms (one message, [B, {args.hidden}] {args.dtype}) | step ms (worker bookkeeping) |")
    print("|---:|---:|---:|")
    for i, batch in enumerate(int(b) for b in args.batches.split(",")):
        print(f"| {batch} | {hop_ms(batch, args.hidden, dtype, args.port + 2 * i):.3f} | "
              f"{step_ms(batch, args.hidden, dtype):.3f} |", flush=True)


if __name__ == "__main__":
    main()
