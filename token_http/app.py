"""The aiohttp application: routes, each in the request context, and resource lifecycles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from memharbor.logs import get_logger
from memharbor.settings import HttpSettings
from token_http import admin_routes, call_routes, console_routes, recording_routes
from token_http.access_log import in_request_context
from token_http.body import MAX_BODY_BYTES
from token_http.health import get_health
from token_http.keys import DEPS, HEALTH_CACHE, SETTINGS, Deps, HealthCache
from token_http.metrics import METRICS, HttpMetrics, get_metrics
from token_http.openapi import get_openapi
from token_http.probes import get_livez, get_readyz
from token_http.token_route import token_handler

log = get_logger()

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def create_app(
    settings: HttpSettings,
    deps: Deps,
    cleanup_ctx: list[CleanupCtx] | None = None,
    metrics: HttpMetrics | None = None,
) -> web.Application:
    """Build the application; `cleanup_ctx` owns the adapters' lifecycles (clients opened and closed).

    `metrics` defaults to this process's own; `memharbor http` with several workers passes shared ones.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[DEPS] = deps
    app[HEALTH_CACHE] = HealthCache()
    app[METRICS] = metrics = metrics or HttpMetrics()
    routes = [
        web.post("/api/token", token_handler(settings, deps)),
        web.get("/api/health", get_health),
        web.get("/api/openapi.json", get_openapi),
        web.get("/metrics", get_metrics),
        web.get("/livez", get_livez),
        web.get("/readyz", get_readyz),
        *call_routes.routes(),
        *recording_routes.routes(),
        *admin_routes.routes(),
        *console_routes.routes(),
    ]
    # Every route, and the catch-all answering 404 and 405, runs in the request context.
    app.add_routes(in_request_context(routes, metrics))
    app.cleanup_ctx.extend(cleanup_ctx or [])
    return app
