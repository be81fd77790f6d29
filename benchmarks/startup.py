"""Start-up time of the commands a user types most: `planner --help` and `planner show`.

    python benchmarks/startup.py              # median of 15 runs each, wall time of the whole process
    python benchmarks/startup.py --runs 31

Each run is a fresh process of the installed console script, as a shell starts it. The target is under
0.5 s for both (issue 13); what makes it so is that solver, simulator, plotting and torch imports load
only in the commands that use them (tests/test_cli.py checks which libraries each loads). Also timed,
for scale: `python -c pass` (the interpreter alone) and `planner solve --help` (loads the solver stack).
Not part of the test run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLANNER = str(Path(sys.executable).parent / "planner")

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "planner --help": [PLANNER, "--help"],
    "planner show profiles/hetero.ini": [PLANNER, "show", str(ROOT / "profiles" / "hetero.ini")],
    "planner solve --help": [PLANNER, "solve", "--help"],
}


def wall_seconds(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    for argv in COMMANDS.values():  # warm the file cache once, untimed
        wall_seconds(argv)
    print(f"{'command':<36} {'median s':>9} {'min s':>7} {'max s':>7}")
    for label, argv in COMMANDS.items():
        times = [wall_seconds(argv) for _ in range(args.runs)]
        print(f"{label:<36} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}")


if __name__ == "__main__":
    main()
