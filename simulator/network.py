"""Links: latency plus bytes / bandwidth, serialised first-come first-served per direction.

One `Link` per (sender host, receiver host) direction, the coordinator's links included (the
coordinator is an endpoint of its own, `coordinator`, reached over `Cluster.coordinator_link`). GPUs of
one host share one link per direction (the host's `gpu_link`). A transfer occupies its link for
bytes / bandwidth, after any transfer already queued on it; the receiver has it a latency later
(propagation overlaps with the next transfer's serialisation, as on a real wire). Whole batches move
as one transfer: one reservation per batch, not per token.
"""

from __future__ import annotations


class Link:
    __slots__ = ("name", "bandwidth_bytes_per_s", "latency_s", "free_at", "low", "high", "busy_s", "bytes",
                 "transfers")

    def __init__(self, name: str, bandwidth_bytes_per_s: float, latency_s: float,
                 window: tuple[float, float]) -> None:
        self.name = name
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.latency_s = latency_s
        self.free_at = 0.0
        self.low, self.high = window   # metrics window [warm-up end, run end]
        self.busy_s = 0.0           # serialisation time inside the window
        self.bytes = 0.0            # bytes sent inside the window
        self.transfers = 0

    def send(self, now: float, size_bytes: float) -> float:
        """Queue `size_bytes` at `now`; return when the last byte reaches the receiver."""
        free_at = self.free_at
        start = now if now > free_at else free_at
        done = start + size_bytes / self.bandwidth_bytes_per_s
        self.free_at = done
        low, high = self.low, self.high
        if done > low and start < high:
            self.busy_s += (done if done < high else high) - (start if start > low else low)
            self.bytes += size_bytes
            self.transfers += 1
        return done + self.latency_s
