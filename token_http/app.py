"""The aiohttp application: routes, middlewares and resource lifecycles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from memharbor.logs import get_logger
from memharbor.settings import Settings
from token_http.access_log import request_context
from token_http.body import MAX_BODY_BYTES
from token_http.call_routes import register as register_call_routes
from token_http.health import get_health
from token_http.keys import DEPS, HEALTH_CACHE, SETTINGS, Deps, HealthCache
from token_http.openapi import get_openapi
from token_http.recording_routes import register as register_recording_routes
from token_http.token_route import post_token

log = get_logger()

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def create_app(settings: Settings, deps: Deps, cleanup_ctx: list[CleanupCtx] | None = None) -> web.Application:
    """Build the application; `cleanup_ctx` owns the adapters' lifecycles (clients opened and closed)."""
    app = web.Application(middlewares=[request_context], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[DEPS] = deps
    app[HEALTH_CACHE] = HealthCache()
    app.router.add_post("/api/token", post_token)
    app.router.add_get("/api/health", get_health)
    app.router.add_get("/api/openapi.json", get_openapi)
    register_call_routes(app)
    register_recording_routes(app)
    app.cleanup_ctx.extend(cleanup_ctx or [])
    return app
