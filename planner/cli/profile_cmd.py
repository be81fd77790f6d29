"""planner profile --checkpoint DIR --device cpu|cuda"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys

import click

from planner.catalog import DTYPE_BYTES, load_model_catalog
from planner.errors import InputError
from planner.ini import NAME, comma_items
from planner.units import format_bytes, parse_memory


def _sizes(text: str, option: str) -> tuple[int, ...]:
    items = comma_items(text, option, "write e.g. 1,8,32")
    try:
        sizes = tuple(sorted({int(x) for x in items}))
    except ValueError:
        raise InputError(f"'{text}' is not a list of whole numbers", field=option, fix="write e.g. 1,8,32") from None
    if sizes[0] < 1:
        raise InputError(f"'{text}' needs sizes >= 1", field=option, fix="write e.g. 1,8,32")
    return sizes


def _section_name(value: str | None) -> str | None:
    """--name: one word a cluster file's [gpu NAME] header reads back."""
    if value is not None and not NAME.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not one word of letters, digits, '.', '_' and '-'")
    return value


@click.command(name="profile")
@click.option("--checkpoint", type=click.Path(), default=None, help="Model directory whose layers are timed.")
@click.option("--model", "model_name", default=None,
              help="Instead of a checkpoint: random layers shaped like this catalog model (e.g. qwen3-8b).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(sorted(DTYPE_BYTES)), default=None,
              help="Default: fp32 on cpu, bf16 on cuda.")
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True, help="Layers run per timing.")
@click.option("--decode-batches", default="1,2,4,8,16,32,64", show_default=True, help="Sequences per decode step.")
@click.option("--prefill-tokens", default="16,64,256,512,1024,2048", show_default=True, help="Tokens per prefill.")
@click.option("--context", type=click.IntRange(min=1), default=256, show_default=True,
              help="Tokens already cached per sequence during the decode timings.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Longest prompt in a prefill batch (more tokens are more prompts).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--name", default=None, callback=lambda ctx, param, value: _section_name(value),
              help="Section name (default: cpu-measured or cuda-measured).")
@click.option("--memory", default=None, help="Memory to write (e.g. '2 GiB'; default: the device's).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Append the section to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object instead.")
def profile_cmd(checkpoint: str | None, model_name: str | None, device: str, dtype: str | None, layers: int,
                decode_batches: str, prefill_tokens: str, context: int, prompt_tokens: int, threads: int | None,
                name: str | None, memory: str | None, out: str | None, as_json: bool) -> None:
    """Time the runtime's layers (decode and prefill, several batch sizes) and write a measured [gpu]
    section for cluster files, so the planner and the simulator use this machine's real numbers."""
    if (checkpoint is None) == (model_name is None):
        raise InputError("give --checkpoint DIR or --model NAME", fix="see `planner profile --help`")
    if memory is not None:
        try:
            parse_memory(memory)
        except ValueError as exc:
            raise InputError(str(exc), field="--memory", fix="see docs/formats.md#units") from None
    batches, tokens = _sizes(decode_batches, "--decode-batches"), _sizes(prefill_tokens, "--prefill-tokens")
    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    import torch  # only the commands that run models import torch

    from runtime.hfconfig import read_checkpoint_model
    from runtime.profile import checkpoint_stage, gpu_section, profile, random_stage, runs_bf16

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("no CUDA device here", field="--device", fix="use --device cpu")
    if threads:
        torch.set_num_threads(threads)
    torch_device = "cuda:0" if device == "cuda" else "cpu"
    if dtype == "bf16" and not runs_bf16(torch_device):
        raise InputError(f"this {device} device does not run bf16", field="--dtype", fix="use --dtype fp16 or fp32")
    if checkpoint is not None:
        model = read_checkpoint_model(checkpoint)
        stage = checkpoint_stage(checkpoint, model, layers, dtype=dtype, device=torch_device)
    else:
        models = load_model_catalog()
        if model_name not in models:
            raise InputError(f"unknown model '{model_name}'", field="--model", fix=f"use one of {', '.join(models)}")
        model = models[model_name]
        stage = random_stage(dataclasses.replace(model, layers=model.layers), layers, dtype=dtype, device=torch_device)
    result = profile(stage, device=torch_device, dtype=dtype, context=context, prompt_tokens=prompt_tokens,
                     decode_batches=batches, prefill_tokens=tokens)
    result = dataclasses.replace(result, model=model.id)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result), indent=2))
        return
    command = "planner " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["profile"] \
        else "planner profile"
    section = gpu_section(result, name or f"{device}-measured", memory or format_bytes(result.memory_bytes), command)
    if out:
        with open(out, "a") as handle:
            handle.write("\n" + section)
        click.echo(f"appended [gpu {name or f'{device}-measured'}] to {out}", err=True)
    click.echo(section, nl=False)
