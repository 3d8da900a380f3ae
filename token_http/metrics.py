"""token_http's request metrics, recorded by the request context (access_log.py), and GET /metrics.

Requests are labelled by the matched route's pattern (`/api/call/status/{call_id}`), never the raw
path: one series per route, whatever ids clients send; requests no route matches are `unmatched`. The
probes and /metrics itself are not counted: they arrive at the scraper's and the kubelet's fixed
pace, would dilute the rates and latencies of real traffic, and Prometheus already records each
scrape (`up`, `scrape_duration_seconds`).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram

from memharbor import metrics
from memharbor.metrics_server import metrics_response

# From 1 ms (a token answered from memory) to 10 s (a slow Firestore transaction behind the shim).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Any other token a client sends as a method is `other`, so clients cannot add series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Routes answered without being counted (see the module's docstring).
UNMEASURED = frozenset({"/metrics", "/livez", "/readyz"})


class HttpMetrics:
    """The request latency histogram of one server; with `multiprocess_dir`, of all its workers.

    Its `_count` series are the requests by route, method and status: a separate counter would repeat them
    and cost the request path another locked write (in multiprocess mode, to a memory-mapped file).
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        self.duration = Histogram(
            "memharbor_http_request_duration_seconds",
            "HTTP requests answered and their time from dispatch to answer, by route pattern, method and status",
            ("route", "method", "status"),
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )

    def route(self, pattern: str) -> RouteMetrics:
        """The recorder of one route's requests (`pattern` as registered, or UNMATCHED)."""
        return RouteMetrics(self, pattern)

    def scrape(self) -> CollectorRegistry:
        """What a scrape reports: this process's registry, or the sum over every worker's files."""
        if self.multiprocess_dir is None:
            return self.registry
        return metrics.multiprocess_registry(self.multiprocess_dir)


class RouteMetrics:
    """Counts and times the requests of one route; it keeps the labelled series it has used.

    `labels()` takes a lock and builds a tuple of strings on every call; a dict lookup by
    (method, status) is what stays on the request path.
    """

    __slots__ = ("_children", "_metrics", "_route")

    def __init__(self, http_metrics: HttpMetrics, route: str) -> None:
        self._metrics = http_metrics
        self._route = route
        self._children: dict[tuple[str, int], Histogram] = {}

    def observe(self, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        child = self._children.get((method, status))
        if child is None:
            child = self._new_child(method, status)
        child.observe(seconds)

    def _new_child(self, method: str, status: int) -> Histogram:
        label = method if method in METHODS else "other"
        child = self._metrics.duration.labels(self._route, label, str(status))
        if label == method:  # an unknown method stays uncached, so it cannot grow the dict either
            self._children[(method, status)] = child
        return child


METRICS = web.AppKey("metrics", HttpMetrics)


async def get_metrics(request: web.Request) -> web.Response:
    """GET /metrics: every worker's request metrics in Prometheus' text format."""
    return metrics_response(request.app[METRICS].scrape())
