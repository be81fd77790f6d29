"""A stage's KV cache: a paged pool, as vLLM keeps it.

One tensor per layer for keys and one for values, [pages, kv_heads, page_tokens, head_dim]: token t of a
request lives in page table[t // page_tokens] at row t % page_tokens. A request takes pages as its tokens
arrive (its prompt, then one token per decode step) and gives them all back when the host says it ended,
so it holds only what its tokens use. Page 0 is never handed out: padded rows of a captured decode
batch write there and read nothing (runtime.graphs).

How many pages: on a GPU, what the memory left after the weights holds (the share of the device the
config allows, minus a reserve for activations and CUDA graphs); on a CPU, what the config says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from planner.errors import InputError
from runtime.config import RuntimeConfig, WorkerSpec

if TYPE_CHECKING:
    from runtime.model import Stage

SCRATCH_PAGE = 0


class KVFull(KeyError):
    """No page (or no request slot) is free."""


class KVPool:
    def __init__(self, layers: int, pages: int, page_tokens: int, kv_heads: int, head_dim: int, *,
                 max_seqs: int, max_seq_len: int, dtype: torch.dtype, device: str | torch.device) -> None:
        shape = (pages + 1, kv_heads, page_tokens, head_dim)    # + the scratch page
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.page_tokens, self.max_seq_len, self.max_seqs = page_tokens, max_seq_len, max_seqs
        self.max_pages = -(-max_seq_len // page_tokens)          # pages of the longest request
        self.free_pages = list(range(pages, SCRATCH_PAGE, -1))  # popped from the end: low pages first
        self.pages_of: dict[str, list[int]] = {}
        self.tokens_of: dict[str, int] = {}

    @property
    def pages(self) -> int:
        return self.keys[0].shape[0] - 1

    @property
    def capacity_tokens(self) -> int:
        return self.pages * self.page_tokens

    @property
    def used_tokens(self) -> int:
        return (self.pages - len(self.free_pages)) * self.page_tokens

    @property
    def free_slots(self) -> int:
        return self.max_seqs - len(self.pages_of)

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    @staticmethod
    def bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def holds(self, request: str) -> bool:
        return request in self.pages_of

    def admit(self, request: str) -> None:
        """Open a request (no pages yet); KVFull when max_seqs requests are open."""
        if request in self.pages_of:
            return
        if len(self.pages_of) >= self.max_seqs:
            raise KVFull(f"all {self.max_seqs} request slots are taken")
        self.pages_of[request] = []
        self.tokens_of[request] = 0

    def grow(self, request: str, tokens: int) -> None:
        """Give the request pages for its first `tokens` tokens; KVFull (and no change) if too few are free."""
        pages = self.pages_of[request]
        need = -(-tokens // self.page_tokens) - len(pages)
        if need > len(self.free_pages):
            raise KVFull(f"{need} KV pages wanted, {len(self.free_pages)} of {self.pages} free")
        for _ in range(max(0, need)):
            pages.append(self.free_pages.pop())
        self.tokens_of[request] = max(self.tokens_of[request], tokens)

    def release(self, request: str) -> None:
        pages = self.pages_of.pop(request, None)
        self.tokens_of.pop(request, None)
        if pages:
            self.free_pages.extend(reversed(pages))


def pool_pages(*, device: torch.device, bytes_per_token: int, page_tokens: int, utilization: float,
               reserve_bytes: int, tokens: int | None) -> int:
    """Pages a worker's pool gets: `tokens` worth when given, else (on a GPU) what fits in this worker's
    share of the device (utilization x its memory, less what this process holds already: its weights),
    never more than is free, less a reserve for activations, the LM head's logits and CUDA graphs.
    Two workers sharing a GPU each take their own share (e.g. 0.45 and 0.45)."""
    if tokens is not None:
        return -(-tokens // page_tokens)
    if device.type != "cuda":
        raise ValueError("a CPU worker's KV pool needs kv_tokens")
    free, total = torch.cuda.mem_get_info(device)
    room = min(int(total * utilization) - torch.cuda.memory_reserved(device), free) - reserve_bytes
    return max(0, room // (bytes_per_token * page_tokens))


def new_pool(stage: "Stage", config: RuntimeConfig, spec: WorkerSpec) -> KVPool:
    """The worker's paged KV pool, as its config sizes it; a one-line InputError when it cannot hold one
    request of max_seq_len tokens beside the weights."""
    limits = config.limits
    tokens = spec.kv_tokens
    if tokens is None and not spec.device.startswith("cuda"):
        tokens = spec.kv_slots * limits.max_seq_len
    try:
        return stage.new_kv(max_seqs=spec.kv_slots, max_seq_len=limits.max_seq_len, tokens=tokens,
                            page_tokens=limits.kv_block_tokens, utilization=limits.gpu_memory_utilization)
    except KVFull as exc:
        raise InputError(f"layers [{spec.start}, {spec.end}) on {spec.device}: {exc.args[0]}",
                         field=f"workers.{spec.node}",
                         fix="give this GPU fewer layers, lower --max-seq-len or raise --gpu-memory-utilization") from None
