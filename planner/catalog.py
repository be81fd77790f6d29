"""GPU and model specifications: frozen dataclasses parsed from INI sections.

The catalogs `profiles/gpus.ini` and `profiles/models.ini` hold one section per type; a cluster file
may add or override types with `[gpu NAME]` and `[model NAME]` sections parsed by the same code.
"""

from __future__ import annotations

import configparser
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from planner.errors import InputWarning
from planner.ini import SectionReader, read_ini
from planner.units import parse_bandwidth, parse_memory

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
MODEL_FAMILIES = ("qwen3", "qwen2", "llama")
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


@dataclass(frozen=True)
class LatencyTable:
    """Measured time of one layer against a batch size (sequences for decode, tokens for prefill).

    Between points the time is interpolated linearly; past the last point it grows along the last
    segment's slope (never below the last value); below the first point it is the first value.
    """

    points: tuple[tuple[float, float], ...]  # (batch, seconds), batch strictly increasing

    def seconds(self, batch: float) -> float:
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        if batch <= xs[0]:
            return ys[0]
        for (x0, y0), (x1, y1) in zip(self.points, self.points[1:]):
            if batch <= x1:
                return y0 + (y1 - y0) * (batch - x0) / (x1 - x0)
        if len(xs) == 1:
            return ys[0] * batch / xs[0]
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
        return ys[-1] + slope * (batch - xs[-1])


@dataclass(frozen=True)
class GpuSpec:
    """One GPU type. Exactly one of three forms carries its speed:
    roofline figures (bandwidth + TFLOPS), measured per-layer latency tables, or a static throughput table."""

    id: str
    name: str
    memory_bytes: float | None
    memory_bandwidth_bytes_per_s: float | None = None
    fp16_flops: float | None = None  # dense tensor-core FLOP/s usable by inference
    fp32_flops: float | None = None
    bf16: bool = False
    max_layers: int | None = None
    decode_ms: LatencyTable | None = None   # seconds, despite the INI key's unit
    prefill_ms: LatencyTable | None = None
    kv_tokens: tuple[tuple[int, int], ...] | None = None  # (layers held, KV tokens per layer)
    throughput: tuple[float, ...] | None = None  # tokens/s holding 1, 2, ... layers
    # measured work outside the layers (optional; the engine's constants stand in where absent):
    head_ms: LatencyTable | None = None     # seconds: last stage's final norm + LM head + sampling, batch of N
    embed_ms: LatencyTable | None = None    # seconds: first stage's embedding of N tokens
    hop_s: float | None = None              # fixed cost of one message between stages
    # fixed cost of one iteration at a stage (batch formation, the host's layout): one number, or a table by
    # sequences in the step
    step_overhead_s: float | LatencyTable | None = None
    # the coordinator's loop for one message it sends to a unit of this type: one number, or a table by the
    # sequences in the message (the runtime's host handles each request's token and sends the next step)
    host_step_s: float | LatencyTable | None = None
    # what a step costs beyond the figures above when the stage waited for it, by how long (both seconds):
    # the message that wakes a sleeping worker lands later, and its step runs with cold caches
    wake_s: LatencyTable | None = None

    @property
    def is_static(self) -> bool:
        return self.throughput is not None

    @property
    def is_measured(self) -> bool:
        return self.decode_ms is not None


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as its Hugging Face config.json describes it."""

    id: str
    family: str
    layers: int
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    hf_name: str = ""

    @property
    def qkv_bias(self) -> bool:
        return self.family == "qwen2"

    def layer_params(self) -> int:
        """Weights of one decoder layer: attention, SwiGLU MLP, two RMSNorms (+ q/k norms, qkv bias)."""
        q_width = self.attention_heads * self.head_dim
        kv_width = self.kv_heads * self.head_dim
        attention = self.hidden_size * (q_width + 2 * kv_width) + q_width * self.hidden_size
        if self.qkv_bias:
            attention += q_width + 2 * kv_width
        if self.family == "qwen3":
            attention += 2 * self.head_dim  # per-head RMSNorm on q and k
        mlp = 3 * self.hidden_size * self.intermediate_size  # gate, up, down
        return attention + mlp + 2 * self.hidden_size

    def linear_params(self) -> int:
        """Weights that take part in matrix multiplies (2 FLOPs per weight per token)."""
        q_width = self.attention_heads * self.head_dim
        kv_width = self.kv_heads * self.head_dim
        return (self.hidden_size * (q_width + 2 * kv_width) + q_width * self.hidden_size
                + 3 * self.hidden_size * self.intermediate_size)

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def head_params(self) -> int:
        """Final norm and LM head (the head is a copy of the embedding when tied, still held by the last stage)."""
        return self.vocab_size * self.hidden_size + self.hidden_size


def _warn_if_rising(reader: SectionReader, key: str, points: list[tuple[float, float]], what: str) -> None:
    """One warning for a table whose values rise with more layers held (`points`: (layers, value)).
    Published and measured tables carry noise (Helix's profiled L4 table for LLaMA-30B reads higher at
    10 layers than at 9); they are planned with as given, as Helix plans with them."""
    rises = [(a, b) for a, b in zip(points, points[1:]) if b[1] > a[1] * (1 + 1e-9)]
    if not rises:
        return
    (k0, v0), (k1, v1) = rises[0]
    more = f" (and {len(rises) - 1} more)" if len(rises) > 1 else ""
    warnings.warn(InputWarning(f"{reader.file}: [{reader.section}] {key}: entry {k1:g} ({v1:g}) is higher than "
                               f"entry {k0:g} ({v0:g}){more}: {what} usually falls with more layers held; "
                               "planning with the numbers as given"), stacklevel=2)


def _pairs(reader: SectionReader, key: str, integer_values: bool) -> list[tuple[float, float]]:
    """Parse 'x: y, x: y, ...' with x strictly increasing and both non-negative."""
    raw = reader.text(key)
    points: list[tuple[float, float]] = []
    for item in raw.split(","):
        parts = item.split(":")
        if len(parts) != 2:
            raise reader.fail(key, f"entry '{item.strip()}' is not 'N: value'", "write e.g. '2: 6.9, 8: 7.0'")
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise reader.fail(key, f"entry '{item.strip()}' is not numeric", "write numbers like '8: 7.0'") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise reader.fail(key, f"entry '{item.strip()}' is not a finite number", "write numbers like '8: 7.0'")
        if x <= 0 or y < 0:
            raise reader.fail(key, f"entry '{item.strip()}' is negative or zero", "sizes must be >= 1 and times >= 0")
        if x > TABLE_MAX or y > TABLE_MAX:
            raise reader.fail(key, f"entry '{item.strip()}' is past {TABLE_MAX:g}: not a measurement",
                              "give sizes and milliseconds as measured")
        if integer_values and (x != int(x) or y != int(y)):
            raise reader.fail(key, f"entry '{item.strip()}' is not whole numbers", "write whole layer and token counts")
        if points and x <= points[-1][0]:
            raise reader.fail(key, f"entries are not sorted: {x:g} after {points[-1][0]:g}",
                              "list entries by increasing batch size")
        points.append((x, y))
    return points


TABLE_MAX = 1e9   # past a billion sequences, tokens or milliseconds (11 days) an entry is a typo or an overflow


def _milliseconds(reader: SectionReader, key: str) -> float:
    """A plain number of milliseconds, zero or more, as seconds."""
    raw = reader.text(key)
    try:
        value = float(raw)
    except ValueError:
        raise reader.fail(key, f"'{raw}' is not a number of milliseconds", "write e.g. '0.25' (milliseconds)") from None
    if not (math.isfinite(value) and 0 <= value <= TABLE_MAX):
        raise reader.fail(key, f"must be a finite number of milliseconds >= 0, got {raw}", "write e.g. '0.25'")
    return value / 1e3


def _number_or_table(reader: SectionReader, key: str) -> float | LatencyTable | None:
    """An optional key that is one number of milliseconds or an 'N: MS, ...' table, as seconds."""
    if not reader.has(key):
        return None
    return _table(reader, key) if ":" in reader.text(key) else _milliseconds(reader, key)


def _table(reader: SectionReader, key: str, keys_in_ms: bool = False) -> LatencyTable | None:
    """An optional 'N: MS, ...' table in milliseconds, as seconds (N too, where it is milliseconds)."""
    if not reader.has(key):
        return None
    return LatencyTable(tuple((x / 1e3 if keys_in_ms else x, y / 1e3) for x, y in _pairs(reader, key, False)))


MEASURED_KEYS = ("decode_ms", "prefill_ms", "kv_tokens", "head_ms", "embed_ms", "hop_ms", "step_overhead_ms",
                 "host_step_ms", "wake_ms")


def parse_gpu(file: str | Path, section: str, gpu_id: str, values: configparser.SectionProxy) -> GpuSpec:
    r = SectionReader(file, section, values)
    r.unknown_keys({"name", "memory", "memory_bandwidth", "fp16_tflops", "fp32_tflops", "bf16", "max_layers",
                    "throughput", "source", *MEASURED_KEYS})
    r.text("source", "")  # provenance note, kept in the file for people
    max_layers = r.positive_int("max_layers") if r.has("max_layers") else None
    memory = r.quantity("memory", parse_memory) if r.has("memory") else None
    if memory is not None and memory <= 0:
        raise r.fail("memory", "must be positive", "give the GPU's memory, e.g. '24 GiB'")
    common = dict(id=gpu_id, name=r.text("name", gpu_id), memory_bytes=memory, bf16=r.boolean("bf16", False),
                  max_layers=max_layers)
    forms = [form for form, keys in (("static", ("throughput",)), ("measured", MEASURED_KEYS),
                                      ("roofline", ("memory_bandwidth", "fp16_tflops"))) if any(r.has(k) for k in keys)]
    if len(forms) > 1:
        raise r.fail(", ".join(forms), f"mixes the {' and '.join(forms)} forms of a GPU",
                     "give one of: roofline figures, measured latency tables, or a static throughput table")
    if r.has("throughput"):
        if max_layers is None:
            raise r.fail("max_layers", "a static throughput table needs max_layers",
                         "add 'max_layers = N' (the most layers this GPU holds)")
        try:
            table = tuple(float(x) for x in r.text("throughput").split(","))
        except ValueError:
            raise r.fail("throughput", "not a list of numbers", "write tokens/s for 1, 2, ... layers: '2400, 1190'") from None
        if not all(math.isfinite(x) and 0 < x <= TABLE_MAX for x in table):
            raise r.fail("throughput", "entries must be positive finite numbers", "give tokens/s > 0 for each layer count")
        if len(table) > max_layers:
            raise r.fail("throughput", f"has {len(table)} entries but max_layers = {max_layers}",
                         "give at most one entry per layer count up to max_layers, or raise max_layers")
        _warn_if_rising(r, "throughput", list(enumerate(table, 1)), "tokens/s")
        return GpuSpec(throughput=table, **common)
    if any(r.has(key) for key in MEASURED_KEYS if key != "kv_tokens"):
        decode = LatencyTable(tuple((x, y / 1e3) for x, y in _pairs(r, "decode_ms", False)))
        prefill = LatencyTable(tuple((x, y / 1e3) for x, y in _pairs(r, "prefill_ms", False)))
        outside = dict(head_ms=_table(r, "head_ms"), embed_ms=_table(r, "embed_ms"),
                       hop_s=_milliseconds(r, "hop_ms") if r.has("hop_ms") else None,
                       step_overhead_s=_number_or_table(r, "step_overhead_ms"),
                       host_step_s=_number_or_table(r, "host_step_ms"),
                       wake_s=_table(r, "wake_ms", keys_in_ms=True))
        kv = None
        if r.has("kv_tokens"):
            kv = tuple((int(x), int(y)) for x, y in _pairs(r, "kv_tokens", True))
            empty = [layers for layers, tokens in kv if tokens == 0]
            if empty:   # no room for one token's KV: the GPU holds those layers for nothing
                raise r.fail("kv_tokens", f"holding {empty[0]} layers leaves room for 0 tokens",
                             "drop the entries with no KV room (max_layers is then the last one kept)")
            _warn_if_rising(r, "kv_tokens", kv, "KV room per layer")
            if max_layers is not None and kv[-1][0] > max_layers:
                raise r.fail("kv_tokens", f"has an entry for {kv[-1][0]} layers but max_layers = {max_layers}",
                             "drop entries above max_layers or raise max_layers")
        if memory is None and (kv is None or max_layers is None):
            raise r.fail("memory", "missing", "a measured GPU needs 'memory', or both 'kv_tokens' and 'max_layers'")
        fp32 = r.positive_float("fp32_tflops") * 1e12 if r.has("fp32_tflops") else None
        return GpuSpec(decode_ms=decode, prefill_ms=prefill, kv_tokens=kv, fp32_flops=fp32, **outside, **common)
    if memory is None:
        raise r.fail("memory", "missing", "add 'memory = 24 GiB'")
    bandwidth = r.quantity("memory_bandwidth", parse_bandwidth)
    if bandwidth <= 0:
        raise r.fail("memory_bandwidth", "must be positive", "give the datasheet's figure, e.g. '1008 GB/s'")
    return GpuSpec(memory_bandwidth_bytes_per_s=bandwidth,
                   fp16_flops=r.positive_float("fp16_tflops") * 1e12,
                   fp32_flops=r.positive_float("fp32_tflops") * 1e12 if r.has("fp32_tflops") else None,
                   **common)


def parse_model(file: str | Path, section: str, model_id: str, values: configparser.SectionProxy) -> ModelSpec:
    r = SectionReader(file, section, values)
    r.unknown_keys({"family", "layers", "hidden_size", "intermediate_size", "attention_heads", "kv_heads",
                    "head_dim", "vocab_size", "tie_word_embeddings", "max_position_embeddings", "rope_theta",
                    "rms_norm_eps", "hf_name"})
    family = r.text("family")
    if family not in MODEL_FAMILIES:
        raise r.fail("family", f"unknown family '{family}'", f"use one of {', '.join(MODEL_FAMILIES)}")
    if r.has("layers"):
        try:
            if int(r.values["layers"]) <= 0:
                raise r.fail("layers", "the model has no layers", "give the number of decoder layers (e.g. 40)")
        except ValueError:
            pass  # positive_int reports it
    heads, kv_heads = r.positive_int("attention_heads"), r.positive_int("kv_heads")
    if heads % kv_heads:
        raise r.fail("kv_heads", f"{heads} attention heads are not a multiple of {kv_heads} KV heads",
                     "check the model's config.json")
    return ModelSpec(
        id=model_id, family=family, layers=r.positive_int("layers"), hidden_size=r.positive_int("hidden_size"),
        intermediate_size=r.positive_int("intermediate_size"), attention_heads=heads, kv_heads=kv_heads,
        head_dim=r.positive_int("head_dim"), vocab_size=r.positive_int("vocab_size"),
        tie_word_embeddings=r.boolean("tie_word_embeddings", False),
        max_position_embeddings=r.positive_int("max_position_embeddings", 32768),
        rope_theta=r.positive_float("rope_theta", 1_000_000.0),
        rms_norm_eps=r.positive_float("rms_norm_eps", 1e-6), hf_name=r.text("hf_name", ""))


def profiles_dir() -> Path:
    """Where gpus.ini and models.ini live: $LAYER_PLANNER_PROFILES, else the project's profiles/."""
    return Path(os.environ.get("LAYER_PLANNER_PROFILES", PROFILES_DIR))


def load_gpu_catalog(path: str | Path | None = None) -> dict[str, GpuSpec]:
    path = Path(path) if path else profiles_dir() / "gpus.ini"
    parser = read_ini(path, "GPU catalog")
    return {name: parse_gpu(path, name, name, parser[name]) for name in parser.sections()}


def load_model_catalog(path: str | Path | None = None) -> dict[str, ModelSpec]:
    path = Path(path) if path else profiles_dir() / "models.ini"
    parser = read_ini(path, "model catalog")
    return {name: parse_model(path, name, name, parser[name]) for name in parser.sections()}
