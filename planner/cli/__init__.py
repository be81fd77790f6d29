"""`planner` command line: one module per command; errors become one line and an exit status."""

from __future__ import annotations

import sys

import click

from planner import __version__
from planner.cli import compare_cmd, show_cmd, simulate_cmd, solve_cmd
from planner.cli import export_cmd, host_cmd, mesh_cmd, make_checkpoint_cmd, profile_cmd, run_cmd, sp_pp_cmd, worker_cmd
from planner.errors import InputError, SolveError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="planner")
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Plan where each layer of an LLM lives on a heterogeneous GPU cluster, and what it will serve."""
    ctx.obj = {"debug": debug}


cli.add_command(show_cmd.show)
cli.add_command(solve_cmd.solve)
cli.add_command(compare_cmd.compare)
cli.add_command(simulate_cmd.simulate_cmd)
cli.add_command(export_cmd.export_cmd)
cli.add_command(worker_cmd.worker_cmd)
cli.add_command(host_cmd.host_cmd)
cli.add_command(run_cmd.run_cmd)
cli.add_command(make_checkpoint_cmd.make_checkpoint_cmd)
cli.add_command(profile_cmd.profile_cmd)
cli.add_command(mesh_cmd.mesh_cmd)
cli.add_command(sp_pp_cmd.sp_pp_cmd)


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="planner", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) or exc.exit_code == 2 else exc.exit_code)
    except InputError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.line()}", err=True)
        sys.exit(2)
    except SolveError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: say so briefly, trace with --debug
        if debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)", err=True)
        sys.exit(1)
    sys.exit(0)
