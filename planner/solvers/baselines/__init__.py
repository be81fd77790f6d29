"""Baseline placements, each what some group of users does today (docs/planner.md#baselines): one
module per method, all behind `METHODS`.

Every baseline is deterministic (no random choice; `seed` is accepted for the common signature), returns
ranges that fit in memory and chain exactly (a GPU starts where another one ends, so the flow evaluator
finds at least one full chain from layer 0 to the last layer), and raises SolveError with a one-line
reason when it cannot place the model on the cluster.
"""

from __future__ import annotations

from planner.solvers.baselines.even import even
from planner.solvers.baselines.greedy import greedy
from planner.solvers.baselines.replicas import replica_units, replicas
from planner.solvers.baselines.separate import separate
from planner.solvers.baselines.swarm import swarm
from planner.solvers.baselines.tp_pp import tp_pp, tp_pp_placements

METHODS = {"even": even, "greedy": greedy, "swarm": swarm, "separate": separate, "tp-pp": tp_pp, "replicas": replicas}

__all__ = ["METHODS", "even", "greedy", "replica_units", "replicas", "separate", "swarm", "tp_pp", "tp_pp_placements"]
