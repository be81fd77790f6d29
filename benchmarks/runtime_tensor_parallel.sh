#!/usr/bin/env bash
# Tensor-parallel groups in the runtime on this CPU (docs/runtime.md, "Tensor-parallel groups"): the same
# random 6-layer Qwen3-shaped model (hidden 512, 8 heads, 4 KV heads) served by `planner run --local` as
#   tp1:     one worker holding all 6 layers        pp2:     two workers, 3 layers each
#   tp2:     one TP2 group (2 processes, gloo)      tp2xpp2: two TP2 groups, 3 layers each (4 processes)
# with 8 x N requests of 32 prompt + 32 output tokens, N in flight, N = 1 and 8; one torch thread per
# process. On a CPU the ranks share the cores, so this measures what a group costs (the broadcast, two
# gloo all-reduces per layer, a ZeroMQ hop to each rank), not what it gains on GPUs.
# Usage: bash benchmarks/runtime_tensor_parallel.sh [WORKDIR]   (needs `pip install -e .[runtime]`)
set -euo pipefail
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cd "$work"
cat > cluster.ini <<'EOF'
[cluster]
model = small-qwen3
dtype = fp32
coordinator = local

[model small-qwen3]
family = qwen3
layers = 6
hidden_size = 512
intermediate_size = 1536
attention_heads = 8
kv_heads = 4
head_dim = 64
vocab_size = 8192
tie_word_embeddings = no
max_position_embeddings = 4096
rope_theta = 1000000

[gpu cpu-1t]
memory = 4 GiB
decode_ms = 1: 1
prefill_ms = 1: 1

[host local]
gpus = cpu-1t * 4
gpu_link = 1 GB/s, 0.05 ms
address = 127.0.0.1
EOF
[ -d ck ] || planner make-checkpoint ck --model small-qwen3 --cluster cluster.ini --seed 0
head='[layout]\ncluster = cluster.ini\nmodel = small-qwen3\ndtype = fp32\nmethod = hand\n'
printf "$head\n[nodes]\nlocal:0 = 0, 6\n\n[flows]\ncoordinator -> local:0 = 100\nlocal:0 -> coordinator = 100\n" > tp1.ini
printf "$head\n[nodes]\nlocal:0 = 0, 3\nlocal:1 = 3, 6\n\n[flows]\ncoordinator -> local:0 = 100\nlocal:0 -> local:1 = 100\nlocal:1 -> coordinator = 100\n" > pp2.ini
printf "${head}tp_groups = local:0+local:1\n\n[nodes]\nlocal:0 = 0, 6\nlocal:1 = 0, 6\n\n[flows]\ncoordinator -> local:0+local:1 = 100\nlocal:0+local:1 -> coordinator = 100\n" > tp2.ini
printf "${head}tp_groups = local:0+local:1, local:2+local:3\n\n[nodes]\nlocal:0 = 0, 3\nlocal:1 = 0, 3\nlocal:2 = 3, 6\nlocal:3 = 3, 6\n\n[flows]\ncoordinator -> local:0+local:1 = 100\nlocal:0+local:1 -> local:2+local:3 = 100\nlocal:2+local:3 -> coordinator = 100\n" > tp2xpp2.ini
prompt=$(python3 -c "print(','.join(str(i * 37 % 8192) for i in range(1, 33)))")
for layout in tp1 pp2 tp2 tp2xpp2; do
  for n in 1 8; do
    planner run --local "$layout.ini" --checkpoint ck --prompt-ids "$prompt" --max-new-tokens 32 \
      --requests $((8 * n)) --concurrency $n --threads 1 --json > "run-$layout-$n.json"
  done
done
python3 - <<'EOF'
import json
print("| layout | processes | in flight | output tokens/s | TTFT mean | TPOT mean | same ids as tp1 |")
print("|---|---:|---:|---:|---:|---:|---|")
for layout, processes in (("tp1", 1), ("pp2", 2), ("tp2", 2), ("tp2xpp2", 4)):
    for n in (1, 8):
        run = json.load(open(f"run-{layout}-{n}.json"))
        same = run["outputs"] == json.load(open(f"run-tp1-{n}.json"))["outputs"]
        print(f"| {layout} | {processes} | {n} | {run['output_tokens_per_s']:.1f} | {run['ttft_s']['mean'] * 1e3:.1f} ms "
              f"| {run['tpot_s']['mean'] * 1e3:.1f} ms | {'yes' if same else 'NO'} |")
EOF
