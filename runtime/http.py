"""The host's HTTP API: OpenAI-compatible POST /v1/completions, GET /v1/models and GET /health.

Standard library only (http.server with a thread per connection): the API is a thin shell over
Host.submit, and no web framework is worth a dependency for three routes.

POST /v1/completions {"prompt": [ids] | "text", "max_tokens": 16, "temperature": 1.0, "top_p": 1.0,
                      "seed": N, "stream": false, "ignore_eos": false}
  -> {"id", "object": "text_completion", "created", "model",
      "choices": [{"index": 0, "text", "token_ids", "finish_reason": "length" | "stop"}], "usage": {...}}
Text prompts and "text" in answers need the checkpoint's tokenizer.json (and the `tokenizers` package);
without them prompts are token ids and "text" is "". With "stream": true the answer is server-sent
events, one chunk per token, then "data: [DONE]". A request whose worker dies gets HTTP 502 (or, once
streaming, a final chunk with "error") naming the worker.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from planner.export.runtime import RuntimeConfig
from runtime.hfconfig import read_checkpoint_config, stop_token_ids
from runtime.host import Host, RequestFailed
from runtime.sampling import SamplingParams

REQUEST_TIMEOUT_S = 600.0


def load_tokenizer(checkpoint: str | Path | None):
    """The checkpoint's tokenizer.json through the `tokenizers` package, or None."""
    if checkpoint is None or not (Path(checkpoint) / "tokenizer.json").is_file():
        return None
    try:
        from tokenizers import Tokenizer  # optional: only checkpoints that ship a tokenizer need it
    except ImportError:
        return None
    return Tokenizer.from_file(str(Path(checkpoint) / "tokenizer.json"))


class BadRequest(ValueError):
    pass


def _parse(body: dict, tokenizer) -> tuple[list[int], int, SamplingParams, bool, bool]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]  # OpenAI's batch form with one prompt
    if isinstance(prompt, str):
        if tokenizer is None:
            raise BadRequest("this checkpoint has no tokenizer: send the prompt as a list of token ids")
        prompt = tokenizer.encode(prompt).ids
    if not isinstance(prompt, list) or not prompt or not all(isinstance(t, int) for t in prompt):
        raise BadRequest("'prompt' must be a non-empty list of token ids (or text, with a tokenizer)")
    try:
        max_tokens = int(body.get("max_tokens", 16))
        temperature = float(body.get("temperature", 1.0))
        top_p = float(body.get("top_p", 1.0))
        seed = int(body["seed"]) if body.get("seed") is not None else int(time.time_ns() % 2**31)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"bad sampling field: {exc}") from None
    if temperature < 0 or not 0 < top_p <= 1:
        raise BadRequest("need temperature >= 0 and 0 < top_p <= 1")
    return prompt, max_tokens, SamplingParams(temperature, top_p, seed), bool(body.get("stream")), \
        bool(body.get("ignore_eos"))


def make_handler(host: Host, model_name: str, tokenizer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the host logs requests itself when asked
            pass

        def _json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str) -> None:
            self._json(status, {"error": {"message": message, "type": kind}})

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/health":
                health = host.health()
                self._json(200 if health["status"] in ("ok", "degraded") else 503, health)
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": model_name, "object": "model",
                                                              "owned_by": "layer-planner"}]})
            else:
                self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/completions":
                self._error(404, f"no route {self.path}", "not_found")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                prompt, max_tokens, sampling, stream, ignore_eos = _parse(body, tokenizer)
                request = host.submit(prompt, max_tokens, sampling, ignore_eos=ignore_eos)
            except (json.JSONDecodeError, BadRequest, ValueError) as exc:
                self._error(400, str(exc), "invalid_request_error")
                return
            cid, created = f"cmpl-{request.rid}", int(time.time())
            if stream:
                self._stream(request, cid, created)
                return
            try:
                tokens = request.result(REQUEST_TIMEOUT_S)
            except RequestFailed as exc:
                self._error(502, str(exc), "worker_failed")
                return
            self._json(200, {
                "id": cid, "object": "text_completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "text": tokenizer.decode(tokens) if tokenizer else "", "token_ids": tokens,
                             "logprobs": None, "finish_reason": request.finish_reason}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(tokens),
                          "total_tokens": len(prompt) + len(tokens)}})

        def _stream(self, request, cid: str, created: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def chunk(payload: dict) -> None:
                self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.flush()

            base = {"id": cid, "object": "text_completion", "created": created, "model": model_name}
            try:
                for token in request.stream(REQUEST_TIMEOUT_S):
                    chunk({**base, "choices": [{"index": 0, "text": tokenizer.decode([token]) if tokenizer else "",
                                                "token_ids": [token], "finish_reason": None}]})
                chunk({**base, "choices": [{"index": 0, "text": "", "token_ids": [],
                                            "finish_reason": request.finish_reason}]})
            except RequestFailed as exc:
                chunk({**base, "error": {"message": str(exc), "type": "worker_failed"}})
            except (BrokenPipeError, ConnectionResetError):
                return
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def make_server(host: Host, address: str, port: int, model_name: str, tokenizer=None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, port), make_handler(host, model_name, tokenizer))
    server.daemon_threads = True
    return server


def serve(config: RuntimeConfig, *, checkpoint: str | None, address: str, port: int, routing: str | None = None) -> None:
    """Run the host and its HTTP API until SIGTERM or Ctrl-C."""
    stop_ids = stop_token_ids(read_checkpoint_config(checkpoint)) if checkpoint else ()
    host = Host(config, stop_ids=stop_ids, routing=routing).start()
    server = make_server(host, address, port, config.model.id, load_tokenizer(checkpoint))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    print(f"host: {len(config.workers)} workers, {config.routing if routing is None else routing} routing; "
          f"HTTP on http://{address}:{server.server_address[1]} (POST /v1/completions, GET /health)", flush=True)
    stop.wait()
    server.shutdown()
    host.close()
