"""The runtime's Triton attention kernels (runtime/kernels.py) on a CPU, through Triton's interpreter
(TRITON_INTERPRET=1, numpy under the kernel language): paged decode with its context splits, paged
prefill of fresh prompts and of chunks that continue a long one, each against attention written out in
torch over the same scattered pages. On a GPU the compiled kernels are checked against the plain torch
stage by `benchmarks/runtime_gpu.py --parts check`; here every CI run checks their indexing.

Triton reads TRITON_INTERPRET when it is imported (its own language functions are jit functions too), so
these tests run in a pytest process started with it set: collected without it, this module holds one
test that starts that process on itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")   # a test dependency on Linux (pyproject.toml); no wheels elsewhere

HEADS, KV_HEADS, HEAD_DIM, PAGE = 8, 2, 32, 16   # groups of 4 query heads per KV head, as Qwen3-8B's 32 / 8
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(INTERPRETED, reason="the interpreted process itself")
def test_kernels_in_the_triton_interpreter() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          cwd=root, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]   # every check ran there; only this test was skipped
    assert re.match(r"(\d+) passed, 1 skipped in ", summary) and int(summary.split()[0]) >= 6, summary


@pytest.fixture(scope="module")
def kernels():
    if not INTERPRETED:
        pytest.skip("runs in the interpreted process (test_kernels_in_the_triton_interpreter)")
    from runtime import kernels
    return kernels


class Pool:
    """A KV pool of scattered pages and requests' page tables, with the attention they should give."""

    def __init__(self, seed: int = 0, pages: int = 200) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.keys = torch.randn(pages, KV_HEADS, PAGE, HEAD_DIM, generator=gen)
        self.values = torch.randn(pages, KV_HEADS, PAGE, HEAD_DIM, generator=gen)
        self.free = torch.randperm(pages - 1, generator=gen).add(1).tolist()   # page 0: the scratch page

    def request(self, tokens: int) -> list[int]:
        return [self.free.pop() for _ in range(-(-tokens // PAGE))]

    def table(self, requests: list[list[int]], rows: int | None = None) -> torch.Tensor:
        width = max(map(len, requests))
        padded = [pages + [0] * (width - len(pages)) for pages in requests]
        return torch.tensor(padded + [[0] * width] * ((rows or len(requests)) - len(requests)), dtype=torch.int32)

    def attend(self, q: torch.Tensor, pages: list[int], position: int) -> torch.Tensor:
        """q [HEADS, HEAD_DIM] of the token at `position` over the request's keys 0 .. position."""
        def cached(pool: torch.Tensor) -> torch.Tensor:
            flat = pool[pages].permute(1, 0, 2, 3).reshape(KV_HEADS, -1, HEAD_DIM)[:, :position + 1]
            return flat.repeat_interleave(HEADS // KV_HEADS, dim=0)            # [HEADS, position + 1, HEAD_DIM]
        scores = torch.einsum("hd,hnd->hn", q, cached(self.keys)) * HEAD_DIM ** -0.5
        return torch.einsum("hn,hnd->hd", scores.softmax(-1), cached(self.values))


@pytest.mark.parametrize("splits", [1, 2, 8])
def test_paged_decode_reads_each_requests_pages(kernels, splits: int) -> None:
    pool = Pool()
    lengths = [700, 5, 0, 130, 1, 65]        # 0: a padded row, which the kernel must leave alone
    requests = [pool.request(n) for n in lengths]
    q = torch.randn(len(lengths), HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(1))
    out = torch.full_like(q, 7.0)
    kernels.paged_decode(q, pool.keys, pool.values, pool.table(requests), torch.tensor(lengths, dtype=torch.int32),
                         out=out, splits=splits)
    for row, (pages, length) in enumerate(zip(requests, lengths)):
        if length:
            torch.testing.assert_close(out[row], pool.attend(q[row], pages, length - 1), atol=2e-5, rtol=1e-4)
    assert bool((out[2] == 7.0).all()), "a row of length 0 was written"


@pytest.mark.parametrize("config", [(32, 4, 2), (64, 4, 2), (128, 4, 2)])
def test_paged_prefill_of_fresh_and_continuing_chunks(kernels, monkeypatch, config: tuple[int, int, int]) -> None:
    """Three prompt chunks in one batch after two rows that are not the kernel's: one continuing a prompt
    at position 600 (its keys before it already cached), a fresh one, one continuing at 100; causal
    within each chunk, in tiles of prefill_block() tokens, with unused tiles at the end."""
    monkeypatch.setattr(kernels, "PREFILL_CONFIG", config)
    pool = Pool(seed=2)
    chunks = [(600, 40), (0, 21), (100, 9)]                 # (position of the first token, tokens)
    requests = [pool.request(start + count) for start, count in chunks]
    block = kernels.prefill_block(HEADS, KV_HEADS)
    tiles, row = [], 2
    for index, (start, count) in enumerate(chunks):
        tiles += [(row + first, start + first, min(block, count - first), index) for first in range(0, count, block)]
        row += count
    tiles += [(0, 0, 0, 0)] * 3
    q = torch.randn(row, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(3))
    out = torch.full_like(q, 7.0)
    kernels.paged_prefill(q, pool.keys, pool.values, pool.table(requests), torch.tensor(tiles, dtype=torch.int32), out)
    row = 2
    for pages, (start, count) in zip(requests, chunks):
        for token in range(count):
            torch.testing.assert_close(out[row + token], pool.attend(q[row + token], pages, start + token),
                                       atol=2e-5, rtol=1e-4)
        row += count
    assert bool((out[:2] == 7.0).all()), "rows no tile covers were written"
