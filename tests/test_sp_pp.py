"""planner sp-pp: seed 002's chunked-prefill SP+PP, its KV sync (pairwise vs ring) and redundant decode."""

from __future__ import annotations

import json
import re

import pytest

from planner.cluster import load_cluster
from planner.sp_pp import estimate, prefill_makespan, select_devices, split_layers, sync_s

from conftest import PROFILES, ROOT

SEED = PROFILES / "sp-pp.ini"

# A toy model whose KV is easy to count: 2 KV heads x 64 dims x K and V x 2 bytes = 512 B per token per
# layer; 6 layers, so each of 3 devices holds 2 layers and a 1000-token prompt leaves it a KV block of
# 2 x 1000 x 512 = 1,024,000 bytes.
TOY = """\
[cluster]
model = toy
dtype = fp16
coordinator = a

[model toy]
family = qwen3
layers = 6
hidden_size = 256
intermediate_size = 512
attention_heads = 4
kv_heads = 2
head_dim = 64
vocab_size = 1000

[host a]
gpus = rtx4090 * 2
gpu_link = 10 GB/s, 0.01 ms

[host b]
gpus = rtx4090
gpu_link = 10 GB/s, 0.01 ms

[network]
a -- b = 1 GB/s, 1 ms
"""
BLOCK = 2 * 1000 * 512  # bytes of KV one device holds after a 1000-token prefill


def devices_of(cluster, names=None):
    return split_layers(cluster, select_devices(cluster, names))


@pytest.fixture
def toy(write_ini):
    return load_cluster(write_ini(TOY))


def test_sync_by_hand_on_three_devices(toy):
    devices = devices_of(toy)
    assert [(d.name, d.layers) for d in devices] == [("a:0", 2), ("a:1", 2), ("b:0", 2)]
    # pairwise, one round: a:0 and a:1 both send their block to b:0 over a -> b (2 blocks), b:0 sends its
    # block to both over b -> a (2 blocks); the PCIe pairs inside a carry one block each, much faster
    pairwise = 1e-3 + 2 * BLOCK / 1e9
    # ring a:0 -> a:1 -> b:0 -> a:0, two rounds; each round a -> b and b -> a carry one block
    ring = 2 * (1e-3 + BLOCK / 1e9)
    assert sync_s(toy, devices, 1000, "pairwise")[0] == pytest.approx(pairwise)
    assert sync_s(toy, devices, 1000, "ring")[0] == pytest.approx(ring)
    # both move every block to every other device: 3 x 2 blocks
    assert sync_s(toy, devices, 1000, "pairwise")[1] == sync_s(toy, devices, 1000, "ring")[1] == 6 * BLOCK


def test_shared_nic_costs_pairwise_its_parallelism(write_ini):
    three_hosts = TOY.replace("gpus = rtx4090 * 2", "gpus = rtx4090").replace(
        "[network]", "[host c]\ngpus = rtx4090\n\n[network]").replace("a -- b = 1 GB/s, 1 ms", "default = 1 GB/s, 1 ms")
    cluster = load_cluster(write_ini(three_hosts))
    devices = devices_of(cluster)
    assert [d.host for d in devices] == ["a", "b", "c"]
    # a link per host pair: each device sends its block to both others at once, on two links
    assert sync_s(cluster, devices, 1000, "pairwise")[0] == pytest.approx(1e-3 + BLOCK / 1e9)
    # one port per host: the two sends share it
    assert sync_s(cluster, devices, 1000, "pairwise", shared_nic=True)[0] == pytest.approx(1e-3 + 2 * BLOCK / 1e9)
    # a ring sends one block at a time from each host either way
    for shared in (False, True):
        assert sync_s(cluster, devices, 1000, "ring", shared_nic=shared)[0] == pytest.approx(2 * (1e-3 + BLOCK / 1e9))


def test_ring_wins_across_a_slow_cut_when_blocks_are_large(write_ini):
    # 2 + 2 GPUs: pairwise sends 4 blocks over a -> b, a ring 3 blocks in 3 rounds (3 latencies)
    cluster = load_cluster(write_ini(TOY.replace("gpus = rtx4090\n", "gpus = rtx4090 * 2\n")))
    devices = devices_of(cluster)
    assert len(devices) == 4

    def both(prompt):
        return sync_s(cluster, devices, prompt, "pairwise")[0], sync_s(cluster, devices, prompt, "ring")[0]

    # 6 layers over 4 devices: 2, 2, 1, 1 layers, so blocks differ; check the large-prompt case by hand
    pairwise, ring = both(10000)
    blocks = [d.layers * 10000 * 512 for d in devices]
    assert pairwise == pytest.approx(1e-3 + (blocks[0] + blocks[1]) * 2 / 1e9)  # a's two blocks to b's two GPUs
    # ring a:0 -> a:1 -> b:0 -> b:1 -> a:0: round r puts block (1 - r) on a -> b and block (3 - r) on b -> a
    expected_ring = sum(1e-3 + max(blocks[(1 - r) % 4], blocks[(3 - r) % 4]) / 1e9 for r in range(3))
    assert ring == pytest.approx(expected_ring)
    assert ring < pairwise
    small_pairwise, small_ring = both(100)
    assert small_pairwise < small_ring  # short prompts: the ring's extra latencies dominate


def test_sync_grows_with_prompt_and_shrinks_with_bandwidth(write_ini):
    previous = {}
    for gbit in (1, 10, 100):
        cluster = load_cluster(write_ini(SEED.read_text().replace("default = 10 Gbit/s", f"default = {gbit} Gbit/s")))
        devices = devices_of(cluster)
        for strategy in ("pairwise", "ring"):
            times = [sync_s(cluster, devices, p, strategy)[0] for p in (1024, 4096, 16384)]
            assert times == sorted(times) and times[0] < times[-1]
            if strategy in previous:
                assert all(t < p for t, p in zip(times, previous[strategy]))
            previous[strategy] = times


@pytest.mark.parametrize("strategy", ["pairwise", "ring"])
@pytest.mark.parametrize("shared_nic", [False, True])
def test_a_faster_link_never_makes_sp_pp_slower(write_ini, strategy, shared_nic):
    text = SEED.read_text()
    for prompt in (1024, 8192, 32768):
        last = None
        for link in ("100 Mbit/s, 1 ms", "1 Gbit/s, 0.5 ms", "10 Gbit/s, 0.2 ms", "10 Gbit/s, 0.05 ms",
                     "100 Gbit/s, 0.05 ms"):
            cluster = load_cluster(write_ini(text.replace("default = 10 Gbit/s, 0.2 ms", f"default = {link}")))
            e = estimate(cluster, devices_of(cluster), prompt, 100, strategy, shared_nic=shared_nic)
            figures = (e.prefill_s, e.sync_s, e.ttft_s, e.latency_s)
            if last is not None:
                assert all(now <= before + 1e-12 for now, before in zip(figures, last)), (prompt, link)
            last = figures


def test_one_device_is_the_plain_pipeline():
    cluster = load_cluster(SEED)
    (device,) = devices_of(cluster, ["dev1:0"])
    assert (device.start_layer, device.end_layer) == (0, 36)
    for strategy in ("pairwise", "ring"):
        e = estimate(cluster, (device,), 8192, 100, strategy)
        p = e.pipeline
        assert e.sync_s == 0 and e.sync_bytes == 0 and e.chunks == 1
        assert (e.prefill_s, e.ttft_s, e.decode_step_s, e.decode_s, e.latency_s) == pytest.approx(
            (p.prefill_s, p.ttft_s, p.decode_step_s, p.decode_s, p.latency_s))
        assert e.chunked_pipeline == p and not e.beats_pipeline


def test_prefill_makespan_is_the_flow_shop_closed_form():
    # equal chunks: sum of every stage and hop once, then (chunks - 1) x the slowest of them
    stages, hops, latency, chunks = (3.0, 5.0, 2.0), (1.0, 4.0), (0.5, 0.25), 7
    span = prefill_makespan([[t] * chunks for t in stages], [[h] * chunks for h in hops], latency)
    assert span == pytest.approx(sum(stages) + sum(hops) + sum(latency) + (chunks - 1) * max(stages + hops))
    # one chunk: the stages one after another
    assert prefill_makespan([[3.0], [5.0]], [[1.0]], [0.5]) == pytest.approx(9.5)


def test_chunking_overlaps_stages_and_sync_is_charged_after_the_first_token():
    cluster = load_cluster(SEED)
    e = estimate(cluster, devices_of(cluster), 8192, 100, "pairwise")
    assert e.chunks == 64 and e.chunk_tokens == 128
    assert e.prefill_s < e.pipeline.prefill_s          # the stages work on different chunks at once
    assert e.prefill_s == pytest.approx(e.chunked_pipeline.prefill_s)
    assert e.ttft_s == pytest.approx(e.chunked_pipeline.ttft_s)  # the first token leaves before the sync
    assert e.latency_s == pytest.approx(e.ttft_s + e.sync_s + e.decode_s)
    assert e.tpot_s == pytest.approx((e.sync_s + e.decode_s) / 99)
    assert e.throughput_tokens_per_s == pytest.approx(100 / e.latency_s)
    # local decode skips the pipeline's hops: 3 x 0.2 ms of latency per token on the seed's 10 GbE
    assert e.pipeline.decode_step_s - e.decode_step_s == pytest.approx(3 * 0.2e-3, rel=0.05)
    # it repays the sync only after this many output tokens
    saved_per_token = e.chunked_pipeline.decode_step_s - e.decode_step_s
    assert e.break_even_output_tokens == pytest.approx(1 + e.sync_s / saved_per_token)


def test_decode_runs_on_the_fastest_device(write_ini):
    mixed = TOY.replace("[host b]\ngpus = rtx4090", "[host b]\ngpus = rtx2080ti")
    cluster = load_cluster(write_ini(mixed))
    e = estimate(cluster, devices_of(cluster, ["b:0", "a:0"]), 1000, 50, "ring")
    assert e.decode_device == "a:0"
    slow = cluster.cost("rtx2080ti").decode_s(6, 1, 1025)
    assert e.decode_step_s < slow


def test_memory_limits(write_ini):
    cluster = load_cluster(SEED)
    devices = devices_of(cluster)
    room = estimate(cluster, devices, 1024, 100).kv_room_tokens
    assert room == cluster.cost("rtx4090").kv_tokens(36, first=True, last=True)
    # longer than the whole-model KV room (but inside a 2-million-token context): SP+PP does not fit,
    # the pipeline (a third of the weights per GPU) does
    wide = load_cluster(write_ini(SEED.read_text().replace("model = qwen3-4b", "model = wide") + """
[model wide]
family = qwen3
layers = 36
hidden_size = 2560
intermediate_size = 9728
attention_heads = 32
kv_heads = 8
head_dim = 128
vocab_size = 151936
tie_word_embeddings = yes
max_position_embeddings = 2000000
"""))
    e = estimate(wide, devices_of(wide), room + 1000, 100)
    assert not e.fits and e.pipeline.fits and not e.beats_pipeline and "does not fit" in e.reason


# ---- CLI -------------------------------------------------------------------------------------------

def test_cli_seed_table_and_verdict(run_cli):
    code, text, err = run_cli("sp-pp", SEED)
    assert code == 0, err
    for prompt in ("1,024", "8,192", "32,768"):
        for plan in (r"SP\+PP pairwise", r"SP\+PP ring"):
            assert re.search(rf"│\s+{prompt} │ {plan}", text)
        assert re.search(rf"│\s+{prompt} │ PP plain ", text) and re.search(rf"│\s+{prompt} │ PP chunked", text)
    assert re.search(r"^Soonest: .* tokens\.$", text, flags=re.M)
    assert "SP+PP beats the plain pipeline" in text or "SP+PP vs the plain pipeline" in text
    assert "Against a pipeline that chunks its prefill too" in text


def test_cli_json_parses(run_cli):
    code, text, err = run_cli("sp-pp", SEED, "--prompt", "1k,8192", "--sync", "ring", "--json")
    assert code == 0, err
    data = json.loads(text)
    assert data["model"] == "qwen3-4b" and data["chunk_tokens"] == 128 and data["output_tokens"] == 100
    assert [d["name"] for d in data["devices"]] == ["dev0:0", "dev1:0", "dev2:0"]
    assert [r["prompt_tokens"] for r in data["results"]] == [1024, 8192]
    row = data["results"][1]
    assert set(row["sp_pp"]) == {"ring"} and row["winner"] in ("ring", "pipeline", "chunked")
    ring = row["sp_pp"]["ring"]
    assert ring["latency_s"] == pytest.approx(ring["ttft_s"] + ring["sync_s"] + ring["decode_s"])
    assert row["pipeline"]["chunk_tokens"] == 8192 and row["chunked_pipeline"]["chunk_tokens"] == 128


def test_cli_gpus_choose_rank_order(run_cli):
    code, text, err = run_cli("sp-pp", SEED, "--gpus", "dev2:0,dev0:0", "--prompt", "4096", "--json")
    assert code == 0, err
    devices = json.loads(text)["devices"]
    assert [(d["name"], d["start_layer"], d["end_layer"]) for d in devices] == [("dev2:0", 0, 18), ("dev0:0", 18, 36)]


@pytest.mark.parametrize("args, words", [
    (["--gpus", "dev0:0,dev7:0"], "unknown GPU 'dev7:0'"),
    (["--gpus", "dev0:0"], "needs at least 2 GPUs, got 1"),
    (["--gpus", "dev0:0,dev0:0"], "listed twice"),
    (["--gpus", ","], "',' has an empty entry"),                  # was every GPU, silently
    (["--gpus", "dev0:0,,dev1:0"], "has an empty entry"),
    (["--prompt", "lots"], "'lots' is not a token count"),
    (["--output", "0"], "--output: 0 tokens is not a length"),
    (["--prompt", "40960"], "exceed qwen3-4b's context of 40,960 tokens"),
])
def test_cli_bad_input_is_one_line(run_cli, args, words):
    code, out, err = run_cli("sp-pp", SEED, *args)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and not out


def test_cli_refuses_a_model_that_does_not_fit_on_one_device(run_cli):
    code, _, err = run_cli("sp-pp", PROFILES / "hetero.ini")  # Qwen3-14B: 28 GB of weights per device
    assert code == 2 and "qwen3-14b does not fit on host1:0" in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_static_tables(run_cli, write_ini):
    static = TOY.replace("[host a]", "[gpu fast]\nmemory = 24 GB\nmax_layers = 6\nthroughput = 100, 50\n\n[host a]") \
        .replace("gpus = rtx4090 * 2", "gpus = fast * 2")
    code, _, err = run_cli("sp-pp", write_ini(static))
    assert code == 2 and "static throughput table" in err and len(err.strip().splitlines()) == 1


def test_docs_quote_current_figures(run_cli):
    """docs/seeds/002-sp-pp.md quotes `planner sp-pp profiles/sp-pp.ini`: rerun and update it if this fails."""
    code, text, err = run_cli("sp-pp", SEED)
    assert code == 0, err
    doc = (ROOT / "docs" / "seeds" / "002-sp-pp.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"^│\s+8,192 │", line)]
    assert len(rows) == 4 and all(row in doc for row in rows)
