"""The host's lanes: a path's requests decode in micro-batches, one per stage, each travelling as one
message (runtime/host.py). Driven without workers: the host's messages are recorded, tokens are fed to it
as the last stage would send them."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("zmq")

from planner.export.runtime import runtime_config  # noqa: E402
from planner.layout import read_layout  # noqa: E402
from conftest import run_planner  # noqa: E402
from planner.errors import InputError  # noqa: E402
from runtime.config import Limits, config_json, read_runtime_config  # noqa: E402
from runtime.demo import TINY_MODELS, chain_layout, cpu_cluster  # noqa: E402
from runtime.host import Host  # noqa: E402

MODEL = TINY_MODELS["tiny-qwen3"]


def host_of(tmp_path, stages, lanes: int = 0) -> tuple[Host, list]:
    workers = sum(len(s) for s in stages)
    (tmp_path / "cluster.ini").write_text(cpu_cluster(MODEL, workers))
    (tmp_path / "layout.ini").write_text(chain_layout("cluster.ini", MODEL, stages))
    config = runtime_config(read_layout(tmp_path / "layout.ini"), layout_path=str(tmp_path / "layout.ini"),
                            local=True, device="cpu", kv_slots=16, limits=Limits(max_seq_len=64, lanes=lanes))
    host = Host(config)
    host.state = dict.fromkeys(host.state, "alive")
    host.kv_tokens = dict.fromkeys(host.kv_tokens, 10**6)
    sent: list = []
    host._send = lambda node, header, tensors=(): sent.append((node, header, tensors)) or True
    return host, sent


def round_(host: Host) -> None:
    """The end of one engine round: admission, then the lanes that may go."""
    while not host.submissions.empty():
        host.waiting.append(host.submissions.get_nowait())
    host._admit()
    host._flush_lanes()


def tokens(host: Host, requests, token: int = 7) -> None:
    host._handle({"kind": "tokens", "node": "local:0", "items": [{"rid": r.wire_id, "token": token} for r in requests]},
                 [])


def rids(message) -> list[str]:
    return [item["rid"] for item in message[1]["items"]]


def test_a_lane_waits_for_all_its_tokens_and_new_prompts_ride_with_it(tmp_path):
    host, sent = host_of(tmp_path, [[(0, 6)]])   # one stage: one lane
    a, b = host.submit([1, 2, 3], 5), host.submit([4, 5], 5)
    round_(host)
    assert [rids(m) for m in sent] == [[a.wire_id], [b.wire_id]]   # an idle lane: prompts go at once
    sent.clear()
    tokens(host, [a])          # a's first token: the lane is not out, so it goes
    round_(host)
    assert [rids(m) for m in sent] == [[a.wire_id]]
    sent.clear()
    tokens(host, [b])          # b's first token while a's step is out: it waits for a
    c = host.submit([6], 5)    # and so does a new prompt
    round_(host)
    assert sent == []
    tokens(host, [a])
    round_(host)
    (node, header, (ids,)), = sent   # one message: both decode steps (as they came back), then the prompt
    assert node == "local:0" and rids(sent[0]) == [b.wire_id, a.wire_id, c.wire_id]
    assert [i["n"] for i in header["items"]] == [1, 1, 1] and ids.tolist() == [7, 7, 6]
    assert [i["pos"] for i in header["items"]] == [2, 4, 0]


def test_a_request_that_ends_frees_its_lane(tmp_path):
    host, sent = host_of(tmp_path, [[(0, 6)]])
    a, b = host.submit([1, 2], 5), host.submit([3, 4], 5)
    round_(host)
    tokens(host, [a, b])
    round_(host)
    sent.clear()
    tokens(host, [a])          # b's step is still out ...
    round_(host)
    assert sent == []
    host._cancel(b, "abort")   # ... and will never come back: a goes on alone
    round_(host)
    assert [rids(m) for m in sent if m[1]["kind"] == "work"] == [[a.wire_id]]
    assert [m[1]["rids"] for m in sent if m[1]["kind"] == "free"] == [[b.wire_id]]


def test_a_path_has_one_lane_per_stage_kept_apart(tmp_path):
    host, sent = host_of(tmp_path, [[(0, 2)], [(2, 4)], [(4, 6)]])
    requests = [host.submit([i + 1], 9) for i in range(6)]
    round_(host)
    lanes = host.lanes[("local:0", "local:1", "local:2")]
    assert len(lanes) == 3 and [len(lane.members) for lane in lanes] == [2, 2, 2]
    assert {item["lane"] for m in sent for item in m[1]["items"]} == {0, 1, 2}
    sent.clear()
    tokens(host, requests)     # every first token back in one round: one message per lane
    round_(host)
    assert sorted(len(m[1]["items"]) for m in sent) == [2, 2, 2]
    assert all(len({item["lane"] for item in m[1]["items"]}) == 1 for m in sent)


def test_a_prompt_that_cannot_be_sent_fails_alone_and_its_lane_goes_on(tmp_path):
    host, sent = host_of(tmp_path, [[(0, 6)]])
    a = host.submit([1, 2], 5)
    round_(host)
    tokens(host, [a])
    round_(host)
    b = host.submit([3, 4], 5)   # rides with a's next step
    round_(host)
    sent.clear()

    def refuses_prompts(node, header, tensors=()):
        if any(item["pos"] == 0 for item in header.get("items", ())):
            raise TypeError("cannot encode this")
        sent.append((node, header, tensors))
        return True

    host._send = refuses_prompts
    tokens(host, [a])
    round_(host)
    assert [rids(m) for m in sent if m[1]["kind"] == "work"] == [[a.wire_id]]
    assert b.done.is_set() and "could not be sent" in b.error and not a.done.is_set()


def test_lanes_per_path_can_be_set_and_a_bad_count_is_refused(tmp_path):
    host, _ = host_of(tmp_path, [[(0, 2)], [(2, 4)], [(4, 6)]], lanes=2)
    for i in range(4):
        host.submit([i + 1], 5)
    round_(host)
    assert [len(lane.members) for lane in host.lanes[("local:0", "local:1", "local:2")]] == [2, 2]
    written = tmp_path / "runtime.json"
    written.write_text(json.dumps({**config_json(host.config), "limits": {"lanes": -1}}))
    with pytest.raises(InputError, match="limits.lanes"):
        read_runtime_config(written)


def test_planner_run_serves_with_one_lane_per_path(tmp_path):
    """The built-in demo (three CPU workers in a chain) with every request in one lane: all complete."""
    done = run_planner("run", "--local", "--lanes", "1", "--requests", "4", "--max-new-tokens", "3", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["completed"] == 4 and not result["errors"]
