"""Reading and checking request bodies: every failure is a 4xx that names the field."""

from __future__ import annotations

import json
from typing import Any

import orjson
from aiohttp import web

from token_http.errors import ApiError, bad_request

MAX_BODY_BYTES = 64 * 1024


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or 413 / 415 / 400 with a clear message."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "request body too large (limit 64 KiB)")
    if request.content_type != "application/json":
        raise ApiError(415, "expected Content-Type: application/json", field="Content-Type")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "request body too large (limit 64 KiB)")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson is strict (no NaN, integers within 64 bits); the stdlib parser decides what those mean
        # and words the error, so a rare body gets exactly the answer it always got.
        body = _stdlib_json(raw)
    if not isinstance(body, dict):
        raise bad_request("body", "expected a JSON object")
    return body


def _stdlib_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(
            "body", f"invalid JSON: {exc.msg if isinstance(exc, json.JSONDecodeError) else exc}"
        ) from None
    except (ValueError, RecursionError):
        # An integer literal over Python's digit limit, or nesting deeper than the parser's recursion limit.
        raise bad_request("body", "invalid JSON: number too long or nesting too deep") from None


def optional_str(body: dict[str, Any], field: str, max_bytes: int = 1024) -> str | None:
    """A string field that may be absent or null; empty strings count as absent."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request(field, f"{field} must be a string")
    if len(value.encode()) > max_bytes:
        raise bad_request(field, f"{field} must be at most {max_bytes} bytes")
    return value


def required_str(body: dict[str, Any], field: str, max_bytes: int = 1024) -> str:
    """A non-empty string field."""
    value = optional_str(body, field, max_bytes)
    if value is None:
        raise bad_request(field, f"{field} is required")
    return value


def optional_int(body: dict[str, Any], field: str) -> int | None:
    """An integer field (JSON number without fraction; booleans are not integers)."""
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(field, f"{field} must be an integer")
    return value
