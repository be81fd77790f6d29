"""Tensor-parallel groups: N processes, one per GPU of a host, acting as one pipeline unit.

Each rank holds its shard of every layer of the unit's range (Megatron-LM's column/row split, see
runtime.model); the ranks join one torch.distributed group (NCCL on GPUs, gloo on CPU) whose only
collectives are the two all-reduces per layer and one broadcast of the step's hidden states. Rank 0 is
the group's face: it is the pipeline worker (runtime.worker) the host and the other stages talk to over
ZeroMQ, holds the embeddings and the LM head, and before each step tells the other ranks what to run:

    face ── ZeroMQ "step" {items: [[pages, pos, count], ...], tokens: T} ──> rank r (its own inbox)
    face ── broadcast of the hidden states [T, hidden] ───────────────────> every rank
    every rank: the layers, with an all-reduce after attention and after the MLP

The step header travels over ZeroMQ, not torch.distributed, so that an idle rank waits on a socket it
can poll (and notice that the face died) rather than inside a collective that cannot be interrupted.
A group is as alive as all of its ranks: the face checks the other ranks' processes (one host, so by
pid) every heartbeat and a collective with a dead peer fails at once (gloo) or times out (NCCL); either
way the face reports the group's requests failed, naming the rank, and exits, and the host sees the
unit die as it sees any worker die. A rank whose face is gone exits too.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import zmq

from runtime.config import RuntimeConfig, Shard, WorkerSpec
from runtime import wire
from runtime.checkpoint import TORCH_DTYPES, load_stage
from runtime.hfconfig import check_same_model, read_checkpoint_model
from runtime.kvcache import new_pool
from runtime.model import BatchPlan, Stage

COLLECTIVE_TIMEOUT_S = 300.0   # joining the group, and any collective (a hung peer under NCCL)


def process_alive(pid: int) -> bool:
    """Whether a process of this host runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(x)
    return x


def join_group(spec: WorkerSpec, rank: int) -> list[int]:
    """Join the unit's torch.distributed group (the face hosts the rendezvous); returns every rank's pid."""
    device = spec.ranks[rank].device
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                            init_method=f"tcp://{spec.address}:{spec.tp_port}", rank=rank, world_size=spec.tp,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    pids: list[int] = [0] * spec.tp
    dist.all_gather_object(pids, os.getpid())
    return pids


def load_shard(config: RuntimeConfig, spec: WorkerSpec, rank: int, checkpoint: str, *, ends: bool) -> Stage:
    """Rank `rank`'s shard of the unit's layers (with the embeddings and head when `ends`), all-reducing."""
    model = read_checkpoint_model(checkpoint)
    check_same_model(model, config.model, file=checkpoint)
    shard = Shard(rank, spec.tp)
    tensors = load_stage(checkpoint, model, spec.start, spec.end, dtype=config.dtype,
                         device=spec.ranks[rank].device, shard=shard, ends=ends)
    return Stage.from_tensors(model, spec.start, spec.end, tensors, shard=shard, ends=ends, reduce=all_reduce)


class Face:
    """Rank 0's side of the group: sends each step to the other ranks and watches that they live."""

    def __init__(self, spec: WorkerSpec, context: zmq.Context) -> None:
        self.spec = spec
        self.pids = join_group(spec, 0)
        self.outboxes = []
        for rank in range(1, spec.tp):
            sock = context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(spec.rank_endpoint(rank))
            self.outboxes.append(sock)

    def step(self, items: list[tuple[list[int], int, int]], hidden: torch.Tensor) -> None:
        """Tell every other rank to run a step over `items` and give them its hidden states."""
        frames = wire.encode({"kind": "step", "items": [list(i) for i in items], "tokens": hidden.shape[0]})
        for rank, sock in enumerate(self.outboxes, start=1):
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                raise RuntimeError(f"{self.describe(rank)} is not taking steps") from None
        dist.broadcast(hidden.contiguous(), src=0)

    def describe(self, rank: int) -> str:
        return f"tensor-parallel rank {rank} ({self.spec.ranks[rank].node}, pid {self.pids[rank]})"

    def dead_rank(self, wait_s: float = 0.0) -> str | None:
        """'tensor-parallel rank 1 (host:1, pid 123) of ... exited' for the first rank whose process is
        gone, else None; waits up to wait_s for one to go (a peer's sockets close before it is a zombie)."""
        deadline = time.monotonic() + wait_s
        while True:
            for rank in range(1, self.spec.tp):
                if not process_alive(self.pids[rank]):
                    return f"{self.describe(rank)} of {self.spec.node} exited"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def close(self, stop_ranks: bool) -> None:
        for sock in self.outboxes:
            if stop_ranks:
                try:
                    sock.send_multipart(wire.encode({"kind": "stop"}), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
            sock.close()
        dist.destroy_process_group()


class Rank:
    """Rank r > 0: holds its shard of the layers (no embeddings, no head) and runs the steps its face sends."""

    def __init__(self, config: RuntimeConfig, spec: WorkerSpec, rank: int, checkpoint: str, *, log=sys.stderr) -> None:
        self.config, self.spec, self.rank, self.log = config, spec, rank, log
        self.device = spec.ranks[rank].device
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.stage = load_shard(config, spec, rank, checkpoint, ends=False)
        self.stage.accelerate()
        self.kv = new_pool(self.stage, config, spec)
        self.context = zmq.Context()
        # bound before joining: the face's first step finds it
        self.inbox = wire.bind_inbox(self.context, spec.rank_endpoint(rank), f"worker {spec.node} rank {rank}")
        self.pids = join_group(spec, rank)
        self.stopping = False
        self.dtype = TORCH_DTYPES[config.dtype]

    def serve(self) -> int:
        """Run steps until "stop" (0) or until the face is gone or a step fails (1)."""
        poll_ms = max(10, int(self.config.limits.heartbeat_s * 1000))
        try:
            while not self.stopping:
                if not self.inbox.poll(poll_ms):
                    if not process_alive(self.pids[0]):
                        print(f"rank {self.rank}: the face of {self.spec.node} (pid {self.pids[0]}) exited",
                              file=self.log, flush=True)
                        return 1
                    continue
                header, _ = wire.decode(self.inbox.recv_multipart(), self.device)
                if header["kind"] == "stop":
                    return 0
                try:
                    self._step(header)
                except Exception:  # noqa: BLE001 - the group is broken: exit, the face reports it
                    traceback.print_exc(file=self.log)
                    return 1
            return 0
        finally:
            self.inbox.close()
            self.context.term()

    def stop(self) -> None:
        self.stopping = True

    def _step(self, header: dict) -> None:
        hidden = torch.empty(header["tokens"], self.config.model.hidden_size, dtype=self.dtype, device=self.device)
        dist.broadcast(hidden, src=0)
        plan = BatchPlan.build([tuple(i) for i in header["items"]], self.kv.page_tokens, self.device)
        self.stage(hidden, plan, self.kv)
