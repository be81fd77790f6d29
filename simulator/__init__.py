"""Discrete-event simulator of a served layout: `simulate(layout, SimConfig(...)) -> SimResult`.

Folders follow the domain: engine (event core), workload (arrivals, lengths, requests), stage (a GPU's
continuous batching), network (links), metrics (what is measured), simulation (the coordinator and
how it all connects). Routing policies live in planner.routing, shared with the runtime.
"""

from simulator.metrics import SimResult
from simulator.simulation import SimConfig, Simulation, simulate
from simulator.workload import LENGTH_KINDS, parse_workload

__all__ = ["LENGTH_KINDS", "SimConfig", "SimResult", "Simulation", "parse_workload", "simulate"]
