"""The vllm engine's cost model against Helix's published per-layer vLLM profiles (profiles/calibration/).

    python benchmarks/calibration.py [--all]

Prints, per source, the largest error over the rows held to the +-15% band, then one markdown table row
per point (source, phase, batch or tokens, measured ms, predicted ms, error, held or why not): the table in
docs/cost-model.md#engines-and-calibration. --all prints every row; the default prints the held rows and
the TP-group rows, and summarises the rest per source.
"""

from __future__ import annotations

from collections import defaultdict

import click

from planner.calibration import BAND, helix_points
from planner.catalog import load_gpu_catalog, load_model_catalog


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Print every row, also those not held to the band.")
def main(show_all: bool) -> None:
    points = helix_points(load_gpu_catalog(), load_model_catalog())
    by_source: dict[str, list] = defaultdict(list)
    for p in points:
        by_source[p.source].append(p)
    click.echo("| source | held rows | worst held error | all rows | error range of all rows |\n|---|---|---|---|---|")
    for source, rows in by_source.items():
        held = [p for p in rows if p.held]
        worst = max((p.error for p in held), key=abs, default=None)
        click.echo(f"| {source} | {len(held)} | {'-' if worst is None else f'{worst:+.1%}'} | {len(rows)} | "
                   f"{min(p.error for p in rows):+.1%} .. {max(p.error for p in rows):+.1%} |")
    outside = [p for p in points if p.held and abs(p.error) > BAND]
    click.echo(f"\nheld rows: {sum(p.held for p in points)} of {len(points)}; outside +-{BAND:.0%}: {len(outside)}\n")
    click.echo("| source | phase | batch / tokens | measured ms | predicted ms | error | held? |\n|---|---|---|---|---|---|---|")
    for p in points:
        if show_all or p.held or p.why_not.startswith("TP group"):
            click.echo(p.markdown_row())


if __name__ == "__main__":
    main()
