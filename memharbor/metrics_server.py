"""A small aiohttp server for a worker process (recorder, watcher): GET /metrics, /livez and /readyz.

It listens on MEMHARBOR_METRICS_PORT, apart from the worker's own work, and answers from memory only:
a probe is a function returning the problems it sees (none: 200, any: 503 naming them), never a
Firestore round trip, so a scrape or a probe cannot slow the worker or be slowed by an outage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from memharbor.logs import get_logger
from memharbor.metrics import CONTENT_TYPE, exposition

log = get_logger()

# Workers' metrics servers listen on every interface: Prometheus and the kubelet reach them from outside the pod.
WORKER_HOST = "0.0.0.0"
# What a probe sees wrong right now, in words for the 503 body; an empty list means healthy.
Probe = Callable[[], list[str]]


def probe_body(problems: list[str]) -> tuple[int, dict[str, object]]:
    """The status and JSON body of a probe answer: 200 `ok`, or 503 `failing` with the problems."""
    if problems:
        return 503, {"status": "failing", "problems": problems}
    return 200, {"status": "ok"}


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """The registry rendered for a Prometheus scrape."""
    response = web.Response(body=exposition(registry))
    # Set whole: aiohttp's content_type= would drop the version parameter Prometheus reads.
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def _probe_handler(probe: Probe) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(_: web.Request) -> web.Response:
        status, body = probe_body(probe())
        return web.json_response(body, status=status)

    return handle


class MetricsServer:
    """Serves one registry and two probes on `host:port` until closed (port 0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, live: Probe, ready: Probe, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        app = web.Application()

        async def get_metrics(_: web.Request) -> web.Response:
            return metrics_response(self._registry)

        app.router.add_get("/metrics", get_metrics)
        app.router.add_get("/livez", _probe_handler(live))
        app.router.add_get("/readyz", _probe_handler(ready))
        self._runner = web.AppRunner(app, access_log=None)
        self.port: int | None = None

    async def start(self) -> int:
        """Listen; returns the port bound."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("metrics.listening", host=self._host, port=self.port)
        return self.port

    async def close(self) -> None:
        """Stop listening."""
        await self._runner.cleanup()


async def serve_worker_metrics(
    owned: contextlib.AsyncExitStack, registry: CollectorRegistry, port: int, live: Probe, ready: Probe
) -> None:
    """Serve a worker's /metrics, /livez and /readyz on `port` (none when 0) until `owned` closes.

    Closed when the stack unwinds, after what was pushed later (the worker's drain): /readyz answers
    "draining" until then.
    """
    if not port:
        return
    server = MetricsServer(registry, live=live, ready=ready, host=WORKER_HOST, port=port)
    await server.start()
    owned.push_async_callback(server.close)
