"""Bad layouts, cluster files and command-line values found by a sweep of the CLI: each is one line naming
the file, field or option and the fix, a non-zero exit, never an internal error, a hang or a plan that
quietly means something else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import BASE_CLUSTER, run_planner

ROOT = Path(__file__).resolve().parent.parent
HETERO_LAYOUT = (ROOT / "layouts" / "hetero.ini").read_text().replace(
    "cluster = ../profiles/hetero.ini", f"cluster = {ROOT / 'profiles' / 'hetero.ini'}")


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    line = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert line.startswith("error: ") and "\n" not in line and "internal error" not in line, line
    assert all(word in line for word in words), (words, line)
    return line


@pytest.mark.parametrize("edit, words", [
    (("coordinator -> host1:0 = 1025.08", "coordinator -> host1:0 = abc"), ["[flows] coordinator -> host1:0", "abc"]),
    (("coordinator -> host1:0 = 1025.08", "coordinator -> host1:0 = -5"), ["[flows]", "finite number"]),
    (("coordinator -> host1:0 = 1025.08", "coordinator -> host1:0 = nan"), ["[flows]", "finite number"]),
    (("coordinator -> host1:0 = 1025.08", "coordinator -> hostX:0 = 1025.08"), ["hostX:0", "units are"]),
    (("host1:0 -> host2:0 = 1025.08", "host1:0 --> host2:0 = 1025.08"), ["[flows]", "not the coordinator"]),
    (("host1:0 -> host2:0 = 1025.08", "host1:0 = 1025.08"), ["[flows] host1:0", "FROM -> TO"]),
    (("host1:0 -> host2:0 = 1025.08", "host1:0 -> host2:1 = 1025.08"), ["does not join layers"]),
    (("host1:0 -> host2:0 = 1025.08", "host1:0 -> host1:0 = 1025.08"), ["does not join layers"]),
    (("host1:1 -> coordinator = 1025.08", "coordinator -> coordinator = 1"), ["does not join layers"]),
    (("host1:1 = 35, 40", "host1:1 = 38, 41"), ["[nodes] host1:1", "outside 0..40"]),
    (("[layout]\n", "[layout]\nlanes = 99999999999999999999\n"), ["[layout] lanes", "more than 1024"]),
])
def test_a_bad_layout_is_one_line_naming_the_field(tmp_path, edit, words):
    path = tmp_path / "layout.ini"
    assert edit[0] in HETERO_LAYOUT
    path.write_text(HETERO_LAYOUT.replace(*edit, 1))
    for command in (["simulate", path, "--duration", "5"], ["export", path, "--to", "runtime", tmp_path / "out"]):
        one_line_error(run_planner(*command), "layout.ini", *words)
    assert not (tmp_path / "out").exists()   # refused before writing anything


@pytest.mark.parametrize("edit, words", [
    (("[host host2]", "[host a+b]"), ["[host a+b]", "characters"]),
    (("[host host2]", "[host c:d]"), ["[host c:d]", "characters"]),
    (("[host host2]", "[host coordinator]"), ["[host coordinator]", "reserved"]),
    (("gpus = rtx4090 * 2\n", "gpus = rtx4090 * 2\naddress = 10.0.0.2; touch /tmp/x\n"), ["[host host2] address"]),
])
def test_a_host_name_or_address_that_would_break_names_or_scripts_is_refused(tmp_path, edit, words):
    text = BASE_CLUSTER.replace(*edit, 1).replace("host1 -- host2", "host1 -- a+b" if "a+b" in edit[1] else
                                                  "host1 -- c:d" if "c:d" in edit[1] else "host1 -- host2")
    path = tmp_path / "cluster.ini"
    path.write_text(text)
    one_line_error(run_planner("show", path), "cluster.ini", *words)


@pytest.mark.parametrize("args, words", [
    (["simulate", "LAYOUT", "--duration", "nan"], ["--duration", "finite"]),
    (["simulate", "LAYOUT", "--duration", "inf"], ["--duration"]),
    (["simulate", "LAYOUT", "--warmup", "1e12"], ["--warmup"]),
    (["simulate", "LAYOUT", "--seed", "-1"], ["--seed"]),
    (["simulate", "LAYOUT", "--microbatches", "1000000000"], ["--microbatches"]),
    (["simulate", "LAYOUT", "--duration", "0"], ["--duration", "planner simulate --help"]),
    (["solve", str(ROOT / "profiles" / "hetero.ini"), "--time-limit", "nan"], ["--time-limit", "finite"]),
    (["solve", str(ROOT / "profiles" / "hetero.ini"), "--max-tpot", "nan"], ["--max-tpot", "finite"]),
    (["export", "LAYOUT", "OUT", "--gpu-memory-utilization", "nan"], ["--gpu-memory-utilization"]),
    (["export", "LAYOUT", "OUT", "--lanes", "1000000000"], ["--lanes"]),
])
def test_a_bad_option_value_is_one_line(tmp_path, args, words):
    layout = tmp_path / "layout.ini"
    layout.write_text(HETERO_LAYOUT)
    args = [str(layout) if a == "LAYOUT" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    one_line_error(run_planner(*args, timeout=60), *words)


def test_an_exported_script_takes_the_checkpoint_path_as_written(tmp_path):
    """A path with shell syntax in it is one word in the launch script, never run."""
    layout = tmp_path / "layout.ini"
    layout.write_text(HETERO_LAYOUT)
    marker = tmp_path / "ran"
    checkpoint = f'/models/$(touch {marker})"q'
    done = run_planner("export", layout, "--to", "runtime", tmp_path / "out", "--checkpoint", checkpoint)
    assert done.returncode == 0, done.stderr
    for script in (tmp_path / "out").glob("launch-*.sh"):
        assert subprocess.run(["bash", "-n", script]).returncode == 0   # it parses
        setup = "\n".join(line for line in script.read_text().splitlines() if "CHECKPOINT" in line and "planner" not in line)
        shown = subprocess.run(["bash", "-c", setup + '\nprintf %s "$CHECKPOINT"'], capture_output=True, text=True,
                               env={"PATH": "/usr/bin:/bin"})
        assert shown.stdout == checkpoint, shown
    assert not marker.exists()
    empty = run_planner("export", layout, "--to", "runtime", tmp_path / "out2", "--checkpoint", " ")
    one_line_error(empty, "--checkpoint", "is empty")   # it was written as the path every worker loads
    assert not (tmp_path / "out2").exists()


HETERO = (ROOT / "profiles" / "hetero.ini").read_text()
ROOFLINE_4090 = "[gpu fast]\nmemory = 24 GiB\nmemory_bandwidth = 1008 GB/s\nfp16_tflops = 165\n"
MEASURED = "[gpu fast]\nmemory = 24 GiB\ndecode_ms = 1: 1.0\nprefill_ms = 16: 2.0\n"


@pytest.mark.parametrize("extra, words", [
    (ROOFLINE_4090.replace("1008 GB/s", "0 GB/s"), ["[gpu fast] memory_bandwidth", "positive"]),
    (ROOFLINE_4090.replace("memory = 24 GiB", "memory = 0 GiB"), ["[gpu fast] memory", "positive"]),
    (ROOFLINE_4090.replace("1008 GB/s", "1e308 TB/s"), ["[gpu fast] memory_bandwidth", "too large"]),
    (MEASURED.replace("1: 1.0", "1: 1e300"), ["[gpu fast] decode_ms", "not a measurement"]),
    (MEASURED + "hop_ms = 1e308\n", ["[gpu fast] hop_ms"]),
    ("[workload]\nprompt_tokens = 1000000\n", ["[workload]", "context"]),
])
def test_a_value_no_gpu_or_model_has_is_one_line(tmp_path, extra, words):
    text = HETERO + "\n" + extra
    if "[gpu fast]" in extra:
        text = text.replace("gpus = rtx4090 * 2", "gpus = fast * 2", 1)
    if "[workload]" in extra and "[workload]" in HETERO:
        text = HETERO.replace("[workload]", extra.strip(), 1)
    path = tmp_path / "cluster.ini"
    path.write_text(text)
    for command in (["show", path], ["solve", path, "--time-limit", "2"]):
        one_line_error(run_planner(*command), "cluster.ini", *words)


def test_outputs_the_system_refuses_are_one_line(tmp_path):
    cluster = ROOT / "profiles" / "hetero.ini"
    before = cluster.read_text()
    one_line_error(run_planner("solve", cluster, "--time-limit", "2", "--out", cluster), "--out", "cluster file itself")
    assert cluster.read_text() == before
    one_line_error(run_planner("solve", cluster, "--time-limit", "2", "--plot", tmp_path / "no" / "x.png"), "--plot")
    one_line_error(run_planner("solve", cluster, "--time-limit", "2", "--plot", tmp_path / "x.txt"), "--plot", ".png")
    one_line_error(run_planner("solve", cluster, "--time-limit", "2", "--out", "/dev/full"), "No space left")
    one_line_error(run_planner("export", ROOT / "layouts" / "hetero.ini", "/dev/null"), "/dev/null")


def test_an_indented_line_is_not_joined_to_the_value_above(tmp_path):
    """configparser reads an indented line as the rest of the value above: host1 would lose its GPUs."""
    path = tmp_path / "cluster.ini"
    path.write_text(BASE_CLUSTER.replace("gpu_link = 15.7 GB/s, 0.01 ms\n", "gpu_link = 15.7 GB/s, 0.01 ms\n  region = lab\n"))
    one_line_error(run_planner("show", path), "[host host1] gpu_link", "indented")


@pytest.mark.parametrize("edit, words", [
    (("[nodes]", "[extra]\nkey = 1\n\n[nodes]"), ["unknown section [extra]"]),
    (("model = qwen3-14b", "model = qwen3-8b"), ["[layout] model", "qwen3-14b"]),
    (("dtype = fp16", "dtype = bf16"), ["[layout] dtype", "fp16"]),
])
def test_a_layout_that_does_not_match_its_cluster_is_refused(tmp_path, edit, words):
    path = tmp_path / "layout.ini"
    path.write_text(HETERO_LAYOUT.replace(*edit, 1))
    one_line_error(run_planner("simulate", path, "--duration", "5"), "layout.ini", *words)


def test_a_profile_section_name_must_read_back(tmp_path):
    done = run_planner("profile", "--model", "qwen3-8b", "--name", "my gpu", "--device", "cpu")
    one_line_error(done, "--name", "one word")


def test_a_workload_that_cannot_mean_what_it_says_is_refused(tmp_path):
    layout = ROOT / "layouts" / "hetero.ini"
    one_line_error(run_planner("simulate", layout, "--workload", "poisson:1e9"), "--workload", "requests")
    trace = tmp_path / "trace.csv"
    trace.write_text("0,10000000,10\n1,100,10\n")
    one_line_error(run_planner("simulate", layout, "--workload", f"trace:{trace}"), "trace.csv", "context")
    trace.write_text("id,arrival_s,input_tokens,output_tokens\n7,0.5,100,10\n")   # an id first: not our columns
    one_line_error(run_planner("simulate", layout, "--workload", f"trace:{trace}"), "trace.csv", "line 2: 4 columns")
    trace.write_text("0.5,100,10,\n1.0,120,12\n")   # a trailing comma is no column
    assert run_planner("simulate", layout, "--workload", f"trace:{trace}", "--duration", "5").returncode == 0


def test_compare_says_when_nothing_was_compared():
    cluster = ROOT / "profiles" / "hetero.ini"
    one_line_error(run_planner("compare", cluster, "--methods", ",,"), "--methods")
    # a method left out by a typo was dropped, and the others compared as if asked for
    one_line_error(run_planner("compare", cluster, "--methods", "even,,milp"), "--methods", "empty entry")
    failed = run_planner("compare", cluster, "--methods", "even,chains", "--max-tpot", "1", "--time-limit", "2")
    assert failed.returncode == 1 and "every method failed" in failed.stderr and "failed" in failed.stdout


@pytest.mark.parametrize("edit, words", [
    (("host1:1 = 35, 40", "host1:1 = 36, 40"), ["[nodes]", "reach layer 35 of 40"]),
    (("host2:0 = 5, 20", "host2:0 = 0, 0"), ["[nodes]", "reach layer 5 of 40"]),
])
def test_a_layout_whose_ranges_leave_a_gap_names_its_file(tmp_path, edit, words):
    path = tmp_path / "layout.ini"
    text = HETERO_LAYOUT.replace(*edit, 1)
    path.write_text("\n".join(line for line in text.splitlines() if "->" not in line))   # no flows to trip first
    one_line_error(run_planner("simulate", path, "--duration", "5"), "layout.ini", *words)


@pytest.mark.parametrize("edit, words", [
    (("coordinator = host1", "coordinator ="), ["[cluster] coordinator", "no value", "remove the line"]),
    (("dtype = fp16", "dtype =   # to be decided"), ["[cluster] dtype", "no value"]),
    (("gpu_link = 15.7 GB/s, 0.01 ms", "gpu_link ="), ["[host host1] gpu_link", "no value"]),
])
def test_a_key_with_no_value_is_refused_not_read_as_its_default(tmp_path, edit, words):
    # `dtype =` read as the default planned bf16 on GPUs the user meant for fp16
    path = tmp_path / "cluster.ini"
    path.write_text(BASE_CLUSTER.replace(*edit, 1))
    one_line_error(run_planner("show", path), "cluster.ini", *words)


def test_a_layout_key_with_no_value_is_refused(tmp_path):
    path = tmp_path / "layout.ini"
    path.write_text(HETERO_LAYOUT.replace("[layout]\n", "[layout]\ntp_groups =\n", 1))
    one_line_error(run_planner("simulate", path, "--duration", "5"), "layout.ini", "[layout] tp_groups", "no value")


def test_a_layout_group_list_with_an_empty_entry_is_refused(tmp_path):
    # 'a,,b' or a trailing comma: a group left out by a typo, which was dropped and the layout run without it
    text = (ROOT / "layouts" / "l20x4.ini").read_text().replace("cluster = ../", f"cluster = {ROOT}/", 1)
    path = tmp_path / "layout.ini"
    path.write_text(text.replace("head:0+head:1, worker:0+worker:1", "head:0+head:1,, worker:0+worker:1", 1))
    one_line_error(run_planner("simulate", path, "--duration", "5"), "layout.ini", "[layout] tp_groups", "empty entry")


def test_a_host_without_gpus_may_say_so_with_an_empty_gpus_line(tmp_path):
    path = tmp_path / "cluster.ini"
    path.write_text(BASE_CLUSTER.replace("[network]", "[host gateway]\ngpus =\n\n[network]"))
    result = run_planner("show", path)
    assert result.returncode == 0, result.stderr


def test_a_solve_that_finds_nothing_names_the_cluster_file():
    cluster = ROOT / "profiles" / "hetero.ini"
    result = run_planner("solve", cluster, "--max-tpot", "1", "--time-limit", "5")
    line = result.stderr.strip()
    assert result.returncode == 1 and "\n" not in line, result.stderr
    assert line.startswith(f"error: {cluster}: no placement found") and "raise the limit" in line, line


def test_a_control_character_in_a_name_is_shown_escaped(tmp_path):
    path = tmp_path / "cluster.ini"
    path.write_text(BASE_CLUSTER.replace("[host host2]", "[host ho\x00st\x1b2]").replace("-- host2", "-- ho\x00st\x1b2"))
    line = one_line_error(run_planner("show", path), "cluster.ini")
    assert "ho\\x00st\\x1b2" in line and "\x00" not in line and "\x1b" not in line, line


@pytest.mark.parametrize("args, words", [
    (["run", "--local", "--prompt-ids", "1,,2"], ["--prompt-ids", "empty entry"]),        # ran 1,2
    (["run", "--local", "--prompt-ids", "-1"], ["--prompt-ids", "[0, 256)"]),            # an internal error
    (["run", "--local", "--max-new-tokens", "100000"], ["--max-new-tokens", "context of 4,096"]),  # ran for minutes
    (["profile", "--model", "qwen3-0.6b", "--prefill-tokens", "16,,64"], ["--prefill-tokens", "empty entry"]),
])
def test_run_and_profile_options_are_checked_before_any_work(args, words):
    one_line_error(run_planner(*args, timeout=120), *words)


def test_an_address_the_runtime_cannot_listen_on_is_one_line(tmp_path):
    """The host's and a worker's ZeroMQ inbox and the HTTP API, on a port that is taken (or an address of
    another machine): one line naming what could not listen, not an internal error."""
    import socket

    import zmq

    from planner.export.runtime import runtime_config
    from planner.layout import read_layout
    from runtime.config import write_runtime_config
    from runtime.demo import write_demo

    from runtime.checkpoint import make_checkpoint

    layout, checkpoint = write_demo(tmp_path / "demo")
    make_checkpoint(checkpoint, read_layout(layout).cluster.model, seed=0)
    with socket.socket() as probe:   # free ports, taken below
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    config = runtime_config(read_layout(layout), layout_path=str(layout), local=True, device="cpu", base_port=base)
    path = write_runtime_config(config, tmp_path / "runtime.json")
    context = zmq.Context()
    taken = context.socket(zmq.PULL)
    try:
        taken.bind(config.host.endpoint)
        one_line_error(run_planner("host", "--config", path, "--http-port", "0", timeout=60),
                       "the host cannot listen on", config.host.endpoint)
        taken.unbind(config.host.endpoint)
        worker = config.workers[0]
        taken.bind(worker.endpoint)
        one_line_error(run_planner("worker", "--config", path, "--node", worker.node, "--checkpoint", checkpoint,
                                   timeout=60),
                       f"worker {worker.node} cannot listen on", worker.endpoint)
    finally:
        taken.close(linger=0)
        context.term()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line_error(run_planner("host", "--config", path, "--http-port", str(port), timeout=60),
                       f"the HTTP API cannot listen on 127.0.0.1:{port}")
