"""planner host --config CFG"""

from __future__ import annotations

import click

from runtime.config import read_runtime_config
from planner.routing import ROUTERS


@click.command(name="host")
@click.option("--config", "config_file", required=True, type=click.Path(), help="runtime.json from `planner export`.")
@click.option("--checkpoint", default=None, help="Model directory, for its stop ids and tokenizer (default: the config's).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=None, help="Override the config's HTTP port.")
@click.option("--bind", default=None, help="HTTP address to listen on (default: the host's address).")
@click.option("--routing", type=click.Choice(sorted(ROUTERS)), default=None, help="Override the config's policy.")
def host_cmd(config_file: str, checkpoint: str | None, http_port: int | None, bind: str | None,
             routing: str | None) -> None:
    """Coordinate the workers and serve POST /v1/completions and /v1/chat/completions, GET /v1/models,
    /health and /metrics (OpenAI-compatible, as vLLM serves them, on FastAPI + uvicorn)."""
    config = read_runtime_config(config_file)
    from runtime.http import serve  # torch: only for the commands that run models

    serve(config, checkpoint=checkpoint or config.checkpoint, address=bind or config.host.address,
          port=config.host.http_port if http_port is None else http_port, routing=routing)
