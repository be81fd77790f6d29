"""A stage's KV cache: a preallocated pool of request slots, indexed by position (as in gpt-fast).

One tensor per layer for keys and one for values, [slots, kv_heads, max_seq_len, head_dim]. A request
takes a slot at its prompt and gives it back when the host says it ended; positions past a request's
length hold stale values that attention masks out.
"""

from __future__ import annotations

import torch


class KVPool:
    def __init__(self, layers: int, slots: int, max_seq_len: int, kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype, device: str) -> None:
        shape = (slots, kv_heads, max_seq_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_seq_len = max_seq_len
        self.free_slots = list(range(slots - 1, -1, -1))
        self.slot_of: dict[str, int] = {}

    @property
    def slots(self) -> int:
        return len(self.free_slots) + len(self.slot_of)

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def allocate(self, request: str) -> int:
        """A slot for a new request (its own again if it already has one); KeyError when none is free."""
        if request in self.slot_of:
            return self.slot_of[request]
        if not self.free_slots:
            raise KeyError(f"all {self.slots} KV slots are taken")
        self.slot_of[request] = slot = self.free_slots.pop()
        return slot

    def release(self, request: str) -> None:
        slot = self.slot_of.pop(request, None)
        if slot is not None:
            self.free_slots.append(slot)
