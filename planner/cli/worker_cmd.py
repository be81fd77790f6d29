"""planner worker --config CFG --node HOST:INDEX"""

from __future__ import annotations

import click

from planner.errors import InputError
from runtime.config import read_runtime_config


@click.command(name="worker")
@click.option("--config", "config_file", required=True, type=click.Path(), help="runtime.json from `planner export`.")
@click.option("--node", required=True,
              help="Which worker of the config this process is (e.g. host1:0; each GPU of a tensor-parallel group by its own name).")
@click.option("--checkpoint", default=None, help="Model directory (default: the config's).")
def worker_cmd(config_file: str, node: str, checkpoint: str | None) -> None:
    """Serve one pipeline stage (or one rank of a tensor-parallel group): load its layers, batch what
    arrives, pass activations on."""
    config = read_runtime_config(config_file)
    config.member(node)
    checkpoint = checkpoint or config.checkpoint
    if not checkpoint:
        raise InputError("no checkpoint", file=config_file, field="checkpoint", fix="pass --checkpoint DIR")
    from runtime.worker import run_worker  # torch: only for the commands that run models

    run_worker(config, node, checkpoint)
