"""The server's Prometheus metrics, in a registry of its own (one per app, so two apps
in one process, as in tests, never share or collide in the global registry)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a tenth of a millisecond (a tiny model) to tens of seconds (a stalled queue).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    """Powers of two up to ``max_batch``, and ``max_batch`` itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(float(b))
        b *= 2
    return (*sizes, float(max_batch))


class ServeMetrics:
    """Everything ``/metrics`` reports. Outcomes: ok, bad_request, too_large, overloaded,
    not_found, error, disconnected (the client left before its body was read)."""

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "vit_serve_requests", "HTTP requests by endpoint and outcome",
            ["endpoint", "outcome"], registry=r,
        )  # fmt: skip
        self.images = Counter(
            "vit_serve_images", "Images received, by outcome", ["outcome"], registry=r
        )
        self.batch_size = Histogram(
            "vit_serve_batch_size", "Images per model call", buckets=batch_buckets(max_batch),
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "vit_serve_queue_depth", "Images admitted and not yet answered by the model",
            registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "vit_serve_queue_wait_seconds", "Time an image waited for its model call",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_time = Histogram(
            "vit_serve_model_seconds", "Time of one model call (a whole batch)",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.decode_time = Histogram(
            "vit_serve_decode_seconds", "Decode and preprocess time of one image",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_time = Histogram(
            "vit_serve_request_seconds", "Request time in the server, by endpoint",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "ServeMetrics", "batch_buckets"]
