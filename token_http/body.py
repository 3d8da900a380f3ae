"""Reading and checking request bodies: every failure is a 4xx that names the field."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
from aiohttp import web

from token_http.errors import ApiError, bad_request

MAX_BODY_BYTES = 64 * 1024
# A code point that UTF-8 cannot encode: JSON's \uD800-\uDFFF escapes left unpaired (the stdlib parser
# joins valid pairs into one character, so any surrogate it leaves is a lone one).
_SURROGATE = re.compile("[\ud800-\udfff]")
# orjson turns an integer literal beyond 64 bits into a float; any float this large has no fraction.
_BEYOND_64_BITS = 2.0**63


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or 413 / 415 / 400 with a clear message."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise ApiError(413, "request body too large (limit 64 KiB)")
    # The exact header every client sends needs no parsing; anything else (parameters, other case) does.
    if request.headers.get("Content-Type") != "application/json" and request.content_type != "application/json":
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
        if isinstance(body, dict):
            _refuse_lone_surrogates(body)
    if not isinstance(body, dict):
        raise bad_request("body", "expected a JSON object")
    return body


def _refuse_lone_surrogates(body: dict[str, Any]) -> None:
    """400 naming the first top-level field whose value holds a lone surrogate ("body" if a key does).

    orjson refuses such escapes, so only a body the stdlib parser read can hold one; every later
    `.encode()`, Firestore write or log line would fail on it.
    """
    for key, value in body.items():
        if _SURROGATE.search(key):
            raise bad_request("body", "a field name holds a lone surrogate escape (\\uD800-\\uDFFF)")
        if _holds_surrogate(value):
            raise bad_request(key, f"{key} holds a lone surrogate escape (\\uD800-\\uDFFF)")


def _holds_surrogate(value: Any) -> bool:
    # An explicit stack: the parser accepts nesting close to the recursion limit, so recursing here could not.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


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
    """An integer field (JSON number without fraction; booleans are not integers).

    An integer literal beyond 64 bits reaches here as orjson's float: it is still an integer, so the
    caller's range check (or clamp) decides, not a type error.
    """
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and abs(value) >= _BEYOND_64_BITS:
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(field, f"{field} must be an integer")
    return value
