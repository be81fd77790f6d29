"""The host-side layout of a step replayed as a CUDA graph (runtime.graphs.StepLayout) says what the eager
path's BatchPlan says: the graphs themselves need a GPU (benchmarks/runtime_gpu.py checks them there)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from runtime.graphs import StepLayout, decode_prefix  # noqa: E402
from runtime.kvcache import SCRATCH_PAGE, KVPool  # noqa: E402
from runtime.model import BatchPlan  # noqa: E402

PAGE = 16


def pool_with(lengths: dict[str, int]) -> KVPool:
    kv = KVPool(1, 64, PAGE, 2, 8, max_seqs=8, max_seq_len=256, dtype=torch.float32, device="cpu")
    for rid, n in lengths.items():   # interleaved growth: a request's pages are not contiguous
        kv.admit(rid)
    for step in range(1, 257, PAGE):
        for rid, n in lengths.items():
            if step <= n:
                kv.grow(rid, min(step + PAGE - 1, n))
    return kv


# decode rows, a fresh prompt, a continued chunk, a one-token prompt, and a decode row after the prompts
ITEMS = [("a", 40, 1), ("b", 17, 1), ("c", 0, 37), ("d", 32, 20), ("e", 0, 1), ("f", 70, 1)]
LENGTHS = {"a": 41, "b": 18, "c": 37, "d": 52, "e": 1, "f": 71}


@pytest.mark.parametrize("block", [1, 4, 16])
def test_a_mixed_step_layout_is_the_eager_plan(block):
    kv = pool_with(LENGTHS)
    tokens, sequences, tiles = 128, 8, 70
    layout = StepLayout(kv, ITEMS, tokens, sequences, block, tiles)
    plan = BatchPlan.build([(kv.pages_of[r], p, n) for r, p, n in ITEMS], PAGE, "cpu")
    real = sum(n for _, _, n in ITEMS)
    assert layout.positions[:real].tolist() == plan.positions.tolist()
    assert layout.write_page[:real].tolist() == plan.write_page.tolist()
    assert layout.write_row[:real].tolist() == plan.write_row.tolist()
    assert set(layout.write_page[real:].tolist()) == {SCRATCH_PAGE}   # padded rows write to the scratch page
    assert layout.last_index[:len(ITEMS)].tolist() == plan.last_index.tolist()
    decode = decode_prefix(ITEMS)
    assert decode == 2 and layout.lengths[:decode].tolist() == plan.decode_lengths.tolist()
    assert not layout.lengths[decode:].any()
    for i, (rid, _, _) in enumerate(ITEMS):
        pages = kv.pages_of[rid]
        assert layout.table[i, :len(pages)].tolist() == pages
    covered = []
    for first, position, count, seq in layout.tiles.tolist():
        if count == 0:
            continue
        assert 1 <= count <= block
        rid, start, n = ITEMS[seq]
        rows = list(range(first, first + count))
        assert [layout.positions[r] for r in rows] == list(range(position, position + count))
        assert start <= position and position + count <= start + n
        covered += rows
    assert sorted(covered) == list(range(decode, real))   # every prompt token in exactly one tile


def test_a_decode_only_layout_has_no_tiles():
    kv = pool_with({"a": 41, "b": 18})
    layout = StepLayout(kv, [("a", 40, 1), ("b", 17, 1)], 4, 4)
    assert layout.lengths.tolist() == [41, 18, 0, 0]
    assert layout.tiles.shape == (0, 4)
    assert StepLayout.tiles_needed([1, 1, 37, 20], 2, 16) == 3 + 2


def test_a_decode_graph_step_attends_every_row_also_one_at_position_0():
    """A decode graph has no prompt tiles: a one-token row at position 0 (a one-token prompt) attends to
    its own key there, not to nothing (found on an H100: the graph disagreed with the eager step by 68%)."""
    kv = pool_with({"a": 41, "e": 1})
    items = [("a", 40, 1), ("e", 0, 1)]
    assert StepLayout(kv, items, 4, 4).lengths.tolist() == [41, 0, 0, 0]   # mixed: "e" is a prompt tile
    assert StepLayout(kv, items, 4, 4, decode=2).lengths.tolist() == [41, 1, 0, 0]


def test_one_copy_fills_the_graph_buffers_with_the_layout():
    """What a replay reads: every buffer of a graph family after `fill` (run here on the CPU, no graph)."""
    from types import SimpleNamespace

    from runtime.graphs import _GraphFamily

    kv = pool_with(LENGTHS)
    stage = SimpleNamespace(first=False, model=SimpleNamespace(hidden_size=3))
    family = _GraphFamily(stage, kv, 256, 8, 80)
    layout = StepLayout(kv, ITEMS, 128, 8, 16, 70)
    real = sum(n for _, _, n in ITEMS)
    inputs = torch.arange(real * 3, dtype=torch.float32).view(real, 3)
    family.fill(layout, inputs)
    assert family.positions[:128].tolist() == layout.positions.tolist()
    assert family.write_page[:128].tolist() == layout.write_page.tolist()
    assert family.write_row[:128].tolist() == layout.write_row.tolist()
    assert family.lengths[:128].tolist() == layout.lengths.tolist()
    assert family.last_index.tolist() == layout.last_index.tolist()
    assert family.tiles[:70].tolist() == layout.tiles.tolist()
    width = layout.table.shape[1]
    assert family.pages[:len(ITEMS), :width].tolist() == layout.table[:len(ITEMS)].tolist()
    assert torch.equal(family.inputs[:real], inputs)
