#!/usr/bin/env bash
# The runtime on this machine against the simulator's prediction for the same layout (docs/runtime.md):
#   1. a random 6-layer Qwen3-shaped model (hidden 512) as a checkpoint;
#   2. `planner profile` times its layers here (one torch thread, as each worker runs) into [gpu cpu-1t];
#   3. a cluster of three such "GPUs" and a 3-stage chain over them (2 layers each; written here, not
#      solved: the solver may pick parallel paths, which on one CPU share its cores, unlike real GPUs);
#   4. `planner run --local` serves max(24, 8 x N) requests with N in flight (at least 24: at one in flight
#      8 requests were 3 s, too short a run to hold still), `planner simulate --workload offline:N`
#      predicts the same, for N = 1, 2 and 8 (prompts of 32 tokens, 32 output tokens). A path of three
#      stages runs three lanes: up to 2 in flight at most two workers compute at once, at 8 all three do,
#      and three single-threaded workers on a machine of fewer cores run slower than the profile (timed
#      alone) says; the simulator knows nothing of shared cores (a GPU has its own), so at 2 and 8 a second
#      prediction takes the profile's times x workers / cores (cluster-shared.ini; at 2 in flight two
#      workers compute, but the host and every process's ZeroMQ I/O thread run beside them);
#   5. the profile is taken again after the runs, and the simulator's 1- and 2-in-flight predictions from it
#      say how far the machine's own speed moved while the runtime served; a third prediction takes the
#      mean of the two profiles, point by point (the machine as it was, on average, while it served).
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
profile_here() {  # this machine's [gpu cpu-1t] section, as one single-threaded worker runs the model
  planner profile --checkpoint ck --device cpu --threads 1 --layers 2 --decode-batches 1,2,4,8,16 \
    --prefill-tokens 16,32,64,128,256 --context 48 --prompt-tokens 32 --name cpu-1t --memory "4 GiB"
}
profile_here > profile.ini
cluster "$(cat profile.ini)" > cluster.ini
printf '[layout]\ncluster = cluster.ini\nmodel = small-qwen3\ndtype = fp32\nmethod = hand\n\n[nodes]\n' > layout.ini
printf 'local:0 = 0, 2\nlocal:1 = 2, 4\nlocal:2 = 4, 6\n\n[flows]\ncoordinator -> local:0 = 100\n' >> layout.ini
printf 'local:0 -> local:1 = 100\nlocal:1 -> local:2 = 100\nlocal:2 -> coordinator = 100\n' >> layout.ini
prompt=$(python3 -c "print(','.join(str(i * 37 % 8192) for i in range(1, 33)))")
# the same profile with every time x workers / cores, for three workers sharing this machine's cores
python3 - <<'EOF'
import os, re
share = max(1.0, 3 / (os.cpu_count() or 1))
def scaled(match):
    points = ", ".join(f"{x}: {float(ms) * share:.4g}" for x, ms in re.findall(r"(\d+):\s*([0-9.eE+-]+)", match.group(2)))
    return f"{match.group(1)} = {points}"
text = re.sub(r"^(decode_ms|prefill_ms|head_ms|embed_ms) = (.*)$", scaled, open("cluster.ini").read(), flags=re.M)
open("cluster-shared.ini", "w").write(text)
open("layout-shared.ini", "w").write(open("layout.ini").read().replace("cluster.ini", "cluster-shared.ini"))
print(f"shared cores: layer, head and embedding times x {share:.2f} in cluster-shared.ini")
EOF
for n in 1 2 8; do
  planner run --local layout.ini --checkpoint ck --threads 1 --prompt-ids "$prompt" --max-new-tokens 32 \
    --requests $((8 * n > 24 ? 8 * n : 24)) --concurrency $n --json > "run-$n.json"
  planner simulate layout.ini --workload "offline:$n" --duration 60 --warmup 10 --json > "sim-$n.json"
done
for n in 2 8; do
  planner simulate layout-shared.ini --workload "offline:$n" --duration 60 --warmup 10 --json > "sim-$n-shared.json"
done
# the same profile taken again after the runs: how far this machine's own speed moved meanwhile (on a
# shared VM the two can differ by a fifth, which no model of the runtime accounts for)
profile_here > profile-after.ini
cluster "$(cat profile-after.ini)" > cluster-after.ini
sed 's/cluster.ini/cluster-after.ini/' layout.ini > layout-after.ini
# the mean of the two profiles, point by point: they bracket the runs
python3 - <<'EOF'
import re
def tables(path):
    return {key: dict(re.findall(r"([0-9.]+):\s*([0-9.eE+-]+)", value)) if ":" in value else value
            for key, value in re.findall(r"^(\w+_ms) = (.*)$", open(path).read(), flags=re.M)}
before, after = tables("profile.ini"), tables("profile-after.ini")
def mean(match):
    key = match.group(1)
    a, b = before[key], after[key]
    if isinstance(a, str):
        return f"{key} = {(float(a) + float(b)) / 2:.4g}"
    return f"{key} = " + ", ".join(f"{x}: {(float(a[x]) + float(b[x])) / 2:.4g}" for x in a)
open("profile-mean.ini", "w").write(re.sub(r"^(\w+_ms) = (.*)$", mean, open("profile.ini").read(), flags=re.M))
EOF
cluster "$(cat profile-mean.ini)" > cluster-mean.ini
sed 's/cluster.ini/cluster-mean.ini/' layout.ini > layout-mean.ini
for n in 1 2; do
  planner simulate layout-after.ini --workload "offline:$n" --duration 60 --warmup 10 --json > "sim-$n-after.json"
  planner simulate layout-mean.ini --workload "offline:$n" --duration 60 --warmup 10 --json > "sim-$n-mean.json"
done
python3 - <<'EOF'
import json
print("| in flight | | output tokens/s | TTFT mean | TPOT mean |")
print("|---|---|---:|---:|---:|")
for n, label, name in ((1, "simulator", "sim-1"), (1, "simulator, profile taken after the runs", "sim-1-after"),
                       (1, "simulator, mean of the two profiles", "sim-1-mean"),
                       (2, "simulator", "sim-2"), (2, "simulator, profile taken after the runs", "sim-2-after"),
                       (2, "simulator, mean of the two profiles", "sim-2-mean"),
                       (2, "simulator, times x workers / cores", "sim-2-shared"),
                       (8, "simulator", "sim-8"), (8, "simulator, times x workers / cores", "sim-8-shared")):
    run, sim = json.load(open(f"run-{n}.json")), json.load(open(f"{name}.json"))
    if name == f"sim-{n}":
        print(f"| {n} | runtime | {run['output_tokens_per_s']:.1f} | {run['ttft_s']['mean'] * 1e3:.1f} ms | "
              f"{run['tpot_s']['mean'] * 1e3:.1f} ms |")
    print(f"| {n} | {label} | {sim['decode_throughput_tokens_per_s']:.1f} | {sim['ttft_s']['mean'] * 1e3:.1f} ms | "
          f"{sim['tpot_s']['mean'] * 1e3:.1f} ms |")
    print(f"| {n} | error | {sim['decode_throughput_tokens_per_s'] / run['output_tokens_per_s'] - 1:+.0%} | "
          f"{sim['ttft_s']['mean'] / run['ttft_s']['mean'] - 1:+.0%} | {sim['tpot_s']['mean'] / run['tpot_s']['mean'] - 1:+.0%} |")
EOF
python3 - <<'EOF'
import json
# where the time goes: each worker's mean step (its heartbeats' busy seconds / steps) and busy share against
# the simulator's mean iteration and utilisation of the same stage; what a token takes beyond its steps is
# the hops', the host's and the waits' share
print("| in flight | stage | runtime step ms / busy | simulator | steps per output token: runtime / simulator |")
print("|---|---|---:|---:|---:|")
for n in (1, 2, 8):
    run, sim = json.load(open(f"run-{n}.json")), json.load(open(f"sim-{n}.json"))
    nodes = {node["name"]: node for node in sim["nodes"]}
    sim_tokens = sim["decode_throughput_tokens_per_s"] * sim["measured_seconds"]
    for worker in run["workers"]:
        node = nodes[worker["node"]]
        print(f"| {n} | {worker['node']} | {(worker['step_s'] or 0) * 1e3:.2f} / {worker['busy_share']:.0%} | "
              f"{node['mean_iteration_s'] * 1e3:.2f} / {node['utilisation']:.0%} | "
              f"{worker['steps'] / run['output_tokens']:.2f} / {node['iterations'] / sim_tokens:.2f} |")
# a token's TPOT split into one step at every stage and the rest (hops, the host, waits behind other lanes)
for n in (1, 2, 8):
    run, sim = json.load(open(f"run-{n}.json")), json.load(open(f"sim-{n}.json"))
    served = sum(w["step_s"] or 0.0 for w in run["workers"])
    simulated = sum(node["mean_iteration_s"] for node in sim["nodes"])
    print(f"{n} in flight, TPOT = the stages' mean steps + the rest: runtime {served * 1e3:.2f} + "
          f"{(run['tpot_s']['mean'] - served) * 1e3:.2f} ms, simulator {simulated * 1e3:.2f} + "
          f"{(sim['tpot_s']['mean'] - simulated) * 1e3:.2f} ms")
EOF
grep _ms profile.ini
sed -n '/\[nodes\]/,/^$/p' layout.ini
