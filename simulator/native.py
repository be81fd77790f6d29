"""Which simulator modules run: the ones compiled at install (setup.py, mypyc) or their sources.

The compiled modules run only while they match the sources they were built from. setup.py records each
source's hash beside them (RECORD_NAME); `run_sources_unless_compiled_match` puts a finder of the sources
ahead of the import system's when any source differs (an editable install edited since), when there is
no record (nothing compiled, or a build that failed part-way), when the compiled library does not load
(built for another interpreter) or when LAYER_PLANNER_PURE_SIMULATOR is set. Both give the same results
for a seed (tests/test_native.py), the compiled ones faster. Standard library only: setup.py reads this
file before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Sequence

COMPILED = ("engine", "network", "metrics", "workload", "stage", "simulation")  # dependencies first
GROUP_NAME = "simulator_native"   # mypyc's shared library of the compiled modules: <GROUP_NAME>__mypyc
RECORD_NAME = "_compiled.json"
PURE_ENV = "LAYER_PLANNER_PURE_SIMULATOR"


def pure_requested() -> bool:
    """LAYER_PLANNER_PURE_SIMULATOR set to anything but empty, 0, false, no or off."""
    return os.environ.get(PURE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def source_hashes(folder: Path) -> dict[str, str]:
    """sha256 of each compiled module's source in `folder`."""
    return {name: hashlib.sha256((folder / f"{name}.py").read_bytes()).hexdigest() for name in COMPILED}


def compiled_match(folder: Path) -> bool:
    """Whether the compiled modules in `folder` may run: recorded at build time, sources unchanged since."""
    if pure_requested():
        return False
    try:
        recorded = json.loads((folder / RECORD_NAME).read_text())
        return recorded == source_hashes(folder)
    except (OSError, ValueError):
        return False


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds simulator.<name> of COMPILED as its .py source, wherever an extension module of that name is."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.partition(".")
        if package != "simulator" or name not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, self.folder / f"{name}.py")


def run_sources_unless_compiled_match(folder: Path) -> None:
    """Called by simulator/__init__.py before it imports any compiled module."""
    if any(isinstance(finder, SourceFinder) for finder in sys.meta_path):
        return
    if compiled_match(folder):
        try:
            importlib.import_module(f"{GROUP_NAME}__mypyc")
            return
        except ImportError:   # built for another interpreter, or a library it needs is gone
            pass
    sys.meta_path.insert(0, SourceFinder(folder))


def is_compiled(module: object) -> bool:
    """Whether `module` is an extension module (compiled), not Python source."""
    origin = str(getattr(module, "__file__", "") or "")
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
