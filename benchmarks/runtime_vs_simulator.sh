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
#      prediction takes the profile's times x workers / cores (cluster-shared-R.ini; at 2 in flight two
#      workers compute, but the host and every process's ZeroMQ I/O thread run beside them);
#   5. a CPU's speed drifts while it serves (on a shared VM by a tenth in a minute), so the check is
#      repeated (REPEATS, default 3) with a profile between repeats: each repeat is predicted from the
#      mean, point by point, of the two profiles that bracket it (the machine as it was, on average,
#      while it served), and each figure's error is reported per repeat and as the median over repeats.
# Usage: [REPEATS=3] bash benchmarks/runtime_vs_simulator.sh [WORKDIR]   (needs `pip install -e .[runtime]`)
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
cluster "$(printf '[gpu cpu-1t]\nmemory = 4 GiB\ndecode_ms = 1: 1\nprefill_ms = 1: 1')" > cluster-shape.ini
planner make-checkpoint ck --model small-qwen3 --cluster cluster-shape.ini --seed 0
profile_here() {  # this machine's [gpu cpu-1t] section, as one single-threaded worker runs the model
  planner profile --checkpoint ck --device cpu --threads 1 --layers 2 --decode-batches 1,2,4,8,16 \
    --prefill-tokens 16,32,64,128,256 --context 48 --prompt-tokens 32 --name cpu-1t --memory "4 GiB"
}
repeats="${REPEATS:-3}"
printf '[layout]\ncluster = CLUSTER\nmodel = small-qwen3\ndtype = fp32\nmethod = hand\n\n[nodes]\n' > layout.template
printf 'local:0 = 0, 2\nlocal:1 = 2, 4\nlocal:2 = 4, 6\n\n[flows]\ncoordinator -> local:0 = 100\n' >> layout.template
printf 'local:0 -> local:1 = 100\nlocal:1 -> local:2 = 100\nlocal:2 -> coordinator = 100\n' >> layout.template
prompt=$(python3 -c "print(','.join(str(i * 37 % 8192) for i in range(1, 33)))")
profile_here > profile-0.ini
cluster "$(cat profile-0.ini)" > cluster-0.ini   # what the runs read of the cluster: its host and model
sed "s/CLUSTER/cluster-0.ini/" layout.template > layout-run.ini
for r in $(seq 1 "$repeats"); do
  for n in 1 2 8; do
    planner run --local layout-run.ini --checkpoint ck --threads 1 --prompt-ids "$prompt" --max-new-tokens 32 \
      --requests $((8 * n > 24 ? 8 * n : 24)) --concurrency $n --json > "run-$r-$n.json"
  done
  profile_here > "profile-$r.ini"
done
# repeat r's profile: the mean of profiles r-1 and r, point by point; and the same with every time
# x workers / cores, for three workers sharing this machine's cores (2 and 8 in flight)
python3 - "$repeats" <<'EOF'
import os, re, sys
TABLE = re.compile(r"^(\w+_ms) = (.*)$", flags=re.M)
def tables(path):
    return {key: dict(re.findall(r"([0-9.]+):\s*([0-9.eE+-]+)", value)) if ":" in value else value
            for key, value in TABLE.findall(open(path).read())}
share = max(1.0, 3 / (os.cpu_count() or 1))
SHARED = ("decode_ms", "prefill_ms", "head_ms", "embed_ms")   # the work the cores run
for r in range(1, int(sys.argv[1]) + 1):
    before, after = tables(f"profile-{r - 1}.ini"), tables(f"profile-{r}.ini")
    for name, scale in ((f"profile-mean-{r}.ini", lambda key: 1.0), (f"profile-shared-{r}.ini",
                        lambda key: share if key in SHARED else 1.0)):
        def mean(match):
            key = match.group(1)
            a, b, k = before[key], after[key], scale(key)
            if isinstance(a, str):
                return f"{key} = {(float(a) + float(b)) / 2 * k:.4g}"
            return f"{key} = " + ", ".join(f"{x}: {(float(a[x]) + float(b[x])) / 2 * k:.4g}" for x in a)
        open(name, "w").write(TABLE.sub(mean, open(f"profile-{r - 1}.ini").read()))
print(f"repeats predicted from the mean of their bracketing profiles; shared cores: layer, head and "
      f"embedding times x {share:.2f}")
EOF
for r in $(seq 1 "$repeats"); do
  for kind in mean shared; do
    cluster "$(cat profile-$kind-$r.ini)" > "cluster-$kind-$r.ini"
    sed "s/CLUSTER/cluster-$kind-$r.ini/" layout.template > "layout-$kind-$r.ini"
  done
  for n in 1 2 8; do
    planner simulate "layout-mean-$r.ini" --workload "offline:$n" --duration 60 --warmup 10 --json > "sim-$r-$n.json"
  done
  for n in 2 8; do
    planner simulate "layout-shared-$r.ini" --workload "offline:$n" --duration 60 --warmup 10 --json > "sim-$r-$n-shared.json"
  done
done
python3 - "$repeats" <<'EOF'
import json, statistics, sys
repeats = range(1, int(sys.argv[1]) + 1)
def error(sim, run):
    return (sim["decode_throughput_tokens_per_s"] / run["output_tokens_per_s"] - 1,
            sim["tpot_s"]["mean"] / run["tpot_s"]["mean"] - 1)
print("| in flight | prediction | runtime tok/s / TPOT ms, repeats | error tok/s / TPOT, repeats | median error |")
print("|---:|---|---|---|---|")
for n, label, suffix in ((1, "simulator", ""), (2, "simulator", ""), (2, "times x workers / cores", "-shared"),
                         (8, "simulator", ""), (8, "times x workers / cores", "-shared")):
    runs = [json.load(open(f"run-{r}-{n}.json")) for r in repeats]
    errors = [error(json.load(open(f"sim-{r}-{n}{suffix}.json")), run) for r, run in zip(repeats, runs)]
    served = ", ".join(f"{run['output_tokens_per_s']:.1f} / {run['tpot_s']['mean'] * 1e3:.1f}" for run in runs)
    each = ", ".join(f"{a:+.0%}/{b:+.0%}" for a, b in errors)
    median = tuple(statistics.median(e[i] for e in errors) for i in (0, 1))
    print(f"| {n} | {label} | {served} | {each} | {median[0]:+.0%} / {median[1]:+.0%} |")
# where the time goes, in the first repeat: each worker's mean step (its heartbeats' busy seconds / steps)
# and busy share against the simulator's mean iteration and utilisation of the same stage
print()
print("| in flight | stage | runtime step ms / busy | simulator | steps per output token: runtime / simulator |")
print("|---|---|---:|---:|---:|")
for n in (1, 2, 8):
    run, sim = json.load(open(f"run-1-{n}.json")), json.load(open(f"sim-1-{n}.json"))
    nodes = {node["name"]: node for node in sim["nodes"]}
    sim_tokens = sim["decode_throughput_tokens_per_s"] * sim["measured_seconds"]
    for worker in run["workers"]:
        node = nodes[worker["node"]]
        print(f"| {n} | {worker['node']} | {(worker['step_s'] or 0) * 1e3:.2f} / {worker['busy_share']:.0%} | "
              f"{node['mean_iteration_s'] * 1e3:.2f} / {node['utilisation']:.0%} | "
              f"{worker['steps'] / run['output_tokens']:.2f} / {node['iterations'] / sim_tokens:.2f} |")
# a token's TPOT split into one step at every stage and the rest (hops, the host, waits behind other lanes)
for n in (1, 2, 8):
    run, sim = json.load(open(f"run-1-{n}.json")), json.load(open(f"sim-1-{n}.json"))
    served = sum(w["step_s"] or 0.0 for w in run["workers"])
    simulated = sum(node["mean_iteration_s"] for node in sim["nodes"])
    print(f"{n} in flight, TPOT = the stages' mean steps + the rest: runtime {served * 1e3:.2f} + "
          f"{(run['tpot_s']['mean'] - served) * 1e3:.2f} ms, simulator {simulated * 1e3:.2f} + "
          f"{(sim['tpot_s']['mean'] - simulated) * 1e3:.2f} ms")
EOF
grep _ms profile-0.ini
