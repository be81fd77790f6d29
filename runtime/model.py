"""Qwen3 / Qwen2 / LLaMA decoder layers in torch, and a pipeline stage made of a range of them.

A batch is flat: the tokens of every request in it, one after another, [T, hidden]. Linear layers see
the whole batch at once (that is what batching buys); attention is per request, against the request's
slot in the KV pool: decode tokens (one per request) all in one masked attention call, each prompt chunk
in its own causal call. Formulas follow the Hugging Face implementations op for op, so float32 results
match transformers' to the last bits that matter.

    Qwen3: per-head RMSNorm on q and k before RoPE, no qkv bias     Qwen2: qkv bias      LLaMA: neither

Tensor parallelism (Megatron-LM's column/row split): a layer built with Shard(rank, size) holds its
rank's query and KV heads and intermediate columns (planner.export.runtime.Shard); attention and MLP then
return partial sums, and `reduce` (an all-reduce over the group) adds them: two all-reduces per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from planner.catalog import ModelSpec
from planner.export.runtime import Shard
from runtime.kvcache import KVPool

Reduce = Callable[[torch.Tensor], torch.Tensor]


def no_reduce(x: torch.Tensor) -> torch.Tensor:
    return x

_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


@dataclass(frozen=True)
class BatchPlan:
    """Where each token of a flat batch sits: decode tokens first (one per request), then prompt chunks."""

    positions: torch.Tensor          # [T] position of each token in its request
    token_slots: torch.Tensor        # [T] KV slot of each token's request
    decode_count: int                # D: tokens 0..D-1 are decode tokens
    decode_length: int               # longest decode request's length, this token included (0 without decode)
    prefill: tuple[tuple[int, int, int, int], ...]  # (slot, start position, tokens, offset in the batch)
    last_index: torch.Tensor         # [B] each request's last token in the batch (the one the LM head reads)

    @classmethod
    def build(cls, items: list[tuple[int, int, int]], device: str | torch.device) -> "BatchPlan":
        """items: (slot, start position, tokens) per request, decode items (tokens == 1 at position > 0) first."""
        positions, slots, prefill, last = [], [], [], []
        decode_count, offset = 0, 0
        for slot, start, count in items:
            if count == 1 and start > 0 and offset == decode_count:
                decode_count += 1
            else:
                prefill.append((slot, start, count, offset))
            positions += range(start, start + count)
            slots += [slot] * count
            offset += count
            last.append(offset - 1)
        as_long = dict(dtype=torch.long, device=device)
        decode_length = max(positions[:decode_count], default=-1) + 1   # known here: no device sync later
        return cls(torch.tensor(positions, **as_long), torch.tensor(slots, **as_long), decode_count, decode_length,
                   tuple(prefill), torch.tensor(last, **as_long))


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Embedding(nn.Module):
    """Token id -> row of the embedding matrix (nn.Embedding without its random init, which is slow on
    the meta device the stage is built on before its weights are loaded)."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class Rotary:
    """RoPE as transformers computes it: inverse frequencies in float32, halves rotated (no permutation)."""

    def __init__(self, head_dim: int, theta: float, device: str | torch.device) -> None:
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu")
                                              / head_dim)).to(device)

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]      # [T, head_dim / 2]
        angles = torch.cat((freqs, freqs), dim=-1)                       # [T, head_dim]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, head_dim] rotated by each token's angles (cos, sin [T, head_dim])."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention with grouped KV heads: q [..., H, n, d], k/v [..., Hkv, L, d]."""
    if _SDPA_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
    group = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


class Attention(nn.Module):
    def __init__(self, model: ModelSpec, shard: Shard = Shard()) -> None:
        super().__init__()
        self.heads, self.kv_heads = len(shard.heads(model)), len(shard.kv_heads(model))
        self.head_dim = model.head_dim
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.q_proj = nn.Linear(model.hidden_size, q_width, bias=model.qkv_bias)
        self.k_proj = nn.Linear(model.hidden_size, kv_width, bias=model.qkv_bias)
        self.v_proj = nn.Linear(model.hidden_size, kv_width, bias=model.qkv_bias)
        self.o_proj = nn.Linear(q_width, model.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, model.rms_norm_eps) if model.family == "qwen3" else None
        self.k_norm = RMSNorm(self.head_dim, model.rms_norm_eps) if model.family == "qwen3" else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: BatchPlan,
                keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        q = self.q_proj(x).view(tokens, self.heads, self.head_dim)        # [T, H, d]
        k = self.k_proj(x).view(tokens, self.kv_heads, self.head_dim)     # [T, Hkv, d]
        v = self.v_proj(x).view(tokens, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        keys[plan.token_slots, :, plan.positions] = k                     # pool [slots, Hkv, max_len, d]
        values[plan.token_slots, :, plan.positions] = v
        out = torch.empty_like(q)
        if plan.decode_count:
            out[:plan.decode_count] = self._decode(q[:plan.decode_count], plan, keys, values)
        for slot, start, count, offset in plan.prefill:   # 4-D [1, heads, n, d]: SDPA's fused kernels
            qs = q[offset:offset + count].transpose(0, 1)[None]           # [1, H, n, d]
            ks, vs = keys[slot:slot + 1, :, :start + count], values[slot:slot + 1, :, :start + count]
            mask = None if start == 0 else (torch.arange(start + count, device=x.device)[None, :]
                                             <= torch.arange(start, start + count, device=x.device)[:, None])
            out[offset:offset + count] = attend(qs, ks, vs, mask, causal=start == 0)[0].transpose(0, 1)
        return self.o_proj(out.reshape(tokens, self.heads * self.head_dim))

    @staticmethod
    def _decode(q: torch.Tensor, plan: BatchPlan, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """One new token per request, all requests at once: gather their slots up to the longest.
        (Measured on an H100: this SDPA call beats grouping the query heads by hand; docs/runtime.md.)"""
        count = plan.decode_count
        slots, positions = plan.token_slots[:count], plan.positions[:count]
        length = plan.decode_length
        ks, vs = keys[slots, :, :length], values[slots, :, :length]            # [D, Hkv, L, d]
        mask = torch.arange(length, device=q.device)[None, :] <= positions[:, None]  # [D, L]
        return attend(q[:, :, None, :], ks, vs, mask[:, None, None, :])[:, :, 0, :]  # [D, H, d]


class MLP(nn.Module):
    def __init__(self, model: ModelSpec, shard: Shard = Shard()) -> None:
        super().__init__()
        columns = len(shard.columns(model))
        self.gate_proj = nn.Linear(model.hidden_size, columns, bias=False)
        self.up_proj = nn.Linear(model.hidden_size, columns, bias=False)
        self.down_proj = nn.Linear(columns, model.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))      # SwiGLU


class DecoderLayer(nn.Module):
    def __init__(self, model: ModelSpec, shard: Shard = Shard(), reduce: Reduce = no_reduce) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(model.hidden_size, model.rms_norm_eps)
        self.self_attn = Attention(model, shard)
        self.post_attention_layernorm = RMSNorm(model.hidden_size, model.rms_norm_eps)
        self.mlp = MLP(model, shard)
        self.reduce = reduce   # sums the ranks' partial outputs (identity on one GPU)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: BatchPlan,
                keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        x = x + self.reduce(self.self_attn(self.input_layernorm(x), cos, sin, plan, keys, values))
        return x + self.reduce(self.mlp(self.post_attention_layernorm(x)))


class Stage(nn.Module):
    """Layers [start, end) of a model; the first stage embeds token ids, the last returns logits.

    forward(inputs, plan, kv): inputs are token ids [T] (first stage) or hidden states [T, hidden];
    returns hidden states [T, hidden], or float32 logits [B, vocab] at each request's last token.
    A tensor-parallel rank holds its shard of the layers; `ends=False` leaves out the embeddings and the
    head (a group's face alone holds them: the other ranks take and give hidden states).
    """

    def __init__(self, model: ModelSpec, start: int, end: int, device: str | torch.device = "cpu", *,
                 shard: Shard = Shard(), ends: bool = True, reduce: Reduce = no_reduce) -> None:
        super().__init__()
        self.model, self.start, self.end, self.shard = model, start, end, shard
        self.first, self.last = ends and start == 0, ends and end == model.layers
        self.layers = nn.ModuleList(DecoderLayer(model, shard, reduce) for _ in range(start, end))
        if self.first or (self.last and model.tie_word_embeddings):
            self.embed_tokens = Embedding(model.vocab_size, model.hidden_size)
        if self.last:
            self.norm = RMSNorm(model.hidden_size, model.rms_norm_eps)
            if not model.tie_word_embeddings:
                self.lm_head = nn.Linear(model.hidden_size, model.vocab_size, bias=False)
        self.rotary = Rotary(model.head_dim, model.rope_theta, device)

    @classmethod
    def from_tensors(cls, model: ModelSpec, start: int, end: int, tensors: dict[str, torch.Tensor], *,
                     shard: Shard = Shard(), ends: bool = True, reduce: Reduce = no_reduce) -> "Stage":
        """A stage holding exactly `tensors` (runtime.checkpoint.load_stage), on their device and dtype."""
        device = next(iter(tensors.values())).device
        with torch.device("meta"):
            stage = cls(model, start, end, shard=shard, ends=ends, reduce=reduce)
        stage.load_state_dict(tensors, strict=True, assign=True)
        stage.rotary = Rotary(model.head_dim, model.rope_theta, device)
        return stage.eval()

    def new_kv(self, slots: int, max_seq_len: int) -> KVPool:
        weight = next(self.parameters())
        return KVPool(len(self.layers), slots, max_seq_len, len(self.shard.kv_heads(self.model)),
                      self.model.head_dim, dtype=weight.dtype, device=weight.device)

    @torch.inference_mode()
    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Hidden states [T, hidden] of the inputs: token ids embedded on the first stage, else as given."""
        return self.embed_tokens(inputs) if self.first and not inputs.is_floating_point() else inputs

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor, plan: BatchPlan, kv: KVPool) -> torch.Tensor:
        x = self.embed(inputs)                                                   # [T, hidden]
        cos, sin = self.rotary(plan.positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, plan, kv.keys[i], kv.values[i])
        if not self.last:
            return x
        x = self.norm(x[plan.last_index])                                        # [B, hidden]
        head = self.embed_tokens.weight if self.model.tie_word_embeddings else self.lm_head.weight
        return F.linear(x, head).float()                                         # [B, vocab]
