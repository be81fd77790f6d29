"""Hugging Face-style checkpoint directories: read one stage's tensors, write a random model.

A directory holds config.json and one or more *.safetensors files, with or without
model.safetensors.index.json (tensor name -> file). A stage reads only the tensors it holds through
safetensors' safe_open, which reads a file's header and then each asked-for tensor; the other layers'
bytes are never read (a file that holds none of them is not even opened when the index names the files).
A tensor-parallel rank reads only its shard of each split tensor (safe_open's get_slice).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from planner.catalog import ModelSpec
from planner.errors import InputError
from runtime.config import Shard
from runtime.hfconfig import hf_config

INDEX_FILE = "model.safetensors.index.json"
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
LINEAR_GAIN = 2.0


def layer_tensor_names(model: ModelSpec, layer: int) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape of one decoder layer's tensors."""
    h, q, kv = model.hidden_size, model.attention_heads * model.head_dim, model.kv_heads * model.head_dim
    p = f"model.layers.{layer}."
    shapes = {
        p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
        p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
        p + "mlp.gate_proj.weight": (model.intermediate_size, h), p + "mlp.up_proj.weight": (model.intermediate_size, h),
        p + "mlp.down_proj.weight": (h, model.intermediate_size),
    }
    if model.qkv_bias:
        shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.bias": (kv,)})
    if model.family == "qwen3":
        shapes.update({p + "self_attn.q_norm.weight": (model.head_dim,),
                       p + "self_attn.k_norm.weight": (model.head_dim,)})
    return shapes


def shard_slice(model: ModelSpec, name: str, shard: Shard) -> tuple[int, range] | None:
    """(dimension, index range) of a layer tensor that `shard` holds a slice of; None when it holds it whole.

    Column-parallel (split along the output, dimension 0 of the (out, in) weight and of the bias): q, k, v,
    gate, up. Row-parallel (split along the input, dimension 1): o, down. Norms are whole on every rank.
    """
    if shard.size == 1:
        return None
    d = model.head_dim
    heads, kv, columns = shard.heads(model), shard.kv_heads(model), shard.columns(model)
    kind = name.rsplit(".", 2)[-2]   # q_proj, o_proj, gate_proj, ... or a norm
    by_kind = {"q_proj": (0, range(heads.start * d, heads.stop * d)),
               "k_proj": (0, range(kv.start * d, kv.stop * d)), "v_proj": (0, range(kv.start * d, kv.stop * d)),
               "o_proj": (1, range(heads.start * d, heads.stop * d)),
               "gate_proj": (0, columns), "up_proj": (0, columns), "down_proj": (1, columns)}
    return by_kind.get(kind)


def stage_tensor_names(model: ModelSpec, start: int, end: int, ends: bool = True) -> dict[str, str]:
    """Checkpoint name -> the stage's own parameter name, for a stage holding layers [start, end).

    The first stage (start == 0) adds the embeddings, the last (end == layers) the final norm and the LM
    head (the embedding matrix when the model ties them); neither with ends=False (a group's ranks other
    than its face).
    """
    names: dict[str, str] = {}
    for layer in range(start, end):
        for name in layer_tensor_names(model, layer):
            names[name] = f"layers.{layer - start}." + name.removeprefix(f"model.layers.{layer}.")
    if not ends:
        return names
    if start == 0:
        names[EMBED] = "embed_tokens.weight"
    if end == model.layers:
        names[FINAL_NORM] = "norm.weight"
        if model.tie_word_embeddings:
            names.setdefault(EMBED, "embed_tokens.weight")  # the head reads the embedding matrix
        else:
            names[LM_HEAD] = "lm_head.weight"
    return names


def _locate(directory: Path, wanted: list[str]) -> dict[str, Path]:
    """Which file holds each wanted tensor: from the index when there is one, else from file headers."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return {name: directory / weight_map[name] for name in wanted if name in weight_map}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise InputError("no *.safetensors files", file=directory, fix="give a checkpoint directory with weights")
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:  # reads the header only
            for name in handle.keys():
                where.setdefault(name, file)
    return {name: where[name] for name in wanted if name in where}


def load_stage(directory: str | Path, model: ModelSpec, start: int, end: int, *, dtype: str = "fp32",
               device: str = "cpu", shard: Shard = Shard(), ends: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a stage holding layers [start, end), under the stage's parameter names: for a
    tensor-parallel rank, its shard of them (and the embeddings and head only with ends)."""
    directory = Path(directory)
    names = stage_tensor_names(model, start, end, ends)
    where = _locate(directory, list(names))
    missing = [n for n in names if n not in where]
    if missing:
        raise InputError(f"has no tensor {missing[0]} ({len(missing)} missing)", file=directory,
                         fix="give the checkpoint of the layout's model")
    by_file: dict[Path, list[str]] = {}
    for name, file in where.items():
        by_file.setdefault(file, []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for file, file_names in by_file.items():
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in file_names:
                part = shard_slice(model, name, shard) if ".layers." in name else None
                if part is None:
                    tensor = handle.get_tensor(name)
                else:  # only the shard's rows (dim 0) or columns (dim 1) are read
                    dim, span = part
                    sliced = handle.get_slice(name)
                    tensor = sliced[span.start:span.stop] if dim == 0 else sliced[:, span.start:span.stop]
                tensors[names[name]] = tensor.to(device=device, dtype=TORCH_DTYPES[dtype])
    return tensors


def random_tensors(model: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """Random float32 weights for tests and demos.

    Scaled so that greedy decoding does not fall into a one-token loop (it does with std 1/sqrt(in): the
    embedding then dominates the residual stream): every layer changes the next token, which makes token-
    for-token tests catch a wrong layer. Norm weights are 1 + noise and biases nonzero, so a runtime that
    forgets one is caught too.
    """
    gen = torch.Generator().manual_seed(seed)
    tensors = {EMBED: torch.randn(model.vocab_size, model.hidden_size, generator=gen)}
    for layer in range(model.layers):
        for name, shape in layer_tensor_names(model, layer).items():
            if name.endswith("norm.weight"):
                tensors[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            elif name.endswith("bias"):
                tensors[name] = 0.1 * torch.randn(shape, generator=gen)
            else:  # (out, in): std GAIN/sqrt(in), so each layer moves the residual stream enough to matter
                tensors[name] = LINEAR_GAIN * torch.randn(shape, generator=gen) / shape[1] ** 0.5
    tensors[FINAL_NORM] = 1.0 + 0.1 * torch.randn(model.hidden_size, generator=gen)
    if not model.tie_word_embeddings:
        tensors[LM_HEAD] = torch.randn(model.vocab_size, model.hidden_size, generator=gen) / model.hidden_size ** 0.5
    return tensors


def write_checkpoint(directory: str | Path, model: ModelSpec, tensors: dict[str, torch.Tensor], *,
                     dtype: str = "fp32", shards: int = 1) -> list[Path]:
    """Write config.json and the tensors, in `shards` files (with an index when more than one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config(model, dtype), indent=2) + "\n")
    names = list(tensors)
    shards = max(1, min(shards, len(names)))
    files = ["model.safetensors"] if shards == 1 else \
        [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map: dict[str, str] = {}
    for i, file in enumerate(files):  # contiguous runs of tensors, so a shard holds whole layers or so
        part = names[i * len(names) // shards:(i + 1) * len(names) // shards]
        save_file({n: tensors[n].to(TORCH_DTYPES[dtype]).contiguous() for n in part}, str(directory / file),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    if shards > 1:
        total = sum(t.numel() * t.to(TORCH_DTYPES[dtype]).element_size() for t in tensors.values())
        (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total},
                                                        "weight_map": weight_map}, indent=2) + "\n")
    return [directory / f for f in files]


def make_checkpoint(directory: str | Path, model: ModelSpec, *, seed: int = 0, dtype: str = "fp32",
                    shards: int = 1) -> list[Path]:
    return write_checkpoint(directory, model, random_tensors(model, seed), dtype=dtype, shards=shards)
