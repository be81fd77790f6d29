"""The HTTP API as a vLLM user meets it: a live CPU host (4 forked workers, the middle stage held by two)
driven with the real `openai` client, raw sockets and httpx.

The tiny checkpoint ships a byte-level tokenizer.json (256 byte tokens: every multi-byte character is
several tokens) and a chat template; references are the host's own greedy ids, which
test_runtime_serving.py checks against transformers.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
tokenizers = pytest.importorskip("tokenizers")

from planner.export.runtime import runtime_config  # noqa: E402
from runtime.config import Limits  # noqa: E402
from planner.layout import read_layout  # noqa: E402
from runtime import http as http_api  # noqa: E402
from runtime.chat import load_chat_template  # noqa: E402
from runtime.checkpoint import make_checkpoint  # noqa: E402
from runtime.demo import TINY_MODELS, chain_layout, cpu_cluster  # noqa: E402
from conftest import planner_script  # noqa: E402
from runtime.launch import ForkServer, LocalRun  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

PARALLEL = [[(0, 2)], [(2, 5), (2, 5)], [(5, 6)]]
LIMITS = Limits(max_seq_len=256, max_batch_tokens=256, heartbeat_s=0.1, dead_after_s=1.0)
MODEL = "tiny-qwen3"
TIMEOUT_S = 30.0
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nBe brief.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tokenizer(directory: Path) -> None:
    """A byte-level BPE with the 256 byte tokens and no merges (ids fit the tiny vocab of 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE, "eos_token": "!",
        "model_max_length": LIMITS.max_seq_len}))


def start_run(directory: Path, forkserver, name: str, kv_slots: int = 8) -> LocalRun:
    model = TINY_MODELS[MODEL]
    (directory / f"{name}-cluster.ini").write_text(cpu_cluster(model, 4))
    layout = directory / f"{name}.ini"
    layout.write_text(chain_layout(f"{name}-cluster.ini", model, PARALLEL))
    config = runtime_config(read_layout(layout), layout_path=str(layout), local=True, device="cpu", threads=1,
                            kv_slots=kv_slots, limits=LIMITS)
    (directory / name).mkdir(exist_ok=True)
    return LocalRun(config, directory / "ck", workdir=directory / name, forkserver=forkserver).start()


class Live:
    def __init__(self, run: LocalRun, directory: Path) -> None:
        self.run, self.host = run, run.host
        self.tokenizer = http_api.load_tokenizer(directory / "ck")
        app = http_api.make_app(run.host, MODEL, self.tokenizer, load_chat_template(directory / "ck"))
        self.server = http_api.HttpServer(app, "127.0.0.1", 0).start()
        self.base = f"http://127.0.0.1:{self.server.port}"
        self.client = openai.OpenAI(base_url=self.base + "/v1", api_key="none", max_retries=0, timeout=TIMEOUT_S)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        return self.host.generate(ids, n, SamplingParams(), timeout=TIMEOUT_S, ignore_eos=True)

    def kv_used(self, metric: str = "planner:worker_kv_slots_used") -> dict[str, float]:
        text = httpx.get(self.base + "/metrics").text
        return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(metric + "{")}

    def close(self) -> None:
        self.server.stop()
        self.run.close()


@pytest.fixture(scope="module")
def forkserver():
    with ForkServer() as server:
        yield server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("http")
    make_checkpoint(directory / "ck", TINY_MODELS[MODEL], seed=5)
    write_tokenizer(directory / "ck")
    return directory


@pytest.fixture(scope="module")
def live(checkpoint, forkserver):
    server = Live(start_run(checkpoint, forkserver, "live"), checkpoint)
    yield server
    server.close()


def test_incremental_detokenisation_never_splits_a_character(tmp_path):
    write_tokenizer(tmp_path)
    tokenizer = http_api.load_tokenizer(tmp_path)
    text = "héllo wörld, 日本語 🙂!"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text)                                    # multi-byte characters span tokens
    detok = http_api.Detokenizer(tokenizer, [])
    pieces = []
    for token in ids:
        detok.push(token)
        pieces.append(detok.delta(final=False))
    pieces.append(detok.delta(final=True))
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    stop_id = tokenizer.encode("!").ids[0]
    detok = http_api.Detokenizer(tokenizer, ["wör"], frozenset({stop_id}))
    for token in ids:
        detok.push(token)
        if detok.stopped:
            break
    assert detok.delta(final=True) == "héllo "                     # the stop string is not in the answer
    detok = http_api.Detokenizer(tokenizer, [], frozenset({stop_id}))
    for token in ids:
        detok.push(token)
    assert detok.delta(final=True) == text[:-1]                    # nor is a stop id's text


# ---- the openai client ------------------------------------------------------------------------------

def test_models_list_retrieve_and_unknown_model(live):
    assert [m.id for m in live.client.models.list().data] == [MODEL]
    assert live.client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        live.client.models.retrieve("gpt-4")
    with pytest.raises(openai.NotFoundError) as exc:
        live.client.completions.create(model="gpt-4", prompt=[1, 2], max_tokens=2)
    assert exc.value.body["message"] == "The model `gpt-4` does not exist." and exc.value.body["param"] == "model"


def test_completion_ids_text_usage_and_stream(live):
    ids = [5, 17, 3, 99, 42]
    reference = live.greedy(ids, 12)
    answer = live.client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0,
                                            extra_body={"ignore_eos": True})
    choice = answer.choices[0]
    assert choice.token_ids == reference and choice.finish_reason == "length"
    assert choice.text == live.tokenizer.decode(reference)
    assert answer.usage.prompt_tokens == 5 and answer.usage.completion_tokens == 12
    stream = live.client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    assert [t for c in chunks[:-1] for t in c.choices[0].token_ids] == reference
    assert "".join(c.choices[0].text for c in chunks[:-1]) == choice.text     # no broken characters
    assert chunks[-2].choices[0].finish_reason == "length"


def test_text_prompt_n_batch_echo_and_seed(live):
    prompt = "héllo wörld"                                   # multi-byte characters: several tokens each
    ids = live.tokenizer.encode(prompt).ids
    answer = live.client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0.9, seed=7,
                                            n=3, echo=True, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in answer.choices) == [0, 1, 2]
    assert all(c.text.startswith(prompt) for c in answer.choices)
    assert len({tuple(c.token_ids) for c in answer.choices}) > 1            # each choice its own draws
    again = live.client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0.9, seed=7, n=3,
                                           extra_body={"ignore_eos": True})
    assert [c.token_ids for c in again.choices] == [c.token_ids for c in answer.choices]
    assert answer.usage.prompt_tokens == len(ids)
    batch = live.client.completions.create(model=MODEL, prompt=[[1, 2, 3], ids], max_tokens=4, temperature=0,
                                           n=2, extra_body={"ignore_eos": True})
    by_index = {c.index: c.token_ids for c in batch.choices}
    assert by_index[0] == by_index[1] == live.greedy([1, 2, 3], 4)
    assert by_index[2] == by_index[3] == live.greedy(ids, 4)
    assert batch.usage.prompt_tokens == 3 + len(ids)


def test_stop_strings_and_stop_token_ids(live):
    ids = [9, 8, 7]
    reference = live.greedy(ids, 20)
    text = live.tokenizer.decode(reference)
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2) if text[i:i + 2].isprintable() and text[i:i + 2].strip())
    answer = live.client.completions.create(model=MODEL, prompt=ids, max_tokens=20, temperature=0, stop=[stop],
                                            extra_body={"ignore_eos": True})
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].text == text[:text.find(stop)]
    streamed = live.client.completions.create(model=MODEL, prompt=ids, max_tokens=20, temperature=0, stop=stop,
                                              stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text[:text.find(stop)]
    by_id = live.client.completions.create(model=MODEL, prompt=ids, max_tokens=20, temperature=0,
                                           extra_body={"ignore_eos": True, "stop_token_ids": [reference[4]]})
    cut = reference.index(reference[4]) + 1
    assert by_id.choices[0].finish_reason == "stop" and by_id.choices[0].token_ids == reference[:cut]
    assert by_id.choices[0].text == live.tokenizer.decode(reference[:cut - 1])


def test_logprobs_match_transformers(live, checkpoint):
    transformers = pytest.importorskip("transformers")
    ids = [3, 1, 4, 1, 5]
    answer = live.client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0, logprobs=3,
                                            extra_body={"ignore_eos": True})
    choice = answer.choices[0]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoint / "ck"), dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids + choice.token_ids])).logits[0].float(), dim=-1)
    expected = [float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(choice.token_ids)]
    assert choice.logprobs.token_logprobs == pytest.approx(expected, abs=1e-4)
    assert all(len(top) >= 1 and max(top.values()) == pytest.approx(lp, abs=1e-6)     # greedy: the top token
               for top, lp in zip(choice.logprobs.top_logprobs, choice.logprobs.token_logprobs))
    assert "".join(choice.logprobs.tokens) == choice.text
    chunks = list(live.client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0, logprobs=3,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert [v for c in chunks if c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs] == \
        pytest.approx(expected, abs=1e-4)
    chat = live.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3, temperature=0, logprobs=True, top_logprobs=2,
                                               extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in content)


def test_chat_completion_renders_the_template_as_transformers_does(live, checkpoint):
    transformers = pytest.importorskip("transformers")
    messages = [{"role": "user", "content": "Grüße! Wie geht's?"}, {"role": "assistant", "content": "Gut."},
                {"role": "user", "content": "Und dir?"}]
    reference_text = transformers.AutoTokenizer.from_pretrained(str(checkpoint / "ck")).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert load_chat_template(checkpoint / "ck").render(messages) == reference_text
    ids = live.tokenizer.encode(reference_text).ids
    reference = live.greedy(ids, 8)
    answer = live.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                 extra_body={"ignore_eos": True})
    assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == live.tokenizer.decode(reference)
    assert answer.usage.prompt_tokens == len(ids)
    chunks = list(live.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                      stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


# ---- bad input --------------------------------------------------------------------------------------

def raw_exchange(port: int, data: bytes, *, read_timeout: float = 5.0, pause_s: float = 0.0) -> bytes:
    """Send bytes (one at a time with `pause_s` between when given), read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        if pause_s:
            for byte in data:
                sock.sendall(bytes([byte]))
                time.sleep(pause_s)
        else:
            sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return answer


def check_answer(raw: bytes, label: str) -> None:
    """A 4xx with a JSON error body (or nothing: the connection closed cleanly)."""
    if not raw:
        return
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert 400 <= status < 500, f"{label}: {head!r}"
    if b"application/json" in head:
        error = json.loads(body[:int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])])["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == status, label


BAD_BODIES = {
    "not json": b"{nope", "empty": b"", "array": b"[1, 2, 3]", "string": b'"hi"', "null": b"null",
    "huge float": b'{"prompt": [1], "max_tokens": 1e400}', "nan": b'{"prompt": [1], "temperature": NaN}',
    "deep": b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "bools as ids": b'{"prompt": [true, false]}',
    "string max_tokens": b'{"prompt": [1], "max_tokens": "5"}', "string stream": b'{"prompt": [1], "stream": "false"}',
    "huge seed": b'{"prompt": [1], "max_tokens": 2, "seed": 99999999999999999999999}',
    "negative id": b'{"prompt": [-1]}', "id past vocab": b'{"prompt": [100000]}', "empty prompt": b'{"prompt": []}',
    "past max_seq_len": b'{"prompt": [1], "max_tokens": 1000}', "zero max_tokens": b'{"prompt": [1], "max_tokens": 0}',
    "no prompt": b'{"max_tokens": 3}', "n too big": b'{"prompt": [1], "n": 1000}', "top_p 0": b'{"prompt": [1], "top_p": 0}',
    "bad utf-8": b'{"prompt": "\xff\xfe"}', "chat without messages": b'{"messages": []}',
    "chat bad role": b'{"messages": [{"role": "wizard", "content": "hi"}]}',
}


def test_bad_input_corpus_answers_json_4xx_and_the_server_keeps_serving(live):
    port = live.server.port
    with httpx.Client(base_url=live.base, timeout=TIMEOUT_S) as client:
        for label, body in BAD_BODIES.items():
            path = "/v1/chat/completions" if label.startswith("chat") else "/v1/completions"
            reply = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert reply.status_code == 400, (label, reply.text)
            error = reply.json()["error"]
            assert error["code"] == 400 and error["type"] == "BadRequestError" and error["message"], label
        assert client.post("/v1/completions", json={"prompt": [True]}).json()["error"]["param"] == "prompt"
        assert client.post("/v1/completions", json={"prompt": [1], "seed": 2**70}).json()["error"]["param"] == "seed"
        for _ in range(3):  # the 413 must reach a client that is still sending, and the connection stay usable
            reply = client.post("/v1/completions", content=b"x" * (http_api.MAX_BODY_BYTES + 1))
            assert reply.status_code == 413 and reply.json()["error"]["code"] == 413
            assert client.get("/health").status_code == 200
        for method, path, status in [("GET", "/nope", 404), ("POST", "/v1/nope", 404), ("DELETE", "/v1/completions", 405),
                                     ("GET", "/v1/completions", 405), ("PUT", "/health", 405)]:
            reply = client.request(method, path, content=b'{"prompt": [1]}' if method != "GET" else None)
            assert reply.status_code == status and reply.json()["error"]["code"] == status, (method, path)
        # keep-alive after errors: the next request on the same connection is read correctly
        reply = client.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 2, "temperature": 0})
        assert reply.status_code == 200 and len(reply.json()["choices"][0]["token_ids"]) == 2
    # raw sockets: a 404'd POST then a good request on one connection; a truncated body; a slow client
    good = b'{"prompt": [1, 2], "max_tokens": 2, "temperature": 0}'
    request = (b"POST /v1/nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
               b'{"a": 123}POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n'
               b"Connection: close\r\n\r\n%s" % (len(good), good))
    answer = raw_exchange(port, request)
    assert answer.startswith(b"HTTP/1.1 404") and b"HTTP/1.1 200" in answer, answer
    http_api.BODY_TIMEOUT_S, saved = 1.0, http_api.BODY_TIMEOUT_S
    try:
        truncated = raw_exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"p",
                                 read_timeout=5)
    finally:
        http_api.BODY_TIMEOUT_S = saved
    assert truncated.startswith(b"HTTP/1.1 408")
    check_answer(truncated, "truncated")
    slow = raw_exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                              b"Connection: close\r\n\r\n%s" % (len(good), good), pause_s=0.002)
    assert slow.startswith(b"HTTP/1.1 200")
    for label, data in {"garbage": b"\x00\x01GARBAGE\r\n\r\n", "bad content-length":
                        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                        "huge content-length":
                        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{",
                        "huge header": b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 200_000 + b"\r\n\r\n"}.items():
        check_answer(raw_exchange(port, data), label)
    assert live.host.engine_alive() and live.host.health()["status"] == "ok"
    assert httpx.post(live.base + "/v1/completions", json={"prompt": [3], "max_tokens": 3}).status_code == 200


def test_64_clients_connecting_at_once_are_all_served(live):
    barrier = threading.Barrier(64)
    body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0}).encode()

    def one(_: int) -> bytes:
        barrier.wait()
        return raw_exchange(live.server.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                                              b"Connection: close\r\n\r\n%s" % (len(body), body), read_timeout=TIMEOUT_S)

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:40] for a in answers if not a.startswith(b"HTTP/1.1 200")]


def _stream_then_leave(live) -> object | None:
    """Stream a 250-token request and leave mid-way once the workers report its KV held on all three stages
    of its path (their heartbeats): the request, or None where it ended first (the 250 tokens take about
    a second on this tiny model; a loaded machine can delay the beats past that)."""
    with httpx.Client(timeout=TIMEOUT_S) as client:
        with client.stream("POST", live.base + "/v1/completions",
                           json={"prompt": [4, 5, 6], "max_tokens": 250, "stream": True, "ignore_eos": True}) as reply:
            lines = reply.iter_lines()
            assert [line for line, _ in zip(lines, range(4)) if line.startswith("data: ")]
            (request,) = live.host.requests.values()
            deadline = time.monotonic() + TIMEOUT_S
            while sum(live.kv_used().values()) < 3 and not request.done.is_set():  # one slot on each of 3 stages
                assert time.monotonic() < deadline, "a 250-token request neither ran nor ended"
                time.sleep(0.02)
            if request.done.is_set():
                return None
            # prompt + max_tokens reserved on each stage, in whole pages of 16 tokens: 253 -> 256
            reserved = live.kv_used("planner:worker_kv_tokens_reserved")
            assert sorted(reserved.values())[-3:] == [256.0] * 3 and sum(reserved.values()) == 3 * 256
            usage = live.kv_used("vllm:gpu_cache_usage_perc")
            assert all(0 < usage[node] < 0.5 for node, tokens in reserved.items() if tokens)
            return request


def test_a_client_leaving_mid_stream_frees_its_kv(live):
    cancelled = live.host.cancelled
    for _ in range(3):
        request = _stream_then_leave(live)
        if request is not None:
            break
        deadline = time.monotonic() + 10   # it ended whole: let its frees land, and try again
        while (sum(live.kv_used().values()) or live.host.requests) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert request is not None, "the workers never reported the request's KV while it ran (3 tries)"
    deadline = time.monotonic() + 10
    while (sum(live.kv_used().values()) or live.host.requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(live.kv_used().values()) == 0 and not live.host.requests
    assert set(live.kv_used("planner:worker_kv_tokens_reserved").values()) == {0.0}
    assert live.host.cancelled == cancelled + 1 and request.finish_reason == "abort" and len(request.tokens) < 250
    with pytest.raises(httpx.TimeoutException):  # a plain request whose client gives up is cancelled too
        httpx.post(live.base + "/v1/completions",  # 16 x 250 tokens through 8 KV slots: seconds of work
                   json={"prompt": [4, 5], "max_tokens": 250, "n": 16, "ignore_eos": True}, timeout=0.3)
    deadline = time.monotonic() + 10
    while (sum(live.kv_used().values()) or live.host.requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(live.kv_used().values()) == 0 and live.host.cancelled >= cancelled + 2 and not live.host.waiting
    metrics = httpx.get(live.base + "/metrics").text
    assert 'vllm:request_success_total{finished_reason="abort",model_name="tiny-qwen3"}' in metrics
    assert "vllm:time_to_first_token_seconds_bucket" in metrics and "planner:worker_queue_length{" in metrics
    # every worker has run steps for that traffic, and spent time inside them (its heartbeat's counters)
    for name in ("planner:worker_steps_total", "planner:worker_busy_seconds_total"):
        values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{")]
        assert len(values) == len(live.host.slots) and min(values) > 0, (name, values)


def test_health_says_down_when_the_engine_thread_died(checkpoint, forkserver):
    server = Live(start_run(checkpoint, forkserver, "engine"), checkpoint)
    try:
        assert httpx.get(server.base + "/health").status_code == 200

        def broken(*_):
            raise RuntimeError("simulated engine bug")
        server.host._check_workers = broken          # the loop itself raises: the supervisor must notice
        deadline = time.monotonic() + 5
        while httpx.get(server.base + "/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        reply = httpx.get(server.base + "/health")
        assert reply.status_code == 503 and "simulated engine bug" in reply.json()["engine_error"]
        reply = httpx.post(server.base + "/v1/completions", json={"prompt": [1], "max_tokens": 2})
        assert reply.status_code == 503 and reply.json()["error"]["code"] == 503
    finally:
        server.close()


# ---- a worker dies ---------------------------------------------------------------------------------

def test_killing_a_middle_worker_during_32_streams_loses_nothing(checkpoint, forkserver):
    server = Live(start_run(checkpoint, forkserver, "kill", kv_slots=32), checkpoint)
    try:
        prompts = [[(7 * i + j) % 256 for j in range(3 + i % 5)] for i in range(32)]
        new_tokens = 60
        undisturbed = [server.host.submit(p, new_tokens, SamplingParams(), ignore_eos=True) for p in prompts]
        reference = [r.result(TIMEOUT_S) for r in undisturbed]
        started = threading.Barrier(33)

        def stream(prompt: list[int]) -> tuple[list[int], str | None]:
            chunks = server.client.completions.create(model=MODEL, prompt=prompt, max_tokens=new_tokens,
                                                      temperature=0, stream=True, extra_body={"ignore_eos": True})
            tokens, reason = [], None
            for i, chunk in enumerate(chunks):
                if i == 0:
                    started.wait()
                tokens += chunk.choices[0].token_ids
                reason = chunk.choices[0].finish_reason or reason
            return tokens, reason

        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(stream, p) for p in prompts]
            started.wait(TIMEOUT_S)
            victim = "local:1"
            assert any(victim in (r.path or ()) for r in list(server.host.requests.values()))
            server.run.kill(victim)
            results = [f.result(TIMEOUT_S * 2) for f in futures]
        assert [tokens for tokens, _ in results] == reference
        assert all(reason == "length" for _, reason in results)
        assert server.host.readmitted >= 1 and server.host.failed == 0
        assert server.host.health()["workers"][victim] == "dead"
    finally:
        server.close()


# ---- the installed command ------------------------------------------------------------------------

def test_planner_host_command_serves_the_openai_client(checkpoint, forkserver, tmp_path):
    """`planner host` as a user starts it (workers from the fork server, as launch scripts would start them)."""
    import re
    import signal
    import subprocess

    from runtime.config import write_runtime_config

    model = TINY_MODELS[MODEL]
    (tmp_path / "cluster.ini").write_text(cpu_cluster(model, 4))
    (tmp_path / "layout.ini").write_text(chain_layout("cluster.ini", model, PARALLEL))
    config = runtime_config(read_layout(tmp_path / "layout.ini"), layout_path=str(tmp_path / "layout.ini"),
                            local=True, device="cpu", threads=1, kv_slots=4, limits=LIMITS,
                            checkpoint=str(checkpoint / "ck"))
    path = write_runtime_config(config, tmp_path / "runtime.json")
    workers = [forkserver.start(["--config", str(path), "--node", w.node, "--checkpoint", str(checkpoint / "ck")],
                                tmp_path / f"w{i}.log") for i, w in enumerate(config.workers)]
    host = subprocess.Popen([planner_script(), "host", "--config", str(path), "--http-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = host.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=TIMEOUT_S)
        deadline = time.monotonic() + TIMEOUT_S
        while httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
        answer = client.completions.create(model=MODEL, prompt="hi", max_tokens=4, temperature=0,
                                           extra_body={"ignore_eos": True})
        assert len(answer.choices[0].token_ids) == 4
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                              temperature=0, extra_body={"ignore_eos": True})
        assert chat.usage.completion_tokens == 3
        host.send_signal(signal.SIGTERM)
        assert host.wait(timeout=15) == 0
        assert "Traceback" not in host.stderr.read()
    finally:
        if host.poll() is None:
            host.kill()
        for worker in workers:
            worker.kill()
        host.stdout.close()
        host.stderr.close()



def test_a_refused_route_reads_its_body_so_the_answer_is_not_reset(live):
    # routing answers 404/405 on the headers alone; the body arriving after a close would make the kernel
    # reset the connection under the answer (a lingering close). Headers, a pause, then the body and a good
    # request on the same connection: both answers arrive.
    good = b'{"prompt": [1, 2], "max_tokens": 2, "temperature": 0}'
    for method, path, status in [("POST", "/v1/nope", 404), ("DELETE", "/v1/completions", 405)]:
        body = b'{"prompt": [1], "pad": "' + b"x" * 100_000 + b'"}'
        with socket.create_connection(("127.0.0.1", live.server.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                         % (method.encode(), path.encode(), len(body)))
            time.sleep(0.3)
            sock.sendall(body + b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                                b"Connection: close\r\n\r\n%s" % (len(good), good))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 %d" % status) and b"HTTP/1.1 200" in answer, (method, answer[:300])


def test_text_the_tokenizer_cannot_take_tiny_sampling_values_and_content_parts(live):
    """A lone surrogate is a 400 naming the field (it was a 500 that closed the connection); temperature
    1e-40 and top_p 1e-46 answer the greedy tokens (they answered token 0); content as text parts, as the
    openai client sends it, is the same prompt as a string; a chat prompt with no room left says so."""
    with httpx.Client(base_url=live.base, timeout=TIMEOUT_S) as client:
        for path, body, param in (("/v1/completions", b'{"prompt": "a\\ud800", "max_tokens": 2}', "prompt"),
                                  ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
                                   "messages")):
            reply = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
        greedy = live.greedy([1], 6)
        for extra in ({"temperature": 1e-40}, {"temperature": 1.0, "top_p": 1e-46}):
            reply = client.post("/v1/completions", json={"prompt": [1], "max_tokens": 6, "ignore_eos": True, **extra})
            assert reply.status_code == 200 and reply.json()["choices"][0]["token_ids"] == greedy, extra
        as_text = live.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi\nthere"}],
                                                      max_tokens=3, temperature=0)
        as_parts = live.client.chat.completions.create(
            model=MODEL, max_tokens=3, temperature=0,
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}])
        assert as_parts.choices[0].message.content == as_text.choices[0].message.content
        long = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 400}]})
        assert long.status_code == 400 and "max_model_len" in long.json()["error"]["message"], long.text
        assert client.post("/v1/completions", json={"prompt": [3], "max_tokens": 2}).status_code == 200


def test_a_client_leaving_while_it_sends_its_body_is_no_server_error(live, caplog):
    """It was a 500 through the generic handler, with a traceback logged each time."""
    with socket.create_connection(("127.0.0.1", live.server.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\": [1")
        time.sleep(0.3)
        sock.shutdown(socket.SHUT_WR)   # gone: nothing more will come
        sock.settimeout(5)
        answer = sock.recv(65536)
    time.sleep(0.3)
    assert b" 500 " not in answer[:20], answer
    served = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("uvicorn")]
    assert not served, [r.getMessage() for r in served]   # uvicorn's "Exception in ASGI application"
    assert httpx.post(live.base + "/v1/completions", json={"prompt": [3], "max_tokens": 2}).status_code == 200


def test_a_sampling_field_this_server_does_not_implement_is_refused_unless_off(live):
    """A penalty asked for and silently not applied is a wrong answer: a 400 naming the field, as vLLM
    refuses what it cannot do; the value that turns it off is accepted."""
    with httpx.Client(base_url=live.base, timeout=TIMEOUT_S) as client:
        for field, on, off in (("frequency_penalty", 0.5, 0), ("top_k", 5, -1), ("logit_bias", {"5": 100}, {}),
                               ("response_format", {"type": "json_object"}, {"type": "text"})):
            refused = client.post("/v1/completions", json={"prompt": [1], "max_tokens": 2, field: on})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text
            assert "not supported" in refused.json()["error"]["message"]
            taken = client.post("/v1/completions", json={"prompt": [1], "max_tokens": 2, field: off})
            assert taken.status_code == 200, (field, taken.text)
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                                         "tools": [{"type": "function", "function": {"name": "f"}}]})
        assert chat.status_code == 400 and chat.json()["error"]["param"] == "tools"


def test_options_that_would_be_silently_dropped_are_refused(live):
    """stream_options without stream (vLLM refuses it) and echo with logprobs (the prompt's log-probabilities
    are not computed: the reply would lack what was asked) are 400s naming the field; each alone is served."""
    with httpx.Client(base_url=live.base, timeout=TIMEOUT_S) as client:
        base = {"prompt": [1, 2], "max_tokens": 2}
        for extra, param in (({"stream_options": {"include_usage": True}}, "stream_options"),
                             ({"echo": True, "logprobs": 1}, "logprobs")):
            refused = client.post("/v1/completions", json={**base, **extra})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
        for extra in ({"echo": True}, {"logprobs": 1}, {"stream": False}):
            assert client.post("/v1/completions", json={**base, **extra}).status_code == 200, extra
