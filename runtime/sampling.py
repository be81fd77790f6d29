"""Choosing the next token from a request's logits: greedy, temperature, nucleus (top-p), seeded.

The host sets each request's parameters; the stage holding the LM head applies them, so only token ids
travel back to the host (the few bytes per token the planner's cost model counts, not a vocab of logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0: greedy (argmax)
    top_p: float = 1.0         # keep the fewest most likely tokens whose probabilities sum to >= top_p
    seed: int = 0

    @classmethod
    def from_wire(cls, values: dict) -> "SamplingParams":
        return cls(float(values.get("temperature", 0.0)), float(values.get("top_p", 1.0)), int(values.get("seed", 0)))

    def to_wire(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


class Sampler:
    """One request's sampling state: its parameters and its own seeded generator (reproducible per request)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator().manual_seed(params.seed) if params.temperature > 0 else None

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token from float32 logits [vocab]."""
        if self.generator is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs   # mass of the tokens ranked above
            sorted_probs[before >= self.params.top_p] = 0.0              # the top token always stays
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))


def sample_batch(logits: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """Next token of each request of a batch (logits [B, vocab]); greedy rows in one argmax."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    return [greedy[i] if s.generator is None else s(logits[i]) for i, s in enumerate(samplers)]
