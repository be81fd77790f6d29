"""Cluster files: the seed cluster and every form the format allows."""

import pytest

from planner.cluster import COORDINATOR, load_cluster
from planner.costmodel import Workload

from conftest import BASE_CLUSTER, HETERO


def test_hetero_profile():
    c = load_cluster(HETERO)
    assert c.model.id == "qwen3-14b"
    assert c.dtype == "fp16"
    assert c.coordinator_host == "host1"
    assert [n.name for n in c.nodes()] == ["host1:0", "host1:1", "host2:0", "host2:1"]
    assert [n.gpu for n in c.nodes()] == ["rtx2080ti", "rtx2080ti", "rtx4090", "rtx4090"]
    assert [n.host for n in c.nodes()] == ["host1", "host1", "host2", "host2"]
    assert [n.index for n in c.nodes()] == [0, 1, 0, 1]
    assert c.link("host1", "host2").bandwidth_bytes_per_s == pytest.approx(1.25e9)
    assert c.link("host2", "host1").latency_s == pytest.approx(0.2e-3)
    assert c.default_link.bandwidth_bytes_per_s == pytest.approx(1.25e8)
    assert c.default_link.latency_s == pytest.approx(0.5e-3)
    assert c.host("host1").gpu_link.bandwidth_bytes_per_s == pytest.approx(15.7e9)
    assert c.host("host2").gpu_link.bandwidth_bytes_per_s == pytest.approx(31.5e9)
    assert c.link("host1", "host1") == c.host("host1").gpu_link
    assert c.host("host1").address == "10.202.210.104"
    assert c.coordinator_link("host2") == c.link("host1", "host2")  # default: the coordinator host's links
    assert set(c.gpu_types) == {"rtx2080ti", "rtx4090"}
    assert c.workload == Workload()
    assert c.activation_bytes_per_token() == 5120 * 2
    assert c.has_latency
    assert c.name == "hetero"


def test_gpu_list_form(write_ini):
    c = load_cluster(write_ini("""\
        [cluster]
        model = qwen3-8b
        [host a]
        gpus = rtx4090, rtx2080ti, rtx4090 * 2
        """))
    assert [n.gpu for n in c.nodes()] == ["rtx4090", "rtx2080ti", "rtx4090", "rtx4090"]
    assert [n.name for n in c.nodes()] == ["a:0", "a:1", "a:2", "a:3"]
    assert c.coordinator_host == "a"  # default: the first host
    assert c.dtype == "fp16"          # default dtype
    assert c.default_link is None and c.pair_links == {}


def test_gpu_less_coordinator_host_and_coordinator_links(write_ini):
    c = load_cluster(write_ini("""\
        [cluster]
        model = qwen3-14b
        coordinator = gateway
        [host gateway]
        gpus =
        address = 10.0.0.2
        [host ws1]
        gpus = rtx4090 * 2
        region = lab
        [host ws2]
        gpus = rtx4090 * 2
        region = cloud
        [network]
        default = 10 Gbit/s, 0.1 ms
        ws1 -- ws2 = 200 Mbit/s, 15 ms
        coordinator -- ws2 = 200 Mbit/s, 15 ms
        """))
    assert c.coordinator_host == "gateway"
    assert c.host("gateway").gpus == ()
    assert [n.name for n in c.nodes()] == ["ws1:0", "ws1:1", "ws2:0", "ws2:1"]
    assert c.host("ws1").region == "lab"
    assert c.coordinator_link("ws2").bandwidth_bytes_per_s == pytest.approx(25e6)
    assert c.coordinator_link("ws2").latency_s == pytest.approx(15e-3)
    assert c.coordinator_link("ws1").bandwidth_bytes_per_s == pytest.approx(1.25e9)  # falls back to default
    assert c.link("ws1", "ws2").bandwidth_bytes_per_s == pytest.approx(25e6)
    assert set(c.coordinator_links) == {"ws2"}


def test_coordinator_links_make_hosts_reachable(write_ini):
    """No default link: a host is reachable through 'coordinator -- HOST' alone."""
    c = load_cluster(write_ini("""\
        [cluster]
        model = qwen3-14b
        coordinator = gw
        [host gw]
        gpus =
        [host w1]
        gpus = rtx4090 * 2
        [host w2]
        gpus = rtx4090
        [network]
        coordinator -- w1 = 1 Gbit/s, 1 ms
        w2 -- w1 = 1 Gbit/s, 1 ms
        """))
    assert c.link("gw", "w1") is None
    assert c.coordinator_link("w1").latency_s == pytest.approx(1e-3)
    assert c.coordinator_link("w2") is None


def test_inline_measured_gpu(write_ini):
    c = load_cluster(write_ini("""\
        [cluster]
        model = llama-2-70b
        [host h]
        gpus = l4-llama70b * 12
        [gpu l4-llama70b]
        memory = 24 GB
        max_layers = 7
        decode_ms = 2: 6.9, 8: 7.0, 32: 8.0, 100: 9.4, 200: 14, 500: 26
        prefill_ms = 250: 12, 1000: 38, 4000: 139, 7500: 246
        kv_tokens = 1: 4258336, 2: 1936272, 4: 751104, 7: 250144
        """))
    g = c.gpu_types["l4-llama70b"]
    assert g.is_measured and not g.is_static
    assert g.memory_bytes == pytest.approx(24e9)
    assert g.max_layers == 7
    assert g.decode_ms.points[0] == (2.0, pytest.approx(6.9e-3))   # stored in seconds
    assert g.prefill_ms.points[-1] == (7500.0, pytest.approx(0.246))
    assert g.kv_tokens == ((1, 4258336), (2, 1936272), (4, 751104), (7, 250144))
    cost = c.cost("l4-llama70b")
    assert cost.max_layers() == 7
    assert cost.kv_tokens(2) == 1936272
    assert cost.decode_s(3, 8) == pytest.approx(3 * 7.0e-3)
    assert len(c.nodes()) == 12


def test_inline_static_throughput_gpu(write_ini):
    c = load_cluster(write_ini("""\
        [cluster]
        model = llama-2-70b
        [host h]
        gpus = a100-llama70b * 8
        [gpu a100-llama70b]
        memory = 40 GB
        max_layers = 12
        throughput = 23833.9, 11384.3, 7201.4, 5264.6
        """))
    g = c.gpu_types["a100-llama70b"]
    assert g.is_static
    assert g.throughput == (23833.9, 11384.3, 7201.4, 5264.6)
    assert not c.has_latency
    assert c.cost("a100-llama70b").max_layers() == 12


def test_inline_model_and_gpu_override(write_ini):
    c = load_cluster(write_ini("""\
        [cluster]
        model = tiny
        [model tiny]
        family = llama
        layers = 4
        hidden_size = 256
        intermediate_size = 1024
        attention_heads = 4
        kv_heads = 2
        head_dim = 64
        vocab_size = 1000
        [gpu rtx4090]
        name = a slower 4090
        memory = 20 GiB
        memory_bandwidth = 500 GB/s
        fp16_tflops = 80
        bf16 = yes
        [host h]
        gpus = rtx4090
        """))
    assert c.model.id == "tiny" and c.model.layers == 4 and c.model.head_dim == 64
    assert c.model.tie_word_embeddings is False
    assert c.gpu_types["rtx4090"].name == "a slower 4090"
    assert c.gpu_types["rtx4090"].memory_bytes == 20 * 1024**3


def test_workload_section(write_ini):
    c = load_cluster(write_ini(BASE_CLUSTER + "\n[workload]\nprompt_tokens = 2048\noutput_tokens = 128\n"))
    assert c.workload == Workload(2048, 128)
    assert c.cost("rtx4090").workload.prompt_tokens == 2048
    assert c.workload.mean_context == 2048 + 64


def test_workload_defaults_per_key(write_ini):
    c = load_cluster(write_ini(BASE_CLUSTER + "\n[workload]\noutput_tokens = 64\n"))
    assert c.workload == Workload(Workload().prompt_tokens, 64)


def test_bf16_cluster_on_gpus_with_bf16(write_ini):
    c = load_cluster(write_ini(BASE_CLUSTER.replace("dtype = fp16", "dtype = bf16")
                               .replace("rtx2080ti * 2", "l20")))
    assert c.dtype == "bf16"


def test_comments_are_ignored(write_ini):
    text = BASE_CLUSTER.replace("[host host2]", "[host host2]   ; PCIe 4.0 box").replace(
        "gpus = rtx4090 * 2", "gpus = rtx4090 * 2   # two cards")
    c = load_cluster(write_ini(text))
    assert c.host("host2").gpus == ("rtx4090", "rtx4090")


@pytest.mark.parametrize("name", ["hetero.ini", "l20x4.ini", "a10x8.ini", "mixed-campus.ini"])
def test_every_profile_loads(name):
    c = load_cluster(HETERO.parent / name)
    assert c.nodes()
    assert COORDINATOR not in {h.name for h in c.hosts}


def test_windows_line_endings_and_byte_order_mark(tmp_path):
    path = tmp_path / "windows.ini"
    path.write_bytes(b"\xef\xbb\xbf" + BASE_CLUSTER.replace("\n", "\r\n").encode())
    c = load_cluster(path)
    assert c.model.id == "qwen3-14b"
    assert c.host("host2").gpus == ("rtx4090", "rtx4090")
    assert c.link("host1", "host2").latency_s == pytest.approx(0.2e-3)
