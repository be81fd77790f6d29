"""/metrics in the Prometheus text format (prometheus-client), with vLLM's metric names where the meaning
is the same (dashboards written for vLLM read them), and the pipeline's own per-worker gauges."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from runtime.host import Host, Request

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)


class _HostGauges:
    """Read at each scrape: requests running and waiting, and per worker its state, queue and KV slots."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def collect(self):
        host = self.host
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests on a path of workers.")
        running.add_metric([], len(host.requests))
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting for a path with free KV.")
        waiting.add_metric([], len(host.waiting))
        alive = GaugeMetricFamily("planner:worker_alive", "1 while the worker sends heartbeats.", labels=["worker"])
        queued = GaugeMetricFamily("planner:worker_queue_length", "Items queued at the worker (last heartbeat).",
                                   labels=["worker"])
        kv_used = GaugeMetricFamily("planner:worker_kv_slots_used", "KV slots in use at the worker (last heartbeat).",
                                    labels=["worker"])
        kv_total = GaugeMetricFamily("planner:worker_kv_slots", "KV slots of the worker.", labels=["worker"])
        kv_usage = GaugeMetricFamily("vllm:gpu_cache_usage_perc", "Share of the worker's KV pages in use "
                                     "(last heartbeat), as vLLM reports its KV cache.", labels=["worker"])
        kv_reserved = GaugeMetricFamily("planner:worker_kv_tokens_reserved", "KV tokens the host has reserved "
                                        "at the worker for the requests on it (prompt + max_tokens each).",
                                        labels=["worker"])
        kv_tokens = GaugeMetricFamily("planner:worker_kv_tokens", "Tokens the worker's KV pool holds.", labels=["worker"])
        steps = CounterMetricFamily("planner:worker_steps", "Steps the worker has run (last heartbeat).",
                                    labels=["worker"])
        busy = CounterMetricFamily("planner:worker_busy_seconds", "Seconds the worker has spent inside its steps "
                                   "(last heartbeat): its rate is the worker's busy share.", labels=["worker"])
        for node, slots in host.slots.items():
            stats = host.worker_stats[node]
            alive.add_metric([node], 1.0 if host.state[node] == "alive" else 0.0)
            queued.add_metric([node], stats["queued"])
            kv_used.add_metric([node], slots - stats["free_slots"])
            kv_total.add_metric([node], slots)
            kv_usage.add_metric([node], stats["kv_used"] / stats["kv_tokens"] if stats["kv_tokens"] else 0.0)
            kv_reserved.add_metric([node], host.kv_reserved[node])
            kv_tokens.add_metric([node], host.kv_tokens[node])
            steps.add_metric([node], stats["steps"])
            busy.add_metric([node], stats["busy_s"])
        engine = GaugeMetricFamily("planner:engine_alive", "1 while the host's engine thread runs.")
        engine.add_metric([], 1.0 if host.engine_alive() else 0.0)
        return [running, waiting, alive, queued, kv_used, kv_total, kv_usage, kv_reserved, kv_tokens, steps, busy, engine]


class Metrics:
    def __init__(self, host: Host, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        self.requests = Counter("vllm:request_success", "Requests ended, by how they ended.",
                                labels + ["finished_reason"], registry=self.registry)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens prefilled.", labels,
                                     registry=self.registry)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", labels,
                                         registry=self.registry)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "Time per output token after the first.",
                              labels, buckets=TPOT_BUCKETS, registry=self.registry)
        self.registry.register(_HostGauges(host))
        host.on_end = self.observe

    def observe(self, request: Request) -> None:
        """A request ended (on the engine thread): count it and its latencies."""
        name = self.model_name
        reason = "error" if request.error else request.finish_reason or "abort"
        self.requests.labels(name, reason).inc()
        self.prompt_tokens.labels(name).inc(len(request.prompt))
        self.generation_tokens.labels(name).inc(len(request.tokens))
        if request.ttft_s is not None:
            self.ttft.labels(name).observe(request.ttft_s)
        if request.first_token_s is not None and request.finished_s is not None and len(request.tokens) > 1:
            self.tpot.labels(name).observe((request.finished_s - request.first_token_s) / (len(request.tokens) - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
