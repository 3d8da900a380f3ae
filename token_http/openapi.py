"""The OpenAPI 3 document of the service; a test keeps it and the router in step."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from memharbor import agora, calls
from memharbor.timeline import EventKind
from token_http.errors import json_response

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
# The per-user limits (token_http/ratelimit.py; the live-recording cap): retry after Retry-After seconds.
_TOO_MANY = {
    "429": {
        "description": "too many requests of this user; Retry-After says when to try again",
        "headers": {"Retry-After": {"description": "whole seconds", "schema": {"type": "integer", "minimum": 1}}},
        "content": {"application/json": {"schema": _ERROR}},
    }
}

# Agora's character set, as the service checks it (memharbor.agora), anchored for JSON Schema.
_AGORA_CHANNEL = f"^{agora.CHANNEL_NAME_RE.pattern}$"
_AGORA_ACCOUNT = f"^{agora.ACCOUNT_RE.pattern}$"
TOKEN_REQUEST = {
    "type": "object",
    "required": ["channel"],
    "oneOf": [{"required": ["uid"]}, {"required": ["user_account"]}],
    "properties": {
        "channel": {
            "type": "string",
            "maxLength": 63,
            "pattern": _AGORA_CHANNEL,
            "description": "Agora channel name (< 64 bytes)",
        },
        "uid": {"type": "integer", "minimum": 1, "maximum": 4294967295, "description": "0 is refused"},
        "user_account": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": _AGORA_ACCOUNT},
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
_ADMINS_ONLY = "only for admins (and MEMHARBOR_AUTH=none)"
PROBE_RESPONSE = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "failing"]},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
}
HEALTH_RESPONSE = {
    "type": "object",
    "required": ["status", "firestore", "workers", "push", "auth"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded"]},
        "problems": {"type": "array", "items": {"type": "string"}},
        "firestore": {
            "type": "object",
            "required": ["ok"],
            "properties": {
                "ok": {"type": "boolean"},
                "latency_ms": {"type": "number", "description": _ADMINS_ONLY},
                "error": {"type": "string", "description": "why it is unreachable; " + _ADMINS_ONLY},
            },
        },
        "workers": {
            "type": "object",
            "description": "by kind: watcher, recorder",
            "additionalProperties": {
                "type": "object",
                "required": ["alive"],
                "properties": {
                    "alive": {"type": "integer", "minimum": 0},
                    "instances": {"type": "array", "items": {"type": "string"}, "description": _ADMINS_ONLY},
                },
            },
        },
        "push": {
            "type": "object",
            "description": "by transport: apns, fcm",
            "additionalProperties": {
                "type": "object",
                "required": ["configured"],
                "properties": {
                    "configured": {"type": "boolean"},
                    "lastError": {"type": "string", "nullable": True, "description": _ADMINS_ONLY},
                    "lastErrorAt": {"type": "string", "nullable": True, "description": _ADMINS_ONLY},
                },
            },
        },
        "auth": {"type": "string", "enum": ["firebase", "firebase-emulator", "none"]},
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
            "summary": "Firestore reachability, worker heartbeats, push transports (details for admins only)",
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
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics of every worker (request counts and latencies by route pattern)",
            "security": [],
            "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
        }
    },
    "/livez": {
        "get": {
            "summary": "Liveness probe: the process's event loop answers",
            "security": [],
            "responses": {"200": {"description": "alive", "content": {"application/json": {"schema": PROBE_RESPONSE}}}},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness probe: Firestore answered the latest (cached) check and Agora credentials are set",
            "security": [],
            "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": PROBE_RESPONSE}}},
                "503": {"description": "not ready", "content": {"application/json": {"schema": PROBE_RESPONSE}}},
            },
        }
    },
}


# ---- the seed's call routes (token_http/call_routes.py): snake_case in, camelCase out -------------

_ID = {"type": "string", "pattern": calls.ID_PATTERN.pattern}
_NAME = {"type": "string", "maxLength": 200}
_NULLABLE_TS = {"type": "string", "format": "date-time", "nullable": True}
CALL_STATUS = {"type": "string", "enum": ["pending", "accepted", "declined", "cancelled", "missed", "ended"]}
CALL_ID_REQUEST = {"type": "object", "required": ["call_id"], "properties": {"call_id": _ID}}
CALL_INVITE_REQUEST = {
    "type": "object",
    "required": ["group_id", "caller_id", "receiver_id"],
    "properties": {
        "group_id": {"type": "string", "pattern": calls.GROUP_ID_PATTERN.pattern},
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
    # OpenAPI 3.0 (JSON Schema draft 4): exclusiveMinimum is a flag on minimum, not a bound of its own.
    "properties": {"timeout_seconds": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "default": 60}},
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
_WHEN_MALFORMED = "null when the stored value is malformed (see malformedFields)"
_MALFORMED_NULL = {"type": "string", "nullable": True, "description": _WHEN_MALFORMED}
CALL_STATUS_RESPONSE = {
    "type": "object",
    "required": [
        "callId",
        "channelName",
        "groupId",
        "receiverId",
        "caregiverUserId",
        "groupNameSnapshot",
        "giverNameSnapshot",
        "receiverNameSnapshot",
        "status",
        "createdAt",
        "answeredAt",
        "endedAt",
        "durationSec",
        "humanSummary",
        "humanKeywords",
        "humanNotes",
        "aiSummary",
        "reviewCount",
        "lastReviewAt",
    ],
    "properties": {
        "callId": {"type": "string"},
        "channelName": {"type": "string", "nullable": True},
        "groupId": _MALFORMED_NULL,
        "receiverId": _MALFORMED_NULL,
        "caregiverUserId": {**_MALFORMED_NULL, "description": "the caller's uid (callerId); " + _WHEN_MALFORMED},
        "groupNameSnapshot": {"type": "string", "nullable": True},
        "giverNameSnapshot": {"type": "string", "nullable": True, "description": "giverNameSnapshot, else callerName"},
        "receiverNameSnapshot": {"type": "string", "nullable": True},
        "status": {
            **CALL_STATUS,
            "nullable": True,
            "enum": [*CALL_STATUS["enum"], None],
            "description": _WHEN_MALFORMED,
        },
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
        "malformedFields": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "only when the stored call breaks the data contract (an admin's write): the document "
            "fields left out of this answer or replaced by null or a default",
        },
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
        CALL_INVITE_REQUEST,
        CALL_INVITE_RESPONSE,
        400,
        401,
        403,
        409,
        413,
        415,
        503,
    ),
    "/api/call/answer": _call_post(
        "The receiver accepts or declines a pending call",
        CALL_ANSWER_REQUEST,
        CALL_ANSWER_RESPONSE,
        400,
        401,
        403,
        404,
        409,
        413,
        415,
        503,
    ),
    "/api/call/cancel": _call_post(
        "The caller cancels a pending call",
        CALL_ID_REQUEST,
        _call_status_response("cancelled"),
        400,
        401,
        403,
        404,
        409,
        413,
        415,
        503,
    ),
    "/api/call/missed": _call_post(
        "The caller's ring timer ran out: pending -> missed",
        CALL_ID_REQUEST,
        _call_status_response("missed"),
        400,
        401,
        403,
        404,
        409,
        413,
        415,
        503,
    ),
    "/api/call/timeout/sweep": _call_post(
        "Server: move every pending call older than timeout_seconds to missed (admins only)",
        CALL_SWEEP_REQUEST,
        CALL_SWEEP_RESPONSE,
        400,
        401,
        403,
        413,
        415,
        503,
        body_required=False,
    ),
    "/api/call/end": _call_post(
        "A participant ends an accepted call",
        CALL_ID_REQUEST,
        CALL_END_RESPONSE,
        400,
        401,
        403,
        404,
        409,
        413,
        415,
        503,
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
CALL_PATHS["/api/call/invite"]["post"]["responses"].update(_TOO_MANY)
PATHS.update(CALL_PATHS)


# ---- the seed's recording routes (token_http/recording_routes.py) ----------------------------------

_CHANNEL = {
    "type": "string",
    "minLength": 1,
    "maxLength": 63,
    "pattern": _AGORA_CHANNEL,
    "description": "Agora channel name (< 64 bytes)",
}
_SID = {"type": "string", "pattern": calls.ID_PATTERN.pattern}
_NULLABLE_STR = {"type": "string", "nullable": True}
_NULLABLE_NUM = {"type": "number", "nullable": True}
RECORDING_STATUS = {"type": "string", "enum": ["requested", "recording", "stopping", "stopped", "failed"]}
RECORDING_START_REQUEST = {"type": "object", "required": ["channel"], "properties": {"channel": _CHANNEL}}
RECORDING_START_RESPONSE = {
    "type": "object",
    "required": ["sid", "channel", "uid", "filename", "status"],
    "properties": {
        "sid": {"type": "string", "description": "recordings/{sid}"},
        "channel": {"type": "string"},
        "uid": {"type": "integer", "description": "the recording bot's Agora uid (999999 by default)"},
        "filename": {**_NULLABLE_STR, "description": "{channel}_{timestamp}.wav, as the recorder named it"},
        "status": {
            "type": "string",
            "enum": ["recording", "stopping", "stopped"],
            "description": "recording (the seed's answer), or later if it was stopped meanwhile",
        },
    },
}
RECORDING_STOP_REQUEST = {
    "type": "object",
    "description": "sid, or channel (every recording in progress on it); sid wins when both are given",
    "anyOf": [{"required": ["sid"]}, {"required": ["channel"]}],
    "properties": {"sid": _SID, "channel": _CHANNEL},
}
RECORDING_STOP_RESPONSE = {
    "type": "object",
    "required": ["sid", "channel", "groupId", "user1", "user2", "filename", "format", "duration", "firebase", "status"],
    "properties": {
        "sid": {"type": "string"},
        "channel": _NULLABLE_STR,
        "groupId": _NULLABLE_STR,
        "user1": _NULLABLE_STR,
        "user2": _NULLABLE_STR,
        "filename": _NULLABLE_STR,
        "format": {"type": "string", "nullable": True, "description": "wav"},
        "duration": {**_NULLABLE_NUM, "description": "milliseconds"},
        "firebase": {
            "type": "object",
            "nullable": True,
            "description": "null when Storage is not configured (the file stays with the recorder)",
            "required": ["url", "firestoreId", "storagePath"],
            "properties": {
                "url": _NULLABLE_STR,
                "firestoreId": {"type": "string", "description": "the recordings document id (= sid)"},
                "storagePath": _NULLABLE_STR,
            },
        },
        "status": {"type": "string", "enum": ["stopped", "failed"]},
        "error": {"type": "string", "description": "only when status is failed: why"},
    },
}
RECORDING_SESSION = {
    "type": "object",
    "required": [
        "sid",
        "channel",
        "callId",
        "uid",
        "filename",
        "status",
        "requestedBy",
        "stopRequested",
        "createdAt",
        "recordedAt",
    ],
    "properties": {
        "sid": {"type": "string"},
        "channel": _NULLABLE_STR,
        "callId": {**_NULLABLE_STR, "description": "null for a legacy {groupId}_{user1}_{user2} channel"},
        "uid": {"type": "integer"},
        "filename": _NULLABLE_STR,
        "status": RECORDING_STATUS,
        "requestedBy": {**_NULLABLE_STR, "description": "a uid, or server (the watcher)"},
        "stopRequested": {"type": "boolean"},
        "createdAt": _NULLABLE_TS,
        "recordedAt": _NULLABLE_TS,
    },
}
RECORDING_STATUS_RESPONSE = {
    "type": "object",
    "required": ["sessions", "count"],
    "properties": {"sessions": {"type": "array", "items": RECORDING_SESSION}, "count": {"type": "integer"}},
}
RECORDING_ITEM = {
    "type": "object",
    "required": [
        "sid",
        "filename",
        "url",
        "storagePath",
        "channel",
        "callId",
        "groupId",
        "user1",
        "user2",
        "duration",
        "fileSize",
        "format",
        "spec",
        "interrupted",
        "recordedAt",
        "createdAt",
        "stoppedAt",
    ],
    "properties": {
        "sid": {"type": "string"},
        "filename": _NULLABLE_STR,
        "url": _NULLABLE_STR,
        "storagePath": _NULLABLE_STR,
        "channel": _NULLABLE_STR,
        "callId": _NULLABLE_STR,
        "groupId": _NULLABLE_STR,
        "user1": _NULLABLE_STR,
        "user2": _NULLABLE_STR,
        "duration": {**_NULLABLE_NUM, "description": "milliseconds"},
        "fileSize": {**_NULLABLE_NUM, "description": "bytes"},
        "format": _NULLABLE_STR,
        "spec": {"type": "object", "nullable": True, "description": "{sampleRate: 16000, channels: 1, bitDepth: 16}"},
        "interrupted": {"type": "boolean", "description": "finalized after a recorder crash"},
        "recordedAt": _NULLABLE_TS,
        "createdAt": _NULLABLE_TS,
        "stoppedAt": _NULLABLE_TS,
    },
}
RECORDING_LIST_RESPONSE = {
    "type": "object",
    "required": ["recordings", "count"],
    "properties": {"recordings": {"type": "array", "items": RECORDING_ITEM}, "count": {"type": "integer"}},
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _with_sid(description: str) -> dict[str, Any]:
    """An error whose body also carries the session's sid and status, so the client can follow it up."""
    schema = {
        "type": "object",
        "required": ["error", "sid", "status"],
        "properties": {
            "error": {"type": "string"},
            "sid": {"type": "string"},
            "status": RECORDING_STATUS,
            "reason": {"type": "string", "nullable": True, "description": "the recorder's error, when it failed"},
        },
    }
    return _json(description, schema)


def _recording_post(summary: str, request: dict[str, Any], response: dict[str, Any], responses: dict[str, Any]) -> Any:
    return {
        "post": {
            "summary": summary,
            "security": [{"firebase": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
            "responses": {"200": _json("done", response), **responses},
        }
    }


def _recording_get(summary: str, response: dict[str, Any], parameters: list[Any], *codes: int) -> Any:
    return {
        "get": {
            "summary": summary,
            "security": [{"firebase": []}],
            "parameters": parameters,
            "responses": {"200": _json("done", response), **_errors(*codes)},
        }
    }


def _audio_get(summary: str) -> Any:
    """A stopped session's WAV file by sid (the participants' and the admins' audio routes)."""
    return {
        "get": {
            "summary": summary,
            "security": [{"firebase": []}],
            "parameters": [{"name": "sid", "in": "path", "required": True, "schema": _SID}],
            "responses": {
                "200": {
                    "description": "the file",
                    "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
                },
                **_errors(400, 401, 403, 404, 503),
            },
        }
    }


RECORDING_PATHS: dict[str, dict[str, Any]] = {
    "/api/recording/start": _recording_post(
        "Request a recording of a channel and wait up to 10 s for the recorder to begin "
        "(participants of the channel's call; user1/user2 of a legacy {groupId}_{user1}_{user2} channel; admins)",
        RECORDING_START_REQUEST,
        RECORDING_START_RESPONSE,
        {
            **_errors(400, 401, 403, 409, 413, 415),
            **_TOO_MANY,
            "503": _with_sid(
                "the recorder did not begin within 10 s (the request stays queued) or could not record; "
                "or Firestore is unavailable (then without sid)"
            ),
        },
    ),
    "/api/recording/stop": _recording_post(
        "Ask the recorder to stop and wait up to 60 s for the file to be finalized and uploaded",
        RECORDING_STOP_REQUEST,
        RECORDING_STOP_RESPONSE,
        {
            **_errors(400, 401, 403, 404, 413, 415),
            "503": _with_sid(
                "the recorder has not finished within 60 s (the stop stays requested); "
                "or Firestore is unavailable (then without sid)"
            ),
        },
    ),
    "/api/recording/status": _recording_get(
        "Recording sessions in progress (requested, recording, stopping): your own, or all for admins",
        RECORDING_STATUS_RESPONSE,
        [],
        401,
        503,
    ),
    "/api/recording/list": _recording_get(
        "Stored recordings, newest first: those naming you as user1 or user2, or all for admins",
        RECORDING_LIST_RESPONSE,
        [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
            }
        ],
        400,
        401,
        503,
    ),
    "/api/recording/{sid}/audio": _audio_get(
        "A stopped recording's WAV file, from Storage or the recorder's directory (participants of its call, "
        "user1/user2, admins); 404 until it is stored, 403 for anyone else"
    ),
}
PATHS.update(RECORDING_PATHS)


# ---- admin routes (token_http/admin_routes.py): the per-call timeline of memharbor.timeline ----------

_TS = {"type": "string", "format": "date-time"}
_NULLABLE_BOOL = {"type": "boolean", "nullable": True}
_MALFORMED_FIELDS = {
    "type": "array",
    "items": {"type": "string"},
    "description": "stored fields that break the data contract (an admin's write), shown as null or as text",
}
TIMELINE_EVENT_KINDS = [kind.value for kind in EventKind]
TIMELINE_EVENT = {
    "type": "object",
    "required": ["id", "at", "t", "kind", "rawKind", "worker", "detail", "malformedFields"],
    "properties": {
        "id": {"type": "string", "description": "callServer/{callId}/events/{id}"},
        "at": {**_NULLABLE_TS, "description": "the server's commit time; events are ordered by it, then by t"},
        "t": {**_NULLABLE_NUM, "description": "the worker's clock (epoch seconds)"},
        "kind": {"type": "string", "enum": TIMELINE_EVENT_KINDS},
        "rawKind": {**_NULLABLE_STR, "description": "the stored kind, when kind is unknown"},
        "worker": {**_NULLABLE_STR, "description": "the id of the worker that took the step"},
        "detail": {
            "type": "object",
            "description": "small values: device, platform, result, latencyMs, reason, status, attempt, sid, ...",
            "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
        },
        "malformedFields": _MALFORMED_FIELDS,
    },
}
TIMELINE_CALL = {
    "type": "object",
    "required": [
        "status",
        "groupId",
        "callerId",
        "receiverId",
        "channelName",
        "createdAt",
        "answeredAt",
        "endedAt",
        "ringDeadline",
        "pushSent",
        "pushPlatform",
        "pushError",
        "record",
        "recordingId",
        "violation",
        "malformedFields",
    ],
    "properties": {
        **{name: _NULLABLE_STR for name in ("status", "groupId", "callerId", "receiverId", "channelName")},
        **{name: _NULLABLE_TS for name in ("createdAt", "answeredAt", "endedAt", "ringDeadline")},
        "pushSent": _NULLABLE_BOOL,
        "pushPlatform": _NULLABLE_STR,
        "pushError": _NULLABLE_STR,
        "record": _NULLABLE_BOOL,
        "recordingId": _NULLABLE_STR,
        "violation": {
            "type": "object",
            "nullable": True,
            "required": ["reason", "attempted", "restored", "at"],
            "properties": {
                "reason": _NULLABLE_STR,
                "attempted": {**_NULLABLE_STR, "description": "the status found on the call"},
                "restored": {**_NULLABLE_STR, "description": "the status it was left in; null: ignored from then on"},
                "at": _NULLABLE_TS,
            },
        },
        "malformedFields": _MALFORMED_FIELDS,
    },
}
TIMELINE_SERVER = {
    "type": "object",
    "nullable": True,
    "description": "callServer/{callId}; null until a watcher first acted on the call",
    "required": ["status", "invalid", "effects", "pushes", "malformedFields"],
    "properties": {
        "status": {**_NULLABLE_STR, "description": "the last legal status"},
        "invalid": {"type": "boolean", "description": "the call broke the contract and is ignored"},
        "effects": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["status", "state", "by", "leaseUntil", "doneAt"],
                "properties": {
                    "status": {"type": "string"},
                    "state": {**_NULLABLE_STR, "description": "claimed | done"},
                    "by": {**_NULLABLE_STR, "description": "the worker holding or having done the work"},
                    "leaseUntil": _NULLABLE_TS,
                    "doneAt": _NULLABLE_TS,
                },
            },
        },
        "pushes": {
            "type": "array",
            "description": "per device and status: pending is the incoming call, the others stop ringing",
            "items": {
                "type": "object",
                "required": ["status", "device", "platform", "result", "error", "at"],
                "properties": {
                    "status": {"type": "string"},
                    "device": {"type": "string", "description": "device id; ~user for the user's single tokens"},
                    "platform": _NULLABLE_STR,
                    "result": {**_NULLABLE_STR, "description": "sent | failed | dead_token"},
                    "error": _NULLABLE_STR,
                    "at": _NULLABLE_TS,
                },
            },
        },
        "malformedFields": _MALFORMED_FIELDS,
    },
}
TIMELINE_RECORDING = {
    "type": "object",
    "required": [
        "sid",
        "status",
        "requestedBy",
        "createdAt",
        "recordedAt",
        "stoppedAt",
        "stopReason",
        "duration",
        "error",
        "workerId",
        "interrupted",
        "malformedFields",
    ],
    "properties": {
        "sid": {"type": "string"},
        "status": _NULLABLE_STR,
        "requestedBy": _NULLABLE_STR,
        **{name: _NULLABLE_TS for name in ("createdAt", "recordedAt", "stoppedAt")},
        "stopReason": _NULLABLE_STR,
        "duration": {**_NULLABLE_NUM, "description": "milliseconds"},
        "error": _NULLABLE_STR,
        "workerId": _NULLABLE_STR,
        "interrupted": {"type": "boolean"},
        "malformedFields": _MALFORMED_FIELDS,
    },
}
TIMELINE_RESPONSE = {
    "type": "object",
    "required": ["callId", "call", "server", "events", "eventsTruncated", "recordings", "explanation"],
    "properties": {
        "callId": {"type": "string"},
        "call": TIMELINE_CALL,
        "server": TIMELINE_SERVER,
        "events": {"type": "array", "items": TIMELINE_EVENT},
        "eventsTruncated": {"type": "boolean", "description": "more events are stored; these are the earliest"},
        "recordings": {"type": "array", "items": TIMELINE_RECORDING},
        "explanation": {
            "type": "array",
            "items": {"type": "string"},
            "description": "what the timeline shows about why the call did or did not ring (docs/support.md)",
        },
    },
}
ADMIN_PATHS: dict[str, dict[str, Any]] = {
    "/api/admin/calls/{call_id}/timeline": {
        "get": {
            "summary": "Everything the server recorded about one call, for support (admins and MEMHARBOR_AUTH=none)",
            "security": [{"firebase": []}],
            "parameters": [{"name": "call_id", "in": "path", "required": True, "schema": _ID}],
            "responses": {
                "200": _json("the call's timeline", TIMELINE_RESPONSE),
                **_errors(400, 401, 403, 404, 503),
            },
        }
    },
}
PATHS.update(ADMIN_PATHS)

# ---- the console's admin views (token_http/admin_routes.py, token_http/console_views.py) -------------

_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
}
CONSOLE_CALLS_RESPONSE = {
    "type": "object",
    "required": ["now", "calls"],
    "properties": {
        "now": _TS,
        "calls": {
            "type": "array",
            "description": "the most recently updated calls, newest first",
            "items": {
                "type": "object",
                "required": ["callId", "call", "server", "ringingSeconds"],
                "properties": {
                    "callId": {"type": "string"},
                    "call": TIMELINE_CALL,
                    "server": TIMELINE_SERVER,
                    "ringingSeconds": {
                        **_NULLABLE_NUM,
                        "description": "until answered or ended; until now while pending",
                    },
                },
            },
        },
    },
}
CONSOLE_PROBLEMS_RESPONSE = {
    "type": "object",
    "required": ["scannedCalls", "problems"],
    "properties": {
        "scannedCalls": {"type": "integer", "description": "how many of the most recently updated calls were read"},
        "problems": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["callId", "kind", "detail", "at"],
                "properties": {
                    "callId": {"type": "string"},
                    "kind": {"type": "string", "enum": ["push_error", "push_failed", "violation"]},
                    "detail": {"type": "string"},
                    "at": _NULLABLE_TS,
                },
            },
        },
    },
}
_NULLABLE_INT = {"type": "integer", "nullable": True}
CONSOLE_WORKERS_RESPONSE = {
    "type": "object",
    "required": ["now", "workers"],
    "properties": {
        "now": _TS,
        "workers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "instanceId",
                    "kind",
                    "host",
                    "pid",
                    "startedAt",
                    "beatAt",
                    "expiresAt",
                    "alive",
                    "status",
                ],
                "properties": {
                    **{name: _NULLABLE_STR for name in ("instanceId", "kind", "host")},
                    "pid": _NULLABLE_INT,
                    **{name: _NULLABLE_TS for name in ("startedAt", "beatAt", "expiresAt")},
                    "alive": {"type": "boolean", "description": "its expiresAt is still ahead"},
                    "status": {"type": "object", "description": "what the worker reports of itself"},
                },
            },
        },
    },
}
CONSOLE_RECORDING = {
    "type": "object",
    "required": [
        "sid",
        "callId",
        "status",
        "filename",
        "storagePath",
        "format",
        "stopReason",
        "error",
        "createdAt",
        "recordedAt",
        "stoppedAt",
        "duration",
        "fileSize",
        "spec",
    ],
    "properties": {
        "sid": {"type": "string"},
        **{
            name: _NULLABLE_STR
            for name in ("callId", "status", "filename", "storagePath", "format", "stopReason", "error")
        },
        **{name: _NULLABLE_TS for name in ("createdAt", "recordedAt", "stoppedAt")},
        "duration": {**_NULLABLE_NUM, "description": "milliseconds"},
        "fileSize": {**_NULLABLE_NUM, "description": "bytes"},
        "spec": {
            "type": "object",
            "nullable": True,
            "required": ["sampleRate", "channels", "bitDepth"],
            "properties": {name: _NULLABLE_NUM for name in ("sampleRate", "channels", "bitDepth")},
        },
    },
}
CONSOLE_RECORDINGS_RESPONSE = {
    "type": "object",
    "required": ["recordings"],
    "properties": {"recordings": {"type": "array", "items": CONSOLE_RECORDING}},
}


_DEMO_ACCOUNT = {
    "type": "object",
    "required": ["uid", "email", "name"],
    "properties": {"uid": {"type": "string"}, "email": {"type": "string"}, "name": {"type": "string"}},
}
CONSOLE_CONFIG = {
    "type": "object",
    "required": ["projectId", "authEmulator", "firestoreEmulator", "demo"],
    "properties": {
        "projectId": {"type": "string"},
        "authEmulator": {**_NULLABLE_STR, "description": "the Auth emulator's base URL; null outside emulator mode"},
        "firestoreEmulator": {**_NULLABLE_STR, "description": "the Firestore emulator's base URL (demo panel)"},
        "demo": {
            "type": "object",
            "nullable": True,
            "description": "the accounts `memharbor dev` creates; null outside emulator mode",
            "required": ["groupId", "password", "caller", "receiver", "admin", "receiverDevice"],
            "properties": {
                "groupId": {"type": "string"},
                "password": {"type": "string"},
                "caller": _DEMO_ACCOUNT,
                "receiver": _DEMO_ACCOUNT,
                "admin": _DEMO_ACCOUNT,
                "receiverDevice": {"type": "string"},
            },
        },
    },
}


def _admin_get(summary: str, response: dict[str, Any], parameters: list[Any], *codes: int) -> Any:
    return {
        "get": {
            "summary": f"{summary} ({_ADMINS_ONLY})",
            "security": [{"firebase": []}],
            "parameters": parameters,
            "responses": {"200": _json("done", response), **_errors(*codes)},
        }
    }


CONSOLE_PATHS: dict[str, dict[str, Any]] = {
    "/api/admin/calls": _admin_get(
        "The most recently updated calls: status, seconds ringing, pushes per device",
        CONSOLE_CALLS_RESPONSE,
        [_LIMIT],
        400,
        401,
        403,
        503,
    ),
    "/api/admin/problems": _admin_get(
        "Push errors, failed pushes and violations among the 100 most recently updated calls",
        CONSOLE_PROBLEMS_RESPONSE,
        [_LIMIT],
        400,
        401,
        403,
        503,
    ),
    "/api/admin/workers": _admin_get(
        "Every worker's heartbeat and whether it is alive", CONSOLE_WORKERS_RESPONSE, [], 401, 403, 503
    ),
    "/api/admin/recordings": _admin_get(
        "The newest recording sessions in any status, with their file's format",
        CONSOLE_RECORDINGS_RESPONSE,
        [_LIMIT],
        400,
        401,
        403,
        503,
    ),
    "/api/admin/recordings/{sid}/audio": _audio_get(
        f"A stopped recording's WAV file, from Storage or the recorder's directory ({_ADMINS_ONLY})"
    ),
    "/console": {
        "get": {
            "summary": "The web console (token_http/console/): sign in as an admin; a demo panel in dev",
            "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }
    },
    "/console/{name}": {
        "get": {
            "summary": "The console's script and style sheet",
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": ["app.js", "style.css", "config.json"]},
                }
            ],
            "responses": {
                "200": {
                    "description": "the file; config.json: where to sign in, the demo panel's emulators and accounts",
                    "content": {
                        "text/javascript": {"schema": {"type": "string"}},
                        "text/css": {"schema": {"type": "string"}},
                        "application/json": {"schema": CONSOLE_CONFIG},
                    },
                },
                **_errors(404),
            },
        }
    },
}
PATHS.update(CONSOLE_PATHS)


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
    return json_response(document())
