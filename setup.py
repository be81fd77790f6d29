"""The build: the simulator's event loop compiled with mypyc where this machine can (docs/simulator.md#speed).

`pip install` runs this (pyproject.toml holds everything else). mypyc turns the typed modules of
simulator.native.COMPILED into C extensions, which run the busy case at about twice the events per second.
Where it cannot (mypy missing, sources that do not type-check under the mypy installed, no C compiler)
the install goes on with the pure-Python modules: the same results, slower. LAYER_PLANNER_PURE_SIMULATOR=1
skips the compile.

Once the extensions are built, the hash of each compiled source is written beside them
(simulator/_compiled.json); simulator/native.py runs the compiled modules only while every source still
matches, so an editable install whose sources were edited since runs the edited sources.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# by path: importing the simulator package would import numpy, not installed yet
NATIVE = runpy.run_path(str(Path(__file__).resolve().parent / "simulator" / "native.py"))
SOURCES = [f"simulator/{name}.py" for name in NATIVE["COMPILED"]]


def compiled_extensions() -> list:
    if NATIVE["pure_requested"]():
        return []
    try:
        from mypyc.build import mypycify
        # pip's build environment has none of the dependencies: their types are Any there; modules the
        # compiled ones import (planner's) are read for their types, not checked
        extensions = mypycify(["--ignore-missing-imports", "--follow-imports=silent", *SOURCES],
                              opt_level="3", group_name=NATIVE["GROUP_NAME"])
    except (Exception, SystemExit) as error:  # mypyc exits on a type error
        why = "mypy reported the errors above" if isinstance(error, SystemExit) else repr(error)
        print(f"layer-planner: the simulator is not compiled ({why}); its pure-Python modules run, "
              "with the same results, slower", file=sys.stderr)
        return []
    for extension in extensions:
        extension.optional = True   # no C compiler: the install goes on, pure Python
    return extensions


class BuildExt(build_ext):
    """build_ext, then the record of what was compiled, only if every extension was built."""

    def run(self) -> None:
        super().run()
        if not self.extensions:
            return
        built = [Path(self.get_ext_fullpath(extension.name)) for extension in self.extensions]
        if not all(path.exists() for path in built):
            print("layer-planner: the simulator's extensions did not all build; its pure-Python modules run",
                  file=sys.stderr)
            return
        target = Path(self.get_ext_fullpath("simulator.engine")).parent
        hashes = NATIVE["source_hashes"](Path(__file__).resolve().parent / "simulator")
        (target / NATIVE["RECORD_NAME"]).write_text(json.dumps(hashes, indent=1) + "\n")


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": BuildExt})
