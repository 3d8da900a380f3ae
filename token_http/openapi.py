"""The OpenAPI 3 document of the service; a test keeps it and the router in step."""

from __future__ import annotations

from typing import Any

from aiohttp import web

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": _ERROR_TEXT[c], "content": {"application/json": {"schema": _ERROR}}} for c in codes}


_ERROR_TEXT = {
    400: "bad input; `field` names it",
    401: "missing or invalid Firebase ID token",
    403: "not allowed for this user",
    404: "unknown resource",
    409: "illegal transition",
    413: "body over 64 KiB",
    415: "Content-Type is not application/json",
    503: "a dependency (Firestore) is unavailable",
}

TOKEN_REQUEST = {
    "type": "object",
    "required": ["channel"],
    "properties": {
        "channel": {"type": "string", "maxLength": 63, "description": "Agora channel name (< 64 bytes)"},
        "uid": {"type": "integer", "minimum": 0, "maximum": 4294967295},
        "user_account": {"type": "string", "minLength": 1, "maxLength": 255},
        "role": {"type": "string", "enum": ["publisher", "subscriber"], "default": "subscriber"},
        "expire": {"type": "integer", "minimum": 1, "default": 86400, "description": "clamped to 86400"},
        "version": {"type": "string", "enum": ["006", "007"], "default": "006"},
    },
}
TOKEN_RESPONSE = {
    "type": "object",
    "required": ["token", "expire_at", "expire_in"],
    "properties": {
        "token": {"type": "string"},
        "expire_at": {"type": "integer", "description": "Unix time the privileges expire"},
        "expire_in": {"type": "integer"},
    },
}
HEALTH_RESPONSE = {
    "type": "object",
    "required": ["status", "firestore", "workers", "push", "auth"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded"]},
        "problems": {"type": "array", "items": {"type": "string"}},
        "firestore": {"type": "object"},
        "workers": {"type": "object"},
        "push": {"type": "object"},
        "auth": {"type": "string", "enum": ["firebase", "none"]},
    },
}

PATHS: dict[str, dict[str, Any]] = {
    "/api/token": {
        "post": {
            "summary": "Issue an Agora RTC token (AccessToken 006, or 007 on request)",
            "security": [{"firebase": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": TOKEN_REQUEST}}},
            "responses": {
                "200": {"description": "token", "content": {"application/json": {"schema": TOKEN_RESPONSE}}},
                **_errors(400, 401, 403, 413, 415, 503),
            },
        }
    },
    "/api/health": {
        "get": {
            "summary": "Firestore reachability, worker heartbeats, push transports",
            "security": [],
            "responses": {
                "200": {"description": "healthy", "content": {"application/json": {"schema": HEALTH_RESPONSE}}},
                "503": {
                    "description": "Firestore unreachable",
                    "content": {"application/json": {"schema": HEALTH_RESPONSE}},
                },
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {}}}},
        }
    },
}


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.0 document."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "memharbor token_http", "version": "0.1.0"},
        "paths": PATHS,
        "components": {
            "securitySchemes": {"firebase": {"type": "http", "scheme": "bearer", "bearerFormat": "Firebase ID token"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                }
            },
        },
    }


async def get_openapi(request: web.Request) -> web.Response:
    """Serve the OpenAPI document."""
    return web.json_response(document())
