"""Options several commands share."""

from __future__ import annotations

import math
from pathlib import Path

import click

from planner.engines import DEFAULT_ENGINE, ENGINES

ENGINE_HELP = ("Serving engine whose speed and scheduling the cost model predicts: vllm (CUDA graphs, paged "
               "attention; constants fitted to published vLLM profiles), runtime (the bundled runtime; a GPU's "
               "measured profile when it has one) or helix (Helix: vLLM's layers, each path's sequences as one "
               "group). docs/cost-model.md#engines-and-calibration.")
CLUSTER_ENGINE = f" Default: the cluster file's `engine`, else {DEFAULT_ENGINE}."


def engine_option(default: str | None = None, help_extra: str = CLUSTER_ENGINE) -> click.decorators.FC:
    return click.option("--engine", type=click.Choice(ENGINES), default=default,
                        show_default=default is not None, help=ENGINE_HELP + help_extra)


class FiniteRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (a range check lets nan through: it compares false)."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def plot_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--plot's check before any work: a PNG (or PDF, SVG) in a folder that exists."""
    if value is None:
        return None
    path = Path(value)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise click.BadParameter(f"{value!r} is not a .png, .pdf or .svg file name", ctx, param)
    if not path.resolve().parent.is_dir():
        raise click.BadParameter(f"the folder of {value!r} does not exist", ctx, param)
    return value
