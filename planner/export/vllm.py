"""vLLM launch files from a layout: `--to vllm-replicas` (seed 001) and `--to vllm` (seed 004).

vllm-replicas: every unit (a GPU or a tensor-parallel group) holds the whole model; one `vllm serve` per
unit, ports from 8001 upward on each host, a health check and router weights (share of the plan's flow).

vllm: the layout is one or more chains of pipeline stages, every stage of a chain a unit of the same TP
size; each chain becomes one vLLM deployment (Ray cluster across its hosts, `--tensor-parallel-size`,
`--pipeline-parallel-size`, `VLLM_PP_LAYER_PARTITION` with the stages' layer counts in chain order).
Layouts vLLM cannot run are refused with one line saying why. Walkthrough: docs/exports.md.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from planner.errors import InputError
from planner.export.shell import default_to
from planner.layout import Layout
from planner.problem import PlacementProblem
from planner.routing import COORDINATOR
from planner.vllm_runnable import NotRunnable, Unit, units_of
from planner.vllm_runnable import vllm_chains as runnable_chains

VLLM_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
BASE_PORT = 8001              # vllm-replicas: each host's first instance; the next ones count up
SERVE_PORT = 8000             # vllm: the first deployment's API port on its head host
RAY_PORT = 6379
GPU_MEMORY_UTILIZATION = 0.9
MAX_NUM_SEQS = 256            # vLLM's own default: the most we ever write
DEFAULT_MAX_MODEL_LEN = 4096


def _units(layout: Layout) -> list[Unit]:
    return units_of(layout.cluster, layout.placement)


def _refuse(layout_path, problem: str, fix: str, field: str | None = None) -> InputError:
    return InputError(problem, file=layout_path or None, field=field, fix=fix)


def _dtype(layout: Layout) -> str:
    return VLLM_DTYPES[layout.cluster.dtype]


def _model_arg(layout: Layout, checkpoint: str | None) -> str:
    return checkpoint or layout.cluster.model.hf_name or layout.cluster.model.id


def _address(layout: Layout, host: str) -> str:
    return layout.cluster.host(host).address or host


def _inflow(layout: Layout, unit: str) -> float:
    return layout.flows.get((COORDINATOR, unit), 0.0)


def _weights(flows: dict[str, float]) -> dict[str, float]:
    """endpoint -> share of the total flow (equal shares when the layout carries no flows)."""
    total = sum(flows.values())
    if total <= 0:
        return {e: round(1 / len(flows), 6) for e in flows}
    return {e: round(f / total, 6) for e, f in flows.items()}


def _max_num_seqs(layout: Layout, unit: Unit, max_model_len: int) -> int:
    """Sequences of the workload's mean length whose KV fits beside the weights (cost model), 1..256."""
    cost = PlacementProblem(layout.cluster).cost_of(unit.name)
    layers = layout.cluster.model.layers
    tokens = cost.kv_tokens(unit.end - unit.start, unit.start == 0, unit.end == layers)
    workload = layout.cluster.workload
    per_seq = min(max_model_len, workload.prompt_tokens + workload.output_tokens)
    return max(1, min(MAX_NUM_SEQS, int(tokens // per_seq)))


def _write(path: Path, text: str, executable: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(0o755)
    return path


def _script(lines: list[str]) -> str:
    return "\n".join(["#!/usr/bin/env bash", *lines, ""])


# ---- vllm-replicas ------------------------------------------------------------------------------

def export_vllm_replicas(layout: Layout, out_dir: str | Path, *, layout_path: str = "",
                         checkpoint: str | None = None, max_model_len: int | None = None,
                         max_num_seqs: int | None = None, **_options) -> list[Path]:
    """OUT/serve-HOST.sh (one `vllm serve` per unit), OUT/health_check.sh, OUT/router.json."""
    out_dir = Path(out_dir)
    layers = layout.cluster.model.layers
    units = _units(layout)
    if not units:
        raise _refuse(layout_path, "no GPU holds layers", "re-plan the layout", "[nodes]")
    for u in units:
        if (u.start, u.end) != (0, layers):
            raise _refuse(layout_path, f"{u.name} holds layers [{u.start}, {u.end}), not the whole model "
                          f"[0, {layers}): vllm-replicas needs every GPU or TP group to hold every layer",
                          "plan with `--method replicas`, or export a pipeline with `--to vllm`", "[nodes]")
    heads = layout.cluster.model.attention_heads
    for u in units:
        if heads % u.tp:
            raise _refuse(layout_path, f"{u.name}: vLLM needs the {heads} attention heads to divide by the "
                          f"tensor-parallel size {u.tp}", "re-plan with groups of 1, 2, 4 or 8 that divide it")
    max_model_len = max_model_len or DEFAULT_MAX_MODEL_LEN
    model, served = _model_arg(layout, checkpoint), layout.cluster.model.id
    written, flows, checks = [], {}, []
    for host in dict.fromkeys(u.host for u in units):
        lines = [f"# {host}: one vLLM server per GPU / tensor-parallel group holding all of {served} "
                 f"(layout method {layout.method}); written by `planner export --to vllm-replicas`.",
                 "# Each server runs in the background and logs to vllm-PORT.log; stop them with `kill $(cat vllm-*.pid)`.",
                 "set -euo pipefail", 'cd "$(dirname "$0")"', default_to("MODEL", model)]
        port = BASE_PORT
        for u in (u for u in units if u.host == host):
            seqs = max_num_seqs or _max_num_seqs(layout, u, max_model_len)
            args = [f"CUDA_VISIBLE_DEVICES={','.join(map(str, u.indices))}", "nohup", "vllm", "serve", '"$MODEL"',
                    f"--served-model-name {served}", "--host 0.0.0.0", f"--port {port}"]
            if u.tp > 1:
                args.append(f"--tensor-parallel-size {u.tp}")
            args += [f"--dtype {_dtype(layout)}", f"--gpu-memory-utilization {GPU_MEMORY_UTILIZATION}",
                     f"--max-num-seqs {seqs}", f"--max-model-len {max_model_len}"]
            lines.append(f"# {u.name}: planned {_inflow(layout, u.name):.1f} tokens/s")
            lines.append(" ".join(args) + f" > vllm-{port}.log 2>&1 &")
            lines.append(f"echo $! > vllm-{port}.pid")
            endpoint = f"http://{_address(layout, host)}:{port}"
            flows[endpoint] = _inflow(layout, u.name)
            checks.append(endpoint)
            port += 1
        written.append(_write(out_dir / f"serve-{host}.sh", _script(lines), executable=True))
    health = ["# Checks every vLLM server of the layout; exit status 1 if any is not healthy.",
              "status=0"]
    for endpoint in checks:
        health += [f'printf "Checking {endpoint} ... "',
                   f'if curl -fsS --max-time 5 {endpoint}/health > /dev/null; then echo ok; '
                   f'else echo FAILED; status=1; fi']
    health.append("exit $status")
    written.append(_write(out_dir / "health_check.sh", _script(health), executable=True))
    written.append(_write(out_dir / "router.json", json.dumps(_weights(flows), indent=2) + "\n"))
    return written


# ---- vllm (pipeline chains over Ray) ------------------------------------------------------------

def vllm_chains(layout: Layout, layout_path: str = "") -> list[list[Unit]]:
    """The layout's chains, each a list of units in stage order from layer 0 to the last layer; raises
    InputError (one line) when vLLM cannot run the layout (the rules: planner/vllm_runnable.py, which the
    optimiser builds `--engine vllm` plans by)."""
    try:
        return runnable_chains(layout.cluster, layout.placement, layout.flows)
    except NotRunnable as exc:
        raise _refuse(layout_path, exc.problem, exc.fix) from None


def export_vllm(layout: Layout, out_dir: str | Path, *, layout_path: str = "", checkpoint: str | None = None,
                max_model_len: int | None = None, max_num_seqs: int | None = None, **_options) -> list[Path]:
    """Per deployment (chain) dN: OUT/ray-dN-HOST.sh per host, OUT/serve-dN.sh (run on the head host);
    OUT/router.json: deployment endpoint -> share of the plan's flow."""
    out_dir = Path(out_dir)
    chains = vllm_chains(layout, layout_path)  # a multi-host chain's hosts have addresses (checked there)
    max_model_len = max_model_len or DEFAULT_MAX_MODEL_LEN
    model, served = _model_arg(layout, checkpoint), layout.cluster.model.id
    written, flows = [], {}
    serve_port: dict[str, int] = {}
    for d, chain in enumerate(chains):
        name = f"d{d}"
        head = chain[0].host  # vLLM's driver runs here: Ray gives its GPUs the first pipeline ranks
        ray_port = RAY_PORT + d
        head_addr = _address(layout, head)
        chain_hosts = list(dict.fromkeys(u.host for u in chain))
        multi = len(chain_hosts) > 1
        tp, pp = chain[0].tp, len(chain)
        partition = ",".join(str(u.end - u.start) for u in chain)
        if multi:
            for host in chain_hosts:
                devices = ",".join(str(i) for u in chain if u.host == host for i in u.indices)
                role = f"--head --port={ray_port}" if host == head else f"--address={head_addr}:{ray_port}"
                lines = [f"# {name} on {host}: Ray {'head' if host == head else 'worker'} for the vLLM deployment "
                         f"{name} (stages {', '.join(u.name for u in chain if u.host == host)}).",
                         "# Start the head first, then the workers; then run serve-" + name + ".sh on " + head + ".",
                         "set -euo pipefail",
                         f"export VLLM_HOST_IP={_address(layout, host)}",
                         # the address named, so a host with several network cards joins on the planned one
                         f"CUDA_VISIBLE_DEVICES={devices} ray start {role} "
                         f"--node-ip-address={_address(layout, host)} --num-gpus={devices.count(',') + 1}"]
                written.append(_write(out_dir / f"ray-{name}-{host}.sh", _script(lines), executable=True))
        port = serve_port[head] = serve_port.get(head, SERVE_PORT - 1) + 1
        seqs = max_num_seqs or min(_max_num_seqs(layout, u, max_model_len) for u in chain)
        stages = "; ".join(f"stage {i}: {u.name} [{u.start}, {u.end})" for i, u in enumerate(chain))
        devices = ",".join(str(i) for u in chain if u.host == head for i in u.indices)
        args = ["vllm", "serve", '"$MODEL"', f"--served-model-name {served}", "--host 0.0.0.0", f"--port {port}",
                f"--tensor-parallel-size {tp}", f"--pipeline-parallel-size {pp}",
                f"--distributed-executor-backend {'ray' if multi else 'mp'}",
                f"--dtype {_dtype(layout)}", f"--gpu-memory-utilization {GPU_MEMORY_UTILIZATION}",
                f"--max-num-seqs {seqs}", f"--max-model-len {max_model_len}"]
        lines = [f"# {name}: vLLM deployment of {served}, TP {tp} x PP {pp}, run on {head}; "
                 f"written by `planner export --to vllm`.", f"# {stages}", "set -euo pipefail",
                 default_to("MODEL", model), f"export VLLM_PP_LAYER_PARTITION={shlex.quote(partition)}"]
        if multi:
            lines.append(f"export RAY_ADDRESS={head_addr}:{ray_port}")
        else:
            lines.append(f"export CUDA_VISIBLE_DEVICES={devices}")
        lines.append("exec " + " ".join(args))
        written.append(_write(out_dir / f"serve-{name}.sh", _script(lines), executable=True))
        flows[f"http://{head_addr}:{port}"] = _inflow(layout, chain[0].name)
    written.append(_write(out_dir / "router.json", json.dumps(_weights(flows), indent=2) + "\n"))
    return written
