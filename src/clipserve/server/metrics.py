"""Prometheus metrics of one app, in a registry of its own (no process-wide globals).

HTTP metrics are recorded by the request middleware, gRPC metrics by the gRPC servicer;
batcher metrics are read from the engine's batchers each time ``/metrics`` is scraped (the
batch sizes they recorded since the last scrape are drained into the histogram).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from clipserve.batching import DynamicBatcher
from clipserve.engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def batcher_labels(batcher: DynamicBatcher) -> tuple[str, str]:
    """``("ViT-B-32::openai", "image")`` from a batcher named ``"ViT-B-32::openai/image"``."""
    model, _, modality = batcher.name.rpartition("/")
    return model, modality


class Metrics:
    """The app's metrics; :meth:`render` returns the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clipserve_http_requests",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clipserve_http_request_duration_seconds",
            "Time from request to the last response byte, by route and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "clipserve_http_requests_in_progress",
            "HTTP requests being handled now.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "clipserve_batch_size",
            "Items per model run, by model and modality.",
            ["model", "modality"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "clipserve_queue_depth",
            "Items waiting to be batched, by model and modality.",
            ["model", "modality"],
            registry=self.registry,
        )
        self.items = Counter(
            "clipserve_items_encoded",
            "Items run through a model, by model and modality.",
            ["model", "modality"],
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "clipserve_grpc_requests",
            "gRPC calls answered, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.grpc_in_progress = Gauge(
            "clipserve_grpc_requests_in_progress",
            "gRPC calls of clipserve.v1.Clip being handled now (streams until they end).",
            registry=self.registry,
        )
        self.grpc_latency = Histogram(
            "clipserve_grpc_request_duration_seconds",
            "Time from call to status, by method and status code.",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._engine: Engine | None = None
        self.registry.register(_BatcherTotals(lambda: self._engine))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one finished gRPC call (``method`` as ``"Encode"``, ``code`` as ``"OK"``)."""
        self.grpc_requests.labels(method, code).inc()
        self.grpc_latency.labels(method, code).observe(seconds)

    def render(self, engine: Engine | None) -> bytes:
        """Drain the batchers' new batch sizes into the histogram and render every metric.

        Must run on the event loop thread, where the batchers update their stats.
        """
        self._engine = engine
        for batcher in engine.batchers if engine is not None else []:
            self._drain(batcher)
        return generate_latest(self.registry)

    def _drain(self, batcher: DynamicBatcher) -> None:
        labels = batcher_labels(batcher)
        sizes = batcher.stats.batch_sizes
        drained, sizes[:] = sizes[:], []
        histogram = self.batch_size.labels(*labels)
        for size in drained:
            histogram.observe(size)
        if drained:
            self.items.labels(*labels).inc(sum(drained))
        self.queue_depth.labels(*labels).set(batcher.queue_depth)


class _BatcherTotals(Collector):
    """Cumulative batcher counters, read straight from their stats at scrape time."""

    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        dropped = CounterMetricFamily(
            "clipserve_items_dropped",
            "Items skipped because their request went away before inference.",
            labels=["model", "modality"],
        )
        busy = CounterMetricFamily(
            "clipserve_inference_busy_seconds",
            "Time spent running the model.",
            labels=["model", "modality"],
        )
        engine = self._engine()
        for batcher in engine.batchers if engine is not None else []:
            labels = list(batcher_labels(batcher))
            dropped.add_metric(labels, batcher.stats.dropped)
            busy.add_metric(labels, batcher.stats.busy_seconds)
        yield dropped
        yield busy
