"""planner sp-pp CLUSTER.ini [--sync pairwise|ring|both] [--prompt N,...] [--output N] [--chunk N] [--gpus H:I,...]
[--shared-nic] [--json]"""

from __future__ import annotations

import json

import click
from rich.table import Table

from planner.cli.console import make_console
from planner.cluster import Cluster, load_cluster
from planner.errors import InputError, SolveError
from planner.ini import comma_items
from planner.sp_pp import (DEFAULT_CHUNK_TOKENS, DEFAULT_OUTPUT_TOKENS, SWEEP_PROMPT_TOKENS, SYNC_STRATEGIES, Device,
                           PipelineEstimate, SpPpEstimate, estimate, select_devices, split_layers, whole_model_fits)
from planner.units import format_bandwidth, format_bytes, format_time


def _token_list(text: str | None) -> tuple[int, ...]:
    """'8192' or '1024,4096' (a 'k' suffix means x1024) -> prompt lengths; None -> the default sweep."""
    if not text:
        return SWEEP_PROMPT_TOKENS
    lengths = []
    for item in (x.strip().lower() for x in text.split(",")):
        number = item[:-1] if item.endswith("k") else item
        if not number.isdigit() or int(number) < 1:
            raise InputError(f"'{item}' is not a token count", field="--prompt",
                             fix="give positive integers, e.g. --prompt 8192 or --prompt 1k,4k,16k")
        lengths.append(int(number) * (1024 if item.endswith("k") else 1))
    return tuple(lengths)


@click.command(name="sp-pp")
@click.argument("cluster_file", type=click.Path())
@click.option("--sync", "sync", type=click.Choice(["pairwise", "ring", "both"]), default="both", show_default=True,
              help="KV-cache sync after prefill: all-gather straight to every device, or around a ring.")
@click.option("--prompt", "prompt", default=None,
              help="Prompt length(s) in tokens, comma-separated ('k' = x1024) [default: 1k,2k,4k,8k,16k,32k].")
@click.option("--output", "output", type=int, default=DEFAULT_OUTPUT_TOKENS, show_default=True,
              help="Output tokens per request (the seed's --max_new_tokens).")
@click.option("--chunk", "chunk", type=int, default=DEFAULT_CHUNK_TOKENS, show_default=True,
              help="Prefill chunk in tokens (the seed's --chunk_size).")
@click.option("--gpus", "gpus", default=None,
              help="GPUs in rank order, HOST:INDEX comma-separated [default: every GPU, in file order].")
@click.option("--shared-nic", is_flag=True,
              help="Each host's transfers to other hosts share one port (a switch, one NIC per machine).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sp_pp_cmd(cluster_file: str, sync: str, prompt: str | None, output: int, chunk: int, gpus: str | None,
              shared_nic: bool, as_json: bool) -> None:
    """Model seed 002's SP+PP: the prompt in chunks through a layer pipeline, the KV cache all-gathered
    (pairwise or ring) over the cluster's links, then decode on every device; beside the same request on
    a plain pipeline of the same GPUs, for a sweep of prompt lengths (docs/seeds/002-sp-pp.md)."""
    cluster = load_cluster(cluster_file, check_fit=False)  # SP+PP's own check: the whole model per device
    names = comma_items(gpus, "--gpus", "name GPUs as HOST:INDEX, comma-separated, or leave --gpus out "
                        "for every GPU") if gpus is not None else None
    nodes = select_devices(cluster, names)
    if len(nodes) < 2:
        raise InputError(f"SP+PP needs at least 2 GPUs, got {len(nodes)}", file=cluster.path, field="--gpus",
                         fix="name two or more GPUs, or use a cluster with more")
    devices = split_layers(cluster, nodes)
    whole_model_fits(cluster, devices)
    strategies = SYNC_STRATEGIES if sync == "both" else (sync,)
    lengths = _token_list(prompt)
    if prompt is None:  # the default sweep stops at the model's context
        lengths = tuple(p for p in lengths if p + output <= cluster.model.max_position_embeddings) or lengths[:1]
    rows = [{s: estimate(cluster, devices, p, output, s, chunk, shared_nic) for s in strategies} for p in lengths]
    if not any(e.fits or e.pipeline.fits for row in rows for e in row.values()):
        shortest = min(lengths) + output
        raise SolveError(f"no prompt length fits: neither SP+PP nor a pipeline of these GPUs has KV room for "
                         f"{shortest:,} tokens (try a shorter --prompt or --output)")
    if as_json:
        click.echo(json.dumps(_json(cluster, devices, rows, output, chunk, shared_nic), indent=2))
        return
    console = make_console()
    console.print(_header(cluster, devices, output, chunk, shared_nic))
    console.print(_devices_table(cluster, devices))
    console.print(_phases_table(rows))
    for line in _verdict_lines(rows):
        console.print(line)


# ---- text --------------------------------------------------------------------------------------------

def _header(cluster: Cluster, devices: tuple[Device, ...], output: int, chunk: int, shared_nic: bool) -> str:
    cost = cluster.cost(devices[0].gpu)
    kv = cost.kv_bytes_per_token * cluster.model.layers
    return (f"[bold]{cluster.path}[/]: {cluster.model.id} ({cluster.model.layers} layers) in {cluster.dtype} on "
            f"{len(devices)} devices; prefill chunks of {chunk} tokens, {output} output tokens per request, "
            f"KV {format_bytes(kv)} per token (all layers); network: "
            f"{'one shared port per host' if shared_nic else 'each host pair its own link'}")


def _devices_table(cluster: Cluster, devices: tuple[Device, ...]) -> Table:
    table = Table(title="Devices (rank order = pipeline order = ring order)")
    for col in ("rank", "device", "GPU", "prefill layers", "KV room, whole model", "link to next rank"):
        table.add_column(col, justify="right" if col in ("rank", "KV room, whole model") else "left")
    for rank, d in enumerate(devices):
        nxt = devices[(rank + 1) % len(devices)]
        link = cluster.link(d.host, nxt.host)
        text = f"{nxt.name}: {format_bandwidth(link.bandwidth_bytes_per_s)}, {format_time(link.latency_s)}" \
            if link else f"{nxt.name}: none"
        room = cluster.cost(d.gpu).kv_tokens(cluster.model.layers, first=True, last=True)
        table.add_row(str(rank), d.name, d.gpu, f"[{d.start_layer}, {d.end_layer})", f"{room:,} tokens", text)
    return table


def _phases_table(rows: list[dict[str, SpPpEstimate]]) -> Table:
    table = Table(title="One request, one at a time: SP+PP by sync strategy vs pipelines of the same GPUs and layers")
    cols = ("prompt", "plan", "prefill", "KV sync", "decode step", "decode", "TTFT", "TPOT", "total", "tok/s",
            "vs plain PP")
    for col in cols:
        table.add_column(col, justify="left" if col in ("plan", "vs plain PP") else "right")
    for row in rows:
        first = next(iter(row.values()))
        pipeline, best = first.pipeline, _winner(row)
        plans: list[tuple[str, SpPpEstimate | PipelineEstimate]] = [(f"SP+PP {name}", e) for name, e in row.items()]
        plans += [("PP chunked", first.chunked_pipeline), ("PP plain", pipeline)]
        for i, (label, e) in enumerate(plans):
            cells = _cells(e) if e.fits else ["does not fit"] + [""] * 7
            vs = _versus(e.latency_s, pipeline.latency_s) if e.fits and pipeline.fits and e is not pipeline else ""
            table.add_row(f"{first.prompt_tokens:,}", label + (" *" if _key(label) == best else ""), *cells, vs,
                          end_section=i == len(plans) - 1)
    table.caption = ("* the soonest plan for that prompt. Times per request; total = TTFT + KV sync + decode; "
                     "tok/s = output tokens / total. PP plain: the layer pipeline of the same GPUs, whole prompt per "
                     "stage; PP chunked: the same chunks as SP+PP through it, no sync; both decode through the stages.")
    return table


def _key(label: str) -> str:
    """Table label -> the name _winner uses."""
    return {"PP plain": "pipeline", "PP chunked": "chunked"}.get(label, label.removeprefix("SP+PP "))


def _versus(latency_s: float, pipeline_s: float) -> str:
    change = (pipeline_s - latency_s) / pipeline_s
    return f"{change:.0%} sooner" if change >= 0.005 else f"{-change:.0%} later" if change <= -0.005 else "same"


def _cells(e: SpPpEstimate | PipelineEstimate) -> list[str]:
    sync = format_time(e.sync_s) if isinstance(e, SpPpEstimate) else "-"
    return [format_time(e.prefill_s), sync, format_time(e.decode_step_s), format_time(e.decode_s),
            format_time(e.ttft_s), format_time(e.tpot_s), format_time(e.latency_s), f"{e.throughput_tokens_per_s:.1f}"]


def _winner(row: dict[str, SpPpEstimate]) -> str | None:
    """'pipeline', 'chunked', a sync strategy, or None when nothing fits: the soonest end to end."""
    first = next(iter(row.values()))
    options = {name: e.latency_s for name, e in row.items() if e.fits}
    for name, e in (("chunked", first.chunked_pipeline), ("pipeline", first.pipeline)):
        if e.fits:
            options[name] = e.latency_s
    return min(options, key=options.get) if options else None


def _best_sp(row: dict[str, SpPpEstimate]) -> SpPpEstimate:
    """The SP+PP strategy that finishes first (one that fits before one that does not)."""
    return min(row.values(), key=lambda e: (not e.fits, e.latency_s))


def _lengths(items: list[SpPpEstimate]) -> str:
    return ", ".join(f"{e.prompt_tokens:,}" for e in items)


_NAMES = {"pipeline": "PP plain", "chunked": "PP chunked", "pairwise": "SP+PP pairwise", "ring": "SP+PP ring"}


def _soonest_line(rows: list[dict[str, SpPpEstimate]]) -> str:
    """'Soonest: SP+PP pairwise at 1,024; PP chunked at 2,048 to 32,768 tokens.' (runs of one winner)"""
    runs: list[tuple[str, list[int]]] = []
    for row in rows:
        name = _NAMES.get(_winner(row) or "", "nothing fits")
        prompt = next(iter(row.values())).prompt_tokens
        if runs and runs[-1][0] == name:
            runs[-1][1].append(prompt)
        else:
            runs.append((name, [prompt]))
    parts = [f"{name} at {p[0]:,}" + (f" to {p[-1]:,}" if len(p) > 1 else "") for name, p in runs]
    return "Soonest: " + "; ".join(parts) + " tokens."


def _verdict_lines(rows: list[dict[str, SpPpEstimate]]) -> list[str]:
    """Which plan is soonest at each prompt length; SP+PP against the plain pipeline (the crossover and
    why); then SP+PP against a pipeline that chunks its prefill too."""
    best = [_best_sp(row) for row in rows]
    sp = [e for e in best if e.beats_pipeline]
    plain = [e for e in best if not e.beats_pipeline]
    lines = [_soonest_line(rows)]
    if not plain or not sp:
        winner, items = ("SP+PP beats the plain pipeline", sp) if sp else ("The plain pipeline beats SP+PP", plain)
        lines.append(f"{winner} {_where(items, len(rows))}; at {items[-1].prompt_tokens:,} ({items[-1].sync}): "
                     f"{items[-1].reason}.")
    else:
        lines += [f"SP+PP vs the plain pipeline: the pipeline wins at {_lengths(plain)} tokens, "
                  f"SP+PP at {_lengths(sp)}.",
                  f"At {sp[0].prompt_tokens:,} ({sp[0].sync}): {sp[0].reason}.",
                  f"At {plain[-1].prompt_tokens:,} ({plain[-1].sync}): {plain[-1].reason}."]
    fitting = [e for e in best if e.fits and e.chunked_pipeline.fits]
    if fitting:
        wins = [e for e in fitting if e.beats_chunked_pipeline]
        e = fitting[-1]
        where = _where(wins, len(fitting)) if wins else "at no prompt length here"
        even = e.break_even_output_tokens
        repaid = (f"repaid after {even:,.0f} output tokens of local decode (this request has {e.output_tokens})"
                  if even is not None else "never repaid: local decode is no faster than the pipeline's")
        lines.append(f"Against a pipeline that chunks its prefill too (the same TTFT, no sync), SP+PP wins {where}: "
                     f"at {e.prompt_tokens:,} its {e.sync} sync ({format_time(e.sync_s)}) is {repaid}.")
    return lines


def _where(items: list[SpPpEstimate], out_of: int) -> str:
    if len(items) == out_of > 1:
        return f"at every prompt length here ({_lengths(items)} tokens)"
    return f"at {_lengths(items)} tokens" if len(items) == out_of else f"only at {_lengths(items)} tokens"


# ---- JSON --------------------------------------------------------------------------------------------

def _phases_json(e: SpPpEstimate | PipelineEstimate) -> dict:
    out = {"fits": e.fits, "chunk_tokens": e.chunk_tokens, "kv_room_tokens": e.kv_room_tokens, "prefill_s": e.prefill_s,
           "decode_step_s": e.decode_step_s, "decode_s": e.decode_s, "ttft_s": e.ttft_s, "tpot_s": e.tpot_s,
           "latency_s": e.latency_s, "throughput_tokens_per_s": e.throughput_tokens_per_s}
    if isinstance(e, SpPpEstimate):
        out |= {"sync_s": e.sync_s, "sync_bytes": e.sync_bytes, "chunks": e.chunks, "decode_device": e.decode_device,
                "beats_pipeline": e.beats_pipeline, "reason": e.reason,
                "beats_chunked_pipeline": e.beats_chunked_pipeline,
                "break_even_output_tokens": e.break_even_output_tokens}
    return out


def _json(cluster: Cluster, devices: tuple[Device, ...], rows: list[dict[str, SpPpEstimate]], output: int,
          chunk: int, shared_nic: bool) -> dict:
    return {
        "cluster": str(cluster.path), "model": cluster.model.id, "dtype": cluster.dtype,
        "chunk_tokens": chunk, "output_tokens": output, "shared_nic": shared_nic,
        "devices": [{"name": d.name, "host": d.host, "gpu": d.gpu, "start_layer": d.start_layer,
                     "end_layer": d.end_layer} for d in devices],
        "results": [{"prompt_tokens": next(iter(row.values())).prompt_tokens,
                     "winner": _winner(row),
                     "pipeline": _phases_json(next(iter(row.values())).pipeline),
                     "chunked_pipeline": _phases_json(next(iter(row.values())).chunked_pipeline),
                     "sp_pp": {name: _phases_json(e) for name, e in row.items()}} for row in rows],
    }
