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
        "uid": {"type": "integer", "minimum": 1, "maximum": 4294967295, "description": "0 is refused"},
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


# ---- the seed's call routes (token_http/call_routes.py): snake_case in, camelCase out -------------

_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}
_NAME = {"type": "string", "maxLength": 200}
_NULLABLE_TS = {"type": "string", "format": "date-time", "nullable": True}
CALL_STATUS = {"type": "string", "enum": ["pending", "accepted", "declined", "cancelled", "missed", "ended"]}
CALL_ID_REQUEST = {"type": "object", "required": ["call_id"], "properties": {"call_id": _ID}}
CALL_INVITE_REQUEST = {
    "type": "object",
    "required": ["group_id", "caller_id", "receiver_id"],
    "properties": {
        "group_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,36}$"},
        "caller_id": {**_ID, "description": "must be the authenticated user's uid (admins: anyone)"},
        "receiver_id": {**_ID, "description": "must differ from caller_id"},
        "caller_name": {**_NAME, "description": "default: caller_id"},
        "group_name_snapshot": _NAME,
        "receiver_name_snapshot": _NAME,
        "giver_name_snapshot": {**_NAME, "description": "extension: the caregiver's display name"},
        "record": {"type": "boolean", "description": "extension: record this call"},
    },
}
CALL_INVITE_RESPONSE = {
    "type": "object",
    "required": ["success", "callId", "channelName", "pushSent", "pushPlatform"],
    "properties": {
        "success": {"type": "boolean"},
        "callId": {"type": "string"},
        "channelName": {
            "type": "string",
            "nullable": True,
            "description": "assigned by the watcher; null if it did not within 3 s",
        },
        "pushSent": {"type": "boolean", "nullable": True, "description": "null: no push result within 3 s"},
        "pushPlatform": {"type": "string", "enum": ["ios", "android", None], "nullable": True},
    },
}
CALL_ANSWER_REQUEST = {
    "type": "object",
    "required": ["call_id", "action"],
    "properties": {"call_id": _ID, "action": {"type": "string", "enum": ["accept", "decline"]}},
}
CALL_ANSWER_RESPONSE = {
    "type": "object",
    "required": ["success", "callId", "channelName", "status"],
    "properties": {
        "success": {"type": "boolean"},
        "callId": {"type": "string"},
        "channelName": {"type": "string", "nullable": True},
        "status": {"type": "string", "enum": ["accepted", "declined"]},
    },
}


def _call_status_response(*statuses: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "callId", "status"],
        "properties": {
            "success": {"type": "boolean"},
            "callId": {"type": "string"},
            "status": {"type": "string", "enum": list(statuses)},
        },
    }


CALL_END_RESPONSE = {
    "type": "object",
    "required": ["success", "callId", "status", "durationSeconds"],
    "properties": {
        **_call_status_response("ended")["properties"],
        "durationSeconds": {"type": "integer", "minimum": 0, "description": "from answeredAt to endedAt"},
    },
}
CALL_SWEEP_REQUEST = {
    "type": "object",
    "properties": {"timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "default": 60}},
}
CALL_SWEEP_RESPONSE = {
    "type": "object",
    "required": ["success", "timeoutSeconds", "updatedCount"],
    "properties": {
        "success": {"type": "boolean"},
        "timeoutSeconds": {"type": "number"},
        "updatedCount": {"type": "integer", "minimum": 0, "description": "calls this sweep moved to missed"},
    },
}
CALL_STATUS_RESPONSE = {
    "type": "object",
    "required": [
        "callId", "channelName", "groupId", "receiverId", "caregiverUserId", "groupNameSnapshot",
        "giverNameSnapshot", "receiverNameSnapshot", "status", "createdAt", "answeredAt", "endedAt",
        "durationSec", "humanSummary", "humanKeywords", "humanNotes", "aiSummary", "reviewCount", "lastReviewAt",
    ],
    "properties": {
        "callId": {"type": "string"},
        "channelName": {"type": "string", "nullable": True},
        "groupId": {"type": "string"},
        "receiverId": {"type": "string"},
        "caregiverUserId": {"type": "string", "description": "the caller's uid (callerId)"},
        "groupNameSnapshot": {"type": "string", "nullable": True},
        "giverNameSnapshot": {"type": "string", "nullable": True, "description": "giverNameSnapshot, else callerName"},
        "receiverNameSnapshot": {"type": "string", "nullable": True},
        "status": CALL_STATUS,
        "createdAt": _NULLABLE_TS,
        "answeredAt": _NULLABLE_TS,
        "endedAt": _NULLABLE_TS,
        "durationSec": {"type": "number", "nullable": True},
        "humanSummary": {"type": "string"},
        "humanKeywords": {"type": "array", "items": {"type": "string"}},
        "humanNotes": {"type": "string"},
        "aiSummary": {"type": "string"},
        "reviewCount": {"type": "integer"},
        "lastReviewAt": _NULLABLE_TS,
    },
}


def _call_post(
    summary: str, request: dict[str, Any], response: dict[str, Any], *codes: int, body_required: bool = True
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"firebase": []}],
            "requestBody": {"required": body_required, "content": {"application/json": {"schema": request}}},
            "responses": {
                "200": {"description": "done", "content": {"application/json": {"schema": response}}},
                **_errors(*codes),
            },
        }
    }


CALL_PATHS: dict[str, dict[str, Any]] = {
    "/api/call/invite": _call_post(
        "Place a call: creates calls/{callId} (pending) and waits up to 3 s for the watcher's push result",
        CALL_INVITE_REQUEST, CALL_INVITE_RESPONSE, 400, 401, 403, 409, 413, 415, 503,
    ),
    "/api/call/answer": _call_post(
        "The receiver accepts or declines a pending call",
        CALL_ANSWER_REQUEST, CALL_ANSWER_RESPONSE, 400, 401, 403, 404, 409, 413, 415, 503,
    ),
    "/api/call/cancel": _call_post(
        "The caller cancels a pending call",
        CALL_ID_REQUEST, _call_status_response("cancelled"), 400, 401, 403, 404, 409, 413, 415, 503,
    ),
    "/api/call/missed": _call_post(
        "The caller's ring timer ran out: pending -> missed",
        CALL_ID_REQUEST, _call_status_response("missed"), 400, 401, 403, 404, 409, 413, 415, 503,
    ),
    "/api/call/timeout/sweep": _call_post(
        "Server: move every pending call older than timeout_seconds to missed (admins only)",
        CALL_SWEEP_REQUEST, CALL_SWEEP_RESPONSE, 400, 401, 403, 413, 415, 503, body_required=False,
    ),
    "/api/call/end": _call_post(
        "A participant ends an accepted call",
        CALL_ID_REQUEST, CALL_END_RESPONSE, 400, 401, 403, 404, 409, 413, 415, 503,
    ),
    "/api/call/status/{call_id}": {
        "get": {
            "summary": "The call as the seed reported it (participants and admins)",
            "security": [{"firebase": []}],
            "parameters": [{"name": "call_id", "in": "path", "required": True, "schema": _ID}],
            "responses": {
                "200": {"description": "the call", "content": {"application/json": {"schema": CALL_STATUS_RESPONSE}}},
                **_errors(400, 401, 403, 404, 503),
            },
        }
    },
}
PATHS.update(CALL_PATHS)


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
