"""The one object that owns console output: wide enough for tables when piped, stderr under --json."""

from __future__ import annotations

import shutil

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    width = max(shutil.get_terminal_size((140, 40)).columns, 120)
    return Console(stderr=stderr, width=width)
