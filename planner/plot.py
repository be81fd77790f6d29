"""Plots: the layer map of a plan (GPUs x layers, coloured by GPU type, with flows) and method comparisons."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from planner.flow import COORDINATOR  # noqa: E402
from planner.plan import Plan  # noqa: E402


def plot_layout(plan: Plan, path: str) -> None:
    nodes = plan.problem.nodes
    types = list(dict.fromkeys(n.gpu for n in nodes))
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(types)}
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(nodes) + 2.2))
    row = {n.name: i for i, n in enumerate(nodes)}
    flow = plan.serving.flow
    placement = plan.placement
    for group in placement.tp_groups:  # flows name a tensor-parallel group; draw them at its first GPU
        row["+".join(group)] = row[group[0]]
    for n in nodes:
        start, end = placement.ranges[n.name]
        y = row[n.name]
        if end > start:
            unit = placement.unit_of(n.name)
            members = placement.members(unit)
            ax.barh(y, end - start, left=start, height=0.6, color=colours[n.gpu], edgecolor="black")
            text = f"{end - start}  ({flow.node_flow.get(unit, 0):,.0f} tok/s)" if n.name == members[0] \
                else f"tp{len(members)} with {members[0]}"
            ax.text((start + end) / 2, y, text, ha="center", va="center", fontsize=8)
    biggest = max(flow.edge_flows.values(), default=1.0)
    for (a, b), value in flow.edge_flows.items():
        if COORDINATOR in (a, b):
            continue
        x = placement.ranges[placement.members(a)[0]][1]
        ax.annotate("", xy=(x, row[b]), xytext=(x, row[a]),
                    arrowprops=dict(arrowstyle="->", color="dimgray", lw=0.6 + 2.5 * value / biggest, alpha=0.8))
    ax.set_yticks(range(len(nodes)), [f"{n.name} ({n.gpu})" for n in nodes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, plan.problem.layers)
    ax.set_xlabel("layer")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[t]) for t in types]
    ax.legend(handles, types, loc="upper right", fontsize=8)
    s = plan.serving
    latency = f", TPOT {s.tpot_s * 1e3:.1f} ms" if s.tpot_s is not None else ""
    ax.set_title(f"{plan.cluster.model.id} on {plan.cluster.name} ({plan.result.method}): "
                 f"serving {s.throughput:,.0f} tok/s, max flow {s.max_flow:,.0f}{latency}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(rows: list[dict], title: str, path: str) -> None:
    rows = [r for r in rows if "error" not in r]
    names = [r["method"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(rows))
    ax1.bar([i - 0.2 for i in x], [r["max_flow_tokens_per_s"] or 0 for r in rows], 0.4, label="static max flow")
    ax1.bar([i + 0.2 for i in x], [r["throughput_tokens_per_s"] for r in rows], 0.4, label="predicted serving")
    ax1.set_xticks(list(x), names, rotation=30, ha="right")
    ax1.set_ylabel("tokens/s")
    ax1.legend(fontsize=8)
    ax1.set_title("throughput")
    tpot = [r["tpot_s"] * 1e3 if r["tpot_s"] is not None else 0 for r in rows]
    if any(r.get("sim_tpot_s") is not None for r in rows):
        ax1.plot(list(x), [r.get("sim_throughput_tokens_per_s") or 0 for r in rows], "k_", markersize=18,
                 label="simulated (offline)")
        ax1.legend(fontsize=8)
        ax2.bar([i - 0.2 for i in x], tpot, 0.4, color="tab:orange", label="planner")
        ax2.bar([i + 0.2 for i in x], [(r.get("sim_tpot_s") or 0) * 1e3 for r in rows], 0.4, color="tab:red",
                label="simulated at 80% load")
        ax2.legend(fontsize=8)
    else:
        ax2.bar(list(x), tpot, 0.5, color="tab:orange")
    ax2.set_xticks(list(x), names, rotation=30, ha="right")
    ax2.set_ylabel("ms")
    ax2.set_title("time per output token")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
