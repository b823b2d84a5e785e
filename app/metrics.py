"""Prometheus metrics on a per-app registry (several apps in one process must not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pneumonia_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pneumonia_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "pneumonia_inference_duration_seconds",
            "Model time per image (predict: ONNX; explain: Grad-CAM + overlay)",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "pneumonia_rejected_requests",
            "Requests refused with 503 because the service was busy",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "pneumonia_http_requests_in_flight", "HTTP requests being handled", registry=self.registry
        )

    def observe_inference(self, kind: str, seconds: float) -> None:
        self.inference.labels(kind=kind).observe(seconds)
