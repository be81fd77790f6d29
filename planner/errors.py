"""The one error type for bad input: it knows the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input. The CLI prints it as one line and exits with status 2."""

    def __init__(self, problem: str, *, file: str | Path | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.field = field
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        text = f"{where}: {self.problem}" if where else self.problem
        return visible(f"{text} ({self.fix})" if self.fix else text)


def visible(text: str) -> str:
    """`text` with control characters escaped (a NUL or a newline in a name from a file would
    break the one-line message or vanish in a terminal)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class InputWarning(UserWarning):
    """Input that is used as given but looks odd (e.g. a measured table that is not monotone). The
    library raises it with `warnings.warn`; the CLI prints it as one line on stderr."""


class SolveError(Exception):
    """A solve that could not produce a layout (infeasible problem, solver failure). Exit status 1."""
