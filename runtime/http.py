"""The host's HTTP API, OpenAI-compatible as vLLM serves it, on FastAPI + uvicorn (vLLM's own stack).

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id},
GET /health (200 "ok"/"degraded", 503 "down"/"starting"), GET /metrics (Prometheus).

Bodies are read here (capped at MAX_BODY_BYTES, within BODY_TIMEOUT_S) and validated by the pydantic
models of runtime.openai_api; every error is JSON `{"error": {"message", "type", "param", "code"}}` with
vLLM's status codes: 400 for a bad body (vLLM answers validation errors 400, not FastAPI's 422), 404 for
an unknown route or model, 405, 408 for a body that never arrives, 413, 503 when no live path or engine is
left. Each prompt x choice is one host request; the engine thread wakes this event loop through
loop.call_soon_threadsafe, so a stream holds no thread. A client that goes away (a closed stream or an
unanswered request) cancels its requests, which frees their KV on every stage.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from runtime.config import RuntimeConfig
from runtime.chat import ChatTemplate, load_chat_template
from runtime.hfconfig import read_checkpoint_config, stop_token_ids
from runtime.host import Host, Request, RequestFailed
from runtime.metrics import Metrics
from runtime.openai_api import ChatCompletionRequest, CompletionRequest
from runtime.sampling import SamplingParams

REQUEST_TIMEOUT_S = 600.0     # longest wait for a request's next token
BODY_TIMEOUT_S = 30.0         # a request body must arrive within this (a Content-Length larger than the body)
MAX_BODY_BYTES = 4 * 2**20
DRAIN_BYTES = 64 * 2**20      # a body past the cap is read (and dropped) up to this, so the 413 reaches a
                              # client still sending (closing on it makes the kernel reset the connection)
KEEP_ALIVE_S = 5              # idle keep-alive connections close after this
BACKLOG = 2048                # listen backlog: bursts of connections wait in the kernel, not reset
DISCONNECT_POLL_S = 0.5       # how often a non-streamed request checks whether its client left
ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 408: "RequestTimeout",
               413: "RequestEntityTooLarge", 500: "InternalServerError", 503: "ServiceUnavailableError"}


def load_tokenizer(checkpoint: str | Path | None):
    """The checkpoint's tokenizer.json through the `tokenizers` package, or None."""
    if checkpoint is None or not (Path(checkpoint) / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(checkpoint) / "tokenizer.json"))


class ClientGone(Exception):
    """The client of a plain (non-streamed) request closed its connection."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.close = status, message, param, close


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}


def _error_response(status: int, message: str, param: str | None = None, close: bool = False) -> JSONResponse:
    # a body we did not read to its end leaves the connection unusable: close it
    return JSONResponse(error_body(status, message, param), status_code=status,
                        headers={"Connection": "close"} if close else None)


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "model_type" and not first["loc"]:
        return "the body must be a JSON object", None
    where = ".".join(str(p) for p in first["loc"])
    param = str(first["loc"][0]) if first["loc"] else None
    more = f" (and {len(errors) - 1} more: the field takes several forms)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}", param


def _encodable(text: str, param: str) -> str:
    """`text` if it is valid Unicode; a 400 for a lone surrogate (JSON's "\\ud800" decodes to one, and the
    tokenizer refuses it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"the text holds {exc.object[exc.start:exc.end]!a}, which is not a character "
                            "(a lone UTF-16 surrogate)", param) from None
    return text


async def _receive(raw: HttpRequest, kept: bytearray | None = None) -> int:
    """Reads a request's body within BODY_TIMEOUT_S, keeping up to MAX_BODY_BYTES of it in `kept`: the bytes
    received, or -1 past DRAIN_BYTES (the rest left unread). asyncio.TimeoutError and ClientDisconnect
    propagate."""
    length = raw.headers.get("content-length")
    if length is not None and int(length) > DRAIN_BYTES:  # uvicorn has refused a malformed Content-Length
        return -1
    received = 0

    async def consume() -> bool:
        nonlocal received
        async for chunk in raw.stream():
            received += len(chunk)
            if received > DRAIN_BYTES:
                return False
            if kept is not None and received <= MAX_BODY_BYTES:
                kept.extend(chunk)
        return True

    return received if await asyncio.wait_for(consume(), BODY_TIMEOUT_S) else -1


async def drain_body(raw: HttpRequest) -> bool:
    """Reads and drops a request's body (up to DRAIN_BYTES, within BODY_TIMEOUT_S); whether it all came.
    Closing a connection with body bytes unread, or still arriving, resets it and can erase the answer
    before the client reads it (RFC 9112, section 9.6)."""
    try:
        return await _receive(raw) >= 0
    except (asyncio.TimeoutError, ClientDisconnect, RuntimeError):  # RuntimeError: the body was already read
        return False


async def read_body(raw: HttpRequest, model: type):
    """The body as `model`: 413 past MAX_BODY_BYTES, 408 when it does not arrive in time, 400 otherwise bad."""
    too_large = f"the body is larger than {MAX_BODY_BYTES} bytes"
    body = bytearray()
    try:
        received = await _receive(raw, body)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s", close=True) from None
    except ClientDisconnect:   # nobody is left to answer; no 500 and no traceback in the log
        raise ApiError(400, "the client closed the connection before its body arrived", close=True) from None
    if received < 0:   # past what is worth reading to answer: the rest unread, so the connection closes
        raise ApiError(413, too_large, close=True)
    if received > MAX_BODY_BYTES:
        raise ApiError(413, too_large)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
        raise ApiError(400, f"the body is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, *_validation_message(exc)) from None


class Detokenizer:
    """Text of one choice as its tokens arrive. Each token decodes a short window (the tokens since the
    last complete piece, with the piece before as context for tokenizers that read neighbours), not the
    whole answer; text whose last character is incomplete (U+FFFD: a multi-byte character split across
    tokens) waits for the next token. What could begin a stop string is held back; a stop string ends the
    choice and is excluded from the text, as vLLM does by default."""

    def __init__(self, tokenizer, stops: list[str], stop_ids: frozenset[int] = frozenset()) -> None:
        self.tokenizer, self.stops, self.stop_ids = tokenizer, stops, stop_ids
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.tokens: list[int] = []
        self.text = ""            # complete text so far
        self.sent = 0             # characters of it already streamed
        self.prefix_at = self.read_at = 0
        self.stopped = False

    def _window(self, complete_only: bool) -> None:
        prefix = self.tokenizer.decode(self.tokens[self.prefix_at:self.read_at])
        window = self.tokenizer.decode(self.tokens[self.prefix_at:])
        if len(window) > len(prefix) and not (complete_only and window.endswith("\ufffd")):
            self.text += window[len(prefix):]
            self.prefix_at, self.read_at = self.read_at, len(self.tokens)

    def push(self, token: int) -> None:
        if self.tokenizer is not None and token in self.stop_ids:
            # the request ends here: what the tokens before it hold is the answer; a stop id's text is not
            if self.read_at < len(self.tokens):
                self._window(complete_only=False)
            self.tokens.append(token)
            self.stopped = True
            return
        self.tokens.append(token)
        if self.tokenizer is None:
            return
        before = len(self.text)
        self._window(complete_only=True)
        for stop in self.stops:
            at = self.text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                self.text, self.stopped = self.text[:at], True

    def delta(self, final: bool) -> str:
        if final and not self.stopped and self.tokenizer is not None and self.read_at < len(self.tokens):
            self._window(complete_only=False)  # the answer ended inside a character: as decoded
        end = len(self.text)
        if not final and not self.stopped:
            end = max(self.sent, end - self.hold)
        piece, self.sent = self.text[self.sent:end], max(self.sent, end)
        return piece


class Choice:
    def __init__(self, index: int, prompt_index: int, request: Request, detok: Detokenizer, prompt_len: int,
                 prefix: str) -> None:
        self.index, self.prompt_index, self.request, self.detok = index, prompt_index, request, detok
        self.prompt_len, self.prefix = prompt_len, prefix
        self.finish_reason: str | None = None
        self.error: RequestFailed | None = None
        self.new_tokens: list[int] = []

    def drain(self, host: Host) -> bool:
        """Take the events that arrived; True when something happened."""
        moved = False
        while self.finish_reason is None and self.error is None:
            try:
                kind, value = self.request.events.get_nowait()
            except queue.Empty:
                return moved
            moved = True
            if kind == "token":
                self.detok.push(value)
                self.new_tokens.append(value)
                if self.detok.stopped:
                    self.finish_reason = "stop"
                    host.cancel(self.request, "stop")
            elif kind == "done":
                self.finish_reason = value
            else:
                self.error = RequestFailed(value, unavailable=self.request.unavailable)
        return moved

    @property
    def ended(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def take_tokens(self) -> list[int]:
        tokens, self.new_tokens = self.new_tokens, []
        return tokens


class Api:
    def __init__(self, host: Host, model_name: str, tokenizer=None, chat_template: ChatTemplate | None = None) -> None:
        self.host, self.model_name, self.tokenizer, self.chat_template = host, model_name, tokenizer, chat_template
        self.metrics = Metrics(host, model_name)
        self.created = int(time.time())

    # ---- shared by both endpoints ----------------------------------------------------------------

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise ApiError(404, f"The model `{name}` does not exist.", "model")

    async def _tokenize(self, texts: list[str], param: str, special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, encoded off the event loop: `encode_batch` lets go of the GIL while it
        works (`encode` does not), so a megabyte prompt (seconds to tokenize) does not stall every other
        request's stream meanwhile (a 4.4 MB prompt, a trained byte-level BPE, in a thread: the event
        loop's longest gap 2.5 s with `encode`, 0.15 s with `encode_batch`, tokenizers 0.23)."""
        if self.tokenizer is None:
            raise ApiError(400, "this checkpoint has no tokenizer.json: send the prompt as token ids", param)
        texts = [_encodable(text, param) for text in texts]
        encoded = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.tokenizer.encode_batch(texts, add_special_tokens=special_tokens))
        return [e.ids for e in encoded]

    async def _ids(self, prompts: list[str | list[int]]) -> list[list[int]]:
        """The batch's prompts as token ids (texts tokenized, id lists as given)."""
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(await self._tokenize(texts, "prompt") if texts else [])
        return [next(encoded) if isinstance(p, str) else list(p) for p in prompts]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""

    def _submit(self, body, prompts: list[list[int]], max_tokens: int | None, default_max: int | None,
                loop: asyncio.AbstractEventLoop, wake: asyncio.Event, echo: bool, logprobs: int | None) -> list[Choice]:
        base_seed = body.seed if body.seed is not None else time.time_ns() % 2**31
        choices: list[Choice] = []
        try:
            for p, ids in enumerate(prompts):
                room = self.host.config.limits.max_seq_len - len(ids)
                if room < 1:
                    raise ApiError(400, f"the prompt is {len(ids)} tokens: no room for an answer within "
                                        f"max_model_len {self.host.config.limits.max_seq_len}",
                                   "messages" if default_max is None else "prompt")
                limit = max_tokens or (default_max if default_max is not None else room)
                for i in range(body.n):
                    sampling = SamplingParams(body.temperature, body.top_p, base_seed + i)
                    request = self.host.submit(ids, limit, sampling, ignore_eos=body.ignore_eos,
                                               stop_ids=tuple(body.stop_token_ids or ()), logprobs=logprobs)
                    request.on_event = lambda: loop.call_soon_threadsafe(wake.set)
                    detok = Detokenizer(self.tokenizer, body.stop_strings(), request.stop_ids)
                    choices.append(Choice(p * body.n + i, p, request, detok, len(ids), self._decode(ids) if echo else ""))
        except (ValueError, RequestFailed, ApiError) as exc:
            for choice in choices:
                self.host.cancel(choice.request)
            if isinstance(exc, ApiError):
                raise
            if isinstance(exc, RequestFailed):
                raise ApiError(503 if exc.unavailable else 500, str(exc)) from None
            raise ApiError(400, str(exc), "prompt") from None
        return choices

    async def _events(self, choices: list[Choice], wake: asyncio.Event, raw: HttpRequest | None):
        """Yield each time some choice moved, until all ended; cancel what is left when the client leaves
        (raw is given for non-streamed answers, streamed ones are cancelled by their generator's close)."""
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        checked = time.monotonic()
        while True:
            wake.clear()
            if any([c.drain(self.host) for c in choices]):
                deadline = time.monotonic() + REQUEST_TIMEOUT_S
                yield
            if all(c.ended for c in choices):
                return
            try:
                await asyncio.wait_for(wake.wait(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            if raw is not None and now - checked >= DISCONNECT_POLL_S:
                checked = now
                if await raw.is_disconnected():
                    raise ClientGone
            if now > deadline:
                for c in choices:
                    if not c.ended:
                        c.error = RequestFailed(f"no token for {REQUEST_TIMEOUT_S:g} s")
                        self.host.cancel(c.request)

    def _cancel_all(self, choices: list[Choice]) -> None:
        for c in choices:
            if not c.request.done.is_set():
                self.host.cancel(c.request)

    @staticmethod
    def _usage(choices: list[Choice]) -> dict:
        prompt = sum({c.prompt_index: c.prompt_len for c in choices}.values())  # once per prompt, not per choice
        completion = sum(len(c.detok.tokens) for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    def _raise_failure(choices: list[Choice]) -> None:
        failed = next((c.error for c in choices if c.error is not None), None)
        if failed is not None:
            raise ApiError(503 if failed.unavailable else 500, str(failed))

    def _logprobs(self, c: Choice, start: int, end: int, chat: bool) -> dict | None:
        """OpenAI's logprobs object for tokens [start, end) of a choice (None when not asked for)."""
        if c.request.logprobs is None:
            return None
        text = self._decode
        rows = list(zip(c.detok.tokens[start:end], c.request.token_logprobs[start:end]))
        if chat:
            def entry(token: int, value: float) -> dict:
                piece = text([token])
                return {"token": piece, "logprob": value, "bytes": list(piece.encode())}
            return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in top]}
                                for t, (lp, top) in rows]}
        offsets, at = [], len(c.prefix) + len(text(c.detok.tokens[:start]))
        for t, _ in rows:
            offsets.append(at)
            at += len(text([t]))
        return {"tokens": [text([t]) for t, _ in rows], "token_logprobs": [lp for _, (lp, _) in rows],
                "top_logprobs": [{text([t]): lp, **{text([i]): v for i, v in top}} for t, (lp, top) in rows],
                "text_offset": offsets}

    async def _run(self, raw: HttpRequest, body, prompts: list[list[int]], max_tokens: int | None,
                   default_max: int | None, chat: bool, echo: bool = False, logprobs: int | None = None):
        loop, wake = asyncio.get_running_loop(), asyncio.Event()
        choices = self._submit(body, prompts, max_tokens, default_max, loop, wake, echo, logprobs)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._stream(choices, wake, rid, created, chat, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            async for _ in self._events(choices, wake, raw):
                pass
        except ClientGone:  # nobody to answer: free the KV now rather than generate to max_tokens
            self._cancel_all(choices)
            return Response(status_code=499)
        except BaseException:
            self._cancel_all(choices)
            raise
        self._raise_failure(choices)
        out = []
        for c in sorted(choices, key=lambda c: c.index):
            text = c.prefix + c.detok.delta(final=True)
            logprobs = self._logprobs(c, 0, len(c.detok.tokens), chat)
            if chat:
                out.append({"index": c.index, "message": {"role": "assistant", "content": text},
                            "logprobs": logprobs, "finish_reason": c.finish_reason, "token_ids": c.detok.tokens})
            else:
                out.append({"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason,
                            "token_ids": c.detok.tokens})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": self.model_name, "choices": out, "usage": self._usage(choices)}

    async def _stream(self, choices: list[Choice], wake: asyncio.Event, rid: str, created: int, chat: bool,
                      include_usage: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choice_list: list[dict], **extra) -> bytes:
            payload = {"id": rid, "object": obj, "created": created, "model": self.model_name,
                       "choices": choice_list, **extra}
            return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

        sent = {c.index: 0 for c in choices}   # tokens of each choice streamed so far

        def piece(c: Choice, text: str, tokens: list[int], finish: str | None, first: bool = False) -> dict:
            logprobs = self._logprobs(c, sent[c.index], sent[c.index] + len(tokens), chat) if tokens else None
            sent[c.index] += len(tokens)
            if chat:
                delta = {"role": "assistant", "content": text} if first else ({"content": text} if text or tokens else {})
                return {"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish,
                        "token_ids": tokens}
            return {"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": finish, "token_ids": tokens}

        reported: set[int] = set()
        try:
            if chat:
                yield event([piece(c, "", [], None, first=True) for c in choices])
            elif any(c.prefix for c in choices):
                yield event([piece(c, c.prefix, [], None) for c in choices])
            async for _ in self._events(choices, wake, None):
                parts = []
                for c in choices:
                    if c.index in reported:
                        continue
                    tokens = c.take_tokens()
                    if c.error is not None:
                        continue
                    text = c.detok.delta(final=c.ended)
                    if text or tokens or c.ended:
                        parts.append(piece(c, text, tokens, c.finish_reason))
                    if c.ended:
                        reported.add(c.index)
                if parts:
                    yield event(parts)
                failed = next((c.error for c in choices if c.error is not None), None)
                if failed is not None:
                    self._cancel_all(choices)
                    status = 503 if failed.unavailable else 500
                    yield b"data: " + json.dumps(error_body(status, str(failed))).encode() + b"\n\n"
                    break
            else:
                if include_usage:
                    yield event([], usage=self._usage(choices))
            yield b"data: [DONE]\n\n"
        finally:  # the client went away (the generator is closed) or the stream ended: free what runs
            self._cancel_all(choices)

    # ---- the routes -----------------------------------------------------------------------------

    async def completions(self, raw: HttpRequest):
        body: CompletionRequest = await read_body(raw, CompletionRequest)
        self._check_model(body.model)
        prompts = await self._ids(body.prompts())
        return await self._run(raw, body, prompts, body.max_tokens, 16, chat=False, echo=body.echo,
                               logprobs=body.logprobs)

    async def chat_completions(self, raw: HttpRequest):
        body: ChatCompletionRequest = await read_body(raw, ChatCompletionRequest)
        self._check_model(body.model)
        if self.chat_template is None or self.tokenizer is None:
            raise ApiError(400, "this checkpoint has no chat template (tokenizer_config.json's chat_template) "
                                "or no tokenizer.json: use /v1/completions", "messages")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        try:
            text = self.chat_template.render(messages, body.add_generation_prompt)
        except ValueError as exc:
            raise ApiError(400, str(exc), "messages") from None
        # the template writes the special tokens itself (as transformers' apply_chat_template(tokenize=True))
        ids = (await self._tokenize([text], "messages", special_tokens=False))[0]
        return await self._run(raw, body, [ids], body.max_completion_tokens or body.max_tokens, None, chat=True,
                               logprobs=(body.top_logprobs or 0) if body.logprobs else None)

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "layer-planner",
                "root": self.model_name, "max_model_len": self.host.config.limits.max_seq_len}


def make_app(host: Host, model_name: str, tokenizer=None, chat_template: ChatTemplate | None = None) -> FastAPI:
    api = Api(host, model_name, tokenizer, chat_template)
    app = FastAPI(title="layer-planner host", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api = api

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return _error_response(exc.status, exc.message, exc.param, close=exc.close)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(raw: HttpRequest, exc: StarletteHTTPException):
        # routing refuses a request on its headers alone: its body is read and dropped before the answer,
        # so the connection stays usable and no unread byte makes the kernel reset it under the answer
        message = f"no route {raw.method} {raw.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return _error_response(exc.status_code, message, close=not await drain_body(raw))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_, exc: RequestValidationError):
        return _error_response(400, str(exc.errors()[0].get("msg", "bad request")))

    @app.exception_handler(Exception)
    async def _internal(_, exc: Exception):
        return _error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.post("/v1/completions")
    async def completions(raw: HttpRequest):
        return await api.completions(raw)

    @app.post("/v1/chat/completions")
    async def chat_completions(raw: HttpRequest):
        return await api.chat_completions(raw)

    @app.get("/v1/models")
    async def models():
        return api.models()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        api._check_model(model_id)
        return api.model_card()

    @app.get("/health")
    async def health():
        state = host.health()
        return JSONResponse(state, status_code=200 if state["status"] in ("ok", "degraded") else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(api.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


class HttpServer:
    """uvicorn serving `app` on its own thread: start() returns once it listens; stop() ends it."""

    def __init__(self, app: FastAPI, address: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((address, port))
        except OSError as exc:   # the message names what could not be bound (the bare error does not)
            self.socket.close()
            raise OSError(exc.errno, f"the HTTP API cannot listen on {address}:{port}: {exc.strerror} (use "
                                     "--bind and --http-port)") from None
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, backlog=BACKLOG, timeout_keep_alive=KEEP_ALIVE_S,
                                                    http="h11", lifespan="off", log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="http", daemon=True)

    def start(self, timeout: float = 10.0) -> "HttpServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def serve(config: RuntimeConfig, *, checkpoint: str | None, address: str, port: int, routing: str | None = None) -> None:
    """Run the host and its HTTP API until SIGTERM or Ctrl-C."""
    stop_ids = stop_token_ids(read_checkpoint_config(checkpoint)) if checkpoint else ()
    host = Host(config, stop_ids=stop_ids, routing=routing).start()
    app = make_app(host, config.model.id, load_tokenizer(checkpoint), load_chat_template(checkpoint))
    server = HttpServer(app, address, port).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"host: {len(config.workers)} workers, {config.routing if routing is None else routing} routing; "
          f"HTTP on http://{address}:{server.port} (/v1/completions, /v1/chat/completions, /v1/models, "
          f"/health, /metrics)", flush=True)
    stop.wait()
    server.stop()
    host.close()
