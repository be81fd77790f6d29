"""Decode steps replayed as CUDA graphs: one graph per batch-size bucket, as vLLM captures them.

Eager PyTorch pays a kernel launch (~5-30 us of CPU) per operation, ~20 per layer, whatever the batch:
a decode step is launch-bound. A captured graph replays every kernel of the stage's step at once. Shapes
are fixed at capture, so a step of n requests runs the graph of the smallest bucket >= n, its extra rows
padded: they read no KV (length 0), write their key and value to the pool's scratch page, and their
outputs are dropped. Inputs go into static buffers the graphs were captured on; prefill and mixed steps
stay eager (their shapes vary with the prompts).
"""

from __future__ import annotations

import torch

from runtime.kvcache import SCRATCH_PAGE, KVPool
from runtime.model import BatchPlan, Stage

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)


def buckets_for(max_batch: int) -> list[int]:
    return sorted({b for b in BUCKETS if b < max_batch} | {max_batch})


class DecodeGraphs:
    """The stage's decode step captured at each bucket up to `max_batch` requests."""

    def __init__(self, stage: Stage, kv: KVPool, max_batch: int, sizes: tuple[int, ...] | None = None) -> None:
        self.stage, self.kv = stage, kv
        device = kv.keys[0].device
        self.page_tokens = kv.page_tokens
        long = dict(dtype=torch.long, device=device)
        if stage.first:
            self.inputs = torch.zeros(max_batch, **long)
        else:
            self.inputs = torch.zeros(max_batch, stage.model.hidden_size, dtype=kv.keys[0].dtype, device=device)
        self.positions = torch.zeros(max_batch, **long)
        self.write_page = torch.full((max_batch,), SCRATCH_PAGE, **long)
        self.write_row = torch.zeros(max_batch, **long)
        self.lengths = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self.pages = torch.full((max_batch, kv.max_pages), SCRATCH_PAGE, dtype=torch.int32, device=device)
        self.last_index = torch.arange(max_batch, **long)
        # host-side staging: one copy per step of everything that changes (pinned: the copy is asynchronous)
        self.staging = torch.zeros(4 * max_batch + max_batch * kv.max_pages, dtype=torch.int32).pin_memory()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        for size in sorted(sizes or buckets_for(max_batch), reverse=True):   # largest first: the others share its memory
            self._capture(size)

    def _plan(self, size: int) -> BatchPlan:
        return BatchPlan(self.positions[:size], self.write_page[:size], self.write_row[:size], size, 0,
                         self.lengths[:size], self.pages[:size], (), self.last_index[:size])

    def _capture(self, size: int) -> None:
        plan = self._plan(size)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):     # warm up (Triton compiles, cuBLAS picks its kernels) off the graph
            for _ in range(2):
                self.stage(self.inputs[:size], plan, self.kv)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.stage(self.inputs[:size], plan, self.kv)
        self.pool = graph.pool()
        self.graphs[size] = (graph, out)

    def bucket(self, n: int) -> int:
        return min(b for b in self.graphs if b >= n)

    def run(self, requests: list[str], positions: list[int], inputs: torch.Tensor) -> torch.Tensor:
        """One decode step: request i's token at positions[i] (its pages already grown to hold it), inputs
        [n] ids or [n, hidden]; returns the stage's output for the n requests (a view: copy before the next step)."""
        n = len(requests)
        size = self.bucket(n)
        pad = size - n
        rows = self.page_tokens
        pages = [self.kv.pages_of[r] for r in requests]
        width = max(len(p) for p in pages)   # the kernel reads no entry past a request's length
        values = (positions + [0] * pad
                  + [p[q // rows] for p, q in zip(pages, positions)] + [SCRATCH_PAGE] * pad
                  + [q % rows for q in positions] + [0] * pad
                  + [q + 1 for q in positions] + [0] * pad             # padded rows attend to nothing
                  + [page for p in pages for page in p + [SCRATCH_PAGE] * (width - len(p))])
        staged = self.staging[:len(values)]
        staged.copy_(torch.tensor(values, dtype=torch.int32))
        on_device = staged.to(self.positions.device, non_blocking=True)
        self.positions[:size].copy_(on_device[:size])
        self.write_page[:size].copy_(on_device[size:2 * size])
        self.write_row[:size].copy_(on_device[2 * size:3 * size])
        self.lengths[:size].copy_(on_device[3 * size:4 * size])
        self.pages[:n, :width].copy_(on_device[4 * size:].view(n, width))
        self.inputs[:n].copy_(inputs)
        graph, out = self.graphs[size]
        graph.replay()
        return out[:n]


PROMPT_COUNTS = (1, 2, 4, 8)
PROMPT_LENGTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)


class PrefillGraphs:
    """Fresh prompts (position 0) captured as CUDA graphs: P prompts padded to L tokens each, for P in
    1, 2, 4, 8 and L in 16 ... 2048 up to `max_tokens` in all. An eager prefill of a small prompt is
    launch-bound (tens of ms through a 36-layer stage, as long as the compute of a thousand tokens);
    replayed, it costs what its weights and tokens cost. Padded tokens write to the scratch page and come
    after every real token of their prompt, so causal attention never lets a real token see them."""

    def __init__(self, stage: Stage, kv: KVPool, max_tokens: int) -> None:
        self.stage, self.kv = stage, kv
        device = kv.keys[0].device
        self.shapes = sorted({(p, n) for p in PROMPT_COUNTS for n in PROMPT_LENGTHS
                              if p * n <= max_tokens and n <= kv.max_seq_len and n % kv.page_tokens == 0},
                             key=lambda s: (s[0] * s[1], s[0]))
        tokens = max((p * n for p, n in self.shapes), default=0)
        long = dict(dtype=torch.long, device=device)
        if stage.first:
            self.inputs = torch.zeros(tokens, **long)
        else:
            self.inputs = torch.zeros(tokens, stage.model.hidden_size, dtype=kv.keys[0].dtype, device=device)
        self.positions = torch.zeros(tokens, **long)
        self.write_page = torch.full((tokens,), SCRATCH_PAGE, **long)
        self.write_row = torch.zeros(tokens, **long)
        self.pages = torch.full((tokens // kv.page_tokens,), SCRATCH_PAGE, **long)
        self.last_index = torch.zeros(max(PROMPT_COUNTS), **long)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        for shape in sorted(self.shapes, key=lambda s: -s[0] * s[1]):     # largest first: one memory pool
            self._capture(*shape)

    def _plan(self, prompts: int, length: int) -> BatchPlan:
        tokens = prompts * length
        empty = torch.zeros(0, dtype=torch.int32, device=self.positions.device)
        return BatchPlan(self.positions[:tokens], self.write_page[:tokens], self.write_row[:tokens], 0, 0, empty,
                         empty.view(0, 0), (), self.last_index[:prompts],
                         self.pages[:tokens // self.kv.page_tokens].view(prompts, -1), length)

    def _capture(self, prompts: int, length: int) -> None:
        plan = self._plan(prompts, length)
        tokens = prompts * length
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.stage(self.inputs[:tokens], plan, self.kv)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.stage(self.inputs[:tokens], plan, self.kv)
        self.pool = graph.pool()
        self.graphs[(prompts, length)] = (graph, out)

    def fits(self, counts: list[int]) -> tuple[int, int] | None:
        """The smallest captured shape that holds prompts of these lengths, or None."""
        longest = max(counts)
        return next(((p, n) for p, n in self.shapes if p >= len(counts) and n >= longest), None)

    def run(self, requests: list[str], inputs: list[torch.Tensor]) -> torch.Tensor:
        """Fresh prompts (their pages grown to hold them): the last stage's logits [n, vocab], or the hidden
        states of every real token [sum of lengths, hidden] in order."""
        counts = [len(x) for x in inputs]
        prompts, length = self.fits(counts)
        rows, pages_per = self.kv.page_tokens, length // self.kv.page_tokens
        positions, write_page, write_row, table, last, real = [], [], [], [], [], []
        for p in range(prompts):
            pages = self.kv.pages_of[requests[p]] if p < len(requests) else []
            count = counts[p] if p < len(requests) else 0
            positions += range(length)
            write_page += [pages[t // rows] for t in range(count)] + [SCRATCH_PAGE] * (length - count)
            write_row += [t % rows for t in range(length)]
            table += pages[:pages_per] + [SCRATCH_PAGE] * (pages_per - len(pages[:pages_per]))
            last.append(p * length + max(count, 1) - 1)
            real += range(p * length, p * length + count)
        tokens = prompts * length
        staged = torch.tensor(positions + write_page + write_row + table + last, dtype=torch.long)
        on_device = staged.pin_memory().to(self.positions.device, non_blocking=True)
        self.positions[:tokens].copy_(on_device[:tokens])
        self.write_page[:tokens].copy_(on_device[tokens:2 * tokens])
        self.write_row[:tokens].copy_(on_device[2 * tokens:3 * tokens])
        self.pages[:prompts * pages_per].copy_(on_device[3 * tokens:3 * tokens + prompts * pages_per])
        self.last_index[:prompts].copy_(on_device[3 * tokens + prompts * pages_per:])
        for p, x in enumerate(inputs):
            self.inputs[p * length:p * length + len(x)].copy_(x)
        graph, out = self.graphs[(prompts, length)]
        graph.replay()
        if self.stage.last:
            return out[:len(requests)]
        return out[torch.tensor(real, device=out.device)]
