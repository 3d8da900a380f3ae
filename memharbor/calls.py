"""The call model, once: statuses, the legal transitions by role and the stamps each sets, the fields
apps may write, and channel-name assignment. Security rules tests, the watcher and the REST shim all
follow the tables in this module.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from memharbor import agora
from memharbor.errors import Forbidden, IllegalTransition


class Status(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    MISSED = "missed"
    ENDED = "ended"


FINAL = frozenset({Status.DECLINED, Status.CANCELLED, Status.MISSED, Status.ENDED})
# Calls the watcher follows: everything that can still change status.
ACTIVE = frozenset({Status.PENDING, Status.ACCEPTED})


class Actor(StrEnum):
    """Who makes a change: the call's caller, its receiver, or the server."""

    CALLER = "caller"
    RECEIVER = "receiver"
    SERVER = "server"


@dataclass(frozen=True)
class Transition:
    """One legal move of the state machine."""

    source: Status
    target: Status
    actors: frozenset[Actor]
    stamp: str  # the timestamp field set with updatedAt

    @property
    def fields(self) -> frozenset[str]:
        """The fields a client writes for this move (and nothing else)."""
        return frozenset({"status", self.stamp, "updatedAt"})


TRANSITIONS: tuple[Transition, ...] = (
    Transition(Status.PENDING, Status.ACCEPTED, frozenset({Actor.RECEIVER}), "answeredAt"),
    Transition(Status.PENDING, Status.DECLINED, frozenset({Actor.RECEIVER}), "answeredAt"),
    Transition(Status.PENDING, Status.CANCELLED, frozenset({Actor.CALLER}), "endedAt"),
    Transition(Status.PENDING, Status.MISSED, frozenset({Actor.CALLER, Actor.SERVER}), "endedAt"),
    Transition(Status.ACCEPTED, Status.ENDED, frozenset({Actor.CALLER, Actor.RECEIVER, Actor.SERVER}), "endedAt"),
)
_BY_PAIR = {(t.source, t.target): t for t in TRANSITIONS}


def path_to(status: Status) -> tuple[Transition, ...]:
    """The moves that lead from `pending` to `status`: every status has one source, so there is one path."""
    if status == Status.PENDING:
        return ()
    move = next(t for t in TRANSITIONS if t.target == status)
    return (*path_to(move.source), move)


# The timestamps status changes set, in the order a call's path sets them, and the ones each status has:
# a status is proven by the stamps of its path (`ended` needs `answeredAt` and `endedAt`).
STAMPS = ("answeredAt", "endedAt")
STATUS_STAMPS: dict[Status, tuple[str, ...]] = {s: tuple(m.stamp for m in path_to(s)) for s in Status}
# Fields that name the call and its people: set on create and never changed afterwards.
IDENTITY_FIELDS = ("callId", "groupId", "callerId", "receiverId")

# Fields of a new call document.
CREATE_REQUIRED = frozenset({"callId", "groupId", "callerId", "receiverId", "status", "createdAt", "updatedAt"})
CREATE_OPTIONAL = frozenset({"callerName", "groupNameSnapshot", "receiverNameSnapshot", "giverNameSnapshot", "record"})
# Written only by the server; a client write that touches one is rejected by the rules.
SERVER_FIELDS = frozenset(
    {
        "channelName",
        "pushSent",
        "pushPlatform",
        "pushError",
        "ringDeadline",
        "durationSec",
        "recordingId",
        "aiSummary",
        "violation",
        "reviewCount",
        "lastReviewAt",
    }
)
REVIEW_FIELDS = frozenset({"humanSummary", "humanKeywords", "humanNotes"})

# Ids as the rules write them (RE2 has no lookahead), and the ids Firestore reserves (`__.*__`): a
# document with such an id cannot be read or written, so they are bad input, never "Firestore is down".
ID_RULE = r"^[A-Za-z0-9_-]{1,128}$"
GROUP_ID_RULE = r"^[A-Za-z0-9_-]{1,36}$"
RESERVED_ID_RULE = r"^__.*__$"
ID_PATTERN = re.compile(r"^(?!__.*__$)" + ID_RULE[1:])
# ID_PATTERN in words, for error messages ("callId must be ...").
ID_WORDS = "must be 1-128 characters of A-Z a-z 0-9 _ -, not __reserved__"
GROUP_ID_PATTERN = re.compile(r"^(?!__.*__$)" + GROUP_ID_RULE[1:])
MAX_NAME_CHARS = 200
MAX_SUMMARY_CHARS = 20000
MAX_KEYWORDS = 50
MAX_KEYWORD_CHARS = 100

# recordings/{sid}: the fields an app writes to request a recording of a call it takes part in (while the
# call is ACTIVE), the fields only the server writes, and the one field a participant may set afterwards.
RECORDING_REQUEST_FIELDS = frozenset({"channel", "callId", "status", "requestedBy", "createdAt"})
RECORDING_SERVER_FIELDS = frozenset(
    {
        "uid",
        "filename",
        "url",
        "storagePath",
        "groupId",
        "user1",
        "user2",
        "duration",
        "fileSize",
        "format",
        "spec",
        "recordedAt",
        "stoppedAt",
        "error",
        "workerId",
        "leaseUntil",
    }
)
RECORDING_STOP_FIELD = "stopRequested"
# users/{uid}: the platforms an app may register, and the fields only the server writes.
USER_PLATFORMS = frozenset({"ios", "android"})
USER_SERVER_FIELDS = frozenset({"pushTokenInvalidAt"})
# users/{uid}: every field an app may write (anything else is rejected by the rules).
USER_FIELDS = frozenset({"platform", "voipToken", "apnsToken", "fcmToken", "displayName", "updatedAt"})
# A device token: FCM's and APNs' alphabets, and nothing that could change the path of an APNs request.
PUSH_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_:-]{1,1000}$")
# The receiver's device that answered or declined (users/{uid}/devices/{deviceId}), optional, written with
# `accepted` / `declined`: every other device of the receiver is told to stop ringing (memharbor/devices.py).
ANSWERED_ON = "answeredOn"


def find_transition(source: str | None, target: str) -> Transition | None:
    """The legal move from `source` to `target`, or None."""
    try:
        return _BY_PAIR.get((Status(source), Status(target))) if source is not None else None
    except ValueError:
        return None


def reachable(source: str | None, target: str) -> bool:
    """True when legal moves lead from `source` to `target` (in one step or several).

    An observer such as the watcher may see only the end of a quick run of changes, e.g. a call that
    went `pending -> accepted -> ended` between two of its reads; that is still legal.
    """
    frontier = [source]
    seen = set()
    while frontier:
        current = frontier.pop()
        for move in TRANSITIONS:
            if move.source == current and move.target not in seen:
                if move.target == target:
                    return True
                seen.add(move.target)
                frontier.append(move.target)
    return False


def actor_of(uid: str | None, call: Mapping[str, Any]) -> Actor | None:
    """The role `uid` plays in `call` (the caller wins if someone calls themselves), or None."""
    if uid is None:
        return None
    if uid == call.get("callerId"):
        return Actor.CALLER
    if uid == call.get("receiverId"):
        return Actor.RECEIVER
    return None


def check_transition(call: Mapping[str, Any], target: str, actor: Actor) -> Transition:
    """The transition `actor` may make to `target`; IllegalTransition or Forbidden (not theirs) otherwise."""
    source = call.get("status")
    move = find_transition(source, target)
    if move is None:
        raise IllegalTransition(f"cannot go from {source} to {target}", field="status")
    if actor not in move.actors:
        raise Forbidden(f"the {actor.value} may not move a call from {source} to {target}")
    return move


def field_errors(doc: Mapping[str, Any]) -> list[str]:
    """Problems with the app-written fields of a call document (types, lengths), empty when valid."""
    errors = []
    for name in ("callId", "callerId", "receiverId"):
        if not isinstance(doc.get(name), str) or not ID_PATTERN.fullmatch(doc[name]):
            errors.append(f"{name} {ID_WORDS}")
    if not isinstance(doc.get("groupId"), str) or not GROUP_ID_PATTERN.fullmatch(doc["groupId"]):
        errors.append("groupId must be 1-36 characters of A-Z a-z 0-9 _ -, not __reserved__")
    if doc.get("callerId") is not None and doc.get("callerId") == doc.get("receiverId"):
        errors.append("receiverId must differ from callerId")
    for name in ("callerName", "groupNameSnapshot", "receiverNameSnapshot", "giverNameSnapshot"):
        value = doc.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME_CHARS):
            errors.append(f"{name} must be a string of at most {MAX_NAME_CHARS} characters")
    if "record" in doc and not isinstance(doc["record"], bool):
        errors.append("record must be a boolean")
    if doc.get("status") not in {s.value for s in Status}:
        errors.append("status must be one of " + ", ".join(s.value for s in Status))
    return errors


def stamp_errors(call: Mapping[str, Any]) -> list[str]:
    """Problems with the status stamps, empty when they prove the path from `pending` to the call's status.

    The stamps of the path (`STATUS_STAMPS`) are timestamps, the first later than `createdAt` (a status
    change is a later write than the create, so a call created directly as `ended` fails), `answeredAt`
    not after `endedAt`; the other stamps are absent. A status outside `Status` is `field_errors`' to report.
    """
    status = call.get("status")
    if not isinstance(status, str) or status not in STATUS_STAMPS:
        return []
    required = STATUS_STAMPS[Status(status)]
    errors = [f"{name} must be absent while {status}" for name in STAMPS if name not in required and name in call]
    previous_name, previous = "createdAt", call.get("createdAt")
    for name in required:
        value = call.get(name)
        if not isinstance(value, datetime):
            errors.append(f"{name} must be a timestamp while {status}")
        elif isinstance(previous, datetime):
            strict = previous_name == "createdAt"
            if value < previous or (strict and value == previous):
                errors.append(f"{name} must be {'later than' if strict else 'no earlier than'} {previous_name}")
        previous_name, previous = name, value
    return errors


def invariant_errors(call: Mapping[str, Any], doc_id: str | None = None) -> list[str]:
    """Everything wrong with a stored call for its status, empty for every document the rules let apps make.

    The app-written fields (`field_errors`), `callId` equal to the document id (when `doc_id` is given),
    `createdAt` and `updatedAt` timestamps, and the status stamps (`stamp_errors`).
    """
    errors = field_errors(call)
    if doc_id is not None and call.get("callId") != doc_id:
        errors.append("callId must equal the document id")
    for name in ("createdAt", "updatedAt"):
        if not isinstance(call.get(name), datetime):
            errors.append(f"{name} must be a timestamp")
    return errors + stamp_errors(call)


def server_fields_in(call: Mapping[str, Any]) -> list[str]:
    """The server-owned fields present on a call, sorted (none may be on a call the server never touched)."""
    return sorted(SERVER_FIELDS & call.keys())


def review_errors(fields: Mapping[str, Any]) -> list[str]:
    """Problems with review fields written after a call ended."""
    errors = []
    for name in ("humanSummary", "humanNotes"):
        value = fields.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_SUMMARY_CHARS):
            errors.append(f"{name} must be a string of at most {MAX_SUMMARY_CHARS} characters")
    keywords = fields.get("humanKeywords")
    if keywords is not None and (
        not isinstance(keywords, list)
        or len(keywords) > MAX_KEYWORDS
        or any(not isinstance(k, str) or len(k) > MAX_KEYWORD_CHARS for k in keywords)
    ):
        errors.append(f"humanKeywords must be a list of at most {MAX_KEYWORDS} short strings")
    return errors


def channel_name(group_id: str, caller_id: str, receiver_id: str, call_id: str, epoch_ms: int) -> str:
    """The call's Agora channel: the seed's `{groupId}_{callerId}_{receiverId}_{epochMillis}` followed by
    `_{digest}` when that satisfies Agora's rule, else the compact `{groupId}_{digest}_{epochMillis}`.

    The digest (the first 12 hex characters of SHA-256 over caller, receiver and call id) makes the name
    the call's own: without it two calls between the same users in the same millisecond would share a
    channel. With groupId at most 36 bytes the compact form is at most 63 bytes.
    """
    digest = hashlib.sha256(f"{caller_id}/{receiver_id}/{call_id}".encode()).hexdigest()[:12]
    seed_form = f"{group_id}_{caller_id}_{receiver_id}_{epoch_ms}_{digest}"
    if agora.channel_name_error(seed_form) is None:
        return seed_form
    return f"{group_id}_{digest}_{epoch_ms}"


def duration_seconds(answered_at: Any, ended_at: Any) -> int:
    """Whole seconds between two timestamps, never negative; 0 unless both are datetimes."""
    if not isinstance(answered_at, datetime) or not isinstance(ended_at, datetime):
        return 0
    return max(0, round((ended_at - answered_at).total_seconds()))
