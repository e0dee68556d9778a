"""Prometheus metrics, one registry per app so several apps (tests, benchmarks) can live in one process."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# seconds: loopback requests on a small model take 0.5-20 ms; the tail reaches into seconds under overload
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """The server's counters and histograms, registered in a private ``CollectorRegistry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edgekd_requests", "HTTP requests by endpoint and status code", ["endpoint", "method", "status"], registry=r
        )
        self.request_latency = Histogram(
            "edgekd_request_latency_seconds", "Time from request start to response end", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "edgekd_queue_wait_seconds", "Time a request waited in the batching queue", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            "edgekd_inference_latency_seconds", "Runtime time for one (batched) model call", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram("edgekd_batch_size", "Samples per model call", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("edgekd_queue_depth", "Requests waiting for the model", registry=r)
        self.ready = Gauge("edgekd_ready", "1 once the model is loaded and warmed up", registry=r)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
