"""Steps replayed as CUDA graphs: one graph per batch-size bucket, as vLLM captures them.

Eager PyTorch pays a kernel launch (~5-30 us of CPU) per operation, ~10 per layer, whatever the batch:
a step is launch-bound. A captured graph replays every kernel of the stage's step at once. Shapes are
fixed at capture, so a step runs the graph of the smallest bucket that holds it, its extra rows padded:
they read no KV, write their key and value to the pool's scratch page, and their outputs are dropped.
Inputs go into static buffers the graphs were captured on.

DecodeGraphs: decode-only steps (one token per request), by request count (1 ... max_batch).
MixedGraphs: any step (decode rows first, then prompt chunks, fresh or continued) by token count
(16 ... 2048): one pass through the weights for the whole batch, attention by the paged decode and
paged prefill kernels (runtime.kernels). A prompt joining a decode batch thus costs its tokens, not a
second pass through every layer's weights.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch

from runtime.kvcache import SCRATCH_PAGE, KVPool
from runtime.model import BatchPlan, Stage

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)


def buckets_for(max_batch: int) -> list[int]:
    return sorted({b for b in BUCKETS if b < max_batch} | {max_batch})


def capture(stage: Stage, inputs: torch.Tensor, plan: BatchPlan, kv: KVPool,
            pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """The stage's step over static `inputs` and `plan` as a CUDA graph (memory from `pool`, shared by a
    family of graphs), and the static tensor it writes its output to."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):     # warm up (Triton compiles, cuBLAS picks its kernels) off the graph
        for _ in range(2):
            stage(inputs, plan, kv)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = stage(inputs, plan, kv)
    return graph, out


class _GraphFamily:
    """Static inputs for steps of up to `tokens` tokens, `sequences` requests and `tiles` prompt tiles,
    the graphs captured on them (one memory pool), and the one host-to-device copy that fills them."""

    def __init__(self, stage: Stage, kv: KVPool, tokens: int, sequences: int, tiles: int) -> None:
        self.stage, self.kv = stage, kv
        device = kv.keys[0].device
        long = dict(dtype=torch.long, device=device)
        if stage.first:
            self.inputs = torch.zeros(tokens, **long)
        else:
            self.inputs = torch.zeros(tokens, stage.model.hidden_size, dtype=kv.keys[0].dtype, device=device)
        self.positions = torch.zeros(tokens, **long)
        self.write_page = torch.full((tokens,), SCRATCH_PAGE, **long)
        self.write_row = torch.zeros(tokens, **long)
        self.lengths = torch.zeros(tokens, dtype=torch.int32, device=device)
        self.pages = torch.full((sequences, kv.max_pages), SCRATCH_PAGE, dtype=torch.int32, device=device)
        self.last_index = torch.zeros(sequences, **long)
        self.tiles = torch.zeros(tiles, 4, dtype=torch.int32, device=device)
        # host-side staging: one copy per step of everything that changes (pinned: the copy is asynchronous)
        self.staging = torch.zeros(4 * tokens + sequences * (kv.max_pages + 1) + 4 * tiles, dtype=torch.int32)
        if device.type == "cuda":
            self.staging = self.staging.pin_memory()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None

    def _plan(self, size: int) -> BatchPlan:
        """The step's plan over the first `size` rows of the buffers (each family says how it attends)."""
        raise NotImplementedError

    def _capture(self, sizes) -> None:
        for size in sorted(sizes, reverse=True):       # largest first: the others share its memory
            self.graphs[size] = capture(self.stage, self.inputs[:size], self._plan(size), self.kv, self.pool)
            self.pool = self.graphs[size][0].pool()

    def fill(self, layout: StepLayout, inputs: torch.Tensor) -> None:
        """Copy a step's layout (padded to a captured size) and its inputs into the static buffers."""
        size, sequences, tiles = len(layout.positions), len(layout.last_index), len(layout.tiles)
        n, width = layout.requests, layout.table.shape[1]
        staged = np.concatenate([layout.positions, layout.write_page, layout.write_row, layout.lengths,
                                 layout.last_index, layout.tiles.ravel(), layout.table[:n].ravel()])
        on_host = self.staging[:len(staged)]
        on_host.numpy()[:] = staged
        parts = on_host.to(self.positions.device, non_blocking=True).split(
            [size, size, size, size, sequences, 4 * tiles, n * width])
        self.positions[:size].copy_(parts[0])
        self.write_page[:size].copy_(parts[1])
        self.write_row[:size].copy_(parts[2])
        self.lengths[:size].copy_(parts[3])
        self.last_index[:sequences].copy_(parts[4])
        self.tiles[:tiles].copy_(parts[5].view(tiles, 4))
        self.pages[:n, :width].copy_(parts[6].view(n, width))
        self.inputs[:len(inputs)].copy_(inputs)

    def _replay(self, layout: StepLayout, inputs: torch.Tensor) -> torch.Tensor:
        self.fill(layout, inputs)
        graph, out = self.graphs[len(layout.positions)]
        graph.replay()
        return out


class DecodeGraphs(_GraphFamily):
    """The stage's decode step captured at each bucket up to `max_batch` requests."""

    def __init__(self, stage: Stage, kv: KVPool, max_batch: int, sizes: tuple[int, ...] | None = None) -> None:
        super().__init__(stage, kv, max_batch, max_batch, 0)
        self._capture(sizes or buckets_for(max_batch))

    def _plan(self, size: int) -> BatchPlan:
        return BatchPlan(self.positions[:size], self.write_page[:size], self.write_row[:size], size, 0,
                         self.lengths[:size], self.pages[:size], (), self.last_index[:size])

    def bucket(self, n: int) -> int:
        return min(b for b in self.graphs if b >= n)

    def run(self, requests: list[str], positions: list[int], inputs: torch.Tensor) -> torch.Tensor:
        """One decode step: request i's token at positions[i] (its pages already grown to hold it), inputs
        [n] ids or [n, hidden]; returns the stage's output for the n requests (a view: copy before the next step)."""
        size = self.bucket(len(requests))
        # every row is a decode row, also one at position 0 (a one-token prompt run as a decode step)
        layout = StepLayout(self.kv, [(r, p, 1) for r, p in zip(requests, positions)], size, size,
                            decode=len(requests))
        return self._replay(layout, inputs)[:len(requests)]


class StepLayout:
    """Where each token of a step sits, as numpy arrays for one host-to-device copy: items (request,
    start position, tokens) in batch order, padded to `tokens` token rows and `sequences` sequence rows.
    Decode rows are the leading items of one token past position 0 (paged_decode: token row = sequence
    row; `decode` of them, default decode_prefix(items)); every other item is cut into prompt tiles of
    `block` tokens (paged_prefill)."""

    def __init__(self, kv: KVPool, items: list[tuple[str, int, int]], tokens: int, sequences: int,
                 block: int = 0, tiles: int = 0, decode: int | None = None) -> None:
        rows = kv.page_tokens
        self.requests = len(items)
        counts = np.array([c for _, _, c in items], dtype=np.int64)
        starts = np.array([p for _, p, _ in items], dtype=np.int64)
        ends = np.cumsum(counts)
        offsets = ends - counts
        real = int(ends[-1])
        pages = [kv.pages_of[r] for r, _, _ in items]
        held = np.fromiter(map(len, pages), dtype=np.int64, count=len(pages))
        table = np.full((sequences, int(held.max())), SCRATCH_PAGE, dtype=np.int32)
        # row i's first held[i] entries, filled in one pass (row-major, as chain() lists them)
        table[:len(pages)][np.arange(table.shape[1]) < held[:, None]] = np.fromiter(
            chain.from_iterable(pages), dtype=np.int32, count=int(held.sum()))
        seq_of_token = np.repeat(np.arange(len(items)), counts)
        positions = np.zeros(tokens, dtype=np.int64)
        positions[:real] = np.repeat(starts - offsets, counts) + np.arange(real)
        self.positions = positions
        self.write_page = np.full(tokens, SCRATCH_PAGE, dtype=np.int64)
        self.write_page[:real] = table[seq_of_token, positions[:real] // rows]
        self.write_row = positions % rows
        decode = decode_prefix(items) if decode is None else decode
        self.lengths = np.zeros(tokens, dtype=np.int64)       # padded rows and prompt tokens attend to nothing here
        self.lengths[:decode] = starts[:decode] + 1
        self.table = table
        self.last_index = np.zeros(sequences, dtype=np.int64)
        self.last_index[:len(items)] = ends - 1
        self.tiles = np.zeros((tiles, 4), dtype=np.int64)
        if block:
            n = 0
            for i in range(decode, len(items)):
                for first in range(0, int(counts[i]), block):
                    self.tiles[n] = (offsets[i] + first, starts[i] + first, min(block, counts[i] - first), i)
                    n += 1

    @staticmethod
    def tiles_needed(counts: list[int], decode: int, block: int) -> int:
        return sum(-(-c // block) for c in counts[decode:])


def decode_prefix(items: list[tuple[str, int, int]]) -> int:
    """How many leading items are decode rows (one token past position 0)."""
    n = 0
    while n < len(items) and items[n][2] == 1 and items[n][1] > 0:
        n += 1
    return n


MIXED_TOKENS = (16, 32, 64, 128, 256, 512, 1024, 2048)
MAX_PROMPTS = 32   # prompt chunks in one mixed step beyond those its tokens alone would tile


class MixedGraphs(_GraphFamily):
    """Any step of up to `max_tokens` tokens, captured at token-count buckets (MIXED_TOKENS up to
    max_tokens): decode rows (paged_decode) and prompt chunks (paged_prefill) in one pass. A bucket of T
    tokens holds up to min(T, max_batch) requests and T / block + MAX_PROMPTS prompt tiles; steps that
    need more run eagerly."""

    def __init__(self, stage: Stage, kv: KVPool, max_tokens: int, max_batch: int,
                 sizes: tuple[int, ...] | None = None) -> None:
        from runtime import kernels

        attention = stage.layers[0].self_attn
        self.block = kernels.prefill_block(attention.heads, attention.kv_heads)
        self.max_batch = max_batch
        self.sizes = sorted(sizes or {t for t in MIXED_TOKENS if t < max_tokens} | {min(max_tokens, MIXED_TOKENS[-1])})
        tokens = self.sizes[-1]
        super().__init__(stage, kv, tokens, min(tokens, max_batch), self.tiles_for(tokens))
        self._capture(self.sizes)

    def tiles_for(self, tokens: int) -> int:
        return tokens // self.block + MAX_PROMPTS

    def _plan(self, size: int) -> BatchPlan:
        sequences = min(size, self.max_batch)
        return BatchPlan(self.positions[:size], self.write_page[:size], self.write_row[:size], 0, 0,
                         self.lengths[:size], self.pages[:sequences], (), self.last_index[:sequences],
                         prompt_tiles=self.tiles[:self.tiles_for(size)])

    def fits(self, items: list[tuple[str, int, int]]) -> int | None:
        """The bucket that holds this step, or None."""
        tokens = sum(c for _, _, c in items)
        size = next((t for t in self.sizes if t >= tokens), None)
        if size is None or len(items) > min(size, self.max_batch):
            return None
        needed = StepLayout.tiles_needed([c for _, _, c in items], decode_prefix(items), self.block)
        return size if needed <= self.tiles_for(size) else None

    def run(self, items: list[tuple[str, int, int]], inputs: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """One step of items (request, start position, tokens), their pages grown to hold them, inputs
        [tokens] ids or [tokens, hidden] in item order, in bucket `size` (default: fits(items)): the last
        stage's logits [items, vocab], else the hidden states [tokens, hidden] (views: copy before the next step)."""
        size = size or self.fits(items)
        layout = StepLayout(self.kv, items, size, min(size, self.max_batch), self.block, self.tiles_for(size))
        out = self._replay(layout, inputs)
        return out[:len(items)] if self.stage.last else out[:len(inputs)]
