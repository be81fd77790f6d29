"""Shared helpers: cluster INI files in tmp_path, running the CLI in-process and as the installed script."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from planner.catalog import load_gpu_catalog, load_model_catalog
from planner.cli import main

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
HETERO = PROFILES / "hetero.ini"



def planner_script() -> str:
    """The console script pip installed beside this interpreter (what a user's shell runs)."""
    script = Path(sys.executable).parent / ("planner.exe" if os.name == "nt" else "planner")
    assert script.exists(), f"{script} missing: install the project (pip install -e .) before testing"
    return str(script)


def run_planner(*args: object, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed `planner` in a subprocess: sees what C libraries write to stdout, as a pipe would."""
    return subprocess.run([planner_script(), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# The seed cluster of profiles/hetero.ini, as text to vary in tests.
BASE_CLUSTER = """\
[cluster]
model = qwen3-14b
dtype = fp16
coordinator = host1

[host host1]
gpus = rtx2080ti * 2
gpu_link = 15.7 GB/s, 0.01 ms

[host host2]
gpus = rtx4090 * 2
gpu_link = 31.5 GB/s, 0.01 ms

[network]
default = 1 Gbit/s, 0.5 ms
host1 -- host2 = 10 Gbit/s, 0.2 ms
"""


@pytest.fixture
def write_ini(tmp_path):
    """write_ini(text, name='cluster.ini') -> Path of a file holding the dedented text."""

    def write(text: str, name: str = "cluster.ini") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def run_cli(capsys):
    """run_cli('show', 'x.ini') -> (exit status, stdout, stderr), through planner.cli.main."""

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        code = exc.value.code
        return (0 if code is None else code), out, err

    return run


@pytest.fixture(scope="session")
def gpus():
    return load_gpu_catalog()


@pytest.fixture(scope="session")
def models():
    return load_model_catalog()
