"""The Prometheus instruments of one app."""

from __future__ import annotations

from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServeMetrics:
    """The Prometheus instruments of one app, in their own registry (not the process-wide default one)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("lorabench_requests", "HTTP requests answered", ["path", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("lorabench_request_seconds", "time to answer a request", ["path"],
                                 registry=self.registry)  # fmt: skip
        self.texts = Counter("lorabench_texts_scored", "texts scored by the model", registry=self.registry)
        self.errors = Counter("lorabench_errors", "requests not scored: model failure, timeout or full queue",
                              ["kind"], registry=self.registry)  # fmt: skip
        self.batch = Histogram("lorabench_batch_texts", "texts per model call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))  # fmt: skip
        self.queued = Gauge("lorabench_queued_texts", "texts queued or being scored", registry=self.registry)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
