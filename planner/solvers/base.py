"""What every placement method returns and how it reports progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from planner.problem import Placement, PlacementProblem


@dataclass(frozen=True)
class SolveResult:
    method: str
    placement: Placement
    status: str                      # optimal | feasible | time_limit
    seconds: float
    gap: float | None = None         # relative gap between the objective and the method's bound
    bound: float | None = None       # best bound the method proved on its own objective, tokens/s
    notes: tuple[str, ...] = field(default_factory=tuple)


class Progress(Protocol):
    def __call__(self, message: str) -> None: ...


def no_progress(message: str) -> None:
    """Progress sink that drops messages (tests, --json)."""


class Method(Protocol):
    def __call__(self, problem: PlacementProblem, *, time_limit: float, seed: int,
                 progress: Progress) -> SolveResult: ...
