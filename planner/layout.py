"""Layout files (layouts/*.ini): a placement with the cluster it is for and the figures it was given.

Written by `planner solve --out`, read by the simulator and the exporters. Format: docs/formats.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from planner.cluster import COORDINATOR, Cluster, load_cluster
from planner.engines import DEFAULT_ENGINE, ENGINES
from planner.errors import InputError
from planner.ini import SectionReader, read_ini
from planner.lanes import MAX_LANES
from planner.problem import Placement, PlacementProblem
from planner.serving import ServingEstimate, estimate


@dataclass(frozen=True)
class Layout:
    cluster: Cluster
    method: str
    placement: Placement
    flows: dict[tuple[str, str], float]
    figures: dict[str, str]  # static max flow, predicted throughput and latency, solver status ...
    lanes: int | None = None  # decode micro-batches per path (None: one per stage of the path)


def predicted(layout: Layout) -> ServingEstimate:
    """The serving estimate of what the layout runs: its placement with its lanes (one per stage if none)."""
    return estimate(PlacementProblem(layout.cluster), layout.placement, lanes=layout.lanes or False)


def write_layout(path: str | Path, layout: Layout) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cluster_ref = os.path.relpath(layout.cluster.path.resolve(), path.parent.resolve())
    lines = ["# layer-planner layout: which layers each GPU holds and how tokens flow.",
             "# Ranges are half-open [start, end); 'start, start' leaves a GPU unused.", "",
             "[layout]", f"cluster = {cluster_ref}", f"model = {layout.cluster.model.id}",
             f"dtype = {layout.cluster.dtype}", f"method = {layout.method}", f"engine = {layout.cluster.engine}"]
    if layout.placement.tp_groups:  # tensor-parallel groups: GPUs of one host acting as one stage
        lines.append("tp_groups = " + ", ".join("+".join(g) for g in layout.placement.tp_groups))
    if layout.lanes is not None:  # the plan's lane count; the simulator and the runtime take it by default
        lines.append(f"lanes = {layout.lanes}")
    lines += [f"{key} = {value}" for key, value in layout.figures.items()]
    lines += ["", "[nodes]"]
    by_name = {n.name: n for n in layout.cluster.nodes()}
    for name, (start, end) in layout.placement.ranges.items():
        lines.append(f"{name} = {start}, {end}    # {by_name[name].gpu}, {end - start} layers")
    lines += ["", "[flows]    # tokens/s"]
    lines += [f"{a} -> {b} = {value:.2f}" for (a, b), value in layout.flows.items()]
    path.write_text("\n".join(lines) + "\n")


def read_layout(path: str | Path, engine: str | None = None) -> Layout:
    """Load a layout and the cluster it names; check its ranges against that cluster. The cluster is
    costed for `engine`, or for the engine the layout was planned for (`engine =`, runtime if absent)."""
    path = Path(path)
    ini = read_ini(path, "layout file")
    for section in ("layout", "nodes"):
        if section not in ini:
            raise InputError(f"missing [{section}] section", file=path, fix="write layouts with `planner solve --out`")
    for section in ini.sections():
        if section not in ("layout", "nodes", "flows"):
            raise InputError(f"unknown section [{section}]", file=path, fix="sections are [layout], [nodes], [flows]")
    head = SectionReader(path, "layout", ini["layout"])
    cluster_path = (path.parent / head.text("cluster")).resolve()
    if not cluster_path.exists():
        raise InputError(f"names cluster file {cluster_path}, which does not exist", file=path,
                         field="[layout] cluster", fix="give the cluster file's path relative to the layout")
    engine = engine or head.text("engine", DEFAULT_ENGINE)
    if engine not in ENGINES:
        raise head.fail("engine", f"unknown engine '{engine}'", f"use one of {', '.join(ENGINES)}")
    cluster = load_cluster(cluster_path, engine=engine)
    for key, value in (("model", cluster.model.id), ("dtype", cluster.dtype)):
        if head.has(key) and head.text(key) != value:
            raise head.fail(key, f"'{head.text(key)}' is not the cluster's ({value} in {cluster_path.name})",
                            "re-plan with `planner solve --out`, or point `cluster` at the file it was planned for")
    problem = PlacementProblem(cluster)
    nodes = SectionReader(path, "nodes", ini["nodes"])
    ranges = dict.fromkeys((n.name for n in cluster.nodes()), (0, 0))
    groups = _read_groups(head, problem)
    grouped = {m for g in groups for m in g}
    for name in ini["nodes"]:
        if name not in ranges:
            raise nodes.fail(name, f"no such GPU in {cluster_path.name}", f"nodes are {', '.join(ranges)}")
        raw = nodes.text(name)
        try:
            start, end = (int(x) for x in raw.split(","))
        except ValueError:
            raise nodes.fail(name, f"'{raw}' is not 'START, END'", "write two layer indices, e.g. '0, 12'") from None
        if not 0 <= start <= end <= cluster.model.layers:
            raise nodes.fail(name, f"[{start}, {end}) is outside 0..{cluster.model.layers}", "fix the range")
        if end > start and name not in grouped and not problem.fits(name, start, end):
            raise nodes.fail(name, f"[{start}, {end}) does not fit: at most {problem.max_layers(name, start, end)} "
                             f"of the {cluster.model.layers} layers fit", "shorten the range or re-plan")
        ranges[name] = (start, end)
    for group in groups:
        unit = "+".join(group)
        spans = {ranges[m] for m in group}
        if len(spans) != 1:
            raise head.fail("tp_groups", f"the GPUs of {unit} hold different ranges", "give them one range in [nodes]")
        start, end = spans.pop()
        if end > start and not problem.fits(unit, start, end):
            raise head.fail("tp_groups", f"{unit} cannot hold [{start}, {end}): at most "
                            f"{problem.max_layers(unit, start, end)} layers fit", "shorten the range or re-plan")
    placement = Placement(ranges, groups)
    _check_chain(nodes, placement, cluster.model.layers)
    flows = _read_flows(SectionReader(path, "flows", ini["flows"]), placement, cluster.model.layers) \
        if "flows" in ini else {}
    lanes = head.positive_int("lanes") if head.has("lanes") else None   # absent: one lane per stage
    if lanes is not None and lanes > MAX_LANES:
        raise head.fail("lanes", f"{lanes} lanes is more than {MAX_LANES}", "give a count of decode micro-batches per path")
    figures = {k: v for k, v in ini["layout"].items()
               if k not in ("cluster", "model", "dtype", "method", "engine", "tp_groups", "lanes")}
    return Layout(cluster, head.text("method", "unknown"), placement, flows, figures, lanes)


def _check_chain(nodes: SectionReader, placement: Placement, layers: int) -> None:
    """Some chain of ranges runs from layer 0 to the last, each starting where the one before ends."""
    spans = list(placement.units().values())
    if not spans:
        raise InputError("the layout places no layers", file=nodes.file, field="[nodes]",
                         fix="give GPUs ranges, or re-plan with `planner solve --out`")
    reached, grew = {0}, True
    while grew:
        grew = False
        for start, end in spans:
            if start in reached and end not in reached:
                reached.add(end)
                grew = True
    if layers not in reached:
        furthest = max(reached)
        raise InputError(f"no chain of ranges covers the model: from layer 0 they reach layer {furthest} of {layers}, "
                         "and no range starts there", file=nodes.file, field="[nodes]",
                         fix="close the gap, or re-plan with `planner solve --out`")


def _read_flows(reader: SectionReader, placement: Placement, layers: int) -> dict[tuple[str, str], float]:
    """`A -> B = tokens/s`: each edge between the coordinator and units holding layers, B's first layer
    the one after A's last (a unit starting at layer 0 takes the coordinator's, one ending at the last
    layer sends back to it), at a finite rate of zero or more."""
    units = placement.units()
    flows: dict[tuple[str, str], float] = {}
    for key in reader.values:
        a, arrow, b = (part.strip() for part in key.partition("->"))
        if not arrow or not a or not b or "->" in b:
            raise reader.fail(key, "is not 'FROM -> TO'", "write e.g. 'coordinator -> host:0 = 120'")
        for end in (a, b):
            if end != COORDINATOR and end not in units:
                raise reader.fail(key, f"'{end}' is not the coordinator nor a unit holding layers",
                                  f"units are {', '.join(units) or 'none'}")
        after = 0 if a == COORDINATOR else units[a][1]
        starts = layers if b == COORDINATOR else units[b][0]
        if a == b or (a == COORDINATOR and b == COORDINATOR) or after != starts:
            raise reader.fail(key, f"does not join layers: {a} ends before layer {after}, {b} "
                                   f"{'expects ' + str(layers) if b == COORDINATOR else 'starts at ' + str(starts)}",
                              "join units whose ranges meet, or re-plan with `planner solve --out`")
        raw = reader.text(key)
        try:
            rate = float(raw)
        except ValueError:
            raise reader.fail(key, f"'{raw}' is not a number of tokens/s", "write e.g. '120.5'") from None
        if not (math.isfinite(rate) and rate >= 0):
            raise reader.fail(key, f"must be a finite number of tokens/s >= 0, got {raw}", "write e.g. '120.5'")
        flows[(a, b)] = rate
    return flows


def _read_groups(head: SectionReader, problem: PlacementProblem) -> tuple[tuple[str, ...], ...]:
    """`tp_groups = a:0+a:1, b:0+b:1`: tensor-parallel groups, each GPUs of one host and one type."""
    if not head.has("tp_groups"):
        return ()
    groups, seen = [], set()
    for unit in head.items("tp_groups", "list groups as 'HOST:I+HOST:J, ...' with no empty item"):
        try:
            members = problem.group_members(unit)
            if len(members) < 2:
                raise ValueError(f"group {unit!r} has one GPU")
        except (KeyError, ValueError) as exc:
            raise head.fail("tp_groups", str(exc).strip("'\""), "list groups as 'HOST:I+HOST:J, ...'") from None
        if seen & set(members):
            raise head.fail("tp_groups", f"a GPU of {unit} is in two groups", "put each GPU in one group at most")
        seen |= set(members)
        groups.append(members)
    return tuple(groups)
