"""A fork server for workers: a process that imports torch once and forks a worker per request.

Starting a worker is mostly importing torch (~2 s of CPU each; four at once on a 2-core machine take
~10 s). The server pays that once; each worker is then a fork that serves in milliseconds. It is only
safe because the server never runs a torch op or starts a thread before forking.

Protocol on the server's stdin/stdout, one JSON object per line:
    -> {"argv": ["--config", CFG, "--node", NODE, "--checkpoint", DIR], "log": PATH}
    <- {"pid": PID}
When its stdin closes (the client closed it or died) the server kills its workers and exits. Workers and
the server die with their parent (Linux PR_SET_PDEATHSIG), so a killed client leaves no orphans.
Run as `python -m runtime.forkserver`; runtime.launch.ForkServer is the client.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback

import runtime.worker  # the import the forks share

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _child(argv: list[str], log_path: str) -> None:
    die_with_parent()
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 0
    try:
        runtime.worker.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report and exit non-zero, never return into the server loop
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _reap(*_) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve() -> None:
    die_with_parent()
    signal.signal(signal.SIGCHLD, _reap)
    children: list[int] = []
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request["argv"], request["log"])
        children.append(pid)
        sys.stdout.write(json.dumps({"pid": pid}) + "\n")
        sys.stdout.flush()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    serve()
