"""Everything on this machine: one worker process per GPU of the layout (each rank of a tensor-parallel
group its own process), the host in this process.

Workers talk over loopback TCP exactly as on a cluster. Two ways to start them:
  * through a ForkServer (default): a process that imported torch once forks each worker, which then
    starts in milliseconds rather than the seconds a torch import takes (on a 2-core machine, importing
    torch in 4 fresh processes at once takes ~10 s); one server may serve many runs (the tests share one);
  * spawn="exec": a fresh `python -m planner worker` process each, exactly as a launch script starts them.
Workers die with the process that started them (Linux PR_SET_PDEATHSIG), and close() terminates them
(SIGTERM, then SIGKILL), so nothing is left behind even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from runtime.config import RuntimeConfig, write_runtime_config
from runtime.forkserver import die_with_parent
from runtime.hfconfig import read_checkpoint_config, stop_token_ids
from runtime.host import Host, Request
from runtime.sampling import SamplingParams


class ForkedWorker:
    """A worker forked by the fork server (not our child): the subprocess.Popen methods LocalRun uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)      # the server reaps its children at once: gone means exited
            except ProcessLookupError:
                self.returncode = -1      # exit status unknown to us (the server reaped it)
        return self.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode


class ForkServer:
    """Client of `python -m runtime.forkserver`: start(argv, log) -> ForkedWorker. close() ends it and
    every worker it forked."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "runtime.forkserver"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1,
                                        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)

    def start(self, argv: list[str], log: Path) -> ForkedWorker:
        self.process.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the fork server exited with status {self.process.wait()}")
        return ForkedWorker(json.loads(reply)["pid"])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalRun:
    """with LocalRun(config, checkpoint) as run: run.host.generate([1, 2, 3])"""

    def __init__(self, config: RuntimeConfig, checkpoint: str | Path, *, workdir: str | Path | None = None,
                 start_timeout_s: float = 60.0, routing: str | None = None, spawn: str = "fork",
                 forkserver: ForkServer | None = None) -> None:
        if spawn not in ("fork", "exec"):
            raise ValueError(f"spawn is 'fork' or 'exec', not {spawn!r}")
        self.config, self.checkpoint, self.spawn = config, str(checkpoint), spawn
        self.forkserver, self._own_forkserver = forkserver, False
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="planner-run-")
        self.workdir = Path(workdir or self._tmp.name)
        self.start_timeout_s = start_timeout_s
        self.config_path = write_runtime_config(config, self.workdir / "runtime.json")
        self.processes: dict[str, subprocess.Popen | ForkedWorker] = {}
        self.host = Host(config, stop_ids=stop_token_ids(read_checkpoint_config(checkpoint)), routing=routing)

    def log_path(self, node: str) -> Path:
        return self.workdir / f"worker-{node.replace(':', '-')}.log"

    def _launch(self, node: str) -> subprocess.Popen | ForkedWorker:
        argv = ["--config", str(self.config_path), "--node", node, "--checkpoint", self.checkpoint]
        if self.spawn == "fork":
            if self.forkserver is None:
                self.forkserver, self._own_forkserver = ForkServer(), True
            return self.forkserver.start(argv, self.log_path(node))
        with open(self.log_path(node), "w") as log:
            return subprocess.Popen([sys.executable, "-m", "planner", "worker", *argv], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                    preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)

    def start(self) -> "LocalRun":
        if self.processes:
            return self  # already started (e.g. start() and then `with`)
        try:
            for node in self.config.processes():
                self.processes[node] = self._launch(node)
            self.host.start()
            deadline = time.monotonic() + self.start_timeout_s
            while not self.host.ready.wait(0.05):
                for node, proc in self.processes.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker {node} exited while starting: {self.log_tail(node)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers did not start within {self.start_timeout_s:g} s")
        except BaseException:
            self.close()
            raise
        return self

    def log_tail(self, node: str, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path(node).read_text().strip().splitlines()[-lines:]) or "(empty log)"
        except OSError:
            return "(no log)"

    def kill(self, node: str) -> None:
        """Kill one worker process (a tensor-parallel rank by its GPU's name) at once (SIGKILL), as a crash would."""
        proc = self.processes[node]
        proc.kill()
        proc.wait(timeout=10)

    def close(self) -> None:
        self.host.close(stop_workers=True)
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._own_forkserver:
            self.forkserver.close()
            self.forkserver, self._own_forkserver = None, False
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "LocalRun":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def measure(host: Host, prompts: list[list[int]], max_new_tokens: int, sampling: list[SamplingParams], *,
            concurrency: int | None = None, timeout_s: float = 600.0, ignore_eos: bool = True) -> dict:
    """Serve every prompt, at most `concurrency` in flight (a closed loop, as the simulator's
    offline:N; default: all at once), and report the ids, output tokens/s over the run, TTFT and TPOT."""
    limit = concurrency or len(prompts)
    before = _step_counters(host)
    start = time.perf_counter()
    requests, waiting = [], list(zip(prompts, sampling))
    in_flight: list = []
    deadline = time.monotonic() + timeout_s
    ended = threading.Event()   # some request ended: replace it now, whichever it is (not only the oldest)
    chained = host.on_end

    def on_end(request: Request) -> None:
        ended.set()
        if chained is not None:
            chained(request)

    host.on_end = on_end
    try:
        while waiting or in_flight:
            while waiting and len(in_flight) < limit:
                prompt, params = waiting.pop(0)
                request = host.submit(prompt, max_new_tokens, params, ignore_eos=ignore_eos)
                requests.append(request)
                in_flight.append(request)
            if not any(r.done.is_set() for r in in_flight):   # (one may have ended at submit)
                ended.wait(max(0.0, deadline - time.monotonic()))
            ended.clear()   # cleared before looking: an end from now on wakes the next wait
            if time.monotonic() > deadline:
                break
            in_flight = [r for r in in_flight if not r.done.is_set()]
    finally:
        host.on_end = chained
    wall = time.perf_counter() - start
    after = _step_counters(host)
    outputs = [list(r.tokens) for r in requests]
    errors = [r.error or f"request {r.rid} unfinished after {timeout_s:g} s" for r in requests
              if r.error or not r.done.is_set()]
    done = [r for r in requests if r.done.is_set() and r.error is None]
    ttft = [r.ttft_s for r in done if r.ttft_s is not None]
    tpot = [(r.finished_s - r.first_token_s) / (len(r.tokens) - 1) for r in done if len(r.tokens) > 1]
    # the first wave's prompts all arrive at once and queue for prefill; a closed loop's later requests
    # replace finished ones, as in the simulator's measured window
    later = {id(r) for r in requests[limit:]}
    steady = [r.ttft_s for r in done if r.ttft_s is not None and id(r) in later]
    produced = sum(len(o) for o in outputs)
    return {"requests": len(prompts), "completed": len(done), "concurrency": limit, "output_tokens": produced,
            "wall_s": wall, "output_tokens_per_s": produced / wall if wall > 0 else 0.0, "ttft_s": _stats(ttft),
            "ttft_after_first_wave_s": _stats(steady), "tpot_s": _stats(tpot), "outputs": outputs, "errors": errors,
            "paths": [list(r.path or ()) for r in requests],
            "steps": {node: {"steps": after[node][0] - before[node][0], "busy_s": after[node][1] - before[node][1]}
                      for node in after}}


def _step_counters(host: Host) -> dict[str, tuple[int, float]]:
    """Each worker's steps and seconds inside them so far, from a heartbeat sent after this call (a few
    beats' wait at most; a worker that stays silent keeps its last figures)."""
    asked = time.monotonic()
    deadline = asked + 4 * host.config.limits.heartbeat_s
    while any(s["beat_s"] <= asked for s in host.worker_stats.values()) and time.monotonic() < deadline:
        time.sleep(0.005)
    return {node: (s["steps"], s["busy_s"]) for node, s in host.worker_stats.items()}


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "max": None}
    ordered = sorted(values)
    return {"mean": sum(values) / len(values), "p50": ordered[len(ordered) // 2], "max": ordered[-1]}
