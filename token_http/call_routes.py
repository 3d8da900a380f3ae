"""The seed's call routes (`/api/call/*`): a thin REST shim over the same Firestore writes an app makes.

Request fields are the seed's (snake_case), responses its camelCase shapes. Each route authenticates
like /api/token and acts as the authenticated user: the caller places and cancels, the receiver
answers, either participant ends. Admins (claim `admin`) act as the server; with MEMHARBOR_AUTH=none
the ids in the body are trusted, as the seed did, and the route acts as the role it implies.
Every status change is `memharbor.calls`' state machine, applied in a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from memharbor import calls
from memharbor.access import Principal, is_participant
from memharbor.calls import Actor, Status
from memharbor.errors import DomainError, Unavailable
from memharbor.repositories.calls import CallRepository, new_call_document, new_call_id
from token_http import ratelimit
from token_http.body import json_object, optional_str, required_str
from token_http.errors import ApiError, bad_request, checked_id, configured, from_domain, json_response
from token_http.keys import DEPS

# How long invite waits for the watcher to record the push result, and how often it looks.
PUSH_WAIT_S = 3.0
PUSH_POLL_S = 0.05
DEFAULT_TIMEOUT_S = 60
MAX_TIMEOUT_S = 30 * 86400

ACTIONS = {"accept": Status.ACCEPTED, "decline": Status.DECLINED}

# Document field -> request field, for the refusals of a create, which name document fields.
_REQUEST_FIELD = {
    "callId": "call_id",
    "groupId": "group_id",
    "callerId": "caller_id",
    "receiverId": "receiver_id",
    "callerName": "caller_name",
    "groupNameSnapshot": "group_name_snapshot",
    "receiverNameSnapshot": "receiver_name_snapshot",
    "giverNameSnapshot": "giver_name_snapshot",
}


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def _service(request: web.Request) -> CallRepository:
    return configured(request.app[DEPS].call_repository, "the call service")


async def _principal(request: web.Request) -> Principal:
    return await request.app[DEPS].authenticator.authenticate(request.headers.get("Authorization"))


def _id(body: Mapping[str, Any], field: str) -> str:
    return checked_id(required_str(dict(body), field, max_bytes=1024), field)


def _name(body: dict[str, Any], field: str) -> str | None:
    value = optional_str(body, field, max_bytes=4 * calls.MAX_NAME_CHARS)
    if value is not None and len(value) > calls.MAX_NAME_CHARS:
        raise bad_request(field, f"{field} must be at most {calls.MAX_NAME_CHARS} characters")
    return value


def _actor(principal: Principal, call: Mapping[str, Any], implied: Actor) -> Actor:
    """The role the principal plays: its own in the call, the server for admins, `implied` when open."""
    if principal.open_access:
        return implied
    role = calls.actor_of(principal.uid, call)
    if role is not None:
        return role
    if principal.admin:
        return Actor.SERVER
    raise ApiError(403, "you are not a participant of this call", field="call_id")


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: Any) -> str | None:
    """A Firestore timestamp as ISO 8601 in UTC (`2026-02-04T05:49:23.670148Z`); None for anything else.

    Only a datetime qualifies: a stored string could say anything ("yesterday"), and the schema promises
    a date-time.
    """
    stamp = _utc(value)
    if stamp is None:
        return None
    # Not strftime: its %Y drops the leading zeros of years before 1000, which Firestore can store.
    return f"{stamp.year:04d}-{stamp:%m-%dT%H:%M:%S.%f}Z"


_STATUSES = frozenset(s.value for s in Status)


class _Fitted:
    """Reads a stored call as the documented types, noting each document field that does not fit.

    Admins and undeployed rules can write anything; the answer still keeps to the schema and says
    which fields it had to leave out (`malformedFields`).
    """

    def __init__(self, call: Mapping[str, Any]) -> None:
        self.call = call
        self.malformed: list[str] = []

    def _unfit(self, field: str, required: bool) -> None:
        # Absent (or null) optional fields are merely unset; anything else that did not fit is malformed.
        if (required or self.call.get(field) is not None) and field not in self.malformed:
            self.malformed.append(field)

    def text(self, field: str, required: bool = False) -> str | None:
        value = self.call.get(field)
        if isinstance(value, str):
            return value
        self._unfit(field, required)
        return None

    def stamp(self, field: str, required: bool = False) -> datetime | None:
        value = _utc(self.call.get(field))
        if value is None:
            self._unfit(field, required)
        return value

    def number(self, field: str) -> int | float | None:
        value = self.call.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return value
        self._unfit(field, False)
        return None

    def count(self, field: str) -> int:
        value = self.call.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self._unfit(field, False)
        return 0

    def status(self) -> str | None:
        value = self.call.get("status")
        if isinstance(value, str) and value in _STATUSES:
            return value
        self._unfit("status", True)
        return None

    def call_id(self, call_id: str) -> str:
        # The document id is the call's id; a stored callId that says otherwise is the malformed one.
        if self.call.get("callId") != call_id:
            self._unfit("callId", True)
        return call_id

    def words(self, field: str) -> list[str]:
        value = self.call.get(field)
        words = [w for w in value if isinstance(w, str)] if isinstance(value, list) else []
        if not isinstance(value, list) or len(words) != len(value):
            self._unfit(field, False)
        return words


def status_body(call_id: str, call: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's GET /api/call/status shape for a call document, always within the documented schema."""
    fit = _Fitted(call)
    status = fit.status()
    answered_at, ended_at = fit.stamp("answeredAt"), fit.stamp("endedAt")
    duration = fit.number("durationSec")
    if duration is None and status == Status.ENDED.value:
        duration = calls.duration_seconds(answered_at, ended_at)
    giver, caller_name = fit.text("giverNameSnapshot"), fit.text("callerName")
    body: dict[str, Any] = {
        "callId": fit.call_id(call_id),
        "channelName": fit.text("channelName"),
        "groupId": fit.text("groupId", required=True),
        "receiverId": fit.text("receiverId", required=True),
        "caregiverUserId": fit.text("callerId", required=True),
        "groupNameSnapshot": fit.text("groupNameSnapshot"),
        "giverNameSnapshot": giver or caller_name,
        "receiverNameSnapshot": fit.text("receiverNameSnapshot"),
        "status": status,
        "createdAt": iso(fit.stamp("createdAt", required=True)),
        "answeredAt": iso(answered_at),
        "endedAt": iso(ended_at),
        "durationSec": duration,
        "humanSummary": fit.text("humanSummary") or "",
        "humanKeywords": fit.words("humanKeywords"),
        "humanNotes": fit.text("humanNotes") or "",
        "aiSummary": fit.text("aiSummary") or "",
        "reviewCount": fit.count("reviewCount"),
        "lastReviewAt": iso(fit.stamp("lastReviewAt")),
    }
    if fit.malformed:
        body["malformedFields"] = sorted(fit.malformed)
    return body


# ---------------------------------------------------------------------------------------------------
# POST /api/call/invite
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InviteRequest:
    """A checked /api/call/invite body."""

    group_id: str
    caller_id: str
    receiver_id: str
    optional: dict[str, Any]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> InviteRequest:
        group_id = required_str(body, "group_id")
        if not calls.GROUP_ID_PATTERN.fullmatch(group_id):
            raise bad_request("group_id", "group_id must be 1-36 characters of A-Z a-z 0-9 _ -, not __reserved__")
        caller_id = _id(body, "caller_id")
        receiver_id = _id(body, "receiver_id")
        if receiver_id == caller_id:
            raise bad_request("receiver_id", "receiver_id must differ from caller_id")
        record = body.get("record")
        if record is not None and not isinstance(record, bool):
            raise bad_request("record", "record must be a boolean")
        optional = {
            # The seed's default: the caller's display name is their id.
            "callerName": _name(body, "caller_name") or caller_id,
            "groupNameSnapshot": _name(body, "group_name_snapshot"),
            "receiverNameSnapshot": _name(body, "receiver_name_snapshot"),
            "giverNameSnapshot": _name(body, "giver_name_snapshot"),
            "record": record,
        }
        return cls(group_id, caller_id, receiver_id, {k: v for k, v in optional.items() if v is not None})


def _pushed(doc: Mapping[str, Any]) -> bool:
    return "pushSent" in doc and doc.get("channelName") is not None


async def _await_push(service: CallRepository, call_id: str) -> dict[str, Any]:
    """The call as last read, once the watcher recorded the push (or after PUSH_WAIT_S)."""
    latest: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(PUSH_WAIT_S):
            while True:
                with contextlib.suppress(Unavailable):
                    doc = await service.get(call_id)
                    if doc is not None:
                        latest = doc
                if _pushed(latest):
                    break
                await asyncio.sleep(PUSH_POLL_S)
    return latest


async def post_invite(request: web.Request) -> web.Response:
    """Place a call: create calls/{callId} as the caller's app would, then report the watcher's push."""
    principal = await _principal(request)
    await ratelimit.enforce(request, principal)
    req = InviteRequest.parse(await json_object(request))
    if not principal.unrestricted and req.caller_id != principal.uid:
        raise ApiError(403, "caller_id must be your own uid", field="caller_id")
    service = _service(request)
    call_id = new_call_id()
    doc = new_call_document(call_id, req.group_id, req.caller_id, req.receiver_id, req.optional)
    try:
        await service.create(doc)
    except DomainError as exc:
        raise from_domain(exc, _REQUEST_FIELD) from None
    latest = await _await_push(service, call_id)
    push_sent = latest.get("pushSent")
    return json_response(
        {
            "success": True,
            "callId": call_id,
            "channelName": latest.get("channelName"),
            "pushSent": push_sent if isinstance(push_sent, bool) else None,
            "pushPlatform": latest.get("pushPlatform") if isinstance(push_sent, bool) else None,
        }
    )


# ---------------------------------------------------------------------------------------------------
# Transitions: answer, cancel, missed, end
# ---------------------------------------------------------------------------------------------------


async def _move(
    request: web.Request, principal: Principal, call_id: str, target: Status, implied: Actor
) -> dict[str, Any]:
    """Apply one transition as the principal; returns the call as it was before."""
    service = _service(request)
    call = await service.get(call_id)
    if call is None:
        raise ApiError(404, f"unknown call {call_id}", field="call_id")
    actor = _actor(principal, call, implied)
    return await service.transition(call_id, target, actor)


async def _call_id_body(request: web.Request) -> tuple[Principal, dict[str, Any], str]:
    principal = await _principal(request)
    body = await json_object(request)
    return principal, body, _id(body, "call_id")


async def post_answer(request: web.Request) -> web.Response:
    """The receiver accepts or declines a pending call."""
    principal, body, call_id = await _call_id_body(request)
    action = required_str(body, "action")
    if action not in ACTIONS:
        raise bad_request("action", "action must be 'accept' or 'decline'")
    target = ACTIONS[action]
    before = await _move(request, principal, call_id, target, Actor.RECEIVER)
    return json_response(
        {"success": True, "callId": call_id, "channelName": before.get("channelName"), "status": target.value}
    )


async def _simple_move(request: web.Request, target: Status, implied: Actor) -> web.Response:
    principal, _, call_id = await _call_id_body(request)
    await _move(request, principal, call_id, target, implied)
    return json_response({"success": True, "callId": call_id, "status": target.value})


async def post_cancel(request: web.Request) -> web.Response:
    """The caller hangs up before the receiver answered."""
    return await _simple_move(request, Status.CANCELLED, Actor.CALLER)


async def post_missed(request: web.Request) -> web.Response:
    """The caller's ring timer ran out (the server's own timeout does the same)."""
    return await _simple_move(request, Status.MISSED, Actor.CALLER)


async def post_end(request: web.Request) -> web.Response:
    """A participant (or the server) ends an accepted call; reports its duration."""
    principal, _, call_id = await _call_id_body(request)
    before = await _move(request, principal, call_id, Status.ENDED, Actor.CALLER)
    try:
        after = await _service(request).get(call_id) or {}
    except Unavailable:
        after = {}  # the call did end; without the committed stamp, measure to now
    ended_at = after.get("endedAt") or datetime.fromtimestamp(request.app[DEPS].clock.time(), UTC)
    duration = calls.duration_seconds(after.get("answeredAt") or before.get("answeredAt"), ended_at)
    return json_response(
        {"success": True, "callId": call_id, "status": Status.ENDED.value, "durationSeconds": duration}
    )


# ---------------------------------------------------------------------------------------------------
# POST /api/call/timeout/sweep
# ---------------------------------------------------------------------------------------------------


def _timeout_seconds(body: dict[str, Any]) -> int | float:
    value = body.get("timeout_seconds")
    if value is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request("timeout_seconds", "timeout_seconds must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise bad_request("timeout_seconds", f"timeout_seconds must be positive and at most {MAX_TIMEOUT_S}")
    return value


async def post_sweep(request: web.Request) -> web.Response:
    """Move every pending call older than timeout_seconds to missed, as the server (admins only)."""
    deps = request.app[DEPS]
    principal = await _principal(request)
    if not principal.unrestricted:
        raise ApiError(403, "only the server (an admin) may sweep calls")
    body = await json_object(request) if request.body_exists else {}
    timeout_s = _timeout_seconds(body)
    service = _service(request)
    cutoff = datetime.fromtimestamp(deps.clock.time() - timeout_s, UTC)
    stale = await service.stale_pending(cutoff)
    updated = 0
    for call_id in stale:
        try:
            await service.transition(call_id, Status.MISSED, Actor.SERVER)
        except DomainError:
            continue  # answered, cancelled or timed out meanwhile: not this sweep's change (an outage propagates)
        updated += 1
    return json_response({"success": True, "timeoutSeconds": timeout_s, "updatedCount": updated})


# ---------------------------------------------------------------------------------------------------
# GET /api/call/status/{call_id}
# ---------------------------------------------------------------------------------------------------


async def get_status(request: web.Request) -> web.Response:
    """The call as the seed reported it; participants (and admins) only."""
    principal = await _principal(request)
    call_id = checked_id(request.match_info["call_id"], "call_id")
    call = await _service(request).get(call_id)
    if call is None:
        raise ApiError(404, f"unknown call {call_id}", field="call_id")
    if not principal.unrestricted and not is_participant(principal.uid, call):
        raise ApiError(403, "you are not a participant of this call", field="call_id")
    return json_response(status_body(call_id, call))


def routes() -> list[web.RouteDef]:
    """The call routes, for the application's router."""
    return [
        web.post("/api/call/invite", post_invite),
        web.post("/api/call/answer", post_answer),
        web.post("/api/call/cancel", post_cancel),
        web.post("/api/call/missed", post_missed),
        web.post("/api/call/timeout/sweep", post_sweep),
        web.post("/api/call/end", post_end),
        web.get("/api/call/status/{call_id}", get_status),
    ]
