"""The app's own metrics, exported by Ray's metrics agent in Prometheus format next to Serve's
built-in ones (each Ray node serves them at its metrics export port).

Created inside replicas only: Ray metrics need a running Ray worker.
"""

from __future__ import annotations

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000]


class AppMetrics:
    def __init__(self):
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "vitrine_requests", description="HTTP requests by endpoint and status code.",
            tag_keys=("endpoint", "status"))
        self.latency = metrics.Histogram(
            "vitrine_request_latency_ms", description="End-to-end latency inside the app, by endpoint.",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("endpoint",))
        self.rejected = metrics.Counter(
            "vitrine_rejected_uploads", description="Uploads refused, by reason class.", tag_keys=("reason",))
        # The published_at of the served index (seconds since the epoch), tagged with its id:
        # a dashboard shows which index each replica serves and how old it is.
        self.index_version = metrics.Gauge(
            "vitrine_index_published_at", description="Publication time of the index being served.",
            tag_keys=("index_id", "model_id"))
        self.swaps = metrics.Counter(
            "vitrine_version_swaps", description="Model/index versions taken into service or refused.",
            tag_keys=("outcome",))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.latency.observe(seconds * 1000.0, tags={"endpoint": endpoint})
