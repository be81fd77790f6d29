"""Name -> placement method, as the CLI's --method exposes them."""

from __future__ import annotations

from planner.solvers import baselines
from planner.solvers.base import Method

METHODS: dict[str, Method] = {**baselines.METHODS}
DEFAULT_METHOD = "even"
