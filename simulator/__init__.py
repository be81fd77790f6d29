"""Discrete-event simulator of a served layout: `simulate(layout, SimConfig(...)) -> SimResult`.

Folders follow the domain: engine (event core), workload (arrivals, lengths, requests), stage (a GPU's
continuous batching), network (links), metrics (what is measured), simulation (the coordinator and
how it all connects). Routing policies live in planner.routing, shared with the runtime. The hot ones
are compiled at install where the machine can (setup.py); native decides whether those or their sources run.
"""

from pathlib import Path

from simulator.native import is_compiled, run_sources_unless_compiled_match

run_sources_unless_compiled_match(Path(__file__).resolve().parent)

from simulator import stage as _stage  # noqa: E402  (after the choice above)
from simulator.metrics import SimResult
from simulator.simulation import SimConfig, Simulation, simulate
from simulator.workload import LENGTH_KINDS, parse_workload

COMPILED_RUNNING = is_compiled(_stage)   # the event loop runs compiled (benchmarks/simulate.py says so)

__all__ = ["COMPILED_RUNNING", "LENGTH_KINDS", "SimConfig", "SimResult", "Simulation", "parse_workload", "simulate"]
