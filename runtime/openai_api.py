"""Request bodies of the OpenAI API the host serves, as pydantic models with strict types.

Strict as a vLLM user expects a server to be: a bool is not an int (`"prompt": [true]` is refused), a
string is not a number (`"max_tokens": "5"`), `stream` is a real bool, floats are finite (NaN and 1e400
refused), seeds fit the int64 range the OpenAI API documents. Unknown fields are ignored, as vLLM does;
fields vLLM knows and this server does not implement (penalties, top_k, logit_bias, tools, guided
decoding, ...) are a 400 naming the field unless they hold the value that turns them off (NEUTRAL).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]   # accepts ints, never bools or NaN
TokenId = Annotated[StrictInt, Field(ge=0)]
Seed = Annotated[StrictInt, Field(ge=-2**63, le=2**63 - 1)]
MAX_PROMPTS = 256        # prompts of one batch request
MAX_N = 16               # choices per prompt
MAX_LOGPROBS = 20        # top log-probabilities per token (vLLM's default max_logprobs)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: StrictBool = False


# Fields of the OpenAI API (and vLLM's extensions) this server does not implement, with the values that
# mean "off": those are accepted, any other is a 400 naming the field rather than an answer that quietly
# ignores it (a penalty the user asked for and did not get).
NEUTRAL: dict[str, tuple] = {
    "frequency_penalty": (0,), "presence_penalty": (0,), "repetition_penalty": (1,), "top_k": (-1, 0),
    "min_p": (0,), "logit_bias": ({},), "best_of": (1,), "min_tokens": (0,), "suffix": ("",),
    "response_format": ({"type": "text"},), "tools": ([],), "tool_choice": ("none", "auto"),
    "parallel_tool_calls": (True, False), "guided_json": (), "guided_regex": (), "guided_choice": (),
    "guided_grammar": (), "structured_outputs": (),
}


class _Sampling(_Body):
    model: StrictStr | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[Finite, Field(ge=0, le=100)] = 1.0
    top_p: Annotated[Finite, Field(gt=0, le=1)] = 1.0
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    seed: Seed | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=16)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=64)] | None = None
    ignore_eos: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    frequency_penalty: Any = None
    presence_penalty: Any = None
    repetition_penalty: Any = None
    top_k: Any = None
    min_p: Any = None
    logit_bias: Any = None
    best_of: Any = None
    min_tokens: Any = None
    suffix: Any = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    structured_outputs: Any = None

    @field_validator(*NEUTRAL, mode="after")
    @classmethod
    def _unsupported(cls, value, info):
        neutral = NEUTRAL[info.field_name]
        if value is not None and not any(value is n or (value == n and not isinstance(value, bool)) for n in neutral):
            offered = f" (only {' or '.join(repr(n) for n in neutral)})" if neutral else ""
            raise ValueError(f"is not supported by this server{offered}")
        return value

    @field_validator("stream_options", mode="after")
    @classmethod
    def _only_when_streaming(cls, value, info):
        if value is not None and not info.data.get("stream"):   # vLLM's rule: a sign the client meant to stream
            raise ValueError("can only be given with \"stream\": true")
        return value

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return [s for s in stops if s]


PromptIds = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, PromptIds, Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_PROMPTS)],
                  Annotated[list[PromptIds], Field(min_length=1, max_length=MAX_PROMPTS)]]
    echo: StrictBool = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None

    @field_validator("logprobs", mode="after")
    @classmethod
    def _no_prompt_logprobs(cls, value, info):
        # vLLM answers echo + logprobs with the prompt's log-probabilities too; the pipeline's last stage
        # computes logits for the last prompt position only, so a reply would silently lack them
        if value is not None and info.data.get("echo"):
            raise ValueError("with \"echo\": true is not supported by this server (no prompt log-probabilities)")
        return value

    def prompts(self) -> list[str | list[int]]:
        """The batch: one entry per prompt (text or ids)."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class TextPart(_Body):
    """A part of a message's content; text is the one kind this server takes (no images or audio)."""
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    # a string, or a list of text parts (what the openai client sends for content=[{"type": "text", ...}]),
    # joined with newlines as vLLM joins them
    content: StrictStr | Annotated[list[TextPart], Field(min_length=1)] | None = None
    name: StrictStr | None = None

    @field_validator("content", mode="after")
    @classmethod
    def _joined(cls, content):
        return "\n".join(part.text for part in content) if isinstance(content, list) else content


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    add_generation_prompt: StrictBool = True
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None
