"""A worker: one pipeline stage on one device, fed over ZeroMQ, batching whatever has arrived.

Loop: take every message waiting in the inbox; form a batch from the queue (decode items first, one
token each, then prompts in arrival order, up to max_batch_tokens: continuous batching, requests join and
leave between steps; a prompt longer than what is left is split, its first part runs now and the rest
heads the queue, as vLLM's chunked prefill); run the stage once over the flat batch; send each request's
hidden states to the next hop on its path (one message per next hop) or, on the last stage, sample its
next token and send the ids to the host (a prompt's token once its last chunk has run). A request's KV
slot is taken at its prompt and given back when the host says the request ended ("free"). A separate
thread tells the host, every heartbeat_s, that the worker lives. A tensor-parallel group's rank 0 (its
face) is such a worker whose stage is its shard of the layers; it hands each step to the group's other
ranks (runtime.tensor_parallel), which `planner worker` also runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass

import torch
import zmq

from planner.errors import InputError
from runtime.config import RuntimeConfig, read_runtime_config
from planner.routing import COORDINATOR
from runtime import wire
from runtime.checkpoint import load_stage
from runtime.hfconfig import check_same_model, read_checkpoint_model
from runtime.graphs import DecodeGraphs, MixedGraphs, decode_prefix
from runtime.kvcache import KVFull, new_pool
from runtime.model import BatchPlan, Stage
from runtime.sampling import SamplingParams, sample_batch
from runtime.tensor_parallel import Face, Rank, load_shard

KV_WAIT_S = 10.0  # how long a prompt waits at a worker for a KV slot before it fails
FREED_MEMORY = 4096  # ended requests remembered, so that their work still in transit takes no KV slot


@dataclass
class Item:
    """A request's tokens at this stage: `count` tokens from position `pos` (ids or hidden states)."""

    rid: str
    pos: int
    count: int
    path: list[str]
    hop: int                     # this worker's index in path
    data: torch.Tensor           # token ids [count] (first stage) or hidden states [count, hidden]
    sampling: dict | None        # sampling parameters, sent with the prompt
    lane: int = 0                # the path's decode micro-batch it belongs to
    more: bool = False           # a prompt chunk that is not its prompt's last: no token comes of it

    def header(self, hop: int) -> dict:
        head = {"rid": self.rid, "pos": self.pos, "n": self.count, "path": self.path, "hop": hop, "lane": self.lane}
        if self.sampling is not None:
            head["sampling"] = self.sampling
        if self.more:
            head["more"] = True
        return head

    def split(self, tokens: int) -> tuple[Item, Item]:
        """The first `tokens` of this prompt (chunk) and the rest, each with its own slice of the data."""
        first = Item(self.rid, self.pos, tokens, self.path, self.hop, self.data[:tokens], self.sampling,
                     self.lane, more=True)
        rest = Item(self.rid, self.pos + tokens, self.count - tokens, self.path, self.hop, self.data[tokens:],
                    self.sampling, self.lane, more=self.more)
        return first, rest


class Worker:
    def __init__(self, config: RuntimeConfig, node: str, checkpoint: str, *, log=sys.stderr) -> None:
        self.config, self.log = config, log
        self.spec, _ = config.member(node)
        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        if self.spec.ranks:  # a tensor-parallel group's face: rank 0's shard, and the group joined
            self.stage = load_shard(config, self.spec, 0, checkpoint, ends=True)
        else:
            model = read_checkpoint_model(checkpoint)
            check_same_model(model, config.model, file=checkpoint)
            try:
                tensors = load_stage(checkpoint, model, self.spec.start, self.spec.end, dtype=config.dtype,
                                     device=self.spec.device)
            except torch.cuda.OutOfMemoryError:
                raise InputError(f"layers [{self.spec.start}, {self.spec.end}) of {model.id} do not fit in "
                                 f"{self.spec.device}'s memory", field=f"workers.{self.spec.node}",
                                 fix="give this GPU fewer layers (re-plan with its real memory)") from None
            self.stage = Stage.from_tensors(model, self.spec.start, self.spec.end, tensors)
        self.accelerated = self.stage.accelerate()
        self.kv = new_pool(self.stage, config, self.spec)
        # steps as CUDA graphs (not in a tensor-parallel group: its ranks run steps eagerly)
        graphs = self.accelerated and config.limits.cuda_graphs and not self.spec.ranks
        self.graphs = DecodeGraphs(self.stage, self.kv, self.spec.kv_slots) if graphs else None
        self.mixed_graphs = (MixedGraphs(self.stage, self.kv, config.limits.max_batch_tokens, self.spec.kv_slots)
                             if graphs else None)
        self.sampling: dict[str, SamplingParams] = {}  # by request, on the last stage
        self.logprobs: dict[str, int] = {}  # by request, on the last stage: how many top log-probabilities
        self.queue: deque[Item] = deque()
        self.kv_waits: dict[str, float] = {}   # request -> when it first found no free KV slot
        self.freed: OrderedDict[str, None] = OrderedDict()  # recently ended requests (cancelled mid-prefill)
        self.context = zmq.Context()
        self.outboxes: dict[str, zmq.Socket] = {}
        self.stopping = threading.Event()
        self.steps = 0
        self.busy_s = 0.0   # seconds inside steps (compute, sampling, sending on), reported in heartbeats
        self.group = Face(self.spec, self.context) if self.spec.ranks else None
        self.group_failure: str | None = None    # set when a rank died: the group fails as one worker
        self.stop_ranks = True

    # ---- sockets --------------------------------------------------------------------------------

    def _outbox(self, name: str) -> zmq.Socket:
        if name not in self.outboxes:
            sock = self.context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.config.endpoint(name))
            self.outboxes[name] = sock
        return self.outboxes[name]

    def _send(self, name: str, header: dict, tensors: tuple[torch.Tensor, ...] = ()) -> bool:
        """Send without blocking; False when the peer's queue is full (it is gone or stuck)."""
        try:
            self._outbox(name).send_multipart(wire.encode(header, tensors), flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _report(self, rids: list[str], message: str) -> None:
        for rid in rids:
            self._forget(rid)
        self._send(COORDINATOR, {"kind": "error", "node": self.spec.node, "rids": rids, "message": message})

    def _heartbeat(self) -> None:
        sock = self.context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.config.host.endpoint)
        try:
            while not self.stopping.is_set():
                if self.group is not None and self.group_failure is None:
                    self.group_failure = self.group.dead_rank()
                if self.group_failure is not None:
                    return   # no more beats: the host declares the unit dead
                header = {"kind": "beat", "node": self.spec.node, "pid": os.getpid(),
                          "free_slots": self.kv.free_slots, "queued": len(self.queue), "steps": self.steps,
                          "busy_s": self.busy_s,
                          "kv_tokens": self.kv.capacity_tokens, "kv_used": self.kv.used_tokens}
                try:
                    sock.send_multipart(wire.encode(header), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
                self.stopping.wait(self.config.limits.heartbeat_s)
        finally:
            sock.close()

    # ---- the loop -------------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until a "stop" message or stop(); binds the inbox first, then starts the heartbeat."""
        inbox = wire.bind_inbox(self.context, self.spec.endpoint, f"worker {self.spec.node}")
        print(f"worker {self.spec.node}: layers [{self.spec.start}, {self.spec.end}) on {self.spec.device}, "
              f"KV for {self.kv.capacity_tokens} tokens and {self.spec.kv_slots} requests"
              f"{', decode as CUDA graphs' if self.graphs else ''}, listening on {self.spec.endpoint}",
              file=sys.stderr, flush=True)
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stopping.is_set():
                if self.group_failure is not None:
                    self._fail_group(self.group_failure)
                    break
                waiting_for_kv = bool(self.queue) and all(i.rid in self.kv_waits for i in self.queue)
                if (not self.queue or waiting_for_kv) and not inbox.poll(5 if waiting_for_kv else 100):
                    if not waiting_for_kv:
                        continue
                while True:  # everything that has arrived joins the queue before the batch is formed
                    try:
                        frames = inbox.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._receive(*wire.decode(frames, self.spec.device))
                if self.queue:
                    self._step(self._take_batch())
        finally:
            self.stopping.set()
            beat.join(timeout=2)
            inbox.close()
            for sock in self.outboxes.values():
                sock.close()
            if self.group is not None:
                self.group.close(stop_ranks=self.group_failure is None)
            self.context.term()

    def _fail_group(self, reason: str) -> None:
        """A rank died: every request this group holds or has queued fails, naming it; the face stops."""
        rids = sorted(set(self.kv.pages_of) | {i.rid for i in self.queue})
        self.queue.clear()
        if rids:
            self._report(rids, f"tensor-parallel group broken: {reason}")
        print(f"worker {self.spec.node}: tensor-parallel group broken: {reason}", file=self.log, flush=True)
        self.stopping.set()

    def stop(self) -> None:
        self.stopping.set()

    def _receive(self, header: dict, tensors: list[torch.Tensor]) -> None:
        kind = header["kind"]
        if kind == "work":
            data, offset = tensors[0], 0
            for head in header["items"]:
                count = head["n"]
                if head["rid"] in self.freed:  # ended while this was on its way here
                    offset += count
                    continue
                self.queue.append(Item(head["rid"], head["pos"], count, head["path"], head["hop"],
                                       data[offset:offset + count], head.get("sampling"), head.get("lane", 0),
                                       bool(head.get("more", False))))
                offset += count
        elif kind == "free":
            freed = set(header["rids"])
            for rid in freed:
                self._forget(rid)
                self.freed[rid] = None
            while len(self.freed) > FREED_MEMORY:
                self.freed.popitem(last=False)
            self.queue = deque(i for i in self.queue if i.rid not in freed)
        elif kind == "stop":
            self.stopping.set()

    def _forget(self, rid: str) -> None:
        self.kv.release(rid)
        self.kv_waits.pop(rid, None)
        self.sampling.pop(rid, None)
        self.logprobs.pop(rid, None)

    def _take_batch(self) -> list[Item]:
        """Decode items first (one token each), one lane per path (a path's micro-batches stay apart, so
        its stages keep working on several), then prompts in arrival order within the token budget: the
        first prompt that does not fit whole is split, its first part filling the budget, its rest
        staying first in the queue (so a long prompt neither waits for a step without decode work nor
        stretches one past the budget)."""
        budget = self.config.limits.max_batch_tokens
        lane_of: dict[tuple[str, ...], int] = {}
        decode = [i for i in self.queue if i.pos > 0 and i.count == 1
                  and lane_of.setdefault(tuple(i.path), i.lane) == i.lane]
        prompts = [i for i in self.queue if not (i.pos > 0 and i.count == 1)]
        batch, tokens = [], 0
        rest: dict[int, Item] = {}   # id of a split prompt -> what stays queued of it
        for item in decode:
            if tokens < budget:
                batch.append(item)
                tokens += 1
        for item in prompts:
            room = budget - tokens
            if item.count > room:
                # chunks of at least 2 tokens: a 1-token piece past position 0 would pass for a decode step,
                # which goes first and could run before the chunk ahead of it
                take = room if item.count - room >= 2 else room - 1
                if take < 2:
                    if batch:
                        break
                    take = item.count if item.count <= 3 else 2   # a step of nothing else: a little over
                if take < item.count:   # the budget is spent: the rest waits for the next step
                    first, rest[id(item)] = item.split(take)
                    batch.append(first)
                    break
            batch.append(item)
            tokens += item.count
        taken = {id(i) for i in batch}
        self.queue = deque(rest.get(id(i), i) for i in self.queue if id(i) not in taken)
        return batch

    def _admit(self, batch: list[Item]) -> list[Item]:
        """Open new requests in the KV pool and give every item pages for its tokens; report those that
        cannot run here."""
        ready = []
        for item in batch:
            if item.pos + item.count > self.kv.max_seq_len:
                self._report([item.rid], f"position {item.pos + item.count} is past max_seq_len {self.kv.max_seq_len}")
                continue
            prompt = item.pos == 0 or item.count > 1
            if not prompt and not self.kv.holds(item.rid):
                self._report([item.rid], "decode step for a request this worker holds no KV for")
                continue
            try:
                if prompt:
                    self.kv.admit(item.rid)
                self.kv.grow(item.rid, item.pos + item.count)
            except KVFull as exc:
                if not prompt:   # the host reserves every request's KV at admission: this is a bug, not load
                    self._report([item.rid], f"KV cache full mid-request: {exc}")
                    continue
                # The host admits no more than a worker holds, but its "free" for an ended request may still
                # be on its way here: wait for it a while before giving up.
                first = self.kv_waits.setdefault(item.rid, time.monotonic())
                if time.monotonic() - first > KV_WAIT_S:
                    self._report([item.rid], f"KV cache full for {KV_WAIT_S:g} s: {exc}")
                else:
                    self.queue.appendleft(item)
                continue
            if prompt:
                self.kv_waits.pop(item.rid, None)
                if self.stage.last and item.sampling is not None:
                    self.sampling[item.rid] = SamplingParams.from_wire(item.sampling)
                    if item.sampling.get("logprobs") is not None:
                        self.logprobs[item.rid] = int(item.sampling["logprobs"])
            ready.append(item)
        return ready

    def _run_stage(self, batch: list[Item]) -> torch.Tensor:
        """The stage over the batch: a decode step through its CUDA graph, a step with prompts through a
        mixed graph (decode rows and prompt chunks in one pass), eagerly what no graph holds."""
        items = [(i.rid, i.pos, i.count) for i in batch]
        decode = decode_prefix(items)   # leading decode rows
        if self.graphs is not None and decode == len(batch):
            return self.graphs.run([i.rid for i in batch], [i.pos for i in batch], torch.cat([i.data for i in batch]))
        size = self.mixed_graphs.fits(items) if self.mixed_graphs is not None else None
        if size:
            return self.mixed_graphs.run(items, torch.cat([i.data for i in batch]), size)
        if self.graphs is not None and decode:   # prompts too long for a mixed graph: only they run eagerly
            head = batch[:decode]
            out = self.graphs.run([i.rid for i in head], [i.pos for i in head], torch.cat([i.data for i in head]))
            return torch.cat([out, self._eager(batch[decode:])])
        return self._eager(batch)

    def _eager(self, batch: list[Item]) -> torch.Tensor:
        inputs = torch.cat([i.data for i in batch])
        items = [(self.kv.pages_of[i.rid], i.pos, i.count) for i in batch]
        plan = BatchPlan.build(items, self.kv.page_tokens, self.spec.device)
        if self.group is not None:   # the other ranks run the same step on the same hidden states
            inputs = self.stage.embed(inputs)
            self.group.step(items, inputs)
        return self.stage(inputs, plan, self.kv)

    def _settle(self, out: torch.Tensor) -> None:
        """Wait for a step whose result nobody reads here (the middle chunks of a long prompt on the last
        stage: no token to sample, nothing to send). Its kernels are only queued when the stage returns;
        without the wait the worker would form and queue the next batch at once, before the decode rows
        that come back from the host during this step have arrived, and they would run a step later:
        2,048-token prompts at 64 in flight on an H100 decoded at about three steps per token, not two
        (docs/runtime.md, the fifth run). Every other step waits for its output anyway (sampling, or
        the copy to the next hop)."""
        if out.is_cuda:
            torch.cuda.synchronize(out.device)

    def _step(self, batch: list[Item]) -> None:
        batch = self._admit(batch)
        if not batch:
            return
        began = time.perf_counter()
        try:
            self._compute(batch)
        finally:
            self.busy_s += time.perf_counter() - began

    def _compute(self, batch: list[Item]) -> None:
        """Run one step of admitted items and pass its outputs on: tokens to the host from the last stage,
        hidden states to each next hop otherwise."""
        try:
            out = self._run_stage(batch)
        except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the worker
            traceback.print_exc(file=self.log)
            if self.group is not None:   # ... but a group whose ranks fell out of step is broken; the
                # batch's requests hold KV slots, so _fail_group fails them with the rest
                self.group_failure = self.group.dead_rank(wait_s=1.0) or f"step failed: {type(exc).__name__}: {exc}"
                return
            self._report([i.rid for i in batch], f"step failed: {type(exc).__name__}: {exc}")
            return
        self.steps += 1
        if self.stage.last:
            rows = [row for row, item in enumerate(batch) if not item.more]   # a prompt's last chunk yields a token
            if not rows:
                self._settle(out)
                return
            if len(rows) < len(batch):
                out, batch = out[rows], [batch[row] for row in rows]
            # one call for the batch; row i draws the token at position pos + count of its request
            tokens = sample_batch(out, [self.sampling.get(i.rid, SamplingParams()) for i in batch],
                                  [i.pos + i.count for i in batch])
            items = [{"rid": i.rid, "token": t} for i, t in zip(batch, tokens)]
            for row, (item, head) in enumerate(zip(batch, items)):
                if item.rid in self.logprobs:  # of the model's distribution, before temperature (as vLLM)
                    logp = torch.log_softmax(out[row].float(), dim=-1)
                    top = torch.topk(logp, self.logprobs[item.rid]) if self.logprobs[item.rid] else None
                    head["logprob"] = float(logp[head["token"]])
                    head["top"] = [] if top is None else [[int(t), float(v)] for v, t in zip(top.values, top.indices)]
            self._send(COORDINATOR, {"kind": "tokens", "node": self.spec.node, "items": items})
            return
        by_hop: dict[str, list[tuple[Item, torch.Tensor]]] = {}
        offset = 0
        for item in batch:
            by_hop.setdefault(item.path[item.hop + 1], []).append((item, out[offset:offset + item.count]))
            offset += item.count
        for hop, pairs in by_hop.items():
            header = {"kind": "work", "items": [i.header(i.hop + 1) for i, _ in pairs]}
            if not self._send(hop, header, (torch.cat([h for _, h in pairs]),)):
                self._report([i.rid for i, _ in pairs], f"next hop {hop} is not taking messages")


def run_worker(config: RuntimeConfig, node: str, checkpoint: str) -> None:
    """Load the stage and serve until stopped (SIGTERM or a "stop" message). A tensor-parallel group's
    rank r > 0 runs its face's steps instead; a broken group exits with status 1."""
    spec, rank = config.member(node)
    if rank > 0:
        member = Rank(config, spec, rank, checkpoint)
        signal.signal(signal.SIGTERM, lambda *_: member.stop())
        signal.signal(signal.SIGINT, lambda *_: member.stop())
        print(f"worker {node}: rank {rank} of {spec.node}, layers [{spec.start}, {spec.end}) on {member.device}",
              file=sys.stderr, flush=True)
        sys.exit(member.serve())
    worker = Worker(config, node, checkpoint)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.serve()
    if worker.group_failure is not None:
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """`python -m runtime.worker --config CFG --node NODE --checkpoint DIR`: `planner worker` without the
    planner CLI's other imports (the local launcher starts workers this way; startup is mostly imports)."""
    parser = argparse.ArgumentParser(prog="python -m runtime.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--checkpoint", required=True)
    args = parser.parse_args(argv)
    try:
        run_worker(read_runtime_config(args.config), args.node, args.checkpoint)
    except InputError as exc:
        print(f"error: {exc.line()}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
