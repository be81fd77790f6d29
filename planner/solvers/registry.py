"""Name -> placement method, as the CLI's --method exposes them."""

from __future__ import annotations

from planner.solvers import baselines, chains, milp
from planner.solvers.base import Method

METHODS: dict[str, Method] = {**milp.METHODS, "chains": chains.chains, **baselines.METHODS}
DEFAULT_METHOD = "milp"
