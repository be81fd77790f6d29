"""The checkpoint's chat template (tokenizer_config.json's `chat_template`), rendered with jinja2 in the
environment transformers' `apply_chat_template` uses: a sandbox, trim_blocks and lstrip_blocks, loop
controls, `raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text, and the tokenizer's
special tokens (bos_token, eos_token, ...) as variables. transformers itself stays a test-only dependency.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from planner.errors import InputError

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _raise(message: str):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str]) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.template = env.from_string(source)
        self.special_tokens = special_tokens

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text; ValueError with the template's message when it refuses the conversation."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **self.special_tokens)
        except jinja2.TemplateError as exc:
            raise ValueError(f"the chat template refused the messages: {exc}") from None


def load_chat_template(checkpoint: str | Path | None) -> ChatTemplate | None:
    """The checkpoint's template (tokenizer_config.json, or a chat_template.jinja file beside it), or None."""
    if checkpoint is None:
        return None
    directory = Path(checkpoint)
    config_file = directory / "tokenizer_config.json"
    config = {}
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read it: {exc}", file=config_file, fix="give valid JSON") from None
    source = config.get("chat_template")
    if isinstance(source, list):  # several named templates: the default one
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if source is None and (directory / "chat_template.jinja").is_file():
        source = (directory / "chat_template.jinja").read_text()
    if not isinstance(source, str):
        return None
    tokens = {}
    for name in SPECIAL_TOKENS:
        value = config.get(name)
        if isinstance(value, dict):  # AddedToken written out
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    try:
        return ChatTemplate(source, tokens)
    except jinja2.TemplateSyntaxError as exc:
        raise InputError(f"chat_template does not parse: {exc}", file=config_file, field="chat_template",
                         fix="fix the template") from None
