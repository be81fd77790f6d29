"""The runtime's pieces in one process: layers against transformers, checkpoint loading, sampling, the wire
format, export and profile. Serving across processes is in test_runtime_serving.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import subprocess
import sys
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("msgpack")
# One thread: tiny models gain nothing from more, and on a busy 2-core machine torch's spinning worker
# threads made 30 forward passes of a 6-layer model take 18 s instead of 0.1 s.
torch.set_num_threads(1)

from planner.catalog import ModelSpec  # noqa: E402
from runtime.config import Shard  # noqa: E402
from planner.layout import read_layout  # noqa: E402
from runtime import checkpoint as ckpt  # noqa: E402
from runtime import wire  # noqa: E402
from runtime.demo import TINY_MODELS, chain_layout, cpu_cluster  # noqa: E402
from runtime.hfconfig import read_checkpoint_model  # noqa: E402
from runtime.model import BatchPlan, Stage  # noqa: E402
from runtime.sampling import SamplingParams, sample_batch  # noqa: E402

PROMPTS = [[5, 17, 3, 99, 42], [1, 2, 3], [200, 7, 7, 7, 7, 7, 7, 31, 64]]
NEW_TOKENS = 10


def hf_greedy(checkpoint, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers' reference: the model loaded from the checkpoint in float32, greedy, no KV cache."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(new_tokens):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            outputs.append(ids[len(prompt):])
    return outputs


@pytest.fixture(scope="module", params=sorted(TINY_MODELS))
def tiny(request, tmp_path_factory):
    """(model, checkpoint dir, transformers' greedy outputs for PROMPTS) for each tiny model."""
    model = TINY_MODELS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    ckpt.make_checkpoint(directory, model, seed=1, shards=3)
    return model, directory, hf_greedy(directory, PROMPTS, NEW_TOKENS)


class ThreadGroup:
    """A tensor-parallel group in one process: each rank's shard of a stage runs in its own thread, and
    the all-reduce adds the ranks' partial sums in rank order (as gloo's does, up to rounding)."""

    def __init__(self, directory, model, start, end, size):
        self.size, self.parts = size, [None] * size
        self.barrier = threading.Barrier(size)
        self.ranks = []
        for rank in range(size):
            shard = Shard(rank, size)
            tensors = ckpt.load_stage(directory, model, start, end, shard=shard, ends=rank == 0)
            self.ranks.append(Stage.from_tensors(model, start, end, tensors, shard=shard, ends=rank == 0,
                                                 reduce=functools.partial(self._all_reduce, rank)))

    def _all_reduce(self, rank, x):
        self.parts[rank] = x
        self.barrier.wait()
        total = functools.reduce(torch.add, self.parts)
        self.barrier.wait()
        return total

    def new_kv(self, **size):
        return [s.new_kv(**size) for s in self.ranks]

    def __call__(self, inputs, plan, pools):
        hidden = self.ranks[0].embed(inputs)
        out = [None] * self.size

        def run(rank):
            out[rank] = self.ranks[rank](hidden, plan, pools[rank])

        threads = [threading.Thread(target=run, args=(r,)) for r in range(1, self.size)]
        for t in threads:
            t.start()
        run(0)
        for t in threads:
            t.join()
        return out[0]


def generate_in_process(directory, ranges, prompts, new_tokens, join_at=(0, 2, 4), tp=1):
    """Greedy decoding through stages in one process, with continuous batching: request i joins the batch
    at step join_at[i], so prompts and decode steps of other requests share batches. tp > 1: every stage
    a tensor-parallel ThreadGroup."""
    model = read_checkpoint_model(directory)
    stages = [Stage.from_tensors(model, a, b, ckpt.load_stage(directory, model, a, b)) if tp == 1 else
              ThreadGroup(directory, model, a, b, tp) for a, b in ranges]
    pools = [s.new_kv(max_seqs=len(prompts), max_seq_len=64, tokens=len(prompts) * 64, page_tokens=4)
             for s in stages]
    every_pool = [p for pool in pools for p in (pool if isinstance(pool, list) else [pool])]
    out = [[] for _ in prompts]
    step = 0
    while any(len(o) < new_tokens for o in out):
        items, inputs = [], []
        decode = [i for i, o in enumerate(out) if 0 < len(o) < new_tokens]
        joining = [i for i, o in enumerate(out) if not o and join_at[i] <= step]
        for i in decode:     # decode items first, as workers order a batch
            items.append((i, len(prompts[i]) + len(out[i]) - 1, 1))
            inputs.append(out[i][-1:])
        for i in joining:
            items.append((i, 0, len(prompts[i])))
            inputs.append(prompts[i])
        step += 1
        if not items:
            continue
        for pool in every_pool:   # the same calls in the same order: every pool pages alike
            for i, pos, count in items:
                pool.admit(str(i))
                pool.grow(str(i), pos + count)
        plan = BatchPlan.build([(every_pool[0].pages_of[str(i)], pos, count) for i, pos, count in items],
                               every_pool[0].page_tokens, "cpu")
        x = torch.tensor([t for chunk in inputs for t in chunk])
        for stage, pool in zip(stages, pools):
            x = stage(x, plan, pool)
        for (i, _, _), token in zip(items, x.argmax(dim=-1).tolist()):
            out[i].append(token)
    return out


def test_random_model_does_not_loop(tiny):
    """The tiny models must make every layer matter: a reference that repeats one token proves little."""
    _, _, reference = tiny
    assert all(len(set(ids)) >= 5 for ids in reference), reference


def test_stages_with_batching_match_transformers(tiny):
    model, directory, reference = tiny
    assert generate_in_process(directory, [(0, 1), (1, 4), (4, 6)], PROMPTS, NEW_TOKENS) == reference


def test_one_stage_holding_everything_matches_transformers(tiny):
    _, directory, reference = tiny
    assert generate_in_process(directory, [(0, 6)], PROMPTS, NEW_TOKENS, join_at=(0, 0, 0)) == reference


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_shards_match_transformers(tiny, tp):
    """Megatron-LM's split, in one process: TP2 splits the 2 KV heads, TP4 replicates each on 2 ranks."""
    model, directory, reference = tiny
    assert generate_in_process(directory, [(0, 6)], PROMPTS, NEW_TOKENS, tp=tp) == reference
    assert generate_in_process(directory, [(0, 2), (2, 6)], PROMPTS, NEW_TOKENS, tp=tp) == reference


def test_shards_are_the_checkpoint_sliced(tmp_path):
    """Column-parallel q/k/v (with Qwen2's biases) and gate/up by rows, row-parallel o/down by columns;
    a rank other than the face reads no embeddings or head."""
    model = TINY_MODELS["tiny-qwen2"]
    ckpt.make_checkpoint(tmp_path, model, seed=5, shards=2)
    full = ckpt.load_stage(tmp_path, model, 0, 6)
    d = model.head_dim
    for rank in range(2):
        part = ckpt.load_stage(tmp_path, model, 0, 6, shard=Shard(rank, 2), ends=False)
        assert "embed_tokens.weight" not in part and "norm.weight" not in part
        rows_q, rows_kv = slice(rank * 2 * d, (rank + 1) * 2 * d), slice(rank * d, (rank + 1) * d)
        cols = slice(rank * 64, (rank + 1) * 64)
        a = "layers.3.self_attn."
        assert torch.equal(part[a + "q_proj.weight"], full[a + "q_proj.weight"][rows_q])
        assert torch.equal(part[a + "q_proj.bias"], full[a + "q_proj.bias"][rows_q])
        assert torch.equal(part[a + "k_proj.bias"], full[a + "k_proj.bias"][rows_kv])
        assert torch.equal(part[a + "v_proj.weight"], full[a + "v_proj.weight"][rows_kv])
        assert torch.equal(part[a + "o_proj.weight"], full[a + "o_proj.weight"][:, rows_q])
        assert torch.equal(part["layers.3.mlp.up_proj.weight"], full["layers.3.mlp.up_proj.weight"][cols])
        assert torch.equal(part["layers.3.mlp.down_proj.weight"], full["layers.3.mlp.down_proj.weight"][:, cols])
        assert torch.equal(part["layers.3.input_layernorm.weight"], full["layers.3.input_layernorm.weight"])
    replicated = [Shard(rank, 4).kv_heads(model) for rank in range(4)]   # 2 KV heads on 4 ranks
    assert replicated == [range(0, 1), range(0, 1), range(1, 2), range(1, 2)]


def test_make_checkpoint_is_what_transformers_loads(tmp_path, run_cli):
    transformers = pytest.importorskip("transformers")
    code, out, err = run_cli("make-checkpoint", tmp_path / "ck", "--model", "tiny-qwen2", "--layers", "3",
                             "--shards", "2", "--seed", "7")
    assert code == 0, err
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["num_hidden_layers"] == 3
    assert (tmp_path / "ck" / ckpt.INDEX_FILE).is_file()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ck"), dtype=torch.float32)
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    assert hf.model.layers[0].self_attn.q_proj.bias is not None


def test_make_checkpoint_unknown_model_is_one_line(tmp_path, run_cli):
    code, _, err = run_cli("make-checkpoint", tmp_path / "ck", "--model", "gpt-7")
    assert code == 2
    assert err.startswith("error: --model: unknown model 'gpt-7'") and len(err.strip().splitlines()) == 1


def test_head_dim_is_read_not_derived(tmp_path):
    model = TINY_MODELS["tiny-qwen3"]
    assert model.head_dim * model.attention_heads != model.hidden_size
    ckpt.make_checkpoint(tmp_path, model)
    assert read_checkpoint_model(tmp_path).head_dim == model.head_dim


class RecordingOpen:
    """safe_open that records which tensors are read (headers are free: reading keys() reads no data)."""

    def __init__(self, real, log):
        self.real, self.log = real, log

    def __call__(self, path, **kw):
        real, log = self.real(path, **kw), self.log

        class Handle:
            def __enter__(self):
                self.inner = real.__enter__()
                return self

            def __exit__(self, *exc):
                return real.__exit__(*exc)

            def keys(self):
                return self.inner.keys()

            def get_tensor(self, name):
                log.append(name)
                return self.inner.get_tensor(name)

        return Handle()


@pytest.mark.parametrize("shards", [1, 4])
def test_stage_reads_only_its_tensors(tmp_path, monkeypatch, shards):
    model = TINY_MODELS["tiny-qwen2"]
    ckpt.make_checkpoint(tmp_path, model, shards=shards)
    read: list[str] = []
    monkeypatch.setattr(ckpt, "safe_open", RecordingOpen(ckpt.safe_open, read))
    tensors = ckpt.load_stage(tmp_path, model, 2, 4)
    assert sorted(read) == sorted(n for n in ckpt.stage_tensor_names(model, 2, 4))
    assert all(".layers.2." in n or ".layers.3." in n for n in read)
    assert set(tensors) == set(ckpt.stage_tensor_names(model, 2, 4).values())


def test_stage_loads_with_other_layers_files_gone(tmp_path):
    """With an index, a stage opens only the files holding its tensors: delete the others and it loads."""
    model = TINY_MODELS["tiny-qwen3"]
    tensors = ckpt.random_tensors(model, 0)
    files = {name: (f"layer-{name.split('.')[2]}.safetensors" if ".layers." in name else "rest.safetensors")
             for name in tensors}
    ckpt.write_checkpoint(tmp_path, model, {}, dtype="fp32")  # config.json only
    from safetensors.torch import save_file

    for file in set(files.values()):
        save_file({n: t for n, t in tensors.items() if files[n] == file}, str(tmp_path / file))
    (tmp_path / ckpt.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": files}))
    for layer in (0, 1, 4, 5):
        (tmp_path / f"layer-{layer}.safetensors").unlink()
    stage = Stage.from_tensors(model, 2, 4, ckpt.load_stage(tmp_path, model, 2, 4))
    assert len(stage.layers) == 2
    with pytest.raises(Exception, match="layer|No such file"):
        ckpt.load_stage(tmp_path, model, 0, 2)


def test_tied_last_stage_uses_the_embedding_as_head():
    model = TINY_MODELS["tiny-qwen2"]
    assert model.tie_word_embeddings
    names = ckpt.stage_tensor_names(model, 4, 6)
    assert ckpt.EMBED in names and ckpt.LM_HEAD not in names and ckpt.FINAL_NORM in names
    assert ckpt.EMBED not in ckpt.stage_tensor_names(model, 1, 4)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from planner.errors import InputError
    from runtime.hfconfig import check_same_model

    model = TINY_MODELS["tiny-qwen3"]
    other = dataclasses.replace(model, kv_heads=1)
    with pytest.raises(InputError, match="kv_heads"):
        check_same_model(other, model, file=tmp_path)


# ---- sampling ----------------------------------------------------------------------------------------

def test_greedy_rows_are_the_argmax():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    assert sample_batch(logits, [SamplingParams()] * 4, [5, 6, 7, 8]) == logits.argmax(dim=-1).tolist()


def test_a_seeded_draw_depends_on_seed_and_position_alone():
    """Counter-based: the same (seed, position) draws the same token whatever shares the batch."""
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    hot = SamplingParams(temperature=1.0, seed=3)
    alone = sample_batch(logits[:1], [hot], [17])
    mixed = sample_batch(logits[[3, 0, 5]], [SamplingParams(), hot, SamplingParams(temperature=0.7, seed=9)],
                         [4, 17, 40])
    assert mixed[1] == alone[0]
    assert mixed[0] == int(logits[3].argmax())
    along = [sample_batch(logits[:1], [hot], [p])[0] for p in range(60)]   # a sequence moves on
    assert len(set(along)) > 5
    assert along == [sample_batch(logits[:1], [hot], [p])[0] for p in range(60)]
    other = [sample_batch(logits[:1], [SamplingParams(temperature=1.0, seed=4)], [p])[0] for p in range(60)]
    assert other != along
    huge = SamplingParams(temperature=1.0, seed=99999999999999999999999)  # folded, never an overflow
    assert 0 <= sample_batch(logits[:1], [huge], [0])[0] < 50



def test_tiny_temperatures_and_top_ps_sample_the_top_token():
    """float32 rounds 1e-40 to 0: as a temperature it made every probability nan, as a top_p it masked every
    token, and both drew token 0. A temperature under 1e-5 is greedy (vLLM's rule); the top token always stays."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    top = logits.argmax(dim=-1).tolist()
    assert SamplingParams(temperature=1e-40).greedy and not SamplingParams(temperature=1e-4).greedy
    for params in (SamplingParams(temperature=1e-40, seed=2), SamplingParams(temperature=1.0, top_p=1e-46, seed=2)):
        assert [sample_batch(logits, [params] * 3, [p, p + 1, p + 2]) for p in range(5)] == [top] * 5


def test_seeds_that_share_a_half_draw_apart():
    """Both 32-bit halves of a 64-bit seed count: 5 and 5 << 32 (and 0 and 2**32 + 1) drew alike when the
    halves were folded by xor."""
    logits = torch.zeros(1, 1000)   # uniform: every token as likely, so draws differ unless the streams match
    def draws(seed: int) -> list[int]:
        return [sample_batch(logits, [SamplingParams(temperature=1.0, seed=seed)], [p])[0] for p in range(20)]
    for a, b in ((5, 5 << 32), (0, 2**32 + 1), (7, 7 + (7 << 32))):
        assert draws(a) != draws(b), (a, b)

def test_seeded_draws_follow_the_distribution():
    """The exponential race samples token i with probability softmax(logits / T)_i."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    params = SamplingParams(temperature=0.8, seed=1)
    draws = [sample_batch(logits, [params], [p])[0] for p in range(4000)]
    expected = torch.softmax(logits[0] / 0.8, dim=-1)
    observed = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    assert torch.allclose(observed, expected, atol=0.03), (observed, expected)


def test_top_p_keeps_the_nucleus():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0, -2.0]])
    half = SamplingParams(temperature=1.0, top_p=0.5, seed=0)
    assert {sample_batch(logits, [half], [p])[0] for p in range(50)} == {0}      # the top token alone holds > 0.5
    most = SamplingParams(temperature=1.0, top_p=0.95, seed=0)
    assert {sample_batch(logits, [most], [p])[0] for p in range(200)} == {0, 1}


# ---- wire ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_wire_round_trip(dtype):
    tensor = (torch.randn(3, 5) * 100).to(dtype)
    header, tensors = wire.decode(wire.encode({"kind": "work", "items": [{"rid": "r1"}]}, (tensor, tensor[:0])))
    assert header["kind"] == "work" and header["items"] == [{"rid": "r1"}]
    assert torch.equal(tensors[0], tensor) and tensors[0].dtype == dtype
    assert tensors[1].shape == (0, 5)


def test_wire_has_no_pickle():
    frames = wire.encode({"kind": "beat"}, (torch.zeros(2),))
    assert b"\x80\x04" not in bytes(frames[0])  # msgpack map, not a pickle stream
    assert bytes(frames[1]) == bytes(8)


# ---- export -------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_layout(tmp_path):
    model = TINY_MODELS["tiny-qwen3"]
    (tmp_path / "cluster.ini").write_text(cpu_cluster(model, 4))
    layout = tmp_path / "layout.ini"
    layout.write_text(chain_layout("cluster.ini", model, [[(0, 2)], [(2, 5), (2, 5)], [(5, 6)]]))
    return layout


def test_export_runtime_config_and_launch_scripts(tmp_path, tiny_layout, run_cli):
    from runtime.config import read_runtime_config

    code, _, err = run_cli("export", tiny_layout, tmp_path / "out", "--to", "runtime", "--checkpoint", "/models/x",
                           "--device", "cpu", "--port", "7000")
    assert code == 0, err
    config = read_runtime_config(tmp_path / "out" / "runtime.json")
    assert config.host.address == "127.0.0.1" and config.host.port == 7000 and config.checkpoint == "/models/x"
    assert [(w.node, w.start, w.end, w.port, w.device) for w in config.workers] == [
        ("local:0", 0, 2, 7001, "cpu"), ("local:1", 2, 5, 7002, "cpu"), ("local:2", 2, 5, 7003, "cpu"),
        ("local:3", 5, 6, 7004, "cpu")]
    assert config.host.next == (("local:0", 100.0),)
    assert config.worker("local:0").next == (("local:1", 50.0), ("local:2", 50.0))
    assert config.worker("local:3").next == (("coordinator", 100.0),)
    graph = config.route_graph()
    assert graph.successors["local:1"] == ("local:3",) and graph.weights[("local:0", "local:2")] == 50.0
    script = (tmp_path / "out" / "launch-local.sh").read_text()
    assert script.count("planner worker --config runtime.json --node local:") == 4
    assert "planner host --config runtime.json" in script
    result = subprocess.run(["bash", "-n", str(tmp_path / "out" / "launch-local.sh")], capture_output=True)
    assert result.returncode == 0, result.stderr


def test_export_starts_a_process_per_gpu_of_a_tensor_parallel_group(tmp_path, run_cli):
    """Refused before issue 18; now a group is one unit whose ranks each get a device, a port and a line
    in the launch script."""
    from runtime.config import read_runtime_config

    model = TINY_MODELS["tiny-qwen3"]
    (tmp_path / "cluster.ini").write_text(cpu_cluster(model, 4))
    layout = tmp_path / "layout.ini"
    layout.write_text(chain_layout("cluster.ini", model, [[(0, 3)], [(3, 6)]], tp=2))
    code, _, err = run_cli("export", layout, tmp_path / "out", "--to", "runtime", "--port", "7000")
    assert code == 0, err
    config = read_runtime_config(tmp_path / "out" / "runtime.json")
    assert [(w.node, w.port, w.tp_port, [(r.node, r.device, r.port) for r in w.ranks]) for w in config.workers] == [
        ("local:0+local:1", 7001, 7003, [("local:0", "cuda:0", 7001), ("local:1", "cuda:1", 7002)]),
        ("local:2+local:3", 7004, 7006, [("local:2", "cuda:2", 7004), ("local:3", "cuda:3", 7005)])]
    assert config.host.next == (("local:0+local:1", 100.0),)
    assert config.member("local:3") == (config.workers[1], 1)
    script = (tmp_path / "out" / "launch-local.sh").read_text()
    assert [f"--node local:{i} " in script for i in range(4)] == [True] * 4


def test_export_refuses_a_group_the_model_cannot_split(tmp_path, run_cli):
    model = TINY_MODELS["tiny-qwen3"]   # 4 attention heads
    (tmp_path / "cluster.ini").write_text(cpu_cluster(model, 3))
    layout = tmp_path / "layout.ini"
    layout.write_text(chain_layout("cluster.ini", model, [[(0, 6)]], tp=3))
    code, _, err = run_cli("export", layout, tmp_path / "out")
    assert code == 2
    assert "4 attention heads do not split over 3 GPUs" in err and len(err.strip().splitlines()) == 1


def test_worker_with_a_bad_config_is_one_line(tmp_path, run_cli):
    bad = tmp_path / "runtime.json"
    bad.write_text('{"format": "something else"}')
    code, _, err = run_cli("worker", "--config", bad, "--node", "local:0", "--checkpoint", tmp_path)
    assert code == 2 and "format" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("host", "--config", tmp_path / "missing.json")
    assert code == 2 and "no such runtime config" in err


def test_solve_and_export_do_not_import_torch(tiny_layout, tmp_path):
    code = ("import sys; from planner.cli import main\n"
            "try:\n    main(['export', sys.argv[1], sys.argv[2]])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code, str(tiny_layout), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ---- profile ------------------------------------------------------------------------------------------

def test_profile_writes_a_measured_gpu_section(tmp_path, run_cli):
    from planner.cluster import load_cluster

    ckpt.make_checkpoint(tmp_path / "ck", TINY_MODELS["tiny-qwen3"])
    code, out, err = run_cli("profile", "--checkpoint", tmp_path / "ck", "--device", "cpu", "--layers", "2",
                             "--decode-batches", "1,4", "--prefill-tokens", "8,32", "--context", "16",
                             "--name", "cpu-x", "--memory", "2 GiB", "--threads", "1")
    assert code == 0, err
    assert out.startswith("[gpu cpu-x]") and "decode_ms = 1: " in out and "prefill_ms = 8: " in out
    cluster = cpu_cluster(TINY_MODELS["tiny-qwen3"], 2, gpu_section=out)
    (tmp_path / "cluster.ini").write_text(cluster)
    gpu = load_cluster(tmp_path / "cluster.ini").gpu_types["cpu-x"]
    assert gpu.is_measured and len(gpu.decode_ms.points) == 2 and gpu.decode_ms.seconds(1) > 0
    # the host's part of a step is timed apart, once per step, and loads as the step overhead by batch
    host = re.search(r"step_overhead_ms = 1: ([0-9.e-]+), 4: ([0-9.e-]+)", out)
    cost = load_cluster(tmp_path / "cluster.ini").cost("cpu-x")
    assert host and [cost.step_overhead_s(b) * 1e3 for b in (1, 4)] == pytest.approx(list(map(float, host.groups())))
    loop = re.search(r"host_step_ms = 1: ([0-9.e-]+), 4: ([0-9.e-]+)", out)   # the coordinator's, by sequences
    assert loop and [cost.host_step_s(b) * 1e3 for b in (1, 4)] == pytest.approx(list(map(float, loop.groups())))
    # what a step costs after the stage waited 0.2 ... 20 ms, charged by the wait
    wake = re.search(r"wake_ms = 0.2: ([0-9.e-]+), 1: ([0-9.e-]+), 5: ([0-9.e-]+), 20: ([0-9.e-]+)\n", out)
    assert wake and cost.wakes
    assert [cost.wake_s(ms / 1e3) * 1e3 for ms in (0.2, 1, 5, 20)] == pytest.approx(list(map(float, wake.groups())))



def test_a_cpu_profile_reads_the_rest_of_the_model_between_timed_runs(monkeypatch):
    # between two steps of a stage on one CPU the rest of the pipeline streams its weights through the
    # shared caches; the profile reads that many bytes before each timed run (capped at 2x the cache)
    from runtime import profile as prof

    model = TINY_MODELS["tiny-qwen3"]
    monkeypatch.setattr(prof, "last_level_cache_bytes", lambda: 1 << 30)
    rest = prof.RestOfModel(model, "bf16")
    whole = 2 * (model.layers * model.layer_params() + model.head_params())
    assert rest.model_bytes == whole and rest.buffer.numel() * 4 >= whole
    assert rest.rest_bytes(2 * model.layer_params()) == whole - 4 * model.layer_params()
    assert rest.rest_bytes(model.head_params()) == whole - 2 * model.head_params()
    rest.reader(model.head_params())()   # it runs
    assert rest.reader(model.layers * model.layer_params() + model.head_params()) is None   # nothing else runs
    monkeypatch.setattr(prof, "last_level_cache_bytes", lambda: 1000)
    small = prof.RestOfModel(model, "fp32")   # past 2x the cache all is cold: no more is read
    assert small.rest_bytes(model.layer_params()) == 2000 and small.buffer.numel() == 2000 // 4


def test_a_profile_sweep_is_interleaved_so_a_drift_lands_on_no_single_point():
    # timed point after point, a slow spell (a clock ramping up) made batch 2 read faster than batch 1;
    # each point once per round, the median per point: the spell is one sample of three
    from runtime.profile import interleaved

    calls = []

    def measure(batch):
        calls.append(batch)
        slow = 5.0 if len(calls) <= 2 else 1.0   # the first two measurements run slow
        return (batch * slow, -batch)

    figures = interleaved([1, 2, 4], measure, rounds=3)
    assert calls == [1, 2, 4] * 3
    assert figures == {1: (1.0, -1), 2: (2.0, -2), 4: (4.0, -4)}
    assert interleaved([8], lambda b: (float(b),), rounds=1) == {8: (8.0,)}

def test_read_layout_of_demo(tmp_path):
    from runtime.demo import write_demo

    layout, _ = write_demo(tmp_path)
    assert read_layout(layout).placement.units() == {"local:0": (0, 1), "local:1": (1, 4), "local:2": (4, 6)}


def test_model_spec_round_trips_through_config_json(tmp_path):
    from runtime.hfconfig import hf_config, model_from_hf_config

    for model in TINY_MODELS.values():
        back = model_from_hf_config(hf_config(model, "fp32"), model.id)
        assert back == model
    assert isinstance(back, ModelSpec)


# ---- the paged KV pool ------------------------------------------------------------------------------

def test_a_request_holds_only_the_pages_its_tokens_use():
    from runtime.kvcache import SCRATCH_PAGE, KVFull, KVPool

    pool = KVPool(2, pages=6, page_tokens=4, kv_heads=1, head_dim=8, max_seqs=3, max_seq_len=16,
                  dtype=torch.float32, device="cpu")
    assert (pool.capacity_tokens, pool.max_pages) == (24, 4)
    pool.admit("a")
    pool.grow("a", 5)                      # 5 tokens: two pages of 4
    assert len(pool.pages_of["a"]) == 2 and SCRATCH_PAGE not in pool.pages_of["a"]
    pool.grow("a", 8)                      # still two
    assert len(pool.pages_of["a"]) == 2 and pool.used_tokens == 8
    pool.admit("b")
    pool.grow("b", 16)                     # four more: the pool is full
    with pytest.raises(KVFull):
        pool.grow("a", 9)
    assert len(pool.pages_of["a"]) == 2    # a failed grow takes nothing
    pool.release("b")
    pool.grow("a", 9)
    assert pool.used_tokens == 12 and pool.free_slots == 2
    pool.admit("c")
    pool.admit("d")
    with pytest.raises(KVFull, match="3 request slots"):
        pool.admit("e")


def test_paged_attention_matches_one_contiguous_cache(tiny):
    """Pages scattered over the pool (another request's pages between them) give the logits a contiguous
    cache gives: the same stage, one request in pages of 2 tokens and in one page of 64."""
    model, directory, _ = tiny
    stage = Stage.from_tensors(model, 0, model.layers, ckpt.load_stage(directory, model, 0, model.layers))
    prompt = PROMPTS[0]

    def logits(page_tokens: int) -> torch.Tensor:
        pool = stage.new_kv(max_seqs=2, max_seq_len=64, tokens=128, page_tokens=page_tokens)
        out = []
        for step in range(len(prompt)):     # token by token: decode steps over more and more pages
            for rid in ("other", "mine"):   # interleaved: the two requests' pages alternate in the pool
                pool.admit(rid)
                pool.grow(rid, step + 1)
            count = 1
            plan = BatchPlan.build([(pool.pages_of["mine"], step, count)], pool.page_tokens, "cpu")
            out.append(stage(torch.tensor(prompt[step:step + 1]), plan, pool)[0])
        return torch.stack(out)

    assert torch.equal(logits(2), logits(64))


def test_export_sizes_kv_by_memory_on_gpus_and_by_the_cost_model_on_cpus(tmp_path, tiny_layout, run_cli):
    from runtime.config import MAX_KV_SLOTS, read_runtime_config

    for device, options in (("cuda", []), ("cpu", []), ("cpu", ["--kv-tokens", "999", "--kv-slots", "5"])):
        out = tmp_path / f"out-{device}-{len(options)}"
        code, _, err = run_cli("export", tiny_layout, out, "--to", "runtime", "--device", device,
                               "--max-seq-len", "128", "--gpu-memory-utilization", "0.5", *options)
        assert code == 0, err
        config = read_runtime_config(out / "runtime.json")
        assert config.limits.gpu_memory_utilization == 0.5 and config.limits.cuda_graphs
        for worker in config.workers:
            if options:
                assert (worker.kv_slots, worker.kv_tokens) == (5, 999)
            elif device == "cuda":      # sized at start from the memory the worker finds
                assert (worker.kv_slots, worker.kv_tokens) == (MAX_KV_SLOTS, None)
            else:                       # what the cost model fits, at most every slot at max_seq_len
                assert worker.kv_slots == MAX_KV_SLOTS and 0 < worker.kv_tokens <= MAX_KV_SLOTS * 128


def test_a_worker_whose_minimum_kv_cannot_fit_says_so_in_one_line(tmp_path, tiny):
    """A pool that cannot hold one request of max_seq_len tokens: one line naming the worker, exit 2."""
    from planner.export.runtime import runtime_config
    from runtime.config import Limits, write_runtime_config

    model, directory, _ = tiny
    (tmp_path / "cluster.ini").write_text(cpu_cluster(model, 1))
    layout = tmp_path / "layout.ini"
    layout.write_text(chain_layout("cluster.ini", model, [[(0, model.layers)]]))
    config = runtime_config(read_layout(layout), device="cpu", local=True, kv_tokens=100,
                            limits=Limits(max_seq_len=512))
    write_runtime_config(config, tmp_path / "runtime.json")
    result = subprocess.run([sys.executable, "-m", "runtime.worker", "--config", str(tmp_path / "runtime.json"),
                             "--node", "local:0", "--checkpoint", str(directory)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "workers.local:0" in lines[0] and "less than one request of max_seq_len 512" in lines[0]
