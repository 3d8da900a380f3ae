"""API errors and how every failure becomes a JSON body; the one place domain errors get their HTTP status."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web

from memharbor import calls
from memharbor.errors import Conflict, DomainError, Forbidden, IllegalTransition, InvalidInput, NotFound, Unavailable
from memharbor.logs import REQUEST_ID, get_logger
from memharbor.recording_requests import LiveCapReached

log = get_logger()
T = TypeVar("T")


class ApiError(Exception):
    """An expected failure with its HTTP status; `field` names the offending input when there is one."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            payload["field"] = self.field
        payload.update(self.extra)
        return payload


def configured(dependency: T | None, what: str) -> T:
    """`dependency` when this deployment wires it; else a 503 saying `what` is not configured."""
    if dependency is None:
        raise ApiError(503, f"{what} is not configured")
    return dependency


def checked_id(value: str, field: str) -> str:
    """`value` when it is a valid document id (memharbor.calls.ID_PATTERN); else a 400 naming `field`."""
    if not calls.ID_PATTERN.fullmatch(value):
        raise bad_request(field, f"{field} {calls.ID_WORDS}")
    return value


def bad_request(field: str, message: str) -> ApiError:
    """A 400 that names the field."""
    return ApiError(400, message, field=field)


def too_many_requests(message: str, retry_after_s: int, field: str | None = None) -> ApiError:
    """A 429 whose Retry-After header says in how many whole seconds (at least 1) to try again."""
    return ApiError(429, message, field=field, headers={"Retry-After": str(max(1, retry_after_s))})


# The HTTP status of each domain refusal (README, "API").
DOMAIN_STATUS: dict[type[DomainError], int] = {
    InvalidInput: 400,
    Forbidden: 403,
    NotFound: 404,
    IllegalTransition: 409,
    Conflict: 409,
}
UNAVAILABLE_MESSAGE = "Firestore is unavailable; try again"
# A user at the cap of live recording requests is told to retry after this long: a recording whose
# participants left ends after the recorder's idle time (MEMHARBOR_RECORDER_IDLE_S, 30 s by default).
LIVE_CAP_RETRY_AFTER_S = 30


def from_domain(exc: DomainError | Unavailable | LiveCapReached, fields: Mapping[str, str] | None = None) -> ApiError:
    """The API error a domain failure is answered with; `fields` renames document fields to request fields."""
    if isinstance(exc, Unavailable):
        return ApiError(503, UNAVAILABLE_MESSAGE)
    if isinstance(exc, LiveCapReached):
        message = (
            f"you already have {exc.cap} recordings requested or in progress; stop one "
            "(POST /api/recording/stop) or wait for one to finish"
        )
        return too_many_requests(message, LIVE_CAP_RETRY_AFTER_S, field="channel")
    field = (fields or {}).get(exc.field, exc.field) if exc.field is not None else None
    # A refusal of no listed kind is the input's fault.
    status = next((code for kind, code in DOMAIN_STATUS.items() if isinstance(exc, kind)), 400)
    return ApiError(status, exc.message, field=field)


_HTTP_MESSAGES = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large (limit 64 KiB)",
    415: "unsupported media type",
}


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON answer, encoded with orjson (a quarter of the cost of json.dumps on the token path)."""
    try:
        data = orjson.dumps(body)
    except TypeError:  # an int beyond 64 bits, or a non-str key: the stdlib encoder accepts them
        data = json.dumps(body).encode()
    return web.Response(body=data, status=status, content_type="application/json")


def _json_error(status: int, body: dict[str, Any], headers: Any = None) -> web.Response:
    response = json_response(body, status=status)
    if headers is not None and "Allow" in headers:
        response.headers["Allow"] = headers["Allow"]
    return response


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The JSON answer for a failed handler: API and domain errors, aiohttp's HTTP errors, or a hidden 500 for a bug."""
    if isinstance(exc, DomainError | Unavailable | LiveCapReached):
        exc = from_domain(exc)
    if isinstance(exc, ApiError):
        response = _json_error(exc.status, exc.body())
        response.headers.update(exc.headers)
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        message = _HTTP_MESSAGES.get(exc.status, exc.reason.lower())
        return _json_error(exc.status, {"error": message}, exc.headers)
    # A bug, never bad input: log it with the stack and hide the details from the client.
    log.error("http.unhandled", path=request.path, exc_info=exc)
    return _json_error(500, {"error": "internal error", "request_id": REQUEST_ID.get()})
