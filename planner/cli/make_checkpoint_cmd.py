"""planner make-checkpoint --model NAME --layers N OUT"""

from __future__ import annotations

import dataclasses

import click

from planner.catalog import DTYPE_BYTES, load_model_catalog
from planner.cli.console import make_console
from planner.cluster import load_cluster
from planner.errors import InputError
from planner.units import format_bytes


@click.command(name="make-checkpoint")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--model", "model_name", required=True,
              help="A catalog model (profiles/models.ini), tiny-qwen3 | tiny-qwen2 | tiny-llama, or one defined in --cluster.")
@click.option("--cluster", "cluster_file", type=click.Path(), default=None,
              help="Take the model of this cluster file (its inline [model NAME] included).")
@click.option("--layers", type=click.IntRange(min=1), default=None, help="Decoder layers (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--dtype", type=click.Choice(sorted(DTYPE_BYTES)), default="fp32", show_default=True)
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of *.safetensors files (more than one adds model.safetensors.index.json).")
def make_checkpoint_cmd(out_dir: str, model_name: str, cluster_file: str | None, layers: int | None, seed: int,
                        dtype: str, shards: int) -> None:
    """Write a random-weight Hugging Face-style checkpoint (config.json + safetensors) for demos and tests;
    transformers loads it as Qwen3ForCausalLM / Qwen2ForCausalLM / LlamaForCausalLM."""
    from runtime.demo import TINY_MODELS  # torch: only for the commands that run models
    from runtime.checkpoint import make_checkpoint

    if cluster_file is not None:
        cluster = load_cluster(cluster_file, check_fit=False)
        if cluster.model.id != model_name:
            raise InputError(f"the cluster serves {cluster.model.id}, not {model_name}", file=cluster_file,
                             field="[cluster] model", fix=f"pass --model {cluster.model.id}")
        model = cluster.model
    else:
        models = {**load_model_catalog(), **TINY_MODELS}
        if model_name not in models:
            raise InputError(f"unknown model '{model_name}'", field="--model",
                             fix=f"use one of {', '.join(sorted(models))}, or define it in a cluster file (--cluster)")
        model = models[model_name]
    if layers is not None:
        model = dataclasses.replace(model, layers=layers)
    files = make_checkpoint(out_dir, model, seed=seed, dtype=dtype, shards=shards)
    size = sum(f.stat().st_size for f in files)
    make_console().print(f"wrote {out_dir}: {model.id} ({model.family}, {model.layers} layers, hidden "
                         f"{model.hidden_size}) in {dtype}, {len(files)} file(s), {format_bytes(size)}, seed {seed}")
