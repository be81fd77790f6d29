"""Keep solver libraries off the process's stdout.

HiGHS (from highspy 1.16) writes a two-line banner from C straight to file descriptor 1 the first time a
solver object is made in a process, before any option such as `output_flag` can be set, so no solver
option silences it. A program that prints JSON on stdout (`planner solve --json`, or any script that
imports the planner) would then print something that is not JSON. Every HiGHS call in the planner runs
inside `solver_stdout_silenced()`: file descriptor 1 points at the null device meanwhile, and Python's
own `sys.stdout` keeps writing to the real stdout through a duplicate of it. The window is each solver
call alone, not a whole method: progress callbacks run outside it, so a caller that prints to a stdout
object it saved earlier loses nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterator

_lock = threading.RLock()
_depth = 0  # nested or concurrent solves share one redirection


def _python_stdout_on_fd1() -> bool:
    """True when Python's sys.stdout writes to file descriptor 1 (not when a test runner or an
    embedding program has replaced it with an object of its own)."""
    try:
        return sys.stdout is not None and sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def solver_stdout_silenced() -> Iterator[None]:
    """Run the body with C-level writes to stdout discarded; Python's prints still reach stdout."""
    global _depth
    with _lock:
        _depth += 1
        if _depth > 1:
            outer = None
        else:
            outer = _redirect()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if outer is not None:
                _restore(*outer)


def _redirect() -> tuple[int, object, object] | None:
    try:
        saved_fd = os.dup(1)
    except OSError:  # no stdout at all (a daemon): nothing to protect
        return None
    python_stdout = sys.stdout
    replacement = None
    if _python_stdout_on_fd1():
        python_stdout.flush()
        # Python keeps printing to the real stdout while fd 1 is the null device
        replacement = open(os.dup(saved_fd), "w", encoding=python_stdout.encoding,  # noqa: SIM115
                           errors=python_stdout.errors, buffering=1)
        sys.stdout = replacement
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    return saved_fd, python_stdout, replacement


def _restore(saved_fd: int, python_stdout: object, replacement: object) -> None:
    if replacement is not None:
        replacement.flush()
        if sys.stdout is replacement:
            sys.stdout = python_stdout
        replacement.close()
    os.dup2(saved_fd, 1)
    os.close(saved_fd)
