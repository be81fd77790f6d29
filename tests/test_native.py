"""The compiled simulator (setup.py, mypyc) and its sources: same results, and the sources run wherever the
compiled modules no longer match them (simulator/native.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import simulator
from conftest import ROOT, planner_script
from simulator import native

COMPILED = pytest.mark.skipif(not simulator.COMPILED_RUNNING,
                              reason="this install runs the pure-Python simulator (setup.py could not compile it)")


def environment(pure: bool = False, **extra: str) -> dict[str, str]:
    """This process's environment with the compiled simulator on, or off (`pure`), and `extra` added."""
    env = {key: value for key, value in os.environ.items() if key != native.PURE_ENV}
    return env | ({native.PURE_ENV: "1"} if pure else {}) | extra


def simulate_json(*args: str, pure: bool) -> dict:
    result = subprocess.run([planner_script(), "simulate", *args, "--json"], cwd=ROOT, env=environment(pure),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    del document["wall_seconds"]
    return document


@COMPILED
@pytest.mark.parametrize("layout, args", [
    ("layouts/hetero.ini", ["--workload", "poisson:4", "--lengths", "lognormal"]),
    ("benchmarks/busy/layout.ini", []),   # paths that part and meet, several lanes per path
])
def test_the_compiled_simulator_gives_what_its_sources_give(layout, args):
    compiled = simulate_json(layout, "--duration", "60", "--warmup", "20", "--seed", "3", *args, pure=False)
    assert compiled == simulate_json(layout, "--duration", "60", "--warmup", "20", "--seed", "3", *args, pure=True)
    assert compiled["events"] > 10_000


def running(package_parent: Path, pure: bool = False) -> tuple[bool, str]:
    """(COMPILED_RUNNING, simulator.stage's file) of the simulator package under `package_parent`."""
    out = subprocess.run([sys.executable, "-c", "import simulator; print(simulator.COMPILED_RUNNING, "
                          "simulator._stage.__file__)"], cwd=package_parent,
                         env=environment(pure, PYTHONPATH=str(package_parent)), capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return out[0] == "True", out[1]


@COMPILED
def test_an_edited_source_runs_in_place_of_its_compiled_module(tmp_path):
    shutil.copytree(Path(simulator.__file__).parent, tmp_path / "simulator")
    assert running(tmp_path)[0]                                    # as built: compiled
    assert not running(tmp_path, pure=True)[0]                     # turned off
    stage = tmp_path / "simulator" / "stage.py"
    stage.write_text(stage.read_text() + "\n# edited after the build\n")
    compiled, origin = running(tmp_path)
    assert not compiled and origin == str(stage)


@COMPILED
def test_a_compiled_library_that_does_not_load_leaves_the_sources_running(tmp_path):
    shutil.copytree(Path(simulator.__file__).parent, tmp_path / "simulator")
    library = Path(importlib.util.find_spec(f"{native.GROUP_NAME}__mypyc").origin)
    (tmp_path / library.name).write_bytes(b"not a shared library")   # found first: tmp_path leads the path
    compiled, origin = running(tmp_path)
    assert not compiled and origin == str(tmp_path / "simulator" / "stage.py")


def test_compiled_modules_run_only_while_every_source_matches_the_record(tmp_path, monkeypatch):
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    for name in native.COMPILED:
        (tmp_path / f"{name}.py").write_text(f"# {name}\n")
    record = tmp_path / native.RECORD_NAME
    assert not native.compiled_match(tmp_path)                     # nothing compiled: no record
    record.write_text(json.dumps(native.source_hashes(tmp_path)))
    assert native.compiled_match(tmp_path)
    monkeypatch.setenv(native.PURE_ENV, "1")
    assert not native.compiled_match(tmp_path)
    for off in ("0", "false", "", "Off"):
        monkeypatch.setenv(native.PURE_ENV, off)
        assert native.compiled_match(tmp_path)
    monkeypatch.delenv(native.PURE_ENV)
    (tmp_path / "stage.py").write_text("# stage, edited\n")
    assert not native.compiled_match(tmp_path)
    record.write_text("{not json")
    assert not native.compiled_match(tmp_path)


def test_planner_simulate_says_which_simulator_ran():
    def line(pure: bool) -> str:
        result = subprocess.run([planner_script(), "simulate", "layouts/hetero.ini", "--duration", "20", "--warmup", "5"],
                                cwd=ROOT, env=environment(pure), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return next(text for text in result.stdout.splitlines() if text.startswith("simulated "))

    assert "pure Python" in line(pure=True)
    assert line(pure=False).endswith("; compiled)" if simulator.COMPILED_RUNNING else "docs/simulator.md#speed)")
