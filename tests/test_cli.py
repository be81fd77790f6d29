"""The CLI contract (docs/formats.md): --version, --help, show, solve --json (shape only, not numbers)."""

import importlib
import json
import subprocess
import sys

import pytest

from planner import __version__

from conftest import HETERO


def test_version(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0
    assert __version__ in out


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["show", "--help"], ["solve", "--help"]])
def test_help(run_cli, args):
    code, out, _ = run_cli(*args)
    assert code == 0
    assert "Usage" in out


def test_help_lists_commands(run_cli):
    _, out, _ = run_cli("--help")
    assert "show" in out and "solve" in out


def test_help_summaries_are_the_commands_own():
    """`planner --help` lists commands without importing them; each summary must open its command's help."""
    from planner.cli import COMMANDS, cli

    assert set(COMMANDS) == set(cli.list_commands(None))
    for name, (module, attribute, summary) in COMMANDS.items():
        command = getattr(importlib.import_module(module), attribute)
        assert command.name == name
        assert " ".join(command.help.split()).startswith(summary), (name, summary)


HEAVY = ("pulp", "highspy", "matplotlib", "scipy", "networkx", "torch")


@pytest.mark.parametrize("args", [["--help"], ["show", str(HETERO)], ["show", str(HETERO), "--json", "--engine", "vllm"]])
def test_quick_commands_load_no_solver_or_plotting_library(args):
    """What makes `planner --help` and `planner show` start fast (timed in benchmarks/startup.py)."""
    program = (f"import sys\nfrom planner.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
               f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr


def test_unknown_command_is_a_usage_error(run_cli):
    code, _, err = run_cli("frobnicate")
    assert code == 2
    assert "frobnicate" in err


def test_show_hetero(run_cli):
    code, out, err = run_cli("show", HETERO)
    assert code == 0, err
    assert "rtx2080ti" in out and "rtx4090" in out
    assert "max layers" in out
    assert "qwen3-14b" in out
    assert "host1" in out and "host2" in out


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    """One solve of the seed cluster shared by the tests below (keeps the run fast)."""
    from planner.cli import main
    import contextlib
    import io

    out_dir = tmp_path_factory.mktemp("solve")
    layout = out_dir / "hetero-layout.ini"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        with pytest.raises(SystemExit) as exc:
            main(["solve", str(HETERO), "--json", "--time-limit", "3", "--out", str(layout)])
    return exc.value.code, stdout.getvalue(), stderr.getvalue(), layout


def test_solve_json_shape(solved):
    code, out, err, _ = solved
    assert code in (0, None), err
    plan = json.loads(out)   # stdout is exactly one JSON object
    assert plan["model"] == "qwen3-14b"
    assert isinstance(plan["method"], str) and plan["method"]
    assert plan["throughput_tokens_per_s"] > 0
    assert plan["upper_bound_tokens_per_s"] >= plan["throughput_tokens_per_s"] * (1 - 1e-6)
    assert plan["solver"]["status"] in ("optimal", "feasible", "time_limit")
    assert isinstance(plan["solver"]["seconds"], (int, float))
    assert plan["solver"]["gap"] is None or isinstance(plan["solver"]["gap"], (int, float))
    assert [n["name"] for n in plan["nodes"]] == ["host1:0", "host1:1", "host2:0", "host2:1"]
    for node in plan["nodes"]:
        assert node["host"] == node["name"].split(":")[0]
        assert node["gpu"] in ("rtx2080ti", "rtx4090")
        assert 0 <= node["start_layer"] <= node["end_layer"] <= 40


def test_solve_json_flows_chain_all_layers(solved):
    plan = json.loads(solved[1])
    ranges = {n["name"]: (n["start_layer"], n["end_layer"]) for n in plan["nodes"]}
    # a tensor-parallel group is one stage; flows name it by its members joined with '+'
    for group in plan.get("tp_groups", []):
        spans = {ranges[m] for m in group}
        assert len(spans) == 1, group
        ranges["+".join(group)] = spans.pop()
    flows = [f for f in plan["flows"] if f["tokens_per_s"] > 1e-9]
    assert flows
    assert any(f["from"] == "coordinator" for f in flows)
    assert any(f["to"] == "coordinator" for f in flows)
    for f in flows:
        assert f["from"] == "coordinator" or f["from"] in ranges
        assert f["to"] == "coordinator" or f["to"] in ranges
        assert not (f["from"] == "coordinator" and f["to"] == "coordinator")
        if f["from"] == "coordinator":
            assert ranges[f["to"]][0] == 0                       # requests enter at layer 0
        elif f["to"] == "coordinator":
            assert ranges[f["from"]][1] == 40                    # tokens leave after the last layer
        else:
            assert ranges[f["from"]][1] == ranges[f["to"]][0]    # exact chaining of half-open ranges
    # flow is conserved at every node, and the coordinator sends what it receives
    for name in {f["from"] for f in flows} | {f["to"] for f in flows}:
        inflow = sum(f["tokens_per_s"] for f in flows if f["to"] == name)
        outflow = sum(f["tokens_per_s"] for f in flows if f["from"] == name)
        assert inflow == pytest.approx(outflow, rel=1e-6, abs=1e-6)
    sent = sum(f["tokens_per_s"] for f in flows if f["from"] == "coordinator")
    assert sent >= plan["throughput_tokens_per_s"] * (1 - 1e-3)   # flows may be quoted before latency limits
    # following the flows from the coordinator covers layers 0..40 contiguously
    layer, node, seen = 0, "coordinator", set()
    while True:
        nxt = [f["to"] for f in flows if f["from"] == node and f["to"] not in seen]
        assert nxt, f"flow stops at {node}"
        node = nxt[0]
        if node == "coordinator":
            break
        start, end = ranges[node]
        assert start == layer and end > start
        layer, seen = end, seen | {node}
    assert layer == 40


def test_solve_out_writes_a_layout(solved):
    from planner.layout import read_layout

    *_, layout_path = solved
    text = layout_path.read_text()
    assert "[layout]" in text and "[nodes]" in text
    layout = read_layout(layout_path)
    assert layout.cluster.model.id == "qwen3-14b"
    plan = json.loads(solved[1])
    assert {name: tuple(r) for name, r in layout.placement.ranges.items()} == \
        {n["name"]: (n["start_layer"], n["end_layer"]) for n in plan["nodes"]}
