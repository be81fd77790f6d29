"""Qwen3 / Qwen2 / LLaMA decoder layers in torch, and a pipeline stage made of a range of them.

A batch is flat: the tokens of every request in it, one after another, [T, hidden]. Linear layers see
the whole batch at once (that is what batching buys); attention is per request, against the request's
slot in the KV pool: decode tokens (one per request) all in one masked attention call, each prompt chunk
in its own causal call. Formulas follow the Hugging Face implementations op for op, so float32 results
match transformers' to the last bits that matter.

    Qwen3: per-head RMSNorm on q and k before RoPE, no qkv bias     Qwen2: qkv bias      LLaMA: neither

Tensor parallelism (Megatron-LM's column/row split): a layer built with Shard(rank, size) holds its
rank's query and KV heads and intermediate columns (runtime.config.Shard); attention and MLP then
return partial sums, and `reduce` (an all-reduce over the group) adds them: two all-reduces per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from planner.catalog import ModelSpec
from runtime.config import Shard
from runtime.kvcache import KVFull, KVPool, pool_pages

Reduce = Callable[[torch.Tensor], torch.Tensor]


def no_reduce(x: torch.Tensor) -> torch.Tensor:
    return x

_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


@dataclass(frozen=True)
class BatchPlan:
    """Where each token of a flat batch sits: decode tokens first (one per request), then prompt chunks.

    A request's KV lives in pages of the pool (runtime.kvcache): token p of a request at pages P is row
    p % page_tokens of page P[p // page_tokens].
    """

    positions: torch.Tensor          # [T] position of each token in its request
    write_page: torch.Tensor         # [T] page each token's key and value go to
    write_row: torch.Tensor          # [T] row of that page
    decode_count: int                # D: tokens 0..D-1 are decode tokens
    decode_length: int               # longest decode request's length, this token included (0 without decode)
    decode_lengths: torch.Tensor     # [D] int32: tokens each decode request attends to (0: a padded row)
    decode_pages: torch.Tensor       # [D, pages] int32: each decode request's pages, padded with the scratch page
    prefill: tuple[tuple[torch.Tensor, int, int, int], ...]  # (pages, start position, tokens, offset in the batch)
    last_index: torch.Tensor         # [B] each request's last token in the batch (the one the LM head reads)
    # a captured mixed step (runtime.graphs.MixedGraphs): decode_lengths/decode_pages cover every token row
    # and request (0: not a decode row), and the prompt tokens are these tiles [N, 4] for paged_prefill
    prompt_tiles: torch.Tensor | None = None

    @classmethod
    def build(cls, items: list[tuple[list[int], int, int]], page_tokens: int,
              device: str | torch.device) -> "BatchPlan":
        """items: (pages, start position, tokens) per request, decode items (tokens == 1 at position > 0) first."""
        positions, pages_of_token, prefill, last = [], [], [], []
        decode, offset = [], 0
        as_long = dict(dtype=torch.long, device=device)
        for pages, start, count in items:
            if count == 1 and start > 0 and offset == len(decode):
                decode.append((pages, start + 1))
            else:
                prefill.append((torch.tensor(pages[:-(-(start + count) // page_tokens)], **as_long), start, count, offset))
            span = range(start, start + count)
            positions += span
            pages_of_token += [pages[p // page_tokens] for p in span]
            offset += count
            last.append(offset - 1)
        width = max((-(-length // page_tokens) for _, length in decode), default=0)
        table = [pages[:width] + [0] * (width - len(pages[:width])) for pages, _ in decode]
        return cls(torch.tensor(positions, **as_long), torch.tensor(pages_of_token, **as_long),
                   torch.tensor([p % page_tokens for p in positions], **as_long), len(decode),
                   max((length for _, length in decode), default=0),
                   torch.tensor([length for _, length in decode], dtype=torch.int32, device=device),
                   torch.tensor(table, dtype=torch.int32, device=device).reshape(len(decode), width),
                   tuple(prefill), torch.tensor(last, **as_long))


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.kernels = None   # runtime.kernels once Stage.accelerate() ran: one fused kernel instead of six

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """norm(x); with `residual`, (norm(x + residual), x + residual): the residual add fused in."""
        if self.kernels is not None:
            out, summed = self.kernels.rms_norm(x, self.weight, self.eps, residual)
            return out if residual is None else (out, summed)
        if residual is not None:
            x = x + residual
            return self._norm(x), x
        return self._norm(x)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
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
        self.kernels = None   # runtime.kernels once Stage.accelerate() ran: paged decode read in place
        self.qkv_proj: nn.Linear | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: BatchPlan,
                keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        if self.kernels is not None:   # one product for q/k/v, one kernel for norms, rotation and KV writes
            norm = self.q_norm is not None
            q = self.kernels.qk_norm_rope_store(
                self.qkv_proj(x), self.heads, self.kv_heads, self.head_dim, self.q_norm.weight if norm else None,
                self.k_norm.weight if norm else None, self.q_norm.eps if norm else 0.0, cos, sin,
                plan.write_page, plan.write_row, keys, values)
        else:
            q = self.q_proj(x).view(tokens, self.heads, self.head_dim)        # [T, H, d]
            k = self.k_proj(x).view(tokens, self.kv_heads, self.head_dim)     # [T, Hkv, d]
            v = self.v_proj(x).view(tokens, self.kv_heads, self.head_dim)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            keys[plan.write_page, :, plan.write_row] = k                      # pool [pages, Hkv, page_tokens, d]
            values[plan.write_page, :, plan.write_row] = v
        if plan.prompt_tiles is not None:                                 # a mixed step as one graph
            out = self.kernels.paged_decode(q, keys, values, plan.decode_pages, plan.decode_lengths)
            self.kernels.paged_prefill(q, keys, values, plan.decode_pages, plan.prompt_tiles, out)
        elif plan.decode_count == tokens:                                 # a decode step (what graphs replay)
            out = self._decode(q, plan, keys, values)
        else:
            out = torch.empty_like(q)
            if plan.decode_count:
                out[:plan.decode_count] = self._decode(q[:plan.decode_count], plan, keys, values)
            for pages, start, count, offset in plan.prefill:  # 4-D [1, heads, n, d]: SDPA's fused kernels
                qs = q[offset:offset + count].transpose(0, 1)[None]           # [1, H, n, d]
                ks, vs = (_contiguous(pool[pages][None], start + count) for pool in (keys, values))
                mask = None if start == 0 else (torch.arange(start + count, device=x.device)[None, :]
                                                 <= torch.arange(start, start + count, device=x.device)[:, None])
                out[offset:offset + count] = attend(qs, ks, vs, mask, causal=start == 0)[0].transpose(0, 1)
        return self.o_proj(out.reshape(tokens, self.heads * self.head_dim))

    def _decode(self, q: torch.Tensor, plan: BatchPlan, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """One new token per request, all requests at once. On a GPU the paged kernel reads each request's
        pages where they lie; elsewhere the pages are gathered up to the longest request and masked."""
        if self.kernels is not None:
            return self.kernels.paged_decode(q, keys, values, plan.decode_pages, plan.decode_lengths)
        length = plan.decode_length
        ks, vs = (_contiguous(pool[plan.decode_pages.long()], length) for pool in (keys, values))   # [D, Hkv, L, d]
        mask = torch.arange(length, device=q.device)[None, :] < plan.decode_lengths[:, None]  # [D, L]
        return attend(q[:, :, None, :], ks, vs, mask[:, None, None, :])[:, :, 0, :]  # [D, H, d]


def _contiguous(pages: torch.Tensor, length: int) -> torch.Tensor:
    """[B, P, Hkv, page_tokens, d] pages of B requests -> [B, Hkv, length, d], their first `length` tokens."""
    b, p, heads, rows, dim = pages.shape
    return pages.transpose(1, 2).reshape(b, heads, p * rows, dim)[:, :, :length]


class MLP(nn.Module):
    def __init__(self, model: ModelSpec, shard: Shard = Shard()) -> None:
        super().__init__()
        columns = len(shard.columns(model))
        self.gate_proj = nn.Linear(model.hidden_size, columns, bias=False)
        self.up_proj = nn.Linear(model.hidden_size, columns, bias=False)
        self.down_proj = nn.Linear(columns, model.hidden_size, bias=False)

        self.gate_up_proj: nn.Linear | None = None   # gate and up in one product (Stage.accelerate)
        self.kernels = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None:
            return self.down_proj(self.kernels.silu_mul(self.gate_up_proj(x)))
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
                keys: torch.Tensor, values: torch.Tensor,
                residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mlp output, residual) whose sum is the layer's output. The input is x, or x + residual when the
        previous layer's add is still due: it is fused into this layer's first norm (one kernel less)."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm(x, residual=residual)
        attended = self.reduce(self.self_attn(h, cos, sin, plan, keys, values))
        h, residual = self.post_attention_layernorm(attended, residual=residual)   # residual + attended, normalised
        return self.reduce(self.mlp(h)), residual


def _fused(*parts: nn.Linear) -> nn.Linear:
    """One linear layer computing the concatenation of `parts`' outputs (same input)."""
    weight = torch.cat([p.weight for p in parts])
    with torch.device("meta"):
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=parts[0].bias is not None)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if parts[0].bias is not None:
        fused.bias = nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=False)
    return fused


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

    def new_kv(self, *, max_seqs: int, max_seq_len: int, tokens: int | None = None, page_tokens: int = 16,
               utilization: float = 0.9) -> KVPool:
        """The stage's paged KV pool: `tokens` of KV, or (None, on a GPU) what the memory left after the
        weights holds. KVFull when it cannot hold one request of max_seq_len tokens."""
        weight = next(self.parameters())
        kv_heads = len(self.shard.kv_heads(self.model))
        per_token = KVPool.bytes_per_token(len(self.layers), kv_heads, self.model.head_dim, weight.dtype)
        # activations of eager prefill steps, and the CUDA graphs' pool with the head's float32 logits
        reserve = (1 << 30) + (3 * max_seqs * self.model.vocab_size * 4 if self.last else 0)
        pages = pool_pages(device=weight.device, bytes_per_token=per_token, page_tokens=page_tokens,
                           utilization=utilization, reserve_bytes=reserve, tokens=tokens)
        if pages * page_tokens < max_seq_len:
            raise KVFull(f"room for {pages * page_tokens} tokens of KV ({per_token / 2**20:.2f} MiB per token "
                         f"over {len(self.layers)} layers) after the weights, less than one request of "
                         f"max_seq_len {max_seq_len}")
        return KVPool(len(self.layers), pages, page_tokens, kv_heads, self.model.head_dim, max_seqs=max_seqs,
                      max_seq_len=max_seq_len, dtype=weight.dtype, device=weight.device)

    def accelerate(self) -> bool:
        """On a GPU in fp16/bf16: fuse q/k/v and gate/up into one matrix product each, run RMSNorm as one
        kernel with the residual add fused in, and decode attention on the pages in place (runtime.kernels).
        Returns whether it did (no-op elsewhere: the CPU keeps the op-for-op transformers path)."""
        weight = next(self.parameters())
        if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16):
            return False
        if self.layers and self.layers[0].self_attn.kernels is not None:
            return True   # already
        from runtime import kernels   # Triton: CUDA builds of torch only
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv_proj = _fused(attn.q_proj, attn.k_proj, attn.v_proj)
            attn.q_proj = attn.k_proj = attn.v_proj = None
            mlp.gate_up_proj = _fused(mlp.gate_proj, mlp.up_proj)
            mlp.gate_proj = mlp.up_proj = None
            attn.kernels = mlp.kernels = kernels
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.kernels = kernels
        torch.cuda.empty_cache()
        return True

    @torch.inference_mode()
    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Hidden states [T, hidden] of the inputs: token ids embedded on the first stage, else as given."""
        return self.embed_tokens(inputs) if self.first and not inputs.is_floating_point() else inputs

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor, plan: BatchPlan, kv: KVPool) -> torch.Tensor:
        x = self.embed(inputs)                                                   # [T, hidden]
        cos, sin = self.rotary(plan.positions, x.dtype)
        residual = None
        for i, layer in enumerate(self.layers):
            x, residual = layer(x, cos, sin, plan, kv.keys[i], kv.values[i], residual)
        if not self.last:
            return x if residual is None else x + residual
        rows = plan.last_index                                                   # [B]: the rows the head reads
        x = self.norm(x[rows]) if residual is None else self.norm(x[rows], residual=residual[rows])[0]
        head = self.embed_tokens.weight if self.model.tie_word_embeddings else self.lm_head.weight
        return F.linear(x, head).float()                                         # [B, vocab]
