"""The host (coordinator): admits requests, routes each along a path of workers, streams its tokens.

One engine thread owns the ZeroMQ sockets. Other threads (HTTP handlers, `planner run`) call submit(),
which queues the request and wakes the engine through a pipe. The engine:
  * admits waiting requests in arrival order: the routing policy (planner.routing, the simulator's)
    picks a path among open units (alive, with a free KV slot); the prompt goes to the path's first worker;
  * takes the ids the last stage samples (with the request's parameters), streams each one and sends it
    back to the first worker as the next decode step, until max_new_tokens or a stop id. A path's
    requests decode in lanes (micro-batches), one per stage of the path, as vLLM's virtual engines: a
    lane's steps travel as one message, a token that comes back early waits for the rest of its lane,
    and a new request's prompt rides with its lane's next step, so batches never fragment into ever
    smaller ones chasing each other round the pipeline;
  * tells every worker of the path to free the request's KV when it ends, however it ends;
  * declares a worker dead after dead_after_s without a heartbeat: each request on a path through it is
    re-admitted on a live path (its prompt plus the tokens generated so far prefilled again, under a new
    attempt id so that stale messages of the old path are ignored; sampling is counter-based, so the
    tokens that follow are those the old path would have drawn). A request is re-admitted at most
    READMIT_LIMIT times; with no live path left it fails (HTTP 503). Routing avoids a dead worker from
    then on (a worker that beats again is taken back);
  * cancels a request on demand (a client went away): it frees its KV on every stage at once.
The engine is supervised: a message or request that raises is logged and fails alone; should the loop
itself die, `health()` says "down" and every request fails at once instead of hanging.
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch
import zmq

from runtime.config import RuntimeConfig
from planner.routing import COORDINATOR, make_router
from runtime import wire
from runtime.sampling import SamplingParams

START_TIMEOUT_S = 300.0  # a worker never heard from by then counts as dead
READMIT_LIMIT = 3        # re-admissions of one request after worker deaths before it fails
SEED_RANGE = (-2**63, 2**64)  # what msgpack carries (int64 and uint64) and sampling folds mod 2^64


class RequestFailed(RuntimeError):
    """A request the runtime could not finish. `unavailable`: no live path or no engine (HTTP 503)."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


@dataclass(eq=False)
class Lane:
    """One decode micro-batch of a path: the requests in it (wire ids), those whose step is on its way,
    and the work waiting to go with its next step: decode items with their token, prompts with their ids."""

    index: int
    members: set[str] = field(default_factory=set)
    out: set[str] = field(default_factory=set)
    decode: list[tuple[dict, int]] = field(default_factory=list)
    prompts: list[tuple[dict, list[int]]] = field(default_factory=list)

    def holds_back(self) -> bool:
        """Whether new work must wait for this lane's next step rather than go on its own."""
        return bool(self.out or self.decode or self.prompts)


@dataclass(eq=False)  # identity: two requests are never "equal"
class Request:
    rid: str
    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    stop_ids: frozenset[int]
    path: tuple[str, ...] | None = None
    lane: Lane | None = None             # its path's micro-batch, while admitted
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None     # "length" | "stop"
    error: str | None = None
    unavailable: bool = False            # failed for want of a live path or engine
    logprobs: int | None = None          # top log-probabilities wanted per token (None: none)
    token_logprobs: list = field(default_factory=list)  # per token: (its logprob, [[id, logprob], ...])
    attempt: int = 0                     # re-admissions so far; the wire id is rid, then rid~1, rid~2 ...
    submitted_s: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    finished_s: float | None = None
    events: queue.Queue = field(default_factory=queue.Queue)  # ("token", id) ... then ("done", reason) | ("error", text)
    done: threading.Event = field(default_factory=threading.Event)
    on_event: object = None  # optional callable(), called on the engine thread after each event (wakes a reader)

    def post(self, kind: str, value) -> None:
        self.events.put((kind, value))
        if self.on_event is not None:
            try:
                self.on_event()
            except RuntimeError:  # the reader's event loop has closed: nobody is waiting any more
                pass

    def result(self, timeout: float | None = None) -> list[int]:
        """The generated ids; RequestFailed when the request failed or did not end within `timeout`."""
        if not self.done.wait(timeout):
            raise RequestFailed(f"request {self.rid} did not finish within {timeout} s")
        if self.error:
            raise RequestFailed(self.error, unavailable=self.unavailable)
        return list(self.tokens)

    @property
    def wire_id(self) -> str:
        return self.rid if self.attempt == 0 else f"{self.rid}~{self.attempt}"

    def stream(self, timeout: float | None = None):
        """Yield ids as they arrive; raise RequestFailed on failure."""
        while True:
            try:
                kind, value = self.events.get(timeout=timeout)
            except queue.Empty:
                raise RequestFailed(f"request {self.rid}: no token for {timeout} s") from None
            if kind == "token":
                yield value
            elif kind == "error":
                raise RequestFailed(value, unavailable=self.unavailable)
            else:
                return

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.submitted_s


class Host:
    def __init__(self, config: RuntimeConfig, *, stop_ids: tuple[int, ...] = (), routing: str | None = None,
                 seed: int | None = None) -> None:
        self.config = config
        self.stop_ids = frozenset(stop_ids)
        self.router = make_router(routing or config.routing, config.route_graph(),
                                  config.seed if seed is None else seed)
        self.slots = {w.node: w.kv_slots for w in config.workers}
        # KV tokens each unit's paged pool holds (its heartbeat says, once it has sized the pool) and the
        # tokens admitted requests may still grow to there: a request reserves prompt + max_new_tokens on
        # every stage of its path at admission, as the simulator does, so no stage runs out mid-request
        self.kv_tokens = {w.node: w.kv_tokens or 0 for w in config.workers}
        self.kv_reserved = dict.fromkeys(self.slots, 0)
        self.state = {w.node: "starting" for w in config.workers}   # starting | alive | dead
        self.last_beat: dict[str, float] = {}
        self.in_flight = dict.fromkeys(self.slots, 0)
        self.lanes: dict[tuple[str, ...], list[Lane]] = {}   # by path
        self.stirred: dict[int, tuple[tuple[str, ...], Lane]] = {}   # lanes that changed this round, by id
        self.requests: dict[str, Request] = {}
        self.waiting: list[Request] = []
        self.next_id = 0
        self.lock = threading.Lock()          # guards next_id and the submissions queue
        self.submissions: queue.Queue = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.started_s = time.monotonic()
        self.thread: threading.Thread | None = None
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.readmitted = 0
        self.cancels: queue.Queue = queue.Queue()
        self.engine_error: str | None = None       # set when the engine loop died
        # each worker's last heartbeat: KV and queue, and its steps and seconds inside them since it started
        self.worker_stats = {w.node: {"free_slots": w.kv_slots, "queued": 0, "kv_tokens": w.kv_tokens or 0,
                                      "kv_used": 0, "steps": 0, "busy_s": 0.0, "beat_s": -math.inf}
                             for w in config.workers}
        self.on_token = None     # optional callback(request, token) on the engine thread (metrics)
        self.on_end = None       # optional callback(request) when a request ends, however it ends

    # ---- the API other threads use -----------------------------------------------------------------

    def start(self) -> "Host":
        """Bind the inbox (raising here if the port is taken), connect to the workers, run the engine."""
        self.context = zmq.Context()
        try:
            self.inbox = wire.bind_inbox(self.context, self.config.host.endpoint, "the host")
        except OSError:
            self.context.term()
            raise
        self.outboxes: dict[str, zmq.Socket] = {}
        for w in self.config.workers:
            sock = self.context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(w.endpoint)
            self.outboxes[w.node] = sock
        self.thread = threading.Thread(target=self._run, name="host-engine", daemon=True)
        self.thread.start()
        return self

    def submit(self, prompt: list[int], max_new_tokens: int = 16, sampling: SamplingParams = SamplingParams(),
               *, ignore_eos: bool = False, stop_ids: tuple[int, ...] = (), logprobs: int | None = None) -> Request:
        if self.engine_error is not None:
            raise RequestFailed(f"the engine has stopped: {self.engine_error}", unavailable=True)
        if not prompt:
            raise ValueError("the prompt is empty")
        if not SEED_RANGE[0] <= sampling.seed < SEED_RANGE[1]:
            raise ValueError(f"seed must be in [-2^63, 2^64), not {sampling.seed}")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        vocab = self.config.model.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise ValueError(f"token ids must be in [0, {vocab})")
        if len(prompt) + max_new_tokens > self.config.limits.max_seq_len:
            raise ValueError(f"prompt + max_new_tokens = {len(prompt) + max_new_tokens} is past max_seq_len "
                             f"{self.config.limits.max_seq_len}")
        with self.lock:
            self.next_id += 1
            rid = f"r{self.next_id}"
        request = Request(rid, list(prompt), max_new_tokens, sampling,
                          frozenset(stop_ids) | (frozenset() if ignore_eos else self.stop_ids), logprobs=logprobs)
        self.submissions.put(request)
        os.write(self.wake_w, b"x")
        return request

    def cancel(self, request: Request, reason: str = "abort") -> None:
        """End a request early, its KV freed on every stage of its path: "abort" (its client went away) or
        "stop" (the caller found a stop string)."""
        if not request.done.is_set() and self.wake_w >= 0:
            self.cancels.put((request, reason))
            os.write(self.wake_w, b"x")

    def generate(self, prompt: list[int], max_new_tokens: int = 16, sampling: SamplingParams = SamplingParams(),
                 timeout: float | None = 60.0, **options) -> list[int]:
        return self.submit(prompt, max_new_tokens, sampling, **options).result(timeout)

    def health(self) -> dict:
        states = dict(self.state)
        open_path = self._path_exists(lambda u: states.get(u) == "alive")
        status = "down" if not self.engine_alive() else \
            "starting" if not self.ready.is_set() and "starting" in states.values() else \
            "ok" if all(s == "alive" for s in states.values()) else "degraded" if open_path else "down"
        health = {"status": status, "workers": states, "in_flight": len(self.requests),
                  "waiting": len(self.waiting), "completed": self.completed, "failed": self.failed,
                  "cancelled": self.cancelled, "readmitted": self.readmitted}
        if self.engine_error is not None:
            health["engine_error"] = self.engine_error
        return health

    def engine_alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and self.engine_error is None

    def close(self, stop_workers: bool = False) -> None:
        if self.wake_w < 0:
            return
        self.stop_workers = stop_workers
        self.stopping.set()
        os.write(self.wake_w, b"x")
        if self.thread is not None:
            self.thread.join(timeout=5)
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.wake_r = self.wake_w = -1

    # ---- the engine thread ------------------------------------------------------------------------

    def _run(self) -> None:  # the sockets move to this thread (thread start is a memory barrier)
        inbox = self.inbox
        poller = zmq.Poller()
        poller.register(inbox, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        tick_ms = max(10, int(self.config.limits.heartbeat_s * 1000 / 2))
        shutdown = "the host is shutting down"
        try:
            while not self.stopping.is_set():
                events = dict(poller.poll(tick_ms))
                if self.wake_r in events:
                    os.read(self.wake_r, 4096)
                while True:
                    try:
                        frames = inbox.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        self._handle(*wire.decode(frames))
                    except Exception:  # noqa: BLE001 - one bad message must not stop the engine
                        traceback.print_exc(file=sys.stderr)
                while not self.cancels.empty():
                    self._cancel(*self.cancels.get_nowait())
                while not self.submissions.empty():
                    self.waiting.append(self.submissions.get_nowait())
                self._check_workers()
                self._admit()
                self._flush_lanes()
        except BaseException as exc:  # the loop itself broke: say so everywhere rather than hang
            traceback.print_exc(file=sys.stderr)
            self.engine_error = shutdown = f"engine thread died: {type(exc).__name__}: {exc}"
        finally:
            while not self.submissions.empty():
                self.waiting.append(self.submissions.get_nowait())
            for request in list(self.requests.values()) + self.waiting:
                request.unavailable = True
                self._fail(request, shutdown)
            if getattr(self, "stop_workers", False):
                for node in self.outboxes:
                    self._send(node, {"kind": "stop"})
            inbox.close()
            for sock in self.outboxes.values():
                sock.close()
            self.context.term()

    def _send(self, node: str, header: dict, tensors: tuple[torch.Tensor, ...] = ()) -> bool:
        try:
            self.outboxes[node].send_multipart(wire.encode(header, tensors), flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _handle(self, header: dict, tensors: list[torch.Tensor]) -> None:
        kind, node = header["kind"], header.get("node")
        if node in self.state:
            self.last_beat[node] = time.monotonic()
            if self.state[node] != "alive":
                self.state[node] = "alive"
                if all(s == "alive" for s in self.state.values()):
                    self.ready.set()
        if kind == "beat" and node in self.worker_stats:
            self.worker_stats[node] = {"free_slots": int(header.get("free_slots", 0)),
                                       "queued": int(header.get("queued", 0)),
                                       "kv_tokens": int(header.get("kv_tokens", 0)),
                                       "kv_used": int(header.get("kv_used", 0)),
                                       "steps": int(header.get("steps", 0)),
                                       "busy_s": float(header.get("busy_s", 0.0)),
                                       "beat_s": time.monotonic()}
            self.kv_tokens[node] = int(header.get("kv_tokens", self.kv_tokens[node]))
        if kind == "tokens":
            for item in header["items"]:
                request = self.requests.get(item["rid"])
                if request is not None:
                    if request.logprobs is not None:
                        request.token_logprobs.append((item.get("logprob"), item.get("top", [])))
                    self._on_token(request, int(item["token"]))
        elif kind == "error":
            for rid in header["rids"]:
                request = self.requests.get(rid)
                if request is not None:
                    self._fail(request, f"worker {node} failed request {rid}: {header['message']}")

    def _on_token(self, request: Request, token: int) -> None:
        now = time.perf_counter()
        if request.first_token_s is None:
            request.first_token_s = now
        request.tokens.append(token)
        request.post("token", token)
        if self.on_token is not None:
            self.on_token(request, token)
        if token in request.stop_ids:
            self._finish(request, "stop")
        elif len(request.tokens) >= request.max_new_tokens:
            self._finish(request, "length")
        else:  # the new token is the next step's input, at the position after the last one; it waits
            # for the rest of its lane
            lane = request.lane
            item = {"rid": request.wire_id, "pos": len(request.prompt) + len(request.tokens) - 1, "n": 1,
                    "path": list(request.path), "hop": 0, "lane": lane.index}
            lane.out.discard(request.wire_id)
            lane.decode.append((item, token))
            self.stirred[id(lane)] = (request.path, lane)

    def _flush_lanes(self) -> None:
        """Every lane that changed this round and has all its steps back sends what waits for it, decode
        steps and prompts, as one message to its path's first worker."""
        stirred, self.stirred = self.stirred, {}
        for path, lane in stirred.values():
            if lane.out or not (lane.decode or lane.prompts):
                continue
            decode, prompts = lane.decode, lane.prompts
            lane.decode, lane.prompts = [], []
            try:
                sent = self._send_steps(path[0], decode, prompts)
            except Exception as exc:  # noqa: BLE001 - a prompt that cannot be encoded fails alone
                for item, _ in prompts:
                    self._fail(self.requests[item["rid"]],
                               f"request {item['rid']} could not be sent: {type(exc).__name__}: {exc}")
                prompts = []
                sent = self._send_steps(path[0], decode, prompts)
            if not sent:
                for item, _ in decode + prompts:
                    self._fail(self.requests[item["rid"]], f"worker {path[0]} is not taking messages")
                continue
            lane.out.update(i["rid"] for i, _ in decode)

    def _send_steps(self, node: str, decode: list[tuple[dict, int]], prompts: list[tuple[dict, list[int]]]) -> bool:
        """One work message: decode steps (one token id each), then prompts (their ids)."""
        if not decode and not prompts:
            return True
        items = [i for i, _ in decode] + [i for i, _ in prompts]
        ids = torch.tensor([t for _, t in decode] + [t for _, p in prompts for t in p], dtype=torch.long)
        return self._send(node, {"kind": "work", "items": items}, (ids,))

    def _release(self, request: Request) -> None:
        """Forget the request and tell every worker of its path to free its KV slot."""
        if self.requests.pop(request.wire_id, None) is None:
            return  # waiting, or released already: it holds nothing
        lane, request.lane = request.lane, None
        if lane is not None:   # the rest of its lane waits for it no more
            rid = request.wire_id
            lane.members.discard(rid)
            lane.out.discard(rid)
            lane.decode = [(i, t) for i, t in lane.decode if i["rid"] != rid]
            lane.prompts = [(i, p) for i, p in lane.prompts if i["rid"] != rid]
            self.stirred[id(lane)] = (request.path, lane)
        for node in request.path or ():
            self.in_flight[node] -= 1
            self.kv_reserved[node] -= self._kv_need(request)
            if self.state[node] != "dead":
                self._send(node, {"kind": "free", "rids": [request.wire_id]})

    def _ended(self, request: Request) -> None:
        request.done.set()
        if self.on_end is not None:
            try:
                self.on_end(request)
            except Exception:  # noqa: BLE001 - metrics must not break serving
                traceback.print_exc(file=sys.stderr)

    def _cancel(self, request: Request, reason: str) -> None:
        if request.done.is_set():
            return
        if request in self.waiting:
            self.waiting.remove(request)
        self._release(request)
        request.finish_reason, request.finished_s = reason, time.perf_counter()
        if reason == "abort":
            self.cancelled += 1
        else:
            self.completed += 1
        request.post("done", reason)
        self._ended(request)

    def _readmit(self, request: Request, reason: str) -> None:
        """Send a request whose path broke back to the front of the queue, to be prefilled again with the
        tokens it has; fail it past READMIT_LIMIT."""
        self._release(request)
        if request.attempt >= READMIT_LIMIT:
            self._fail(request, f"{reason}; given up after {READMIT_LIMIT} re-admissions")
            return
        request.attempt += 1
        request.path = None
        self.readmitted += 1
        self.waiting.insert(0, request)

    def _finish(self, request: Request, reason: str) -> None:
        request.finish_reason, request.finished_s = reason, time.perf_counter()
        self._release(request)
        self.completed += 1
        request.post("done", reason)
        self._ended(request)

    def _fail(self, request: Request, message: str) -> None:
        if request.done.is_set():
            return
        if request in self.waiting:
            self.waiting.remove(request)
        self._release(request)
        request.error, request.finished_s = message, time.perf_counter()
        self.failed += 1
        request.post("error", message)
        self._ended(request)

    def _check_workers(self) -> None:
        now = time.monotonic()
        limit = self.config.limits.dead_after_s
        for node, state in self.state.items():
            silent_s = now - self.last_beat.get(node, self.started_s)
            if state == "alive" and silent_s > limit:
                self.state[node] = "dead"
                broken = sorted((r for r in self.requests.values() if node in (r.path or ())),
                                key=lambda r: r.submitted_s, reverse=True)
                for request in broken:  # inserted at the front newest first: arrival order kept
                    self._readmit(request, f"worker {node} stopped responding (no heartbeat for {silent_s:.1f} s) "
                                           f"while serving request {request.rid}; its path was {' -> '.join(request.path)}")
            elif state == "starting" and silent_s > START_TIMEOUT_S:
                self.state[node] = "dead"

    def _path_exists(self, usable) -> bool:
        """Whether some path from the coordinator back to it passes only `usable` units (the router's
        graph, without asking the router, whose choices have state)."""
        graph, seen = self.router.graph, set()

        def reaches(unit: str) -> bool:
            if unit == COORDINATOR:
                return True
            if unit in seen or not usable(unit):
                return False
            seen.add(unit)
            return any(reaches(n) for n in graph.successors.get(unit, ()))

        return any(reaches(n) for n in graph.successors.get(COORDINATOR, ()))

    def _kv_need(self, request: Request) -> int:
        """KV tokens a request may come to hold on each stage: prompt + max_new_tokens, in whole pages."""
        block = self.config.limits.kv_block_tokens
        return -(-(len(request.prompt) + request.max_new_tokens) // block) * block

    def _admit(self) -> None:
        """Route waiting requests in arrival order while a path with a free slot and room for their KV is open."""
        need = 0

        def is_open(unit: str) -> bool:
            return (self.state.get(unit) == "alive" and self.in_flight[unit] < self.slots[unit]
                    and self.kv_reserved[unit] + need <= self.kv_tokens[unit])

        def may_open(unit: str) -> bool:  # alive or still starting: worth waiting for
            return self.state.get(unit) in ("alive", "starting")

        while self.waiting:
            request = self.waiting[0]
            need = self._kv_need(request)
            path = self.router.route(is_open, lambda u: self.in_flight[u])
            if path is None:
                if not self._path_exists(may_open):
                    dead = sorted(n for n, s in self.state.items() if s == "dead")
                    request.unavailable = True
                    self._fail(request, f"no live path through the pipeline (dead workers: {', '.join(dead)})")
                    continue
                return  # every open path is full, or workers are still starting: wait
            self.waiting.pop(0)
            request.path = path
            for node in path:
                self.in_flight[node] += 1
                self.kv_reserved[node] += need
            self.requests[request.wire_id] = request
            lanes = self.lanes.get(path)
            if lanes is None:   # by default one per stage (the simulator's --microbatches is the same choice)
                lanes = self.lanes[path] = [Lane(i) for i in range(self.config.limits.lanes or len(path))]
            request.lane = lane = min(lanes, key=lambda ln: len(ln.members))
            lane.members.add(request.wire_id)
            # after a re-admission the tokens so far are prefilled with the prompt: the next one is drawn at
            # the position it had on the old path
            ids = request.prompt + request.tokens
            item = {"rid": request.wire_id, "pos": 0, "n": len(ids), "path": list(path), "hop": 0,
                    "lane": lane.index, "sampling": {**request.sampling.to_wire(), "logprobs": request.logprobs}}
            if lane.holds_back():   # the prompt rides with its lane's next step
                lane.prompts.append((item, ids))
                self.stirred[id(lane)] = (path, lane)
                continue
            try:
                sent = self._send(path[0], {"kind": "work", "items": [item]}, (torch.tensor(ids, dtype=torch.long),))
            except Exception as exc:  # noqa: BLE001 - a request that cannot be encoded fails alone
                self._fail(request, f"request {request.rid} could not be sent: {type(exc).__name__}: {exc}")
                continue
            if not sent:
                self._fail(request, f"worker {path[0]} is not taking messages")
