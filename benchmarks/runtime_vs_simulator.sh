#!/usr/bin/env bash
# The runtime on this machine against the simulator's prediction for the same layout (docs/runtime.md):
#   1. a random 6-layer Qwen3-shaped model (hidden 512) as a checkpoint;
#   2. `planner profile` times its layers here (one torch thread, as each worker runs) into [gpu cpu-1t];
#   3. a cluster of three such "GPUs" and a 3-stage chain over them (2 layers each; written here, not
#      solved: the solver may pick parallel paths, which on one CPU share its cores, unlike real GPUs);
#   4. `planner run --local` serves 8 x N requests with N in flight, `planner simulate --workload offline:N`
#      predicts the same, for N = 1 and 8 (prompts of 32 tokens, 32 output tokens).
# Usage: bash benchmarks/runtime_vs_simulator.sh [WORKDIR]   (needs `pip install -e .[runtime]`)
set -euo pipefail
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cd "$work"
model='[model small-qwen3]
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
rope_theta = 1000000'
cluster() {  # $1: the [gpu cpu-1t] section
  printf '[cluster]\nmodel = small-qwen3\ndtype = fp32\ncoordinator = local\n\n[workload]\nprompt_tokens = 32\n'
  printf 'output_tokens = 32\n\n%s\n\n%s\n\n[host local]\ngpus = cpu-1t * 3\ngpu_link = 1 GB/s, 0.05 ms\n' "$model" "$1"
  printf 'address = 127.0.0.1\n'
}
cluster "$(printf '[gpu cpu-1t]\nmemory = 4 GiB\ndecode_ms = 1: 1\nprefill_ms = 1: 1')" > cluster.ini
planner make-checkpoint ck --model small-qwen3 --cluster cluster.ini --seed 0
planner profile --checkpoint ck --device cpu --threads 1 --layers 2 --decode-batches 1,2,4,8,16 \
  --prefill-tokens 16,32,64,128,256 --context 48 --prompt-tokens 32 --name cpu-1t --memory "4 GiB" > profile.ini
cluster "$(cat profile.ini)" > cluster.ini
printf '[layout]\ncluster = cluster.ini\nmodel = small-qwen3\ndtype = fp32\nmethod = hand\n\n[nodes]\n' > layout.ini
printf 'local:0 = 0, 2\nlocal:1 = 2, 4\nlocal:2 = 4, 6\n\n[flows]\ncoordinator -> local:0 = 100\n' >> layout.ini
printf 'local:0 -> local:1 = 100\nlocal:1 -> local:2 = 100\nlocal:2 -> coordinator = 100\n' >> layout.ini
prompt=$(python3 -c "print(','.join(str(i * 37 % 8192) for i in range(1, 33)))")
for n in 1 8; do
  planner run --local layout.ini --checkpoint ck --prompt-ids "$prompt" --max-new-tokens 32 \
    --requests $((8 * n)) --concurrency $n --json > "run-$n.json"
  planner simulate layout.ini --workload "offline:$n" --duration 60 --warmup 10 --json > "sim-$n.json"
done
python3 - <<'EOF'
import json
print("| in flight | | output tokens/s | TTFT mean | TPOT mean |")
print("|---|---|---:|---:|---:|")
for n in (1, 8):
    run, sim = json.load(open(f"run-{n}.json")), json.load(open(f"sim-{n}.json"))
    rows = [("runtime", run["output_tokens_per_s"], run["ttft_s"]["mean"], run["tpot_s"]["mean"]),
            ("simulator", sim["decode_throughput_tokens_per_s"], sim["ttft_s"]["mean"], sim["tpot_s"]["mean"])]
    for name, tps, ttft, tpot in rows:
        print(f"| {n} | {name} | {tps:.1f} | {ttft * 1e3:.1f} ms | {tpot * 1e3:.1f} ms |")
    print(f"| {n} | simulator error | {sim['decode_throughput_tokens_per_s'] / run['output_tokens_per_s'] - 1:+.0%} | "
          f"{sim['ttft_s']['mean'] / run['ttft_s']['mean'] - 1:+.0%} | {sim['tpot_s']['mean'] / run['tpot_s']['mean'] - 1:+.0%} |")
EOF
grep _ms profile.ini
sed -n '/\[nodes\]/,/^$/p' layout.ini
