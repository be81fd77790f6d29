"""Tiny models and the built-in demo: a random 6-layer Qwen3 served by 3 CPU workers with uneven ranges.

No torch here (the demo's files are written by runtime.checkpoint, which the caller imports).
"""

from __future__ import annotations

from pathlib import Path

from planner.catalog import ModelSpec

TINY = dict(layers=6, hidden_size=64, intermediate_size=128, attention_heads=4, kv_heads=2, vocab_size=256,
            max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6)
TINY_MODELS = {  # head_dim * heads != hidden_size for tiny-qwen3, as in Qwen3-0.6B: head_dim is never derived
    "tiny-qwen3": ModelSpec(id="tiny-qwen3", family="qwen3", head_dim=32, tie_word_embeddings=False, **TINY),
    "tiny-qwen2": ModelSpec(id="tiny-qwen2", family="qwen2", head_dim=16, tie_word_embeddings=True, **TINY),
    "tiny-llama": ModelSpec(id="tiny-llama", family="llama", head_dim=16, tie_word_embeddings=False, **TINY),
}


def model_section(model: ModelSpec) -> str:
    """The [model NAME] section of a cluster file that defines `model` inline."""
    return "\n".join([
        f"[model {model.id}]", f"family = {model.family}", f"layers = {model.layers}",
        f"hidden_size = {model.hidden_size}", f"intermediate_size = {model.intermediate_size}",
        f"attention_heads = {model.attention_heads}", f"kv_heads = {model.kv_heads}", f"head_dim = {model.head_dim}",
        f"vocab_size = {model.vocab_size}", f"tie_word_embeddings = {'yes' if model.tie_word_embeddings else 'no'}",
        f"max_position_embeddings = {model.max_position_embeddings}", f"rope_theta = {model.rope_theta:g}",
        f"rms_norm_eps = {model.rms_norm_eps:g}", ""])


def cpu_cluster(model: ModelSpec, workers: int, gpu_section: str | None = None) -> str:
    """A one-host cluster file of `workers` CPU 'GPUs' serving `model` in fp32 on loopback."""
    gpu = gpu_section or ("[gpu cpu-x]\nmemory = 2 GiB\n"
                          "decode_ms = 1: 0.3, 16: 0.5, 64: 1.2\nprefill_ms = 16: 0.4, 512: 6\n")
    return (f"[cluster]\nmodel = {model.id}\ndtype = fp32\ncoordinator = local\n\n{model_section(model)}\n"
            f"{gpu}\n[host local]\ngpus = cpu-x * {workers}\ngpu_link = 1 GB/s, 0.05 ms\naddress = 127.0.0.1\n")


def chain_layout(cluster_file: str, model: ModelSpec, stages: list[list[tuple[int, int]]],
                 flow: float = 100.0, tp: int = 1) -> str:
    """A hand-written layout: stages[i] lists the ranges of the workers (local:0, local:1, ...) of stage i;
    every edge between consecutive stages carries the flow split evenly. tp > 1: each worker is a
    tensor-parallel group of tp GPUs (local:0+local:1, ...)."""
    nodes, flows, names, groups = [], [], [], []
    index = 0
    for ranges in stages:
        names.append([])
        for start, end in ranges:
            members = [f"local:{index + i}" for i in range(tp)]
            nodes += [f"{m} = {start}, {end}" for m in members]
            names[-1].append("+".join(members))
            if tp > 1:
                groups.append("+".join(members))
            index += tp
    hops = [["coordinator"]] + names + [["coordinator"]]
    for a_stage, b_stage in zip(hops, hops[1:]):
        for a in a_stage:
            for b in b_stage:
                share = flow / (len(a_stage) * len(b_stage))
                flows.append(f"{a} -> {b} = {share:.2f}")
    head = [f"tp_groups = {', '.join(groups)}"] if groups else []
    return "\n".join(["[layout]", f"cluster = {cluster_file}", f"model = {model.id}", "dtype = fp32",
                      "method = hand", *head, "", "[nodes]", *nodes, "", "[flows]", *flows, ""])


def write_demo(directory: str | Path, model: ModelSpec = TINY_MODELS["tiny-qwen3"]) -> tuple[Path, Path]:
    """cluster.ini and layout.ini of the demo in `directory`; returns (layout path, checkpoint dir)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cluster.ini").write_text(cpu_cluster(model, 3))
    layout = directory / "layout.ini"
    layout.write_text(chain_layout("cluster.ini", model, [[(0, 1)], [(1, 4)], [(4, 6)]]))
    return layout, directory / "checkpoint"
