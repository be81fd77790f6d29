"""Routing policies (planner/routing.py): graphs built from layouts, weights honoured, KV-aware choices."""

from collections import Counter

import pytest

from planner.cluster import load_cluster
from planner.flow import max_flow
from planner.problem import Placement, PlacementProblem
from planner.routing import COORDINATOR, ROUTERS, MaxFlowRouter, RouteGraph, make_router

from conftest import HETERO, PROFILES

ALL_OPEN = lambda unit: True  # noqa: E731


def graph(edges: dict[tuple[str, str], float]) -> RouteGraph:
    successors: dict[str, list[str]] = {}
    for a, b in edges:
        successors.setdefault(a, []).append(b)
    return RouteGraph({a: tuple(sorted(bs)) for a, bs in successors.items()}, dict(edges))


# coordinator -> a | b (3:1), a -> c | d (1:1), b -> d, c and d -> coordinator
DIAMOND = {(COORDINATOR, "a"): 300.0, (COORDINATOR, "b"): 100.0, ("a", "c"): 150.0, ("a", "d"): 150.0,
           ("b", "d"): 100.0, ("c", COORDINATOR): 150.0, ("d", COORDINATOR): 250.0}


def edge_counts(paths) -> Counter:
    counts: Counter = Counter()
    for path in paths:
        hops = [COORDINATOR, *path, COORDINATOR]
        counts.update(zip(hops, hops[1:]))
    return counts


def test_graph_from_a_chain_layout():
    cluster = load_cluster(HETERO)
    problem = PlacementProblem(cluster)
    placement = Placement({"host1:0": (0, 10), "host1:1": (10, 20), "host2:0": (20, 30), "host2:1": (30, 40)})
    g = RouteGraph.build(problem, placement, max_flow(problem, placement).edge_flows)
    assert g.successors[COORDINATOR] == ("host1:0",)
    assert g.successors["host1:0"] == ("host1:1",)
    assert g.successors["host2:1"] == (COORDINATOR,)
    assert all(w > 0 for w in g.weights.values())


def test_graph_joins_every_unit_starting_where_one_ends():
    cluster = load_cluster(HETERO)
    problem = PlacementProblem(cluster)
    placement = Placement({"host1:0": (0, 20), "host1:1": (0, 20), "host2:0": (20, 40), "host2:1": (20, 40)})
    g = RouteGraph.build(problem, placement, {})
    assert g.successors[COORDINATOR] == ("host1:0", "host1:1")
    assert g.successors["host1:1"] == ("host2:0", "host2:1")
    assert set(g.weights.values()) == {0.0}


def test_maxflow_honours_edge_weights_exactly():
    router = MaxFlowRouter(graph(DIAMOND))
    counts = edge_counts(router.route(ALL_OPEN) for _ in range(4000))
    total = 4000
    for edge, weight in DIAMOND.items():
        assert counts[edge] / total == pytest.approx(weight / 400.0, abs=0.002), edge


def test_maxflow_interleaves_rather_than_runs():
    router = MaxFlowRouter(graph({(COORDINATOR, "a"): 1.0, (COORDINATOR, "b"): 1.0,
                                  ("a", COORDINATOR): 1.0, ("b", COORDINATOR): 1.0}))
    firsts = [router.route(ALL_OPEN)[0] for _ in range(8)]
    assert firsts == ["a", "b"] * 4


def test_maxflow_on_a_layout_with_split_flows():
    """mixed-campus placed by `chains`: several paths share GPUs; edges carry their max-flow share."""
    cluster = load_cluster(PROFILES / "mixed-campus.ini")
    problem = PlacementProblem(cluster)
    ranges = {n.name: (0, 0) for n in cluster.nodes()}
    ranges.update({"ws1:0": (0, 18), "ws1:1": (18, 37), "ws2:0": (37, 51), "ws2:1": (51, 64),
                   "cloud-l20:0": (0, 29), "cloud-a10:0": (29, 47), "cloud-a10:1": (29, 47),
                   "cloud-a10:2": (47, 64), "cloud-a10:3": (47, 64)})
    placement = Placement(ranges)
    flows = max_flow(problem, placement).edge_flows
    router = make_router("maxflow", RouteGraph.build(problem, placement, flows))
    n = 5000
    counts = edge_counts(router.route(ALL_OPEN) for _ in range(n))
    total = sum(v for (a, _), v in flows.items() if a == COORDINATOR)
    for edge, value in flows.items():
        assert counts[edge] / n == pytest.approx(value / total, abs=0.01), edge


def test_kv_aware_skips_full_hops_and_dead_ends():
    router = MaxFlowRouter(graph(DIAMOND))
    assert all(router.route(lambda u: u != "a") == ("b", "d") for _ in range(10))
    # c is full: from a only d leads on
    assert all(router.route(lambda u: u != "c")[-1] == "d" for _ in range(10))
    # d is full: b is a dead end, so every request goes a -> c
    assert all(router.route(lambda u: u != "d") == ("a", "c") for _ in range(10))
    assert router.route(lambda u: u not in ("c", "d")) is None


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_every_policy_returns_valid_open_paths(name):
    router = make_router(name, graph(DIAMOND), seed=3)
    for _ in range(50):
        path = router.route(lambda u: u != "c", load=lambda u: 0)
        hops = [COORDINATOR, *path, COORDINATOR]
        assert all(b in router.graph.successors[a] for a, b in zip(hops, hops[1:]))
        assert "c" not in path


def test_random_is_seeded_and_spreads_uniformly():
    a = make_router("random", graph(DIAMOND), seed=7)
    b = make_router("random", graph(DIAMOND), seed=7)
    assert [a.route(ALL_OPEN) for _ in range(50)] == [b.route(ALL_OPEN) for _ in range(50)]
    router = make_router("random", graph(DIAMOND), seed=11)
    share = Counter(router.route(ALL_OPEN)[0] for _ in range(4000))["a"] / 4000
    assert share == pytest.approx(0.5, abs=0.03)  # blind to the 3:1 flows


def test_round_robin_cycles_in_name_order():
    router = make_router("round-robin", graph(DIAMOND))
    assert [router.route(ALL_OPEN)[0] for _ in range(4)] == ["a", "b", "a", "b"]


def test_shortest_queue_takes_the_least_loaded():
    router = make_router("shortest-queue", graph(DIAMOND))
    load = {"a": 5, "b": 2, "c": 0, "d": 1}
    assert router.route(ALL_OPEN, load=load.get) == ("b", "d")
    load["b"] = 9
    assert router.route(ALL_OPEN, load=load.get) == ("a", "c")


def test_registry_names():
    assert set(ROUTERS) == {"maxflow", "random", "shortest-queue", "round-robin"}
    with pytest.raises(KeyError):
        make_router("fastest", graph(DIAMOND))
