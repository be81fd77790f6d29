"""`planner` command line: one module per command; errors become one line and an exit status.

Each command's module is imported only when that command runs: the solver, simulator, plotting and
torch stacks take seconds to import, and `planner --help` or `planner show` need none of them.
"""

from __future__ import annotations

import importlib
import sys
import warnings

import click

from planner import __version__
from planner.errors import InputError, InputWarning, SolveError, visible

# name -> (module, attribute, summary for `planner --help`: a test holds each to its command's docstring)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "show": ("planner.cli.show_cmd", "show", "Print a cluster: hosts, GPUs, links"),
    "solve": ("planner.cli.solve_cmd", "solve", "Decide which layers each GPU holds and how requests flow"),
    "compare": ("planner.cli.compare_cmd", "compare", "Solve with every method and print one table"),
    "simulate": ("planner.cli.simulate_cmd", "simulate_cmd", "Simulate serving a layout, event by event"),
    "export": ("planner.cli.export_cmd", "export_cmd", "Write the files that run a layout"),
    "run": ("planner.cli.run_cmd", "run_cmd", "Serve a layout on this machine and generate"),
    "host": ("planner.cli.host_cmd", "host_cmd", "Coordinate the workers and serve POST /v1/completions"),
    "worker": ("planner.cli.worker_cmd", "worker_cmd", "Serve one pipeline stage"),
    "make-checkpoint": ("planner.cli.make_checkpoint_cmd", "make_checkpoint_cmd",
                        "Write a random-weight Hugging Face-style checkpoint"),
    "profile": ("planner.cli.profile_cmd", "profile_cmd", "Time the runtime's layers"),
    "mesh": ("planner.cli.mesh_cmd", "mesh_cmd", "Group every GPU into TP groups on each host's fastest links"),
    "sp-pp": ("planner.cli.sp_pp_cmd", "sp_pp_cmd", "Model seed 002's SP+PP"),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from COMMANDS, without importing every command's module."""
        rows = [(name, short_help) for name, (_, _, short_help) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="planner")
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Plan where each layer of an LLM lives on a heterogeneous GPU cluster, and what it will serve."""
    ctx.obj = {"debug": debug}


def _one_line_warnings(show=warnings.showwarning):
    """warnings.showwarning that prints an InputWarning as `warning: ...` on stderr (no source line)."""

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, InputWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", InputWarning)  # each distinct warning once
            warnings.showwarning = _one_line_warnings()
            cli.main(args=argv, prog_name="planner", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:   # one line, as every other error: what is wrong and where to look
        where = exc.ctx.command_path if exc.ctx is not None else "planner"
        click.echo(visible(f"error: {exc.format_message()} (see `{where} --help`)"), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except InputError as exc:
        if debug:
            raise
        click.echo(f"error: {exc.line()}", err=True)
        sys.exit(2)
    except OSError as exc:   # the system refused: a full disk, a missing folder, a port in use
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename is not None else ""
        click.echo(visible(f"error: {where}{exc.strerror or exc}"), err=True)
        sys.exit(2)
    except SolveError as exc:
        if debug:
            raise
        click.echo(visible(f"error: {exc}"), err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: say so briefly, trace with --debug
        if debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)", err=True)
        sys.exit(1)
    sys.exit(0)
