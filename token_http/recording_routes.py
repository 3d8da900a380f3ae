"""The seed's recording routes (`/api/recording/*`): a thin REST shim over recording requests in Firestore.

start creates a `recordings/{sid}` request, as an app would, and waits for the recorder to begin;
stop sets `stopRequested: true` and waits for the recorder to finish and upload. Request fields and
the start/stop response shapes are the seed's (with a `.wav` filename: there is no WebM stage).
`GET /api/recording/{sid}/audio` serves a stopped session's file, since apps have no access to Storage.

Who may: participants of the call whose channelName is the channel; for a legacy channel
`{groupId}_{user1}_{user2}` that belongs to no call, user1 and user2; admins any channel; with
MEMHARBOR_AUTH=none, anyone (as the seed). A user's starts spend their rate budget (token_http/ratelimit.py),
and one that would add a request beyond MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER in progress is a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from memharbor import agora, calls
from memharbor.access import Principal, is_participant
from memharbor.errors import Conflict, Unavailable
from memharbor.recording_requests import (
    BEGUN,
    DEFAULT_RECORDER_UID,
    FINISHED,
    STOP_FIELD,
    RecordingStatus,
    call_session_id,
    may_access,
    parse_legacy_channel,
    status_of,
)
from memharbor.repositories.calls import CallReader
from memharbor.repositories.recordings import RecordingRepository, Session, created_at, new_request
from token_http import ratelimit
from token_http.body import json_object, optional_str
from token_http.call_routes import iso
from token_http.errors import ApiError, bad_request, checked_id, configured, json_response
from token_http.keys import DEPS, SETTINGS

# start waits this long for the recorder to begin, looking this often (the seed waited for its recorder too).
START_WAIT_S = 10.0
START_POLL_S = 0.1
# stop waits this long for the recorder to finalize and upload.
STOP_WAIT_S = 60.0
STOP_POLL_S = 0.1
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 200


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _service(request: web.Request) -> RecordingRepository:
    return configured(request.app[DEPS].recording_repository, "the recording service")


async def _principal(request: web.Request) -> Principal:
    return await request.app[DEPS].authenticator.authenticate(request.headers.get("Authorization"))


def _channel(value: Any) -> str:
    if value is None or value == "":
        raise bad_request("channel", "channel is required")
    problem = agora.channel_name_error(value)
    if problem is not None:
        raise bad_request("channel", problem)
    return str(value)


def _uid(session: Mapping[str, Any]) -> int:
    uid = session.get("uid")
    return uid if isinstance(uid, int) and not isinstance(uid, bool) else DEFAULT_RECORDER_UID


def _text(session: Mapping[str, Any], field: str) -> str | None:
    value = session.get(field)
    return value if isinstance(value, str) else None


def _number(session: Mapping[str, Any], field: str) -> int | float | None:
    value = session.get(field)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _firebase(sid: str, session: Mapping[str, Any]) -> dict[str, Any] | None:
    """The seed's `firebase` block: where the file was stored, or None when it was not uploaded."""
    url, path = _text(session, "url"), _text(session, "storagePath")
    if url is None and path is None:
        return None
    return {"url": url, "firestoreId": sid, "storagePath": path}


def _session_error(message: str, sid: str, session: Mapping[str, Any], **more: Any) -> ApiError:
    """A 503 about a session the recorder has not brought along: its body names the sid and status."""
    error = ApiError(503, message)
    error.extra.update(sid=sid, status=session.get("status") or RecordingStatus.REQUESTED.value, **more)
    return error


async def _wait(
    service: RecordingRepository,
    sids: list[str],
    done: Callable[[Mapping[str, Any]], bool],
    wait_s: float,
    poll_s: float,
) -> dict[str, dict[str, Any]]:
    """The sessions as last read, once `done` holds for each of them (or after `wait_s`)."""
    latest: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            while True:
                for sid in sids:
                    if sid in latest and done(latest[sid]):
                        continue
                    with contextlib.suppress(Unavailable):  # a blip while waiting is not the answer
                        doc = await service.get(sid)
                        if doc is not None:
                            latest[sid] = doc
                if all(sid in latest and done(latest[sid]) for sid in sids):
                    break
                await asyncio.sleep(poll_s)
    return latest


# ---------------------------------------------------------------------------------------------------
# POST /api/recording/start
# ---------------------------------------------------------------------------------------------------


def _call_of_channel(principal: Principal, channel: str, on_channel: list[dict[str, Any]]) -> str | None:
    """The id of the live call to record on `channel`, None for a legacy channel; 403/409 when not allowed."""
    if on_channel:
        mine = on_channel if principal.unrestricted else [c for c in on_channel if is_participant(principal.uid, c)]
        if not mine:
            raise ApiError(403, "you are not a participant of the call on this channel", field="channel")
        live = [c for c in mine if c.get("status") in calls.ACTIVE and isinstance(c.get("callId"), str)]
        if not live:
            status = mine[0].get("status")
            message = f"the call on this channel is {status}; only a live call can be recorded"
            raise ApiError(409, message, field="channel")
        return str(live[0]["callId"])
    if principal.unrestricted:
        return None
    legacy = parse_legacy_channel(channel)
    if legacy is None or principal.uid not in (legacy.user1, legacy.user2):
        message = "channel is neither a call of yours nor a {groupId}_{user1}_{user2} channel naming you"
        raise ApiError(403, message, field="channel")
    return None


def _start_body(sid: str, channel: str, session: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "sid": sid,
        "channel": _text(session, "channel") or channel,
        "uid": _uid(session),
        "filename": _text(session, "filename"),
        "status": session.get("status"),
    }


def _reusable(sessions: list[Session]) -> Session | None:
    """An in-progress session on the channel that a new start should join rather than duplicate."""
    for sid, doc in sessions:
        if status_of(doc) in (RecordingStatus.REQUESTED, RecordingStatus.RECORDING) and not doc.get(STOP_FIELD):
            return sid, doc
    return None


async def _join_or_request(
    service: RecordingRepository, channel: str, request: dict[str, Any], live_cap: int | None
) -> str:
    """The sid of the session a start joins (one already asked for) or of the request it creates.

    A new request is refused (LiveCapReached) when its requester already has `live_cap` in progress.
    """
    existing = _reusable(await service.in_progress(channel))
    if existing is not None:
        return existing[0]  # already asked for (by the watcher or another participant): one recording
    call_id = request.get("callId")
    if isinstance(call_id, str):
        # The id the watcher uses for the call's recording: starts racing each other or the watcher's
        # own request all create this one document, and every one but the first finds it.
        sid = call_session_id(call_id)
        with contextlib.suppress(Conflict):  # the call's session exists: join it below if it is still live
            await service.create(sid, request, live_cap)
            return sid
        current = await service.get(sid)
        if current is not None and _reusable([(sid, current)]) is not None:
            return sid
        # The call's first recording is stopping or over: this start asks for another one.
    sid = str(uuid.uuid4())
    await service.create(sid, request, live_cap)
    return sid


async def post_start(request: web.Request) -> web.Response:
    """Request a recording of the channel and wait (up to START_WAIT_S) for the recorder to begin."""
    principal = await _principal(request)
    await ratelimit.enforce(request, principal)
    body = await json_object(request)
    channel = _channel(body.get("channel"))
    service = _service(request)
    # Admins act as the server and the open mode has no users to tell apart: neither is capped.
    live_cap = None if principal.unrestricted else request.app[SETTINGS].max_live_recordings_per_user
    call_id = _call_of_channel(principal, channel, await request.app[DEPS].calls.calls_on_channel(channel))
    request_doc = new_request(channel, principal.uid or "anonymous", call_id)
    sid = await _join_or_request(service, channel, request_doc, live_cap)
    sessions = await _wait(service, [sid], lambda s: status_of(s) in BEGUN | FINISHED, START_WAIT_S, START_POLL_S)
    session = sessions.get(sid, {})
    status = status_of(session)
    if status in BEGUN:
        return json_response(_start_body(sid, channel, session))
    if status is RecordingStatus.FAILED:
        raise _session_error("the recorder could not record this channel", sid, session, reason=session.get("error"))
    raise _session_error(
        f"the recorder did not begin within {START_WAIT_S:g} s; the request stays queued: "
        "poll GET /api/recording/status, or withdraw it with POST /api/recording/stop {sid}",
        sid,
        session,
    )


# ---------------------------------------------------------------------------------------------------
# POST /api/recording/stop
# ---------------------------------------------------------------------------------------------------


async def _visible(calls_of: CallReader, principal: Principal, sessions: list[Session]) -> list[Session]:
    """The sessions the principal may see or stop."""
    if principal.unrestricted:
        return sessions
    call_ids = {doc["callId"] for _, doc in sessions if isinstance(doc.get("callId"), str)}
    known = await calls_of.get_calls(call_ids)
    return [(sid, doc) for sid, doc in sessions if may_access(principal, doc, known.get(str(doc.get("callId"))))]


async def _session_of(
    service: RecordingRepository, calls_of: CallReader, principal: Principal, sid: str
) -> dict[str, Any]:
    """The session `sid` when the principal may see it; 404 when there is none, 403 when it is not theirs."""
    doc = await service.get(sid)
    if doc is None:
        raise ApiError(404, f"unknown recording session {sid}", field="sid")
    if not await _visible(calls_of, principal, [(sid, doc)]):
        raise ApiError(403, "this recording is not of a call of yours", field="sid")
    return doc


async def _targets(
    service: RecordingRepository, calls_of: CallReader, principal: Principal, body: dict[str, Any]
) -> list[Session]:
    """The sessions a stop names: the one with `sid`, or those in progress on `channel` (newest first)."""
    sid = optional_str(body, "sid", max_bytes=1024)
    if sid is not None:
        return [(sid, await _session_of(service, calls_of, principal, checked_id(sid, "sid")))]
    if body.get("channel") is None or body.get("channel") == "":
        raise bad_request("sid", "sid or channel is required")
    channel = _channel(body.get("channel"))
    sessions = await service.in_progress(channel)
    if not sessions:
        raise ApiError(404, "no recording is in progress on this channel", field="channel")
    visible = await _visible(calls_of, principal, sessions)
    if not visible:
        raise ApiError(403, "the recording on this channel is not of a call of yours", field="channel")
    return visible


def _reported(targets: list[Session]) -> Session:
    """The session a stop reports on (and waits for): the newest that began recording, else the newest."""
    return next((t for t in targets if status_of(t[1]) in BEGUN), targets[0])


def _stop_body(sid: str, session: Mapping[str, Any]) -> dict[str, Any]:
    result = {
        "sid": sid,
        "channel": _text(session, "channel"),
        "groupId": _text(session, "groupId"),
        "user1": _text(session, "user1"),
        "user2": _text(session, "user2"),
        "filename": _text(session, "filename"),
        "format": _text(session, "format"),
        "duration": _number(session, "duration"),
        "firebase": _firebase(sid, session),
        "status": session.get("status"),
    }
    if status_of(session) is RecordingStatus.FAILED:
        result["error"] = _text(session, "error") or "recording failed"
    return result


async def post_stop(request: web.Request) -> web.Response:
    """Ask the recorder to stop and wait (up to STOP_WAIT_S) for the file to be finalized and uploaded."""
    principal = await _principal(request)
    body = await json_object(request)
    service = _service(request)
    targets = await _targets(service, request.app[DEPS].calls, principal, body)
    for sid, doc in targets:
        if status_of(doc) not in FINISHED and not doc.get(STOP_FIELD):
            await service.request_stop(sid)
    sid, before = _reported(targets)
    sessions = await _wait(service, [sid], lambda s: status_of(s) in FINISHED, STOP_WAIT_S, STOP_POLL_S)
    session = sessions.get(sid) or dict(before)
    status = status_of(session)
    if status not in FINISHED:
        raise _session_error(
            f"the recorder has not finished within {STOP_WAIT_S:g} s; the stop stays requested: "
            "poll GET /api/recording/status, or call stop again",
            sid,
            session,
        )
    return json_response(_stop_body(sid, session))


# ---------------------------------------------------------------------------------------------------
# GET /api/recording/status and /api/recording/list
# ---------------------------------------------------------------------------------------------------


def _session_view(sid: str, session: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "sid": sid,
        "channel": _text(session, "channel"),
        "callId": _text(session, "callId"),
        "uid": _uid(session),
        "filename": _text(session, "filename"),
        "status": session.get("status"),
        "requestedBy": _text(session, "requestedBy"),
        "stopRequested": session.get(STOP_FIELD) is True,
        "createdAt": iso(session.get("createdAt")),
        "recordedAt": iso(session.get("recordedAt")),
    }


def _recording_view(sid: str, session: Mapping[str, Any]) -> dict[str, Any]:
    spec = session.get("spec")
    return {
        "sid": sid,
        "filename": _text(session, "filename"),
        "url": _text(session, "url"),
        "storagePath": _text(session, "storagePath"),
        "channel": _text(session, "channel"),
        "callId": _text(session, "callId"),
        "groupId": _text(session, "groupId"),
        "user1": _text(session, "user1"),
        "user2": _text(session, "user2"),
        "duration": _number(session, "duration"),
        "fileSize": _number(session, "fileSize"),
        "format": _text(session, "format"),
        "spec": spec if isinstance(spec, dict) else None,
        "interrupted": session.get("interrupted") is True,
        "recordedAt": iso(session.get("recordedAt")),
        "createdAt": iso(session.get("createdAt")),
        "stoppedAt": iso(session.get("stoppedAt")),
    }


async def get_status(request: web.Request) -> web.Response:
    """Sessions in progress (requested, recording, stopping): the caller's own, or all for admins."""
    principal = await _principal(request)
    service = _service(request)
    sessions = await _visible(request.app[DEPS].calls, principal, await service.in_progress())
    return json_response({"sessions": [_session_view(sid, doc) for sid, doc in sessions], "count": len(sessions)})


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIST_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise bad_request("limit", f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
    return int(raw)


async def get_list(request: web.Request) -> web.Response:
    """Stored recordings, newest first: the caller's own (as user1 or user2), or all for admins."""
    principal = await _principal(request)
    limit = _limit(request)
    service = _service(request)
    stored = await service.stored(limit, None if principal.unrestricted else principal.uid)
    stored.sort(key=created_at, reverse=True)
    return json_response(
        {"recordings": [_recording_view(sid, doc) for sid, doc in stored[:limit]], "count": min(len(stored), limit)}
    )


# ---------------------------------------------------------------------------------------------------
# GET /api/recording/{sid}/audio (and the admin console's audio route)
# ---------------------------------------------------------------------------------------------------


async def audio_response(request: web.Request, sid: str, session: dict[str, Any]) -> web.Response:
    """The WAV file of session `sid` (from Storage, else the recorder's directory); 404 until it is stored.

    Callers decide who may read the session first: this only looks at its status and file.
    """
    if status_of(session) is not RecordingStatus.STOPPED:
        raise ApiError(404, f"recording session {sid} has no stored file yet", field="sid")
    data = await configured(request.app[DEPS].audio, "reading recording files").read(session)
    if data is None:
        raise ApiError(404, f"the file of recording session {sid} is not stored here", field="sid")
    # private: only the call's participants may hear it, so no shared cache may keep it; a stopped file stays as is.
    return web.Response(body=data, content_type="audio/wav", headers={"Cache-Control": "private, max-age=3600"})


async def get_audio(request: web.Request) -> web.Response:
    """A stopped recording's WAV file, for the participants of its call (and admins)."""
    principal = await _principal(request)
    sid = checked_id(request.match_info["sid"], "sid")
    # Access is checked before the status, so a stranger cannot learn whether someone's recording is done.
    session = await _session_of(_service(request), request.app[DEPS].calls, principal, sid)
    return await audio_response(request, sid, session)


def routes() -> list[web.RouteDef]:
    """The recording routes, for the application's router."""
    return [
        web.post("/api/recording/start", post_start),
        web.post("/api/recording/stop", post_stop),
        web.get("/api/recording/status", get_status),
        web.get("/api/recording/list", get_list),
        web.get("/api/recording/{sid}/audio", get_audio),
    ]
