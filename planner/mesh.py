"""TP x DP meshes for torchrun (seed 003): `planner mesh CLUSTER.ini --tp N`.

Tensor parallelism all-reduces every layer, so its groups take the fastest links: N consecutive GPUs of
one host (its `gpu_link`). Data parallelism only all-reduces gradients once a step, so it runs across the
groups, over the network. Ranks follow torchrun's static numbering (node_rank x nproc_per_node +
local_rank) and torch's DeviceMesh("dp", "tp") layout: rank = dp_rank x N + tp_rank, so TP group g is
ranks gN .. gN+N-1 and DP group t holds the t-th rank of every TP group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.cluster import Cluster
from planner.errors import InputError

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Rank:
    rank: int          # global rank
    host: str
    node_rank: int
    local_rank: int    # = the CUDA device index on the host
    gpu: str
    tp_group: int      # = the rank's DP rank (which replica of the model it belongs to)
    tp_rank: int
    dp_group: int      # = the rank's TP rank (the shard it holds)


@dataclass(frozen=True)
class Mesh:
    tp: int
    dp: int
    hosts: tuple[str, ...]          # node rank order; the master first
    nproc_per_node: int
    master_addr: str
    master_port: int
    ranks: tuple[Rank, ...]


def build_mesh(cluster: Cluster, tp: int, master_port: int = DEFAULT_MASTER_PORT) -> Mesh:
    """The mesh of every GPU of the cluster, or an InputError saying why `tp` cannot be used."""
    path = cluster.path
    hosts = [h for h in cluster.hosts if h.gpus]
    if not hosts:
        raise InputError("no host has GPUs", file=path, fix="list GPUs with `gpus = TYPE * N`")
    if tp < 1:
        raise InputError(f"--tp {tp} is not a group size", field="--tp", fix="give 1 or more")
    for h in hosts:
        if tp > len(h.gpus):
            raise InputError(f"--tp {tp} is more than the {len(h.gpus)} GPU(s) of host {h.name}; tensor-parallel "
                             f"groups stay inside a host (they all-reduce every layer)", field="--tp",
                             fix=f"use a size dividing {len(h.gpus)}")
        if len(h.gpus) % tp:
            raise InputError(f"--tp {tp} does not divide the {len(h.gpus)} GPUs of host {h.name}", field="--tp",
                             fix=f"use a size dividing {len(h.gpus)}")
    counts = {len(h.gpus) for h in hosts}
    if len(counts) > 1:
        raise InputError(f"hosts have different GPU counts ({', '.join(f'{h.name}: {len(h.gpus)}' for h in hosts)});"
                         " torchrun's static ranks need the same --nproc-per-node on every node", file=path,
                         fix="list hosts with equal GPU counts, or run one mesh per group of equal hosts")
    # the master (node rank 0): the coordinator's host if it has GPUs, else the first host with GPUs
    hosts.sort(key=lambda h: h.name != cluster.coordinator_host)
    if len(hosts) > 1:
        for h in hosts:
            if not h.address:
                raise InputError(f"host {h.name} has no address; a multi-node mesh needs the master's and every "
                                 f"node's address", file=path, field=f"[host {h.name}] address",
                                 fix="add `address = IP` to every host with GPUs")
        master = hosts[0].address
    else:
        master = hosts[0].address or "127.0.0.1"
    nproc = counts.pop()
    ranks = []
    for node_rank, h in enumerate(hosts):
        for local, gpu in enumerate(h.gpus):
            rank = node_rank * nproc + local
            ranks.append(Rank(rank, h.name, node_rank, local, gpu, rank // tp, rank % tp, rank % tp))
    return Mesh(tp, len(ranks) // tp, tuple(h.name for h in hosts), nproc, master, master_port, tuple(ranks))


def torchrun_command(mesh: Mesh, node_rank: int) -> str:
    return (f"torchrun --nnodes={len(mesh.hosts)} --node-rank={node_rank} --nproc-per-node={mesh.nproc_per_node} "
            f"--master-addr={mesh.master_addr} --master-port={mesh.master_port}")


def write_mesh(mesh: Mesh, out_dir: str | Path) -> list[Path]:
    """OUT/torchrun-HOST.sh per host (the training script and its arguments follow as "$@")."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for node_rank, host in enumerate(mesh.hosts):
        ranks = [r for r in mesh.ranks if r.host == host]
        text = "\n".join([
            "#!/usr/bin/env bash",
            f"# {host}: node rank {node_rank} of {len(mesh.hosts)}, global ranks {ranks[0].rank}-{ranks[-1].rank}; "
            f"TP {mesh.tp} x DP {mesh.dp} (written by `planner mesh`).",
            f"# Usage: torchrun-{host}.sh TRAIN.py [ARGS...]; start node rank 0 first.",
            "set -euo pipefail",
            f"export TP_SIZE={mesh.tp} DP_SIZE={mesh.dp}",
            f'exec {torchrun_command(mesh, node_rank)} "$@"', ""])
        path = out_dir / f"torchrun-{host}.sh"
        path.write_text(text)
        path.chmod(0o755)
        written.append(path)
    return written
