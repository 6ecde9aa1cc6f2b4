"""Serving metrics through `ray.util.metrics`, shown on the Ray dashboard and the node's /metrics endpoint.

Prometheus sees them with Ray's `ray_` prefix: `ray_rayline_requests_total`,
`ray_rayline_request_errors_total`, `ray_rayline_request_latency_ms` and `ray_rayline_batch_size`,
each tagged with the application, the model name and version (and, for requests, the route and status).
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

from rayline.registry import ModelVersion

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


class ServeMetrics:
    """The replica's metrics; one instance per replica, tagged with its application."""

    def __init__(self, app_name: str):
        app = {"application": app_name}
        request_tags = ("application", "model_name", "model_version", "route", "status")
        self.requests = Counter(
            "rayline_requests_total", "Predict requests answered, by status.", tag_keys=request_tags
        ).set_default_tags(app)
        self.errors = Counter(
            "rayline_request_errors_total", "Predict requests answered with a 4xx or 5xx.", tag_keys=request_tags
        ).set_default_tags(app)
        self.latency = Histogram(
            "rayline_request_latency_ms",
            "Predict latency inside the replica, body read to response.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("application", "model_name", "model_version", "route"),
        ).set_default_tags(app)
        self.batch_size = Histogram(
            "rayline_batch_size",
            "Rows per forward pass.",
            boundaries=BATCH_BOUNDARIES,
            tag_keys=("application", "model_name", "model_version"),
        ).set_default_tags(app)

    def observe_request(self, route: str, model: ModelVersion | None, status: int, seconds: float) -> None:
        tags = {**model_tags(model), "route": route, "status": str(status)}
        self.requests.inc(1, tags)
        if status >= 400:
            self.errors.inc(1, tags)
        self.latency.observe(seconds * 1000.0, {**model_tags(model), "route": route})

    def observe_batch(self, model: ModelVersion, rows: int) -> None:
        self.batch_size.observe(rows, model_tags(model))


def model_tags(model: ModelVersion | None) -> dict[str, str]:
    if model is None:  # a request for a model that does not exist
        return {"model_name": "unknown", "model_version": "unknown"}
    return {"model_name": model.name, "model_version": model.version}
