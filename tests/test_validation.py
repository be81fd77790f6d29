"""Every bad input: exit status 2 and one line on stderr naming the file and the field, no traceback.

Each case runs through the real entry point (planner.cli.main), for `planner show` and `planner solve`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import BASE_CLUSTER, ROOT, planner_script, run_planner


def base(**replace: str) -> str:
    """BASE_CLUSTER with whole lines replaced: base(**{'dtype = fp16': 'dtype = int4'})."""
    text = BASE_CLUSTER
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def r(old: str, new: str) -> str:
    return base(**{old: new})


def one_host(gpus: str, model: str = "qwen3-14b", dtype: str = "fp16", extra: str = "") -> str:
    return f"[cluster]\nmodel = {model}\ndtype = {dtype}\n\n[host h]\ngpus = {gpus}\n\n{extra}"


MEASURED_OK = {
    "memory": "24 GB",
    "decode_ms": "2: 6.9, 8: 7.0, 32: 8.0",
    "prefill_ms": "250: 12, 1000: 38",
}
STATIC_OK = {"memory": "40 GB", "max_layers": "12", "throughput": "2400, 1190, 790"}
MODEL_OK = {"family": "llama", "layers": "4", "hidden_size": "256", "intermediate_size": "1024",
            "attention_heads": "4", "kv_heads": "2", "head_dim": "64", "vocab_size": "1000"}


def section(header: str, values: dict[str, str | None]) -> str:
    return f"[{header}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)


def measured(**changes: str | None) -> str:
    return one_host("m * 8", extra=section("gpu m", {**MEASURED_OK, **changes}))


def static(**changes: str | None) -> str:
    return one_host("s * 8", model="llama-2-70b", extra=section("gpu s", {**STATIC_OK, **changes}))


def model(**changes: str | None) -> str:
    text = one_host("rtx4090").replace("model = qwen3-14b", "model = tiny")
    return text + section("model tiny", {**MODEL_OK, **changes})


# id -> (file content: str | bytes | None for "do not create", words the message must contain)
CASES: dict[str, tuple[str | bytes | None, list[str]]] = {
    # the file itself
    "missing file": (None, ["not found"]),
    "empty file": ("", ["empty"]),
    "comments only": ("\n   \n# just a comment\n", ["no [sections]"]),
    "binary file": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\xfa", ["not a text file"]),
    "json text": ('{"cluster": {"model": "qwen3-14b", "gpus": ["rtx4090"]}}\n', ["not an INI file"]),
    "text before first section": ("model = qwen3-14b\n" + BASE_CLUSTER, ["line 1", "[section]"]),
    "unclosed section header": ("[cluster\nmodel = qwen3-14b\n", ["line 1", "not closed"]),
    "line without =": (BASE_CLUSTER + "\n[workload]\nprompt_tokens\n", ["cannot parse", "prompt_tokens"]),
    "duplicate section": (BASE_CLUSTER + "\n[host host1]\ngpus = rtx4090\n", ["[host host1]", "twice"]),
    "duplicate key": (r("dtype = fp16", "dtype = fp16\nmodel = qwen3-8b"), ["[cluster]", "'model'", "twice"]),
    # sections
    "missing [cluster]": (BASE_CLUSTER.split("\n", 5)[-1], ["[cluster]"]),
    "unknown section": (BASE_CLUSTER + "\n[hosts host3]\ngpus = rtx4090\n", ["unknown section", "[hosts host3]"]),
    "host section without name": (BASE_CLUSTER + "\n[host]\ngpus = rtx4090\n", ["unknown section", "[host]"]),
    "no host sections": ("[cluster]\nmodel = qwen3-14b\n", ["[host NAME]"]),
    # [cluster]
    "missing model": (r("model = qwen3-14b", ""), ["[cluster] model", "missing"]),
    "unknown model": (r("model = qwen3-14b", "model = qwen9-1t"), ["[cluster] model", "qwen9-1t"]),
    "unknown dtype": (r("dtype = fp16", "dtype = int4"), ["[cluster] dtype", "int4"]),
    "unknown coordinator": (r("coordinator = host1", "coordinator = host9"), ["[cluster] coordinator", "host9"]),
    "unknown key in cluster": (r("dtype = fp16", "dtype = fp16\ntensor_parallel = 2"),
                               ["[cluster] tensor_parallel", "unknown key"]),
    # [host NAME]
    "unknown gpu type": (r("gpus = rtx4090 * 2", "gpus = rtx5090 * 2"), ["[host host2] gpus", "rtx5090"]),
    "gpu count zero": (r("gpus = rtx4090 * 2", "gpus = rtx4090 * 0"), ["[host host2] gpus", "count"]),
    "gpu list with an empty entry": (r("gpus = rtx4090 * 2", "gpus = rtx4090,,rtx4090"), ["[host host2] gpus", "empty entry"]),
    "gpu count not a number": (r("gpus = rtx4090 * 2", "gpus = rtx4090 * two"), ["[host host2] gpus", "two"]),
    "no gpus at all": (r("gpus = rtx4090 * 2", "gpus =").replace("gpus = rtx2080ti * 2", "gpus ="),
                       ["gpus", "zero GPUs"]),
    "unknown key in host": (r("gpus = rtx4090 * 2", "gpus = rtx4090 * 2\nbandwidth = 10 GB/s"),
                            ["[host host2] bandwidth", "unknown key"]),
    "gpu_link without latency": (r("gpu_link = 31.5 GB/s, 0.01 ms", "gpu_link = 31.5 GB/s"),
                                 ["[host host2] gpu_link", "LATENCY"]),
    "bf16 on rtx2080ti": (r("dtype = fp16", "dtype = bf16"), ["[cluster] dtype", "rtx2080ti", "bf16"]),
    "bf16 on t4": (one_host("t4 * 4", model="qwen3-8b", dtype="bf16"), ["[cluster] dtype", "t4", "bf16"]),
    "bf16 on v100": (one_host("v100 * 4", model="qwen3-8b", dtype="bf16"), ["[cluster] dtype", "v100", "bf16"]),
    # [network]
    "unknown host in pair": (r("host1 -- host2", "host1 -- host3"), ["[network] host1 -- host3", "host3"]),
    "network key not a pair": (r("host1 -- host2", "host1 - host2"), ["[network] host1 - host2", "HOST -- HOST"]),
    "link to itself": (r("host1 -- host2", "host1 -- host1"), ["[network] host1 -- host1", "itself"]),
    "link set twice both ways": (BASE_CLUSTER + "host2 -- host1 = 1 Gbit/s, 1 ms\n",
                                 ["[network] host2 -- host1", "already set"]),
    "DEFAULT section": ("[DEFAULT]\ndtype = fp16\n" + BASE_CLUSTER, ["unknown section", "[DEFAULT]"]),
    "bandwidth in Gbps": (r("10 Gbit/s, 0.2 ms", "10 Gbps, 0.2 ms"), ["[network] host1 -- host2", "10 Gbps"]),
    "bandwidth 'fast'": (r("1 Gbit/s, 0.5 ms", "fast, 0.5 ms"), ["[network] default", "fast"]),
    "bandwidth in bytes not rate": (r("1 Gbit/s, 0.5 ms", "1 GB, 0.5 ms"), ["[network] default", "/s"]),
    "negative bandwidth": (r("10 Gbit/s, 0.2 ms", "-10 Gbit/s, 0.2 ms"), ["[network] host1 -- host2", "negative"]),
    "zero bandwidth": (r("1 Gbit/s, 0.5 ms", "0 Gbit/s, 0.5 ms"), ["[network] default", "positive"]),
    "negative latency": (r("10 Gbit/s, 0.2 ms", "10 Gbit/s, -0.2 ms"), ["[network] host1 -- host2", "negative"]),
    "latency without unit": (r("10 Gbit/s, 0.2 ms", "10 Gbit/s, 0.2"), ["[network] host1 -- host2", "0.2"]),
    "link without latency": (r("10 Gbit/s, 0.2 ms", "10 Gbit/s"), ["[network] host1 -- host2", "LATENCY"]),
    "coordinator link to unknown host": (BASE_CLUSTER + "coordinator -- host7 = 1 Gbit/s, 1 ms\n",
                                         ["[network] coordinator -- host7", "host7"]),
    "host unreachable": (r("default = 1 Gbit/s, 0.5 ms\nhost1 -- host2 = 10 Gbit/s, 0.2 ms\n", ""),
                         ["[network]", "host2", "cannot be reached"]),
    # [gpu NAME], measured
    "measured table not numbers": (measured(decode_ms="a: b"), ["[gpu m] decode_ms", "a: b"]),
    "measured entry without colon": (measured(decode_ms="2 6.9"), ["[gpu m] decode_ms", "2 6.9"]),
    "unsorted latency table": (measured(decode_ms="8: 7.0, 2: 6.9"), ["[gpu m] decode_ms", "sorted"]),
    "negative latency entry": (measured(prefill_ms="250: -12"), ["[gpu m] prefill_ms", "negative"]),
    "measured without prefill": (measured(prefill_ms=None), ["[gpu m] prefill_ms", "missing"]),
    "measured without memory": (measured(memory=None), ["[gpu m] memory"]),
    "kv_tokens above max_layers": (measured(max_layers="2", kv_tokens="1: 5000, 4: 900"),
                                   ["[gpu m] kv_tokens", "max_layers"]),
    "kv_tokens not whole": (measured(kv_tokens="1: 5000.5"), ["[gpu m] kv_tokens", "whole"]),
    "kv_tokens with no room": (measured(kv_tokens="1: 5000, 24: 0"), ["[gpu m] kv_tokens", "room for 0 tokens"]),
    "gpu memory in Gb": (measured(memory="24 Gb"), ["[gpu m] memory", "ambiguous"]),
    "unknown key in gpu": (measured(tflops="100"), ["[gpu m] tflops", "unknown key"]),
    "max_layers zero": (measured(max_layers="0"), ["[gpu m] max_layers"]),
    # [gpu NAME], static
    "throughput longer than max_layers": (static(max_layers="2"), ["[gpu s] throughput", "max_layers = 2"]),
    "throughput without max_layers": (static(max_layers=None), ["[gpu s] max_layers"]),
    "gpu mixes static and roofline forms": (static(fp16_tflops="312"), ["[gpu s]", "mixes"]),
    "gpu mixes measured and static forms": (measured(throughput="2400, 1190"), ["[gpu m]", "mixes"]),
    "kv_tokens not finite": (measured(kv_tokens="1: 5000, 2: nan"), ["[gpu m] kv_tokens", "finite"]),
    "latency entry infinite": (measured(decode_ms="2: 6.9, 8: inf"), ["[gpu m] decode_ms", "finite"]),
    "throughput not numbers": (static(throughput="fast, slow"), ["[gpu s] throughput"]),
    "throughput zero entry": (static(throughput="2400, 0"), ["[gpu s] throughput", "positive"]),
    "throughput negative entry": (static(throughput="2400, -5"), ["[gpu s] throughput", "positive"]),
    "throughput not finite": (static(throughput="2400, nan"), ["[gpu s] throughput", "finite"]),
    # [gpu NAME], roofline
    "roofline gpu without bandwidth": (one_host("g", extra=section("gpu g", {"memory": "24 GiB", "fp16_tflops": "100"})),
                                       ["[gpu g] memory_bandwidth", "missing"]),
    "roofline gpu with bad tflops": (one_host("g", extra=section("gpu g", {
        "memory": "24 GiB", "memory_bandwidth": "1 TB/s", "fp16_tflops": "-5"})), ["[gpu g] fp16_tflops"]),
    "bf16 not yes/no": (one_host("g", extra=section("gpu g", {
        "memory": "24 GiB", "memory_bandwidth": "1 TB/s", "fp16_tflops": "100", "bf16": "maybe"})),
        ["[gpu g] bf16", "maybe"]),
    # [model NAME]
    "model with zero layers": (model(layers="0"), ["[model tiny] layers"]),
    "model layers not a number": (model(layers="forty"), ["[model tiny] layers", "forty"]),
    "kv_heads not dividing heads": (model(kv_heads="3"), ["[model tiny] kv_heads"]),
    "model without head_dim": (model(head_dim=None), ["[model tiny] head_dim", "missing"]),
    "unknown family": (model(family="gpt2"), ["[model tiny] family", "gpt2"]),
    "unknown key in model": (model(num_experts="8"), ["[model tiny] num_experts", "unknown key"]),
    # [workload]
    "workload zero prompt": (BASE_CLUSTER + "\n[workload]\nprompt_tokens = 0\n", ["[workload] prompt_tokens"]),
    "workload unknown key": (BASE_CLUSTER + "\n[workload]\nrate = 5\n", ["[workload] rate", "unknown key"]),
    # fit
    "model cannot fit": (one_host("rtx2080ti", model="qwen2.5-72b"), ["gpus", "does not fit", "GiB short"]),
}


def _materialise(tmp_path, case: str):
    content, words = CASES[case]
    path = tmp_path / f"bad-{re.sub(r'[^A-Za-z0-9]+', '_', case)}.ini"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return path, words


def _assert_one_line_error(code, out, err, path, words):
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert path.name in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("command", ["show", "solve"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(tmp_path, run_cli, command, case):
    path, words = _materialise(tmp_path, case)
    code, out, err = run_cli(command, path)
    _assert_one_line_error(code, out, err, path, words)


@pytest.mark.parametrize("command", ["show", "solve"])
def test_directory_instead_of_file(tmp_path, run_cli, command):
    path = tmp_path / "cluster.ini"
    path.mkdir()
    code, out, err = run_cli(command, path)
    _assert_one_line_error(code, out, err, path, ["directory"])


@pytest.mark.parametrize("command", ["show", "solve"])
def test_unreadable_file(tmp_path, run_cli, command):
    path = tmp_path / "locked.ini"
    path.write_text(BASE_CLUSTER)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: a mode-000 file is still readable")
        code, out, err = run_cli(command, path)
        _assert_one_line_error(code, out, err, path, ["cannot read", "permission"])
    finally:
        path.chmod(0o644)


def test_fit_message_says_how_much_is_missing(tmp_path, run_cli):
    path, _ = _materialise(tmp_path, "model cannot fit")
    code, _, err = run_cli("show", path)
    assert code == 2
    # qwen2.5-72b: 80 layers of ~1.63 GiB; one 11 GiB card holds a handful: ~120 GiB are missing
    short = float(err.split(" GiB short")[0].rsplit("about ", 1)[1])
    assert 100 < short < 135


def test_debug_flag_shows_the_exception(tmp_path):
    from planner.cli import main
    from planner.errors import InputError
    with pytest.raises(InputError):
        main(["--debug", "show", str(tmp_path / "missing.ini")])


def test_installed_command_one_line_error(tmp_path):
    """The real `planner` script (and `python -m planner`) in a subprocess."""
    path = tmp_path / "bad.ini"
    path.write_text(r("dtype = fp16", "dtype = int4"))
    commands = [[sys.executable, "-m", "planner"], [planner_script()]]
    for prefix in commands:
        proc = subprocess.run(prefix + ["show", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 2, proc
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "bad.ini" in proc.stderr and "[cluster] dtype" in proc.stderr


# ---- tables that are data, not errors ------------------------------------------------------------------

def test_rising_tables_are_planned_with_one_warning_line(tmp_path):
    """Published tables are noisy (holding 10 layers can read faster than 9): accepted, warned, used."""
    path = tmp_path / "noisy.ini"
    path.write_text(one_host("s * 8", model="llama-2-70b", extra=section("gpu s", {
        **STATIC_OK, "throughput": "2400, 1190, 1250, 600"})))
    proc = run_planner("solve", path, "--method", "chains", "--json")
    assert proc.returncode == 0, proc.stderr
    json_out = json.loads(proc.stdout)  # stdout stays one JSON document
    assert json_out["throughput_tokens_per_s"] > 0
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    assert "noisy.ini" in warnings[0] and "[gpu s] throughput" in warnings[0] and "entry 3 (1250)" in warnings[0]
    assert "Traceback" not in proc.stderr


def test_rising_kv_table_warns_once_through_the_cli(tmp_path, run_cli):
    path = tmp_path / "kv.ini"
    path.write_text(measured(kv_tokens="1: 5000, 2: 9000, 3: 4000"))
    code, out, err = run_cli("show", path)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "[gpu m] kv_tokens: entry 2 (9000)" in lines[0]
