"""What a user's pipe sees: the installed `planner` console script, run as a subprocess.

click's CliRunner and capsys see only what Python writes; C libraries (HiGHS prints a banner from C
since highspy 1.16) write to file descriptor 1 directly. Every `--json` command must print exactly one
JSON document on stdout, and a program that imports the planner must get a clean stdout too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import pytest

from conftest import HETERO, PROFILES, ROOT, run_planner

LAYOUTS = ROOT / "layouts"


def strict_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)  # the whole of stdout: not one stray byte before or after


def test_solve_json_is_one_document():
    data = strict_json(run_planner("solve", HETERO, "--json", "--time-limit", "3"))  # the MILP: HiGHS runs
    assert data["method"] == "milp" and data["throughput_tokens_per_s"] > 0


def test_compare_json_is_one_document():
    rows = strict_json(run_planner("compare", HETERO, "--json", "--methods", "milp,even", "--time-limit", "2",
                                   "--no-match-tpot"))
    assert [row["method"] for row in rows] == ["milp", "even"]


def test_simulate_json_is_one_document():
    data = strict_json(run_planner("simulate", LAYOUTS / "hetero.ini", "--json", "--duration", "30"))
    assert data["requests_completed"] > 0
    # a stage's mean iteration is its busy time over its iterations, the figure planner run gives per worker
    for node in data["nodes"]:
        assert node["iterations"] > 0 and node["mean_iteration_s"] == pytest.approx(
            node["utilisation"] * data["measured_seconds"] / node["iterations"])


def test_sp_pp_json_is_one_document():
    data = strict_json(run_planner("sp-pp", PROFILES / "sp-pp.ini", "--json", "--prompt", "512"))
    assert data


def test_profile_json_is_one_document(tmp_path):
    pytest.importorskip("torch")
    from runtime.checkpoint import make_checkpoint
    from runtime.demo import TINY_MODELS

    make_checkpoint(tmp_path / "ck", TINY_MODELS["tiny-qwen3"])
    data = strict_json(run_planner("profile", "--checkpoint", tmp_path / "ck", "--device", "cpu", "--layers", "1",
                                   "--decode-batches", "1,2", "--prefill-tokens", "8", "--context", "16",
                                   "--threads", "1", "--json"))
    assert data


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_a_profiled_section_loads_into_a_cluster_of_its_dtype_and_solves(tmp_path, dtype):
    """profile -> cluster file -> solve, as a user does it: the section carries the device's bf16
    capability, so a bf16 cluster accepts it without hand edits."""
    pytest.importorskip("torch")
    from runtime.checkpoint import make_checkpoint
    from runtime.demo import TINY_MODELS, model_section

    model = TINY_MODELS["tiny-qwen3"]
    make_checkpoint(tmp_path / "ck", model)
    cluster = tmp_path / "cluster.ini"
    cluster.write_text(f"[cluster]\nmodel = {model.id}\ndtype = {dtype}\ncoordinator = local\n\n"
                       f"{model_section(model)}\n[host local]\ngpus = cpu-measured * 2\n"
                       "gpu_link = 1 GB/s, 0.05 ms\n")
    profiled = run_planner("profile", "--checkpoint", tmp_path / "ck", "--device", "cpu", "--dtype", dtype,
                           "--layers", "1", "--decode-batches", "1,2", "--prefill-tokens", "8", "--context", "16",
                           "--threads", "1", "--memory", "2 GiB", "--out", cluster)
    assert profiled.returncode == 0, profiled.stderr
    assert "[gpu cpu-measured]" in cluster.read_text()
    data = strict_json(run_planner("solve", cluster, "--method", "even", "--json"))
    assert "bf16 = yes" in profiled.stdout  # torch runs bf16 on CPUs
    held = [node for node in data["nodes"] if node["end_layer"] > node["start_layer"]]
    assert data["throughput_tokens_per_s"] > 0 and held, data
    assert all(node["gpu"] == "cpu-measured" for node in data["nodes"])
    assert min(n["start_layer"] for n in held) == 0 and max(n["end_layer"] for n in held) == model.layers


def test_run_local_json_is_one_document(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("zmq")
    data = strict_json(run_planner("run", "--local", "--json", "--max-new-tokens", "3", "--requests", "2",
                                   cwd=tmp_path))
    assert data["completed"] == 2 and data["errors"] == []
    # each worker's steps over the measured run (its heartbeats): a prompt pass and two decode steps per
    # request, batched or not, and never busier than the run (the warm-up request's steps are not counted)
    for worker in data["workers"]:
        assert 3 <= worker["steps"] <= 6, worker
        assert 0 < worker["busy_s"] <= data["wall_s"] and worker["step_s"] == worker["busy_s"] / worker["steps"]
        assert worker["busy_share"] == worker["busy_s"] / data["wall_s"]


def test_a_program_that_imports_the_planner_gets_a_clean_stdout():
    program = textwrap.dedent(f"""
        from planner.cluster import load_cluster
        from planner.plan import solve
        plan = solve(load_cluster({str(HETERO)!r}), "milp", time_limit=2)
        print("throughput", round(plan.serving.throughput))
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("throughput ") and result.stdout.count("\n") == 1, result.stdout


def test_silencing_drops_c_writes_and_keeps_python_prints():
    program = textwrap.dedent("""
        import os
        from planner.quiet import solver_stdout_silenced
        print("before")
        with solver_stdout_silenced():
            os.write(1, b"from C\\n")          # what a C library does
            with solver_stdout_silenced():     # nested solves share one redirection
                os.write(1, b"nested C\\n")
            print("python inside")
        os.write(1, b"after\\n")
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["before", "python inside", "after"]


def _no_nan(token: str):
    raise AssertionError(f"{token} is not JSON")


def test_show_json_is_one_document_with_the_cost_model_s_figures(gpus, models):
    result = run_planner("show", HETERO, "--json", "--engine", "vllm")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout, parse_constant=_no_nan)  # the whole of stdout, strict numbers
    assert data["cluster"]["engine"] == "vllm" and data["cluster"]["model"] == "qwen3-14b"
    assert [h["name"] for h in data["cluster"]["hosts"]] == ["host1", "host2"]
    ti = data["gpu_types"]["rtx2080ti"]
    assert ti["memory_bytes"] == 11264 * 1024**2
    assert ti["max_layers"] == {"plain": 14, "with_embeddings": 11, "with_lm_head": 11}  # docs/cost-model.md
    assert [row["layers"] for row in ti["capacity"]] == list(range(1, 15))
    assert set(ti["decode_ms"]) == {"1024", "4096"}
    assert list(ti["decode_ms"]["4096"]) == [str(2**i) for i in range(9)]
    assert list(ti["prefill_ms"]) == [str(128 * 2**i) for i in range(7)]
    # the figures are the vllm engine's cost model, per layer
    from planner.costmodel import CostParams, GpuCost
    cost = GpuCost(gpus["rtx2080ti"], models["qwen3-14b"], "fp16", params=CostParams(engine="vllm"))
    assert ti["decode_ms"]["4096"]["64"] == pytest.approx(cost.decode_s(1, 64, 4096) * 1e3)
    assert ti["prefill_ms"]["8192"] == pytest.approx(cost.prefill_s(1, 8192) * 1e3)
    decode = [ti["decode_ms"]["1024"][str(2**i)] for i in range(9)]
    assert decode == sorted(decode)
    # the default engine is the runtime, slower per step than vLLM on the same GPU
    runtime = strict_json(run_planner("show", HETERO, "--json"))
    assert runtime["cluster"]["engine"] == "runtime"
    assert runtime["gpu_types"]["rtx2080ti"]["decode_ms"]["1024"]["1"] > 1.3 * ti["decode_ms"]["1024"]["1"]


def test_show_rejects_an_unknown_engine():
    result = run_planner("show", HETERO, "--engine", "tensorrt")
    assert result.returncode == 2 and "tensorrt" in result.stderr and "Traceback" not in result.stderr


def test_the_engine_travels_from_solve_to_simulate(tmp_path):
    """solve --engine vllm costs the plan for vLLM, says so, and writes it into the layout; simulate reads it
    back and predicts a faster vLLM than runtime for the same layout (CUDA graphs: less per-layer cost)."""
    layout = tmp_path / "even.ini"
    plan = strict_json(run_planner("solve", HETERO, "--method", "even", "--engine", "vllm", "--json", "--out", layout))
    assert plan["engine"] == "vllm"
    assert "engine = vllm" in layout.read_text().splitlines()
    vllm = strict_json(run_planner("simulate", layout, "--json", "--duration", "20"))
    runtime = strict_json(run_planner("simulate", layout, "--json", "--duration", "20", "--engine", "runtime"))
    assert vllm["tpot_s"]["mean"] < runtime["tpot_s"]["mean"]
