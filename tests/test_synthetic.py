"""Generated clusters: seeded determinism and the shape each generator promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.cluster import load_cluster
from planner.synthetic import (CROSS_LATENCY_MS, CROSS_MB_S, HELIX_THREE_REGIONS, SEVEN_KINDS_REGIONS, cluster_text,
                               regional_cluster_text, write_regional_cluster)

MB = 1e6


def test_same_seed_same_cluster_other_seed_other_links() -> None:
    assert regional_cluster_text(HELIX_THREE_REGIONS, seed=3) == regional_cluster_text(HELIX_THREE_REGIONS, seed=3)
    assert regional_cluster_text(HELIX_THREE_REGIONS, seed=3) != regional_cluster_text(HELIX_THREE_REGIONS, seed=4)
    assert cluster_text({"l4": 2, "t4": 2}, seed=1) == cluster_text({"l4": 2, "t4": 2}, seed=1)


@pytest.mark.parametrize("static", [False, True])
def test_helix_three_regions_shape(tmp_path: Path, static: bool) -> None:
    cluster = load_cluster(write_regional_cluster(tmp_path / "c.ini", HELIX_THREE_REGIONS, seed=7, static=static))
    gpu_hosts = [h for h in cluster.hosts if h.gpus]
    assert len(gpu_hosts) == 24 and all(len(h.gpus) == 1 for h in gpu_hosts)
    per_region: dict[str, dict[str, int]] = {}
    for host in gpu_hosts:
        kind = host.gpus[0].removesuffix("-static")
        per_region.setdefault(host.region, {}).setdefault(kind, 0)
        per_region[host.region][kind] += 1
    assert per_region == {"r0": {"a100-40gb": 4}, "r1": {"t4": 8, "l4": 2}, "r2": {"l4": 6, "t4": 4}}
    coordinator = cluster.host(cluster.coordinator_host)
    assert not coordinator.gpus and coordinator.region not in per_region  # in no region of the GPUs
    pairs = set()
    for host in gpu_hosts:
        link = cluster.coordinator_link(host.name)
        assert CROSS_MB_S[0] * MB <= link.bandwidth_bytes_per_s <= CROSS_MB_S[1] * MB
        assert CROSS_LATENCY_MS[0] <= link.latency_s * 1e3 <= CROSS_LATENCY_MS[1]
        for other in gpu_hosts:
            if other.name == host.name:
                continue
            link = cluster.link(host.name, other.name)
            if other.region == host.region:
                assert link.bandwidth_bytes_per_s == pytest.approx(1.3e9) and link.latency_s == pytest.approx(1e-3)
            else:
                assert CROSS_MB_S[0] * MB <= link.bandwidth_bytes_per_s <= CROSS_MB_S[1] * MB
                assert CROSS_LATENCY_MS[0] <= link.latency_s * 1e3 <= CROSS_LATENCY_MS[1]
                pairs.add((link.bandwidth_bytes_per_s, link.latency_s))
    assert len(pairs) > 100  # every cross-region host pair draws its own link (4x10 + 4x10 + 10x10 pairs)


def test_seven_kinds_shape(tmp_path: Path) -> None:
    cluster = load_cluster(write_regional_cluster(tmp_path / "c.ini", SEVEN_KINDS_REGIONS, static=True))
    kinds = [h.gpus[0] for h in cluster.hosts if h.gpus]
    assert len(kinds) == 42 and len(set(kinds)) == 7
