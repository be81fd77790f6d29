"""Options several commands share."""

from __future__ import annotations

import click

from planner.engines import DEFAULT_ENGINE, ENGINES

ENGINE_HELP = ("Serving engine whose speed the cost model predicts: vllm (CUDA graphs, paged attention; "
               "constants fitted to published vLLM profiles) or runtime (the bundled runtime; a GPU's "
               "measured profile when it has one). docs/cost-model.md#engines-and-calibration.")


def engine_option(default: str | None = DEFAULT_ENGINE, help_extra: str = "") -> click.decorators.FC:
    return click.option("--engine", type=click.Choice(ENGINES), default=default,
                        show_default=default is not None, help=ENGINE_HELP + help_extra)
