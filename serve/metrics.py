"""The app's own metrics, exported by Ray's metrics agent in Prometheus format next to Serve's
built-in ones (each Ray node serves them at its metrics export port; Ray adds the ``ray_`` prefix).

Names follow Prometheus' conventions: counters end in ``_total`` (Ray then exports them once,
without its bug-compatible gauge copy), durations are in seconds (``_seconds``), a point in time
is ``_timestamp_seconds``.

Created inside replicas only: Ray metrics need a running Ray worker.
"""

from __future__ import annotations

LATENCY_BOUNDARIES_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0]


class AppMetrics:
    def __init__(self):
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "vitrine_requests_total", description="HTTP requests by endpoint and status code.",
            tag_keys=("endpoint", "status"))
        self.latency = metrics.Histogram(
            "vitrine_request_duration_seconds", description="End-to-end latency inside the app, by endpoint.",
            boundaries=LATENCY_BOUNDARIES_S, tag_keys=("endpoint",))
        self.rejected = metrics.Counter(
            "vitrine_rejected_uploads_total", description="Uploads refused, by reason class.", tag_keys=("reason",))
        # The published_at of the served index (seconds since the epoch), tagged with its id:
        # a dashboard shows which index each replica serves and how old it is.
        self.index_version = metrics.Gauge(
            "vitrine_index_published_timestamp_seconds", description="Publication time of the index being served.",
            tag_keys=("index_id", "model_id"))
        self.swaps = metrics.Counter(
            "vitrine_version_swaps_total", description="Model/index versions taken into service or refused.",
            tag_keys=("outcome",))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        self.latency.observe(seconds, tags={"endpoint": endpoint})
