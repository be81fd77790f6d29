"""config.json of a Hugging Face-style checkpoint <-> planner.catalog.ModelSpec (no torch here).

`head_dim` is read, never derived, when config.json has it (Qwen3-0.6B/4B/32B have head_dim * heads !=
hidden_size). Qwen2/Qwen2.5 checkpoints do not write it; transformers then uses hidden_size / heads, and
so do we, since that is what such a checkpoint means.
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.catalog import ModelSpec
from planner.errors import InputError

ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
TORCH_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def model_from_hf_config(config: dict, name: str, *, file: str | Path = "config.json") -> ModelSpec:
    family = config.get("model_type")
    if family not in ARCHITECTURES:
        raise InputError(f"model_type '{family}' is not one the runtime serves", file=file, field="model_type",
                         fix=f"use a checkpoint of {', '.join(ARCHITECTURES)}")
    try:
        heads = int(config["num_attention_heads"])
        rope = config.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
            raise InputError("scaled rotary embeddings are not supported", file=file, field="rope_parameters",
                             fix="use a checkpoint with the default RoPE")
        if config.get("use_sliding_window"):
            raise InputError("sliding-window attention is not supported", file=file, field="use_sliding_window",
                             fix="set use_sliding_window to false")
        return ModelSpec(
            id=name, family=family, layers=int(config["num_hidden_layers"]),
            hidden_size=int(config["hidden_size"]), intermediate_size=int(config["intermediate_size"]),
            attention_heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
            vocab_size=int(config["vocab_size"]), tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=int(config.get("max_position_embeddings", 32768)),
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)))
    except KeyError as exc:
        raise InputError(f"missing {exc.args[0]}", file=file, fix="write a complete transformers config.json") from None


def hf_config(model: ModelSpec, dtype: str) -> dict:
    """A config.json transformers loads as the same model (both the v4 and v5 spelling of RoPE)."""
    config = {
        "architectures": [ARCHITECTURES[model.family]], "model_type": model.family,
        "hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
        "num_hidden_layers": model.layers, "num_attention_heads": model.attention_heads,
        "num_key_value_heads": model.kv_heads, "head_dim": model.head_dim, "vocab_size": model.vocab_size,
        "tie_word_embeddings": model.tie_word_embeddings, "max_position_embeddings": model.max_position_embeddings,
        "rope_theta": model.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_theta},
        "rms_norm_eps": model.rms_norm_eps, "hidden_act": "silu", "attention_dropout": 0.0,
        "use_sliding_window": False, "torch_dtype": TORCH_DTYPE_NAMES[dtype], "dtype": TORCH_DTYPE_NAMES[dtype],
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "use_cache": True,
    }
    if model.family == "qwen3":
        config["attention_bias"] = False
    if model.family == "llama":
        config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    return config


def read_checkpoint_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise InputError("no config.json", file=directory, fix="give a Hugging Face-style checkpoint directory "
                                                                "(`planner make-checkpoint` writes one)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc}", file=path, fix="write a valid config.json") from None


def read_checkpoint_model(directory: str | Path) -> ModelSpec:
    directory = Path(directory)
    return model_from_hf_config(read_checkpoint_config(directory), directory.name, file=directory / "config.json")


def stop_token_ids(config: dict) -> tuple[int, ...]:
    """eos_token_id of config.json (an int, a list or null)."""
    eos = config.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def check_same_model(checkpoint: ModelSpec, layout: ModelSpec, *, file: str | Path) -> None:
    """The checkpoint must be the model the layout was planned for (its shapes, not its name)."""
    fields = ("family", "layers", "hidden_size", "intermediate_size", "attention_heads", "kv_heads", "head_dim",
              "vocab_size", "tie_word_embeddings")
    for name in fields:
        if getattr(checkpoint, name) != getattr(layout, name):
            raise InputError(f"checkpoint has {name} = {getattr(checkpoint, name)} but the layout's model "
                             f"{layout.id} has {getattr(layout, name)}", file=file, field=f"config.json {name}",
                             fix="give the checkpoint of the model the layout was planned for")
