"""API errors and the one middleware that renders every failure as a JSON body."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from memharbor.logs import get_logger
from token_http.keys import REQUEST_ID

log = get_logger()


class ApiError(Exception):
    """An expected failure with its HTTP status; `field` names the offending input when there is one."""

    def __init__(self, status: int, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.extra = extra

    def body(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            payload["field"] = self.field
        payload.update(self.extra)
        return payload


def bad_request(field: str, message: str) -> ApiError:
    """A 400 that names the field."""
    return ApiError(400, message, field=field)


_HTTP_MESSAGES = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large (limit 64 KiB)",
    415: "unsupported media type",
}


def _json_error(status: int, body: dict[str, Any], headers: Any = None) -> web.Response:
    response = web.json_response(body, status=status)
    if headers is not None and "Allow" in headers:
        response.headers["Allow"] = headers["Allow"]
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn ApiError, aiohttp's HTTP exceptions and unexpected crashes into JSON error bodies."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ApiError as exc:
        return _json_error(exc.status, exc.body())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = _HTTP_MESSAGES.get(exc.status, exc.reason.lower())
        return _json_error(exc.status, {"error": message}, exc.headers)
    except Exception:
        # A bug, never bad input: log it with the stack and hide the details from the client.
        log.exception("http.unhandled", path=request.path)
        return _json_error(500, {"error": "internal error", "request_id": request.get(REQUEST_ID)})
