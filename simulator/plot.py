"""One PNG per run: latency CDFs, throughput over time, per-node utilisation and peak KV use.

matplotlib is imported here only, so the simulator itself (and `planner simulate` without --plot)
never loads it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulator.metrics import SimResult  # noqa: E402


def _cdf(ax, values, label: str, scale: float = 1.0) -> None:
    if not values:
        return
    xs = np.sort(np.asarray(values)) * scale
    ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)


def plot_result(result: SimResult, path: str, title: str = "") -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (ax_lat, ax_tpot), (ax_time, ax_nodes) = axes

    _cdf(ax_lat, result.samples.get("ttft_s", ()), "TTFT")
    _cdf(ax_lat, result.samples.get("e2e_s", ()), "end to end")
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel("seconds")
    ax_lat.set_ylabel("share of requests")
    ax_lat.set_title("time to first token and end-to-end latency (CDF)")
    ax_lat.legend(fontsize=8)
    ax_lat.grid(alpha=0.3, which="both")

    _cdf(ax_tpot, result.samples.get("tpot_s", ()), "TPOT", scale=1e3)
    ax_tpot.set_xlabel("ms per output token")
    ax_tpot.set_ylabel("share of requests")
    ax_tpot.set_title("time per output token (CDF)")
    ax_tpot.grid(alpha=0.3)

    series = np.asarray(result.throughput_series)
    times = np.arange(len(series)) * result.bin_seconds
    window = max(1, int(round(10 / result.bin_seconds)))  # 10 s moving average
    smooth = np.convolve(series, np.ones(window) / window, mode="same") if len(series) >= window else series
    ax_time.plot(times, series, color="tab:blue", alpha=0.25, lw=0.8, label=f"per {result.bin_seconds:g} s")
    ax_time.plot(times, smooth, color="tab:blue", lw=1.5, label="10 s average")
    warmup = result.settings.get("warmup_s", 0.0)
    if warmup:
        ax_time.axvspan(0, warmup, color="grey", alpha=0.15, label="warm-up (not measured)")
    reference = result.reference.get("predicted_throughput_tokens_per_s")
    if reference:
        ax_time.axhline(reference, color="tab:red", ls="--", lw=1, label="planner's predicted capacity")
    ax_time.axhline(result.decode_throughput, color="black", ls=":", lw=1, label="measured mean")
    ax_time.set_xlabel("simulated seconds")
    ax_time.set_ylabel("output tokens/s")
    ax_time.set_title("throughput over time")
    ax_time.legend(fontsize=8, loc="lower right")
    ax_time.grid(alpha=0.3)

    names = [s.name for s in result.stages]
    y = np.arange(len(names))
    ax_nodes.barh(y - 0.2, [s.utilisation * 100 for s in result.stages], 0.4, label="busy")
    ax_nodes.barh(y + 0.2, [s.peak_kv * 100 for s in result.stages], 0.4, label="peak KV reserved")
    ax_nodes.set_yticks(y, [f"{s.name} ({s.gpu}) [{s.layers[0]}, {s.layers[1]})" for s in result.stages],
                        fontsize=7 if len(names) > 12 else 8)
    ax_nodes.invert_yaxis()
    ax_nodes.set_xlim(0, 105)
    ax_nodes.set_xlabel("% of the measured window / of KV capacity")
    ax_nodes.set_title("per node")
    ax_nodes.legend(fontsize=8, loc="lower right")
    ax_nodes.grid(axis="x", alpha=0.3)

    settings = result.settings
    fig.suptitle(title or f"{settings.get('model')} ({settings.get('method')}): {settings.get('workload')}, "
                 f"{settings.get('scheduler')} routing, {result.decode_throughput:,.0f} output tokens/s", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
