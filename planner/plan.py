"""Solve a cluster with a method and score the result independently: what `solve` and `compare` show."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from planner.cluster import Cluster
from planner.errors import InputError, SolveError
from planner.problem import Placement, PlacementProblem
from planner.serving import ServingEstimate, estimate, round_trip_max_flow
from planner.solvers.base import Progress, SolveResult, no_progress
from planner.solvers.registry import DEFAULT_METHOD, METHODS


@dataclass(frozen=True)
class Plan:
    cluster: Cluster
    problem: PlacementProblem
    result: SolveResult
    serving: ServingEstimate
    upper_bound: float
    round_trip_max_flow: float  # max flow with batches turned over once per shortest round trip
    notes: tuple[str, ...] = ()  # what the re-scoring left out to keep within the time limit

    @property
    def placement(self) -> Placement:
        return self.result.placement

    @property
    def lanes(self) -> int | None:
        """Decode micro-batches per path the estimate chose (None: one per stage of the path)."""
        return self.serving.lanes


def score(problem: PlacementProblem, result: SolveResult, max_tpot_s: float | None = None,
          max_ttft_s: float | None = None, deadline: float = math.inf) -> Plan:
    """Re-score a method's placement with the independent evaluators; refuse one that does not serve.
    The layout is always checked in full; past `deadline` (a time.perf_counter() value) the serving
    estimate and the round-trip max flow stop early, and the plan's notes say what was cut."""
    for group in result.placement.tp_groups:
        try:
            problem.group_members("+".join(group))
        except (KeyError, ValueError) as exc:
            raise SolveError(f"{result.method} returned a bad tensor-parallel group: {exc}") from None
    for name, (start, end) in result.placement.units().items():
        if not problem.fits(name, start, end):
            raise SolveError(f"{result.method} returned {name} = [{start}, {end}), which does not fit in memory")
    serving = estimate(problem, result.placement, max_tpot_s=max_tpot_s, max_ttft_s=max_ttft_s, deadline=deadline)
    if serving.max_flow <= 0:  # the static max flow the estimate starts from
        raise SolveError(f"{result.method} returned a placement that carries no tokens "
                         "(no chain of GPUs covers every layer)")
    if serving.throughput <= 0 and (max_tpot_s or max_ttft_s) and serving.complete:  # (else the notes say why)
        limits = " and ".join(f"--max-{name} {value * 1e3:g} ms" for name, value
                              in (("tpot", max_tpot_s), ("ttft", max_ttft_s)) if value)
        idle = ", ".join(f"{name} {value * 1e3:,.0f} ms" for name, value
                         in (("TPOT", serving.tpot_s), ("TTFT", serving.ttft_s)) if value is not None)
        raise SolveError(f"no placement found by {result.method} meets {limits}: the best one reaches {idle} "
                         "even when idle; raise the limit")
    upper = problem.upper_bound()
    if problem.static and result.bound is not None:  # a method's own proven bound on static max flow
        upper = max(min(upper, result.bound), serving.max_flow)
    notes: tuple[str, ...] = ()
    if time.perf_counter() < deadline:
        round_trip, complete = round_trip_max_flow(problem, result.placement, deadline)
        if not complete:
            notes = ("time limit: the round-trip max flow stopped before its fixed point settled; "
                     "it is likely reported high (capacities start at their compute bound and fall as it settles)",)
    else:  # no time left at all: the static max flow, which the round-trip one never exceeds
        round_trip = serving.max_flow
        notes = ("time limit: the round-trip max flow was not computed; static max flow stands in for it",)
    return Plan(problem.cluster, problem, result, serving, upper, round_trip, notes)


def served_at_tpot(cluster: Cluster, tpot_s: float, *, time_limit: float = 60.0, seed: int = 0) -> float | None:
    """What the default method serves when held to `tpot_s` per output token (None: it cannot)."""
    try:
        return solve(cluster, DEFAULT_METHOD, time_limit=time_limit, seed=seed, max_tpot_s=tpot_s).serving.throughput
    except SolveError:
        return None


def solve(cluster: Cluster, method: str, *, time_limit: float = 60.0, seed: int = 0,
          max_tpot_s: float | None = None, max_ttft_s: float | None = None,
          progress: Progress = no_progress) -> Plan:
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'", field="--method", fix=f"use one of {', '.join(METHODS)}")
    began = time.perf_counter()
    problem = PlacementProblem(cluster, max_tpot_s=max_tpot_s, max_ttft_s=max_ttft_s)
    try:
        result = METHODS[method](problem, time_limit=time_limit, seed=seed, progress=progress)
        # methods keep a share of the limit for this re-scoring; it stops by the limit itself
        return score(problem, result, max_tpot_s, max_ttft_s, deadline=began + time_limit)
    except SolveError as exc:   # say which cluster file could not be placed
        raise SolveError(f"{cluster.path}: {exc}") from None
