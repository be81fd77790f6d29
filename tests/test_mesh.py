"""planner mesh: TP groups inside hosts, DP across them, torchrun commands per node (seed 003)."""

from __future__ import annotations

import re

import pytest

from conftest import HETERO

DGX = """\
[cluster]
model = qwen3-8b
dtype = bf16
coordinator = dgx011

[host dgx011]
gpus = a100-80gb * 8
gpu_link = 300 GB/s, 0.005 ms
address = 192.168.1.100

[host dgx092]
gpus = a100-80gb * 8
gpu_link = 300 GB/s, 0.005 ms
address = 192.168.1.101

[network]
default = 25 GB/s, 0.01 ms
"""


def test_seed_003_mesh(run_cli, write_ini, tmp_path):
    out = tmp_path / "mesh"
    code, text, err = run_cli("mesh", write_ini(DGX), "--tp", "2", "--master-port", "29600", "--out", out)
    assert code == 0, err
    assert "TP 2 x DP 8 = 16 ranks" in text
    rows = [r for r in text.splitlines() if re.match(r"^│\s+\d+ │", r)]
    assert len(rows) == 16
    cells = [[c.strip() for c in r.strip("│").split("│")] for r in rows]
    for rank, host, node_rank, local, gpu, tp_group, tp_rank, dp_group, dp_rank in cells:
        rank = int(rank)
        assert host == ("dgx011" if rank < 8 else "dgx092") and int(local) == rank % 8
        assert int(tp_group) == rank // 2 and int(dp_group) == rank % 2  # TP pairs on one host
    for node_rank, host in enumerate(("dgx011", "dgx092")):
        script = (out / f"torchrun-{host}.sh").read_text()
        (command,) = [l for l in script.splitlines() if "torchrun " in l and not l.startswith("#")]
        flags = dict(re.findall(r"--([\w-]+)=(\S+)", command))
        assert flags == {"nnodes": "2", "node-rank": str(node_rank), "nproc-per-node": "8",
                         "master-addr": "192.168.1.100", "master-port": "29600"}


@pytest.mark.parametrize("tp, words", [("3", "does not divide"), ("16", "more than the 8 GPU(s)"), ("0", "not a group")])
def test_mesh_refuses_impossible_sizes(run_cli, write_ini, tp, words):
    code, _, err = run_cli("mesh", write_ini(DGX), "--tp", tp)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_mesh_needs_addresses_for_several_nodes(run_cli, write_ini):
    code, _, err = run_cli("mesh", write_ini(DGX.replace("address = 192.168.1.101\n", "")), "--tp", "2")
    assert code == 2 and "dgx092 has no address" in err and len(err.strip().splitlines()) == 1


def test_mesh_single_host_defaults_to_loopback(run_cli, write_ini, tmp_path):
    one = DGX.split("[host dgx092]")[0].replace("address = 192.168.1.100\n", "")
    code, text, err = run_cli("mesh", write_ini(one), "--tp", "4")
    assert code == 0, err
    assert "--nnodes=1 --node-rank=0 --nproc-per-node=8 --master-addr=127.0.0.1 --master-port=29500" in text


def test_mesh_hetero(run_cli):
    code, text, err = run_cli("mesh", HETERO, "--tp", "2")
    assert code == 0, err
    assert "TP 2 x DP 2 = 4 ranks" in text
