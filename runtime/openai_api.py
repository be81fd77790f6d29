"""Request bodies of the OpenAI API the host serves, as pydantic models with strict types.

Strict as a vLLM user expects a server to be: a bool is not an int (`"prompt": [true]` is refused), a
string is not a number (`"max_tokens": "5"`), `stream` is a real bool, floats are finite (NaN and 1e400
refused), seeds fit the int64 range the OpenAI API documents. Unknown fields are ignored, as vLLM does.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

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

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return [s for s in stops if s]


PromptIds = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, PromptIds, Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_PROMPTS)],
                  Annotated[list[PromptIds], Field(min_length=1, max_length=MAX_PROMPTS)]]
    echo: StrictBool = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None

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
