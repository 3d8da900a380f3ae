"""Request context: a request id on every log line and response, and one access line per request."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from aiohttp import web

from memharbor.logs import get_logger
from token_http.keys import REQUEST_ID

log = get_logger()
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bind a request id, run the handler, log `http.request` with status and duration."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if _SAFE_ID.fullmatch(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-ID"] = request_id
            return response  # type: ignore[no-any-return]
        finally:
            log.info(
                "http.request",
                method=request.method,
                path=request.path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                client=request.remote,
            )
