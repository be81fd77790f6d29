"""Layout files (layouts/*.ini): a placement with the cluster it is for and the figures it was given.

Written by `planner solve --out`, read by the simulator and the exporters. Format: docs/formats.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from planner.cluster import Cluster, load_cluster
from planner.engines import DEFAULT_ENGINE, ENGINES
from planner.errors import InputError
from planner.ini import SectionReader, read_ini
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
    head = SectionReader(path, "layout", ini["layout"])
    cluster_path = (path.parent / head.text("cluster")).resolve()
    if not cluster_path.exists():
        raise InputError(f"names cluster file {cluster_path}, which does not exist", file=path,
                         field="[layout] cluster", fix="give the cluster file's path relative to the layout")
    engine = engine or head.text("engine", DEFAULT_ENGINE)
    if engine not in ENGINES:
        raise head.fail("engine", f"unknown engine '{engine}'", f"use one of {', '.join(ENGINES)}")
    cluster = load_cluster(cluster_path, engine=engine)
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
        if end > start and name not in grouped and not problem.fits(name, start, end):
            raise nodes.fail(name, f"[{start}, {end}) does not fit: at most {problem.max_layers(name, start, end)} "
                             f"of the {cluster.model.layers} layers fit", "shorten the range or re-plan")
        if not 0 <= start <= end <= cluster.model.layers:
            raise nodes.fail(name, f"[{start}, {end}) is outside 0..{cluster.model.layers}", "fix the range")
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
    flows = {}
    if "flows" in ini:
        for key, value in ini["flows"].items():
            a, _, b = key.partition("->")
            flows[(a.strip(), b.strip())] = float(value)
    lanes = head.positive_int("lanes") if head.has("lanes") else None   # absent: one lane per stage
    figures = {k: v for k, v in ini["layout"].items()
               if k not in ("cluster", "model", "dtype", "method", "engine", "tp_groups", "lanes")}
    return Layout(cluster, head.text("method", "unknown"), Placement(ranges, groups), flows, figures, lanes)


def _read_groups(head: SectionReader, problem: PlacementProblem) -> tuple[tuple[str, ...], ...]:
    """`tp_groups = a:0+a:1, b:0+b:1`: tensor-parallel groups, each GPUs of one host and one type."""
    if not head.has("tp_groups"):
        return ()
    groups, seen = [], set()
    for unit in filter(None, (x.strip() for x in head.text("tp_groups").split(","))):
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
