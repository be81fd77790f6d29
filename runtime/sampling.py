"""Choosing the next token of every request of a batch from its logits, in one call on the device.

The host sets each request's parameters (greedy, temperature, nucleus top-p, seed); the stage holding the
LM head applies them, so only token ids travel back to the host (the few bytes per token the planner's
cost model counts, not a vocab of logits).

Seeded draws are counter-based, not a generator that moves on: the random number behind token i at
position p of a request is a hash of (seed, p, i). A draw therefore depends only on the request, never on
which other requests share its batch or how many steps the stage ran, so a batch is sampled with tensor
operations alone, and a request re-admitted on another path after a worker died (prompt plus the tokens
so far re-prefilled) draws exactly the tokens it would have drawn. The draw itself is the exponential
race: argmax_i p_i / E_i with E_i ~ Exp(1) picks i with probability p_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF
GOLDEN32 = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive counters over the 32-bit range
GREEDY_BELOW = 1e-5    # a temperature under this samples greedily, as vLLM's does (dividing by one that
#                        float32 rounds to 0 would make every probability nan)


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

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for x in [0, 2^32), in int64 without overflow: two 16-bit halves."""
    low, high = x & 0xFFFF, x >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift, multiply rounds): every input bit moves every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _row_keys(params: list[SamplingParams], positions: list[int], device: torch.device) -> torch.Tensor:
    """One 32-bit key per row from (seed, position); a seed counts modulo 2^64 (the API's int64 range)."""
    seeds = [p.seed % (1 << 64) for p in params]
    # both halves through the mixer, the high one after the low one is mixed: folding them by xor made
    # seeds 5 and 5 << 32 draw alike
    low = torch.tensor([s & MASK32 for s in seeds], dtype=torch.int64, device=device)
    high = torch.tensor([s >> 32 for s in seeds], dtype=torch.int64, device=device)
    seeds = _mix32(_mix32(low ^ 0x2545F491) ^ high)
    counters = torch.tensor([c & MASK32 for c in positions], dtype=torch.int64, device=device)
    return _mix32(seeds ^ _mix32(_mul32(counters, GOLDEN32) ^ 0x632BE5AB))


def uniforms(params: list[SamplingParams], positions: list[int], vocab: int, device: torch.device) -> torch.Tensor:
    """[rows, vocab] numbers in (0, 1), each a function of (seed, position, token id) alone."""
    keys = _row_keys(params, positions, device)
    ids = _mul32(torch.arange(vocab, dtype=torch.int64, device=device), GOLDEN32)
    bits = _mix32(keys[:, None] ^ ids[None, :])
    return (bits.to(torch.float64) + 0.5) / 2.0**32


def sample_batch(logits: torch.Tensor, params: list[SamplingParams], positions: list[int]) -> list[int]:
    """Next token of each row of `logits` [B, vocab] (row b is the request's token at `positions[b]`)."""
    tokens = torch.argmax(logits, dim=-1)
    random_rows = [i for i, p in enumerate(params) if not p.greedy]
    if random_rows:
        rows = torch.tensor(random_rows, device=logits.device)
        chosen = [params[i] for i in random_rows]
        temperature = torch.tensor([p.temperature for p in chosen], dtype=torch.float32, device=logits.device)
        probs = torch.softmax(logits[rows].float() / temperature[:, None], dim=-1)
        top_p = torch.tensor([p.top_p for p in chosen], dtype=torch.float32, device=logits.device)
        if bool((top_p < 1.0).any()):
            ranked, order = torch.sort(probs, dim=-1, descending=True)
            above = torch.cumsum(ranked, dim=-1) - ranked              # mass of the tokens ranked higher
            cut = above >= top_p[:, None]
            cut[:, 0] = False                                          # the top token always stays (a
            ranked = ranked.masked_fill(cut, 0.0)                      # top_p float32 rounds to 0 included)
            probs = torch.zeros_like(probs).scatter_(-1, order, ranked)
        race = -torch.log(uniforms(chosen, [positions[i] for i in random_rows], logits.shape[-1], logits.device))
        tokens[rows] = torch.argmax(probs / race.to(probs.dtype), dim=-1)
    return tokens.tolist()
