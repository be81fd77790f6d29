"""A pipeline stage (a GPU or a tensor-parallel group holding a layer range) with continuous batching.

Iteration policy (vLLM's chunked-prefill scheduler, decode first):
  1. every decode token waiting at the stage joins the iteration, except that two micro-batches
     (lanes) of one path never share an iteration (a path runs one lane per stage by default, held
     together at the coordinator: simulator/simulation.py); at most `max_seqs` sequences are
     resident, so the batch is bounded;
  2. the rest of the token budget (`budget` tokens per iteration) goes to prompt chunks, first come
     first served; a prompt longer than what is left is split, its remainder heads the queue;
  3. the iteration takes decode_s(layers, decode batch, mean context) + prefill_s(layers, chunk tokens,
     context) of the cost model (measured tables when the cluster has them): a mixed iteration is
     charged as a decode step plus a prefill pass, as the planner charges it; plus the work outside
     the layers: the step overhead (by the iteration's sequences), the embedding of both passes'
     tokens on the first stage, and on the last the head for the decode batch and, as a pass of its
     own, for the prompts this pass finished; and, for an iteration that starts an idle stage, what
     waking costs after that wait (a measured `wake_ms`: the message lands on a sleeping worker, the
     step runs with cold caches);
  4. when it ends, outputs leave as one transfer per next hop, each message landing its fixed cost
     (hop_s) after its bytes, and the next iteration starts at once with whatever has arrived
     meanwhile; with nothing waiting the stage idles until the next arrival.

Work moves in cohorts: the decode sequences of one lane of one path, travelling together. Parts of one
cohort that meet at a stage merge, so per-iteration work grows with the number of paths, not of
sequences; the coordinator keeps each cohort's per-token bookkeeping in list operations (Cohort).
"""

from __future__ import annotations

import math
from collections import deque
from heapq import heappop, heappush
from math import trunc  # int(x) of a float without calling the int type, which costs several times more
from typing import Any, Callable, Final   # Final: compiled, a constant is read as one (setup.py)

from planner.costmodel import GpuCost
from simulator.engine import EventLoop
from simulator.network import Link
from simulator.workload import Request

INF: Final = math.inf
BUSY: Final = -math.inf   # Stage.wake_at while an iteration runs: no arrival wakes it sooner
CONTEXT_BUCKET: Final = 8  # decode/prefill times are memoised per 8 tokens of mean context (< 0.1% error)


LANES_PER_PATH: Final = 1 << 16  # a cohort's key: path id * LANES_PER_PATH + lane
Chunk = list[Any]   # a prompt chunk on its way: [request, tokens, context before] (a split shortens it)


class Memo(dict):
    """A cost by size, computed once: memo[n] is a plain dict lookup, `compute(n)` on the first one."""

    def __init__(self, compute: Callable[[int], float], known: dict[int, float] | None = None) -> None:
        super().__init__(known or {})
        self.compute = compute

    def __missing__(self, size: int) -> float:
        seconds = self[size] = self.compute(size)
        return seconds


class Cohort:
    """Decode sequences of one micro-batch (lane) of one path, moving as one; `ctx` is the sum of
    their context lengths.

    The coordinator's bookkeeping travels with it, so a round back at the coordinator costs a few list
    operations rather than a loop over the members: `round` counts the cohort's returns, `ends[i]` is
    the round that brings members[i] its last token, `due` the earliest of them; `last_s` is when the
    members' previous token came back (`lasts`, one time per member, while parts that came back at
    different times travel merged; else None)."""

    __slots__ = ("pid", "key", "members", "ctx", "round", "ends", "due", "last_s", "lasts")

    def __init__(self, pid: int, lane: int, members: list[Request], ctx: int) -> None:
        self.pid, self.key, self.members, self.ctx = pid, pid * LANES_PER_PATH + lane, members, ctx
        self.round = 0
        self.ends: list[int] = []
        self.due = 0
        self.last_s = math.nan
        self.lasts: list[float] | None = None

    def merge(self, other: Cohort) -> None:
        """Take in `other`, a part of the same micro-batch that arrived apart."""
        self.lasts = (self.lasts or [self.last_s] * len(self.members)) + \
            (other.lasts or [other.last_s] * len(other.members))
        shift = self.round - other.round   # other's rounds, counted on this cohort's
        self.ends += [end + shift for end in other.ends]
        self.due = min(self.due, other.due + shift)
        self.members += other.members
        self.ctx += other.ctx


class Stage:
    def __init__(self, name: str, host: str, cost: GpuCost, span: tuple[int, int], model_layers: int,
                 budget: int, activation_bytes: int, window: tuple[float, float],
                 memos: dict | None = None, loop: EventLoop | None = None) -> None:
        start, end = span
        self.name, self.host, self.cost, self.span = name, host, cost, span
        self.layers = end - start
        self.budget = budget                      # tokens per iteration (decode tokens + prompt chunks)
        self.activation_bytes = activation_bytes  # bytes per token sent to the next stage
        # work outside the layers (docs/cost-model.md#work-outside-the-layers)
        self.first, self.last = start == 0, end == model_layers
        self.hop_s = cost.hop_s                                          # each message it sends
        # KV cache, in tokens (each token's K and V in every layer held), and batch slots
        self.kv_capacity = cost.kv_tokens(self.layers, first=start == 0, last=end == model_layers)
        self.max_seqs = cost.params.max_batch
        self.lanes = 1   # decode micro-batches of the paths through it, the most of any
        self.kv_used = 0
        self.resident = 0
        # routing tables, filled as paths are interned: path id -> next stage (None: the coordinator)
        self.next_of: dict[int, Stage | None] = {}
        self.only_next: Stage | None = None   # the next hop of the first path added
        self.paths_part = False               # the paths through it continue to different next hops
        self.link_to: dict[Stage | None, Link] = {}
        self.deliver_to_coordinator: Callable | None = None   # the simulation's handler
        # the event loop: events are pushed onto its heap directly (simulator/engine.py)
        self.loop = loop if loop is not None else EventLoop()
        self._heap, self._seq = self.loop.heap, self.loop.seq
        # queues
        self.inbox: list[tuple[float, int, list[Cohort], list[Chunk]]] = []   # heap of (arrival, seq, cohorts, chunks)
        self._received = 0
        self.ready: dict[int, Cohort] = {}        # arrived decode cohorts, merged by path
        self.prefill: deque[Chunk] = deque()      # arrived prompt chunks
        self.wake_at = INF   # when the idle stage wakes for an arrival (INF: none on its way); BUSY: iterating
        self.idle_since = 0.0   # when it last went idle
        self.wakes = cost.wakes   # a step after a wait costs more (a measured wake_ms): wake_time(waited)
        self.wake_time = cost.wake_s
        # metrics, over the window [low, high]
        self.low, self.high = window
        self.busy_s = 0.0
        self.kv_peak = 0
        self.iterations = 0
        self.decoded = 0
        # Memoised step times, shared through `memos` (owned by the simulation) by every stage of one cost
        # and layer range shape: stages of one GPU type holding as many layers time alike. A key is one
        # small int, context bucket * span + batch (or prompt tokens), unique as a batch never exceeds
        # max_seqs nor a prefill pass the budget: cheaper to build, hash and compare than a tuple.
        self._span = max(self.max_seqs, budget) + 1
        shape = (id(cost), self.layers, start == 0, end == model_layers, self._span)
        tables = (memos if memos is not None else {}).setdefault(shape, ({}, {}))
        self._decode_memo: dict[int, float] = tables[0]
        self._prefill_memo: dict[int, float] = tables[1]
        # handlers bound once: a bound method is a new object at every attribute lookup
        self._on_finish = self.finish
        self._on_wake = self.wake
        # work outside the layers by size, looked up as memo[n] (a dict lookup, the cost model on a miss)
        self.head_time = Memo(cost.head_s, {0: 0.0})          # the head for n rows (last stage)
        self.embed_time = Memo(cost.embed_s, {0: 0.0})        # the embedding of n tokens (first stage)
        self.step_time = Memo(cost.step_overhead_s)           # an iteration's overhead, n sequences in it
        # a message of n sequences the coordinator sends this stage: the hop's fixed cost and its loop for them
        self.inbound_time = Memo(lambda n: cost.hop_s + cost.host_step_s(n))

    # ---- cost model, memoised ---------------------------------------------------------------------

    def decode_time(self, batch: int, context: float) -> float:
        """One decode step of `batch` (at most max_seqs) sequences at mean `context`, memoised."""
        bucket = int(context) // CONTEXT_BUCKET
        key = bucket * self._span + batch
        seconds = self._decode_memo.get(key)
        if seconds is None:
            seconds = self.cost.decode_s(self.layers, batch, (bucket + 0.5) * CONTEXT_BUCKET)
            self._decode_memo[key] = seconds
        return seconds

    def prefill_time(self, tokens: int, context: float) -> float:
        """One prefill pass of `tokens` (at most the budget) prompt tokens after `context`, memoised."""
        bucket = int(context) // CONTEXT_BUCKET
        key = bucket * self._span + tokens
        seconds = self._prefill_memo.get(key)
        if seconds is None:
            seconds = self.cost.prefill_s(self.layers, tokens, (bucket + 0.5) * CONTEXT_BUCKET)
            self._prefill_memo[key] = seconds
        return seconds

    # ---- KV admission -----------------------------------------------------------------------------

    def has_room(self, kv_tokens: int) -> bool:
        return self.resident < self.max_seqs and self.kv_used + kv_tokens <= self.kv_capacity

    def reserve(self, kv_tokens: int, now: float) -> None:
        self.kv_used += kv_tokens
        self.resident += 1
        if self.kv_used > self.kv_peak and now >= self.low:
            self.kv_peak = self.kv_used

    def release(self, kv_tokens: int) -> None:
        self.kv_used -= kv_tokens
        self.resident -= 1

    # ---- routing ----------------------------------------------------------------------------------

    def add_path(self, pid: int, nxt: Stage | None, lanes: int = 1) -> None:
        """Path `pid`, of `lanes` micro-batches, continues to `nxt` after this stage (None: back to the
        coordinator)."""
        if not self.next_of:
            self.only_next = nxt
        elif nxt is not self.only_next:
            self.paths_part = True
        self.next_of[pid] = nxt
        self.lanes = max(self.lanes, lanes)

    # ---- events -----------------------------------------------------------------------------------

    def receive(self, arrive: float, cohorts: list[Cohort], chunks: list[Chunk]) -> None:
        """A transfer lands at `arrive`; wake the stage then if it is idle with nothing due sooner."""
        heappush(self.inbox, (arrive, self._received, cohorts, chunks))
        self._received += 1
        if arrive < self.wake_at:   # idle (BUSY is -inf), and no wake-up as soon
            self.wake_at = arrive
            heappush(self._heap, (arrive, next(self._seq), self._on_wake, None))

    def wake(self, now: float, _payload: None) -> None:
        if now == self.wake_at:   # else stale: an iteration started or an earlier wake-up took over
            self.wake_at = INF
            self.start(now, self.wake_time(now - self.idle_since) if self.wakes else 0.0)

    def start(self, now: float, extra: float = 0.0) -> None:
        """Begin an iteration with everything that has arrived (`extra` seconds more: what waking cost), or
        go idle until the next arrival."""
        ready, prefill, inbox = self.ready, self.prefill, self.inbox
        while inbox and inbox[0][0] <= now:   # arrived transfers, in arrival order
            _, _, cohorts, arrived = heappop(inbox)
            for cohort in cohorts:
                have = ready.setdefault(cohort.key, cohort)
                if have is not cohort:   # the same micro-batch, arrived in parts
                    have.merge(cohort)
            if arrived:
                prefill.extend(arrived)
        if not ready and not prefill:
            if inbox:
                self.wake_at = arrive = inbox[0][0]
                heappush(self._heap, (arrive, next(self._seq), self._on_wake, None))
            return

        # one micro-batch per path per iteration, the longest waiting (dicts keep arrival order)
        if len(ready) == 1:
            cohort = ready.popitem()[1]
            batch = [cohort]
            sequences, context = len(cohort.members), cohort.ctx
        elif self.lanes == 1:   # a cohort per path: all of them
            batch = list(ready.values())
            ready.clear()
            sequences = context = 0
            for cohort in batch:
                sequences += len(cohort.members)
                context += cohort.ctx
        else:
            batch, taken = [], set()
            sequences = context = 0
            for cohort in ready.values():
                if cohort.pid not in taken:
                    taken.add(cohort.pid)
                    batch.append(cohort)
                    sequences += len(cohort.members)
                    context += cohort.ctx
            for cohort in batch:
                del ready[cohort.key]
        if sequences:
            # decode_time's key: its bucket trunc(context / sequences) // CONTEXT_BUCKET in whole numbers (a
            # float quotient of ints this size never rounds across an integer)
            seconds = self._decode_memo.get(context // (sequences * CONTEXT_BUCKET) * self._span + sequences)
            if seconds is None:
                seconds = self.decode_time(sequences, context / sequences)
        else:
            seconds = 0.0

        chunks: list[Chunk] = []
        room = self.budget - sequences
        tokens = finished = 0
        if prefill and room > 0:
            attention = 0.0
            while prefill and room > 0:
                head = prefill[0]
                request: Request = head[0]
                left: int = head[1]
                before: int = head[2]
                if left <= room:   # the whole (rest of the) prompt: the queued chunk itself moves on
                    take = left
                    prefill.popleft()
                    chunks.append(head)
                else:              # split: the remainder heads the queue
                    take = room
                    head[1] -= take
                    head[2] += take
                    chunks.append([request, take, before])
                finished += before + take == request.prompt
                room -= take
                tokens += take
                attention += take * (before + take / 2)
            # one pass over all chunks: the context that makes the causal-attention FLOPs
            # (sum of take * (before + take / 2)) come out exact for the aggregate (may be negative)
            pass_context = attention / tokens - tokens / 2
            pass_s = self._prefill_memo.get(trunc(pass_context) // CONTEXT_BUCKET * self._span + tokens)
            seconds += self.prefill_time(tokens, pass_context) if pass_s is None else pass_s
        seconds += self.step_time[sequences + len(chunks)] + extra
        if self.first:
            seconds += self.embed_time[sequences] + self.embed_time[tokens]
        if self.last:
            seconds += self.head_time[sequences] + self.head_time[finished]

        self.wake_at = BUSY
        end = now + seconds
        high = self.high
        if now < high:   # the share of [now, end] inside the window [low, high]
            low = self.low
            if now >= low:
                self.iterations += 1
                self.decoded += sequences
                self.busy_s += (end if end < high else high) - now
            elif end > low:
                self.busy_s += (end if end < high else high) - low
        # the iteration travels as the event's payload: its decode cohorts, prompt chunks and their sizes
        heappush(self._heap, (end, next(self._seq), self._on_finish, (batch, chunks, sequences, tokens)))

    def finish(self, now: float, iteration: tuple[list[Cohort], list[Chunk], int, int]) -> None:
        """Send the iteration's outputs on, one transfer per next hop, then start the next iteration."""
        batch, chunks, sequences, tokens = iteration
        self.wake_at = INF
        # where paths part, this iteration's outputs may still all take one hop
        nxt = self._common_hop(batch, chunks) if self.paths_part else self.only_next
        if nxt is self:   # they part: one transfer per next hop
            self._send_by_hop(now, batch, chunks)
        elif nxt is None:    # every output leaves the last stage: the first tokens of finished prompts
            firsts = [chunk[0] for chunk in chunks if chunk[1] + chunk[2] >= chunk[0].prompt]
            if batch or firsts:
                self._send(now, None, batch, [], firsts, sequences + len(firsts))
        elif batch or chunks:   # every output goes on to one next stage, as they are
            nxt.receive(self.link_to[nxt].send(now, self.activation_bytes * (sequences + tokens))
                        + self.hop_s, batch, chunks)
        inbox = self.inbox
        if self.ready or self.prefill or (inbox and inbox[0][0] <= now):
            self.start(now)
            return
        self.idle_since = now
        if inbox:   # nothing has arrived: idle until the next transfer lands (as start() would)
            self.wake_at = arrive = inbox[0][0]
            heappush(self._heap, (arrive, next(self._seq), self._on_wake, None))

    def _common_hop(self, batch: list[Cohort], chunks: list[Chunk]) -> Stage | None:
        """The next hop of every cohort and prompt chunk of an iteration, or this stage itself where they
        part (a stage never sends to itself)."""
        next_of = self.next_of
        if batch:
            hop = next_of[batch[0].pid]
        elif chunks:
            hop = next_of[chunks[0][0].pid]
        else:
            return self.only_next
        for cohort in batch:
            if next_of[cohort.pid] is not hop:
                return self
        for chunk in chunks:
            if next_of[chunk[0].pid] is not hop:
                return self
        return hop

    def _send_by_hop(self, now: float, batch: list[Cohort], chunks: list[Chunk]) -> None:
        """Outputs of a stage whose paths continue to different next hops: one transfer per hop, in the
        order the hops first appear among the iteration's cohorts, then its prompt chunks."""
        outputs: dict[Stage | None, list] = {}    # next hop -> [cohorts, chunks, first tokens, vectors]
        next_of = self.next_of
        for cohort in batch:
            nxt = next_of[cohort.pid]
            out = outputs.get(nxt)
            if out is None:
                out = outputs[nxt] = [[], [], [], 0]
            out[0].append(cohort)
            out[3] += len(cohort.members)
        for chunk in chunks:
            request: Request = chunk[0]
            take: int = chunk[1]
            before: int = chunk[2]
            nxt = next_of[request.pid]
            if nxt is None and before + take < request.prompt:
                continue  # a prompt chunk that is not the last: nothing leaves the last stage
            out = outputs.get(nxt)
            if out is None:
                out = outputs[nxt] = [[], [], [], 0]
            if nxt is None:
                out[2].append(request)      # the prompt is done: its first token goes back
                out[3] += 1
            else:
                out[1].append(chunk)
                out[3] += take
        for nxt, (cohorts, sent, firsts, vectors) in outputs.items():
            self._send(now, nxt, cohorts, sent, firsts, vectors)

    def _send(self, now: float, nxt: Stage | None, cohorts: list[Cohort], chunks: list[Chunk], firsts: list[Request],
              vectors: int) -> None:
        """One transfer of `vectors` outputs to the next hop: hidden states to a stage, or sampled token
        ids back to the coordinator (`nxt` None; `firsts`: requests whose prompt is done)."""
        link = self.link_to[nxt]
        if nxt is None:
            heappush(self._heap, (link.send(now, 4 * vectors) + self.hop_s, next(self._seq),
                                  self.deliver_to_coordinator, (cohorts, firsts)))
        else:
            nxt.receive(link.send(now, self.activation_bytes * vectors) + self.hop_s, cohorts, chunks)
