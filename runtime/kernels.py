"""Triton kernels for the decode step on a GPU (imported only there: Triton ships with CUDA builds of torch).

paged_decode: attention of one new token per request against the request's pages where they lie in the
pool (no gather into a contiguous copy: each key and value is read once). One program per (request, KV
head, split) walks its share of the request's pages in tiles of TILE tokens with an online softmax; the
GROUP query heads that share the KV head are the rows of one small matrix product, padded to 16 rows for
the tensor cores. With few requests the context is split (flash-decoding, Dao et al. 2023) so that every
multiprocessor reads, and a second kernel combines the splits' partial sums.

paged_prefill: attention of prompt tokens (fresh prompts and continued chunks) against their pages, causal:
one program per (tile, KV head), a tile being up to BLOCK_Q consecutive tokens of one request; its rows are
those tokens x the GROUP query heads of the KV head, so the keys and values read for a tile serve every
query head that shares them. With paged_decode it runs a whole mixed step (decode rows and prompt chunks)
as one fixed-shape graph: each kernel writes only the rows it owns.

rms_norm: the stage's RMSNorm as transformers computes it (float32 statistics, the normalised row cast
to the model's dtype, then scaled), one row per program; with `residual`, the residual add of the
previous sub-layer is fused in (x + residual is both normalised and returned).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# tokens per tile, warps and pipeline stages of the paged decode kernel (benchmarks/runtime_gpu.py tries others)
DECODE_CONFIG = (64, 4, 2)
# keys per tile, warps and pipeline stages of the paged prefill kernel: 64-key tiles read a long context
# in half the serial steps of 32 (a chunk after 1.5k-7.7k cached tokens 3-18% faster on an H100, a fresh
# prompt within 1.2%; benchmarks/runtime_gpu.py --parts mixed --sweep, docs/runtime.md)
PREFILL_CONFIG = (64, 4, 2)


@triton.jit
def _attend_pages(q, q_position, k_ptr, v_ptr, table_ptr, kv_head, low, high, scale,
                  stride_kp, stride_kh, stride_kr, ROWS: tl.constexpr, PAGE: tl.constexpr, TILE: tl.constexpr,
                  HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr):
    """Online softmax of the ROWS query rows q against one request's keys low .. high - 1 (its page table
    at table_ptr), tile by tile; CAUSAL: row r sees keys up to q_position[r]. Returns the unnormalised
    sum of values [ROWS, HEAD_DIM], the softmax denominators and the running maxima [ROWS]."""
    best = tl.full([ROWS], float("-inf"), tl.float32)
    total = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    offsets = tl.arange(0, TILE)
    dims = tl.arange(0, HEAD_DIM)
    for start in range(low, high, TILE):
        tokens = start + offsets
        valid = tokens < high
        page = tl.load(table_ptr + tokens // PAGE, mask=valid, other=0).to(tl.int64)
        where = page * stride_kp + kv_head * stride_kh + (tokens % PAGE) * stride_kr
        k = tl.load(k_ptr + where[:, None] + dims[None, :], mask=valid[:, None], other=0.0)   # [TILE, HEAD_DIM]
        v = tl.load(v_ptr + where[:, None] + dims[None, :], mask=valid[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k)) * scale                                # [ROWS, TILE], float32
        if CAUSAL:
            scores = tl.where(valid[None, :] & (tokens[None, :] <= q_position[:, None]), scores, float("-inf"))
        else:
            scores = tl.where(valid[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=1))
        weights = tl.exp(scores - new_best[:, None])
        shrink = tl.exp(best - new_best)
        total = total * shrink + tl.sum(weights, axis=1)
        acc = acc * shrink[:, None] + tl.dot(weights.to(v.dtype), v)
        best = new_best
    return acc, total, best


@triton.jit
def _paged_decode(q_ptr, k_ptr, v_ptr, table_ptr, lens_ptr, out_ptr, part_ptr, stats_ptr, scale,
                  stride_qt, stride_qh, stride_kp, stride_kh, stride_kr, stride_table, stride_ot, stride_oh,
                  HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, PAGE: tl.constexpr,
                  TILE: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    length = tl.load(lens_ptr + seq)
    if SPLITS == 1:
        low, high = 0, length
    else:   # an equal share of whole tiles per split (the last ones may be empty)
        share = tl.cdiv(tl.cdiv(length, SPLITS), TILE) * TILE
        low = split * share
        high = tl.minimum(low + share, length)
    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + rows
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + dims[None, :],
                mask=(rows < GROUP)[:, None], other=0.0)                       # [GROUP_PAD, HEAD_DIM]
    acc, total, best = _attend_pages(q, rows, k_ptr, v_ptr, table_ptr + seq * stride_table, kv_head, low, high, scale,
                                     stride_kp, stride_kh, stride_kr, GROUP_PAD, PAGE, TILE, HEAD_DIM, False)
    mine = rows < tl.where(length > 0, GROUP, 0)
    if SPLITS == 1:
        out = acc / tl.maximum(total, 1e-30)[:, None]
        # a row of length 0 is not this kernel's: a padded row, or a prompt token paged_prefill writes
        tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mine[:, None])
    else:   # this split's unnormalised sum and its softmax statistics, for _combine_splits
        at = (seq * SPLITS + split) * HEADS + heads
        tl.store(part_ptr + at[:, None] * HEAD_DIM + dims[None, :], acc, mask=mine[:, None])
        tl.store(stats_ptr + at * 2, best, mask=mine)
        tl.store(stats_ptr + at * 2 + 1, total, mask=mine)


@triton.jit
def _combine_splits(part_ptr, stats_ptr, lens_ptr, out_ptr, stride_ot, stride_oh,
                    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    length = tl.load(lens_ptr + seq)
    splits = tl.arange(0, SPLITS)
    dims = tl.arange(0, HEAD_DIM)
    at = (seq * SPLITS + splits) * HEADS + head
    live = splits < tl.where(length > 0, SPLITS, 0)                 # nothing of a row of length 0
    best = tl.load(stats_ptr + at * 2, mask=live, other=0.0)       # -inf for an empty split
    total = tl.load(stats_ptr + at * 2 + 1, mask=live, other=0.0)
    scale = tl.exp(best - tl.max(best, axis=0))                     # every live row has a non-empty split
    acc = tl.load(part_ptr + at[:, None] * HEAD_DIM + dims[None, :], mask=live[:, None], other=0.0)
    out = tl.sum(acc * scale[:, None], axis=0) / tl.maximum(tl.sum(total * scale, axis=0), 1e-30)
    tl.store(out_ptr + seq * stride_ot + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty),
             mask=dims < tl.where(length > 0, HEAD_DIM, 0))


_SMS: dict[torch.device, int] = {}


def decode_splits(rows: int, kv_heads: int, device: torch.device) -> int:
    """Splits of each request's context (flash-decoding): enough programs to fill the device twice over
    when few requests would leave most of its multiprocessors idle, at most 16."""
    if device.type != "cuda":
        return 1
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    programs = rows * kv_heads
    return 1 if programs >= _SMS[device] else min(16, triton.next_power_of_2(-(-2 * _SMS[device] // programs)))


def paged_decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, table: torch.Tensor,
                 lengths: torch.Tensor, out: torch.Tensor | None = None, splits: int | None = None) -> torch.Tensor:
    """q [D, H, d]; keys/values [pages, Hkv, page_tokens, d]; table [D, max_pages] int32; lengths [D] int32
    (tokens each request attends to, this one included). Returns [D, H, d] (into `out` if given); rows of
    length 0 are left unwritten. `splits` (a power of two; default: decode_splits) cuts each context into
    that many parts read in parallel, then combined."""
    rows, heads, head_dim = q.shape
    kv_heads, page = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    out = torch.empty_like(q) if out is None else out
    splits = decode_splits(rows, kv_heads, q.device) if splits is None else splits
    part = stats = out
    if splits > 1:
        part = torch.empty(rows, splits, heads, head_dim, dtype=torch.float32, device=q.device)
        stats = torch.empty(rows, splits, heads, 2, dtype=torch.float32, device=q.device)
    _paged_decode[(rows, kv_heads, splits)](
        q, keys, values, table, lengths, out, part, stats, head_dim ** -0.5,
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2), table.stride(0),
        out.stride(0), out.stride(1),
        HEADS=heads, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), PAGE=page,
        TILE=DECODE_CONFIG[0], HEAD_DIM=head_dim, SPLITS=splits, num_warps=DECODE_CONFIG[1],
        num_stages=DECODE_CONFIG[2])
    if splits > 1:
        _combine_splits[(rows, heads)](part, stats, lengths, out, out.stride(0), out.stride(1),
                                       HEADS=heads, HEAD_DIM=head_dim, SPLITS=splits, num_warps=1)
    return out


@triton.jit
def _paged_prefill(q_ptr, k_ptr, v_ptr, table_ptr, tiles_ptr, out_ptr, scale,
                   stride_qt, stride_qh, stride_kp, stride_kh, stride_kr, stride_table, stride_ot, stride_oh,
                   GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, PAGE: tl.constexpr,
                   TILE: tl.constexpr, HEAD_DIM: tl.constexpr):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    first = tl.load(tiles_ptr + tile * 4)          # batch row of the tile's first token
    position = tl.load(tiles_ptr + tile * 4 + 1)   # that token's position in its request
    count = tl.load(tiles_ptr + tile * 4 + 2)      # tokens in the tile (0: an unused tile)
    seq = tl.load(tiles_ptr + tile * 4 + 3)        # the request's row of the page table
    rows = tl.arange(0, BLOCK_Q * GROUP_PAD)
    token, member = rows // GROUP_PAD, rows % GROUP_PAD
    mine = (token < count) & (member < GROUP)
    heads = kv_head * GROUP + member
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + (first + token)[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :],
                mask=mine[:, None], other=0.0)                                  # [BLOCK_Q * GROUP_PAD, HEAD_DIM]
    q_position = position + token
    length = position + count                      # keys 0 .. length - 1; every row sees key 0: no empty row
    acc, total, _ = _attend_pages(q, q_position, k_ptr, v_ptr, table_ptr + seq * stride_table, kv_head, 0, length,
                                  scale, stride_kp, stride_kh, stride_kr, BLOCK_Q * GROUP_PAD, PAGE, TILE, HEAD_DIM,
                                  True)
    out = acc / tl.maximum(total, 1e-30)[:, None]
    tl.store(out_ptr + (first + token)[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mine[:, None])


def prefill_block(heads: int, kv_heads: int) -> int:
    """Tokens per paged_prefill tile: 64 rows of query heads per program, whatever the group size."""
    return max(1, 64 // triton.next_power_of_2(heads // kv_heads))


def paged_prefill(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, table: torch.Tensor,
                  tiles: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Causal attention of prompt tokens into `out` [T, H, d]: tiles [N, 4] int32, one per run of up to
    prefill_block() tokens of one request: (batch row of its first token, that token's position, tokens,
    the request's row of `table` [S, max_pages] int32). Unused tiles have 0 tokens; rows no tile covers
    are left unwritten."""
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads, page = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    group_pad = triton.next_power_of_2(group)
    block = prefill_block(heads, kv_heads)
    _paged_prefill[(tiles.shape[0], kv_heads)](
        q, keys, values, table, tiles, out, head_dim ** -0.5,
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2), table.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block, PAGE=page, TILE=PREFILL_CONFIG[0], HEAD_DIM=head_dim,
        num_warps=PREFILL_CONFIG[1], num_stages=PREFILL_CONFIG[2])
    return out


@triton.jit
def _rms_norm(x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr, eps, inner, stride_outer, stride_inner,
              SIZE: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < SIZE
    x = tl.load(x_ptr + (row // inner) * stride_outer + (row % inner) * stride_inner + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:   # residual and sum are contiguous [rows, SIZE]
        x = x + tl.load(residual_ptr + row * SIZE + cols, mask=mask, other=0.0)   # rounded as torch rounds
        tl.store(sum_ptr + row * SIZE + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / SIZE + eps)
    normed = (xf * rstd).to(x.dtype)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * SIZE + cols, (weight.to(tl.float32) * normed.to(tl.float32)).to(x.dtype), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + residual) * weight, x + residual) over the last dimension, both contiguous. x is [T, size]
    or [T, heads, size] (e.g. the query heads, a strided view of the fused q/k/v product) with unit stride
    in its last dimension; residual (2-D only) is contiguous."""
    size = x.shape[-1]
    outer, inner = x.shape[0], (x.shape[1] if x.dim() == 3 else 1)
    stride_inner = x.stride(1) if x.dim() == 3 else 0
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty_like(out) if residual is not None else out
    _rms_norm[(outer * inner,)](x, residual if residual is not None else x, weight, out, summed, eps, inner,
                                x.stride(0), stride_inner, SIZE=size, BLOCK=triton.next_power_of_2(size),
                                HAS_RESIDUAL=residual is not None, num_warps=4 if size <= 2048 else 8)
    return out, summed


@triton.jit
def _qk_norm_rope_store(qkv_ptr, q_out_ptr, keys_ptr, values_ptr, q_weight_ptr, k_weight_ptr, cos_ptr, sin_ptr,
                        page_ptr, row_ptr, eps, stride_qkv, stride_cos, stride_kp, stride_kh, stride_kr,
                        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, NORM: tl.constexpr):
    token = tl.program_id(0)
    head = tl.program_id(1)                  # query heads, then KV heads
    half: tl.constexpr = HEAD_DIM // 2
    dims = tl.arange(0, HEAD_DIM)
    partner = (dims + half) % HEAD_DIM       # rotate_half: (-x[half:], x[:half])
    is_q = head < HEADS
    column = head * HEAD_DIM                 # q heads then k heads lie in this order in the fused product
    x = tl.load(qkv_ptr + token * stride_qkv + column + dims)
    other = tl.load(qkv_ptr + token * stride_qkv + column + partner)
    if NORM:   # Qwen3's per-head RMSNorm, as the module computes it
        xf, of = x.to(tl.float32), other.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / HEAD_DIM + eps)
        weight_ptr = tl.where(is_q, q_weight_ptr, k_weight_ptr)
        x = (tl.load(weight_ptr + dims).to(tl.float32) * (xf * rstd).to(x.dtype).to(tl.float32)).to(x.dtype)
        other = (tl.load(weight_ptr + partner).to(tl.float32) * (of * rstd).to(x.dtype).to(tl.float32)).to(x.dtype)
    cos = tl.load(cos_ptr + token * stride_cos + dims).to(tl.float32)
    sin = tl.load(sin_ptr + token * stride_cos + dims).to(tl.float32)
    rotated = tl.where(dims < half, -other.to(tl.float32), other.to(tl.float32))
    out = (x.to(tl.float32) * cos + rotated * sin).to(x.dtype)
    if is_q:
        tl.store(q_out_ptr + (token * HEADS + head) * HEAD_DIM + dims, out)
    else:
        kv_head = head - HEADS
        where = tl.load(page_ptr + token) * stride_kp + kv_head * stride_kh + tl.load(row_ptr + token) * stride_kr
        tl.store(keys_ptr + where + dims, out)
        value = tl.load(qkv_ptr + token * stride_qkv + (HEADS + KV_HEADS + kv_head) * HEAD_DIM + dims)
        tl.store(values_ptr + where + dims, value)


def qk_norm_rope_store(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int, q_weight: torch.Tensor | None,
                       k_weight: torch.Tensor | None, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                       page: torch.Tensor, row: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """From the fused q/k/v product [T, (H + 2 Hkv) d]: q normalised (Qwen3) and rotated, returned [T, H, d];
    k normalised and rotated and v, written into the pool at each token's page and row. One kernel instead
    of the ~14 of the module path (two norms, two rotations, two scattered writes)."""
    tokens = qkv.shape[0]
    q = torch.empty(tokens, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    norm = q_weight is not None
    _qk_norm_rope_store[(tokens, heads + kv_heads)](
        qkv, q, keys, values, q_weight if norm else qkv, k_weight if norm else qkv, cos, sin, page, row, eps,
        qkv.stride(0), cos.stride(0), keys.stride(0), keys.stride(1), keys.stride(2),
        HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, NORM=norm, num_warps=1)
    return q


@triton.jit
def _silu_mul(gate_up_ptr, out_ptr, columns, stride, BLOCK: tl.constexpr):
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < columns
    gate = tl.load(gate_up_ptr + token * stride + cols, mask=mask, other=0.0)
    up = tl.load(gate_up_ptr + token * stride + columns + cols, mask=mask, other=0.0)
    gf = gate.to(tl.float32)
    activated = (gf / (1.0 + tl.exp(-gf))).to(gate.dtype)          # F.silu, rounded as torch rounds it
    tl.store(out_ptr + token * columns + cols, (activated.to(tl.float32) * up.to(tl.float32)).to(gate.dtype),
             mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up from the fused gate/up product [T, 2 I]: [T, I], one kernel instead of two."""
    tokens, columns = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(tokens, columns, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul[(tokens, triton.cdiv(columns, block))](gate_up, out, columns, gate_up.stride(0), BLOCK=block)
    return out
