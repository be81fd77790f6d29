"""Name -> placement method, as the CLI's --method exposes them."""

from __future__ import annotations

from planner.solvers import baselines, chains, optimiser, stage_pools
from planner.solvers.base import Method

METHODS: dict[str, Method] = {**optimiser.METHODS, "chains": chains.chains, "stages": stage_pools.stage_pools, **baselines.METHODS}
DEFAULT_METHOD = "milp"
