"""Serving across processes on loopback: workers from layouts, the host routing with planner.routing,
token for token against transformers, a worker killed mid-request, and `planner run` (the HTTP API: test_runtime_http.py).

Workers are forked from one fork server per module (it imports torch once), so a 4-worker pipeline
starts in well under a second; every LocalRun is closed by its fixture, and the workers die with this
process if it is killed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # see test_runtime_model.py
pytest.importorskip("zmq")
pytest.importorskip("msgpack")
pytest.importorskip("safetensors")

from planner.export.runtime import runtime_config  # noqa: E402
from runtime.config import Limits  # noqa: E402
from planner.layout import read_layout  # noqa: E402
from runtime.checkpoint import make_checkpoint  # noqa: E402
from runtime.demo import TINY_MODELS, chain_layout, cpu_cluster  # noqa: E402
from runtime.host import RequestFailed  # noqa: E402
from runtime.launch import ForkServer, LocalRun  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

from test_runtime_model import hf_greedy  # noqa: E402

PROMPTS = [[5, 17, 3, 99, 42], [1, 2, 3], [200, 7, 7, 7, 7, 7, 7, 31, 64], [9], [4, 8, 15, 16, 23, 42]]
NEW_TOKENS = 12
CHAIN = [[(0, 1)], [(1, 4)], [(4, 6)]]                      # 3 workers, uneven ranges
PARALLEL = [[(0, 2)], [(2, 5), (2, 5)], [(5, 6)]]          # the middle stage held by two workers
LIMITS = Limits(max_seq_len=160, max_batch_tokens=64, heartbeat_s=0.1, dead_after_s=1.0)
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def forkserver():
    with ForkServer() as server:
        yield server


@pytest.fixture(scope="module", params=["tiny-qwen3", "tiny-qwen2"])
def model_dir(request, tmp_path_factory):
    """(model, checkpoint dir, transformers' greedy ids for PROMPTS)."""
    model = TINY_MODELS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    make_checkpoint(directory / "ck", model, seed=2, shards=2)
    return model, directory, hf_greedy(directory / "ck", PROMPTS, NEW_TOKENS)


def start(model, directory: Path, stages, forkserver, name: str, limits: Limits = LIMITS, **options) -> LocalRun:
    workers = sum(len(s) for s in stages)
    (directory / f"{name}-cluster.ini").write_text(cpu_cluster(model, workers))
    layout = directory / f"{name}.ini"
    layout.write_text(chain_layout(f"{name}-cluster.ini", model, stages))
    config = runtime_config(read_layout(layout), layout_path=str(layout), local=True, device="cpu", threads=1,
                            kv_slots=8, limits=limits)
    (directory / name).mkdir(exist_ok=True)
    return LocalRun(config, directory / "ck", workdir=directory / name, forkserver=forkserver, **options).start()


@pytest.fixture(scope="module")
def chain(model_dir, forkserver):
    model, directory, reference = model_dir
    run = start(model, directory, CHAIN, forkserver, "chain")
    yield run, reference
    run.close()


def generate_all(host, prompts, new_tokens=NEW_TOKENS):
    requests = [host.submit(p, new_tokens) for p in prompts]
    return [r.result(TIMEOUT_S) for r in requests], requests


def test_chain_of_three_uneven_workers_matches_transformers(chain):
    run, reference = chain
    outputs, requests = generate_all(run.host, PROMPTS)       # all at once: batched prompts and decodes
    assert outputs == reference
    assert {r.path for r in requests} == {("local:0", "local:1", "local:2")}
    assert all(r.finish_reason == "length" and r.ttft_s > 0 for r in requests)


def test_prompts_longer_than_the_token_budget_run_in_chunks_and_match_transformers(model_dir, forkserver):
    """A budget of 4 tokens a step: every worker splits the 5-, 6- and 9-token prompts into chunks of at
    least 2 tokens (a 3-token prompt may ride whole beside decode steps), each chunk continuing from the
    KV its predecessors wrote, and only a prompt's last chunk yields its first token."""
    model, directory, reference = model_dir
    tight = Limits(max_seq_len=160, max_batch_tokens=4, heartbeat_s=0.1, dead_after_s=1.0)
    with start(model, directory, CHAIN, forkserver, "chunked", limits=tight) as run:
        outputs, requests = generate_all(run.host, PROMPTS)
        health = run.host.health()
    assert outputs == reference
    assert all(len(r.tokens) == NEW_TOKENS and r.ttft_s > 0 for r in requests)
    assert health["status"] == "ok"


def test_a_worker_splits_the_first_prompt_that_does_not_fit_and_keeps_its_rest_first():
    from collections import deque

    from runtime.worker import Item, Worker

    def item(rid, pos, count, lane=0):
        return Item(rid, pos, count, ["a:0"], 0, torch.arange(count), None, lane)

    def batch_of(queue, budget):
        worker = SimpleNamespace(config=SimpleNamespace(limits=Limits(max_batch_tokens=budget)), queue=deque(queue))
        return Worker._take_batch(worker), worker.queue

    def take(queue, budget):
        batch, left = batch_of(queue, budget)
        return [(i.rid, i.pos, i.count, i.more) for i in batch], [(i.rid, i.pos, i.count, i.more) for i in left]

    # two decode steps, then a 10-token prompt on an 8-token budget: 6 of it now, 4 later, the next prompt waits
    batch, left = take([item("d1", 5, 1), item("p", 0, 10), item("q", 0, 3), item("d2", 7, 1)], 8)
    assert batch == [("d1", 5, 1, False), ("d2", 7, 1, False), ("p", 0, 6, True)]
    assert left == [("p", 6, 4, False), ("q", 0, 3, False)]
    (first,), (rest,) = batch_of([item("p", 0, 10)], 8)
    assert torch.equal(first.data, torch.arange(8)) and torch.equal(rest.data, torch.arange(8, 10))
    # a rest of one token would pass for a decode step: the chunk is one shorter
    assert take([item("d1", 5, 1), item("p", 0, 8)], 8) == ([("d1", 5, 1, False), ("p", 0, 6, True)],
                                                           [("p", 6, 2, False)])
    # no room for a 2-token chunk beside decode work: the prompt waits whole; alone it runs a little over
    assert take([item("d1", 5, 1), item("d2", 6, 1), item("p", 0, 3)], 3)[0] == [("d1", 5, 1, False), ("d2", 6, 1, False)]
    assert take([item("p", 0, 3)], 2) == ([("p", 0, 3, False)], [])


def test_a_last_stage_step_with_nothing_to_sample_waits_for_its_device_work(monkeypatch):
    """A long prompt's middle chunk on the last stage yields no token, so nothing read its result: the
    worker formed the next batch while the GPU still ran this one, before the decode rows coming back
    from the host had arrived, and they waited a step more (about three steps per token, not two, on an
    H100). Such a step now waits for the device; on a CPU there is nothing to wait for."""

    from runtime.worker import Item, Worker

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    chunk, _ = Item("p", 0, 8, ["a:0"], 0, torch.arange(8), None).split(4)
    for out, expected in ((SimpleNamespace(is_cuda=True, device="cuda:0"), ["cuda:0"]), (torch.zeros(4, 2), [])):
        synced.clear()
        worker = SimpleNamespace(_admit=lambda batch: batch, _run_stage=lambda batch, out=out: out,
                                 stage=SimpleNamespace(last=True), steps=0, busy_s=0.0, group=None)
        worker._settle = lambda result, worker=worker: Worker._settle(worker, result)
        worker._compute = lambda batch, worker=worker: Worker._compute(worker, batch)
        Worker._step(worker, [chunk])
        assert worker.steps == 1 and synced == expected and worker.busy_s > 0


def test_parallel_middle_stage_splits_requests_and_matches_transformers(model_dir, forkserver):
    model, directory, reference = model_dir
    with start(model, directory, PARALLEL, forkserver, "parallel") as run:
        outputs, requests = generate_all(run.host, PROMPTS)
        paths = [r.path for r in requests]
    assert outputs == reference
    middles = [p[1] for p in paths]
    assert set(middles) == {"local:1", "local:2"}               # max-flow routing splits 50/50 ...
    assert abs(middles.count("local:1") - middles.count("local:2")) <= 1   # ... interleaved


def test_kv_is_freed_when_requests_end(chain):
    run, reference = chain
    for _ in range(3):   # more requests than KV slots (8) over time: slots must come back
        outputs, _ = generate_all(run.host, PROMPTS)
        assert outputs == reference
    assert sum(run.host.in_flight.values()) == 0
    health = run.host.health()
    assert health["status"] == "ok" and health["in_flight"] == 0


def test_seeded_sampling_is_reproducible(chain):
    run, _ = chain
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=11)
    first = run.host.generate(PROMPTS[0], 8, params, timeout=TIMEOUT_S)
    second = run.host.generate(PROMPTS[0], 8, params, timeout=TIMEOUT_S)
    other = run.host.generate(PROMPTS[0], 8, SamplingParams(temperature=0.8, top_p=0.9, seed=12), timeout=TIMEOUT_S)
    assert first == second and len(first) == 8
    assert other != first


def test_requests_past_max_seq_len_are_refused(chain):
    run, _ = chain
    with pytest.raises(ValueError, match="max_seq_len"):
        run.host.submit([1] * 100, 100)
    with pytest.raises(ValueError, match="token ids"):
        run.host.submit([1, 10_000], 4)
    for seed in (2**64, -2**63 - 1, 99999999999999999999999):   # past msgpack: they killed the engine thread
        with pytest.raises(ValueError, match="seed"):
            run.host.submit([1, 2], 4, SamplingParams(temperature=1.0, seed=seed))
    edge = run.host.generate([1, 2], 4, SamplingParams(temperature=1.0, seed=2**64 - 1), timeout=TIMEOUT_S)
    assert len(edge) == 4 and run.host.engine_alive()


def test_a_worker_killed_mid_request_loses_nothing_and_the_rest_go_on(forkserver, tmp_path_factory):
    """Requests on the dead worker's path are re-admitted on the live one (prompt + tokens so far
    prefilled again) and end with the tokens of an undisturbed run."""
    model = TINY_MODELS["tiny-qwen3"]
    directory = tmp_path_factory.mktemp("kill")
    make_checkpoint(directory / "ck", model, seed=3)
    with start(model, directory, PARALLEL, forkserver, "kill") as run:
        host = run.host
        undisturbed = host.generate(PROMPTS[0], 140, SamplingParams(), timeout=TIMEOUT_S)
        long = [host.submit(PROMPTS[0], 140, SamplingParams()) for _ in range(4)]   # 2 on each middle worker
        deadline = time.monotonic() + TIMEOUT_S
        while not all(r.tokens for r in long) and time.monotonic() < deadline:
            time.sleep(0.01)
        victim = "local:1"
        doomed = [r for r in long if victim in r.path]
        spared = [r for r in long if victim not in r.path]
        assert doomed and spared
        while len(doomed[0].tokens) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 3 <= len(doomed[0].tokens) < 140, "the request must be in flight when the worker dies"
        run.kill(victim)
        for request in long:
            assert request.result(TIMEOUT_S) == undisturbed
        assert all(victim not in r.path and r.attempt == 1 for r in doomed)
        assert host.readmitted == len(doomed) and host.failed == 0
        after = [host.submit(p, 6) for p in PROMPTS]
        assert all(len(r.result(TIMEOUT_S)) == 6 for r in after)
        assert all(victim not in r.path for r in after)
        health = host.health()
        assert health["status"] == "degraded" and health["workers"][victim] == "dead"


def test_all_paths_dead_fails_new_requests_at_once(forkserver, tmp_path_factory):
    model = TINY_MODELS["tiny-qwen2"]
    directory = tmp_path_factory.mktemp("down")
    make_checkpoint(directory / "ck", model, seed=4)
    with start(model, directory, CHAIN, forkserver, "down") as run:
        run.kill("local:1")
        deadline = time.monotonic() + LIMITS.dead_after_s + 5
        while run.host.health()["status"] != "down" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.host.health()["status"] == "down"
        with pytest.raises(RequestFailed, match="no live path.*local:1"):
            run.host.submit([1, 2], 4).result(5)


# ---- the CLI --------------------------------------------------------------------------------------------

def test_planner_run_local_with_a_layout_prints_the_reference_ids(model_dir, run_cli):
    model, directory, reference = model_dir
    if model.family != "qwen3":
        pytest.skip("one family is enough for the CLI (it starts its own fork server)")
    (directory / "cli-cluster.ini").write_text(cpu_cluster(model, 3))
    layout = directory / "cli.ini"
    layout.write_text(chain_layout("cli-cluster.ini", model, CHAIN))
    code, out, err = run_cli("run", "--local", layout, "--checkpoint", directory / "ck", "--prompt-ids",
                             ",".join(map(str, PROMPTS[2])), "--max-new-tokens", str(NEW_TOKENS), "--requests", "3",
                             "--concurrency", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["errors"] == []
    assert result["outputs"] == [reference[2]] * 3
    assert result["output_tokens_per_s"] > 0 and result["ttft_s"]["mean"] > 0
    # one request came after the first wave of two: its TTFT alone
    assert 0 < result["ttft_after_first_wave_s"]["mean"] == result["ttft_after_first_wave_s"]["max"]
    assert [w["layers"] for w in result["workers"]] == [[0, 1], [1, 4], [4, 6]]


def test_workers_started_as_planner_worker_commands(model_dir, forkserver):
    """spawn="exec": each worker a fresh `python -m planner worker` process, as the launch scripts run them."""
    model, directory, reference = model_dir
    if model.family != "qwen2":
        pytest.skip("one family is enough for the slow path (a torch import per worker)")
    with start(model, directory, [[(0, 3)], [(3, 6)]], forkserver, "exec", spawn="exec") as run:
        outputs, _ = generate_all(run.host, PROMPTS[:2])
    assert outputs == reference[:2]


# ---- tensor-parallel groups ------------------------------------------------------------------------------

def start_tp(model, directory: Path, stages, forkserver, name: str, tp: int = 2, **options) -> LocalRun:
    (directory / f"{name}-cluster.ini").write_text(cpu_cluster(model, tp * sum(len(s) for s in stages)))
    layout = directory / f"{name}.ini"
    layout.write_text(chain_layout(f"{name}-cluster.ini", model, stages, tp=tp))
    config = runtime_config(read_layout(layout), layout_path=str(layout), local=True, device="cpu", threads=1,
                            kv_slots=8, limits=LIMITS)
    (directory / name).mkdir(exist_ok=True)
    return LocalRun(config, directory / "ck", workdir=directory / name, forkserver=forkserver, **options).start()


@pytest.mark.parametrize("stages", [[[(0, 6)]], [[(0, 3)], [(3, 6)]]], ids=["tp2", "tp2xpp2"])
def test_tensor_parallel_groups_match_transformers(model_dir, forkserver, stages):
    """Each group two gloo-joined processes holding half of every layer; all five prompts at once."""
    model, directory, reference = model_dir
    name = f"tp-{len(stages)}"
    with start_tp(model, directory, stages, forkserver, name) as run:
        outputs, requests = generate_all(run.host, PROMPTS)
        assert sum(run.host.in_flight.values()) == 0
        assert set(run.processes) == {f"local:{i}" for i in range(2 * len(stages))}
    assert outputs == reference
    units = ("local:0+local:1",) if len(stages) == 1 else ("local:0+local:1", "local:2+local:3")
    assert {r.path for r in requests} == {units}


@pytest.mark.parametrize("victim", ["local:1", "local:0"], ids=["rank1", "face"])
def test_a_killed_rank_fails_its_group(forkserver, tmp_path_factory, victim):
    """A rank killed mid-request: the face reports the group's requests failed, naming the rank, and
    leaves; the face killed: the host sees the unit stop beating and the other rank exits. Either way the
    unit is dead to the host, whose new requests fail at once, and no process is left hanging."""
    model = TINY_MODELS["tiny-qwen2"]
    directory = tmp_path_factory.mktemp("tpkill")
    make_checkpoint(directory / "ck", model, seed=3)
    with start_tp(model, directory, [[(0, 6)]], forkserver, "tpkill") as run:
        request = run.host.submit(PROMPTS[0], 140, SamplingParams())
        deadline = time.monotonic() + TIMEOUT_S
        while len(request.tokens) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 3 <= len(request.tokens) < 140, "the request must be in flight when the rank dies"
        run.kill(victim)
        expected = ("tensor-parallel group broken: tensor-parallel rank 1 \\(local:1, pid \\d+\\) of "
                    "local:0\\+local:1 exited" if victim == "local:1" else
                    "no live path through the pipeline \\(dead workers: local:0\\+local:1\\)")  # re-admission found none
        with pytest.raises(RequestFailed, match=expected):
            request.result(LIMITS.dead_after_s + 5)
        survivor = run.processes["local:0" if victim == "local:1" else "local:1"]
        survivor.wait(timeout=10)             # the rest of the group exits by itself
        deadline = time.monotonic() + LIMITS.dead_after_s + 5
        while run.host.health()["status"] != "down" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.host.health()["workers"] == {"local:0+local:1": "dead"}
        with pytest.raises(RequestFailed, match="no live path.*local:0\\+local:1"):
            run.host.submit([1, 2], 4).result(5)


def test_planner_run_local_serves_a_tensor_parallel_layout(model_dir, run_cli):
    """The layout the bundled runtime refused before issue 18 (TP2 x PP2) now runs from the CLI."""
    model, directory, reference = model_dir
    if model.family != "qwen2":
        pytest.skip("one family is enough for the CLI (it starts its own fork server)")
    (directory / "cli-tp-cluster.ini").write_text(cpu_cluster(model, 4))
    layout = directory / "cli-tp.ini"
    layout.write_text(chain_layout("cli-tp-cluster.ini", model, [[(0, 3)], [(3, 6)]], tp=2))
    code, out, err = run_cli("run", "--local", layout, "--checkpoint", directory / "ck", "--prompt-ids",
                             ",".join(map(str, PROMPTS[0])), "--max-new-tokens", str(NEW_TOKENS), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["errors"] == [] and result["outputs"] == [reference[0]]
    assert [(w["node"], w["tp"]) for w in result["workers"]] == [("local:0+local:1", 2), ("local:2+local:3", 2)]


def test_a_closed_loop_replaces_whichever_request_ends_first():
    """`planner run --concurrency N` is the simulator's offline:N: a new request as each one ends. It used
    to wait for the oldest in flight, so a younger one that ended first left a slot empty meanwhile (here
    for ever: the oldest ends only once the third request is in)."""
    import threading

    from runtime.host import Request
    from runtime.launch import measure

    class Host:
        on_end = None
        worker_stats: dict = {}   # no workers: no step counters to read
        config = SimpleNamespace(limits=SimpleNamespace(heartbeat_s=0.25))

        def __init__(self) -> None:
            self.submitted: list[Request] = []

        def end(self, request: Request) -> None:
            request.tokens[:] = [7, 8]
            request.first_token_s = request.finished_s = time.perf_counter()
            request.done.set()
            self.on_end(request)

        def submit(self, prompt, max_new_tokens, sampling, ignore_eos=True) -> Request:
            request = Request(str(len(self.submitted)), prompt, max_new_tokens, sampling, frozenset())
            self.submitted.append(request)
            ending = {2: [1], 3: [0, 2]}.get(len(self.submitted), [])
            threading.Timer(0.05, lambda: [self.end(self.submitted[i]) for i in ending]).start()
            return request

    host = Host()
    stats = measure(host, [[1, 2]] * 3, 2, [SamplingParams()] * 3, concurrency=2, timeout_s=5)
    assert stats["completed"] == 3 and not stats["errors"], stats["errors"]
    assert stats["wall_s"] < 2 and host.on_end is None   # the host's own hook is given back
