"""planner mesh CLUSTER.ini --tp N [--master-port P] [--out DIR]"""

from __future__ import annotations

import click
from rich.table import Table

from planner.cli.console import make_console
from planner.cluster import load_cluster
from planner.mesh import DEFAULT_MASTER_PORT, build_mesh, torchrun_command, write_mesh


@click.command(name="mesh")
@click.argument("cluster_file", type=click.Path())
@click.option("--tp", type=int, required=True, help="GPUs per tensor-parallel group (inside one host).")
@click.option("--master-port", type=click.IntRange(1, 65535), default=DEFAULT_MASTER_PORT, show_default=True,
              help="torchrun's rendezvous port on the master (node rank 0).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write torchrun-HOST.sh for each host here.")
def mesh_cmd(cluster_file: str, tp: int, master_port: int, out_dir: str | None) -> None:
    """Group every GPU into TP groups on each host's fastest links and DP groups across them; print the
    rank table and the torchrun command of each node (seed 003)."""
    cluster = load_cluster(cluster_file, check_fit=False)
    mesh = build_mesh(cluster, tp, master_port)
    console = make_console()
    table = Table(title=f"TP {mesh.tp} x DP {mesh.dp} = {len(mesh.ranks)} ranks")
    for col in ("rank", "host", "node rank", "local rank", "GPU", "TP group", "TP rank", "DP group", "DP rank"):
        table.add_column(col, justify="left" if col in ("host", "GPU") else "right")
    for r in mesh.ranks:
        table.add_row(str(r.rank), r.host, str(r.node_rank), str(r.local_rank), f"{r.gpu} (cuda:{r.local_rank})",
                      str(r.tp_group), str(r.tp_rank), str(r.dp_group), str(r.tp_group))
    console.print(table)
    for node_rank, host in enumerate(mesh.hosts):
        console.print(f"{host}: {torchrun_command(mesh, node_rank)} TRAIN.py")
    if out_dir:
        for path in write_mesh(mesh, out_dir):
            console.print(f"wrote {path}")
