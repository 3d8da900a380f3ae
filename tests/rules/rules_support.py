"""Shared pieces of the security-rules tests: the cast, documents as the server would store them, and the
expectations derived from memharbor.calls' tables (never restated here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from memharbor import calls
from memharbor.calls import Actor, Status, Transition
from tests.support.firestore_rest import FirestoreRest

CALLER = "alice-uid"
RECEIVER = "bob-uid"
STRANGER = "mallory-uid"
CALL_ID = "call-1"
GROUP_ID = "group-1"
CHANNEL = f"{GROUP_ID}_{CALLER}_{RECEIVER}_1700000000000"
CALL_PATH = f"calls/{CALL_ID}"
# A moment well in the past: what a client would write instead of the request time.
CLIENT_TIME = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
TAMPERED = "x-tampered"

# Who makes a request in the tests: the call's two roles, someone else, and nobody.
PRINCIPALS = ("caller", "receiver", "stranger", "anonymous")
_ROLE_ACTOR = {"caller": Actor.CALLER, "receiver": Actor.RECEIVER}

# Sample values an app writes for the optional create fields; a field added to calls.CREATE_OPTIONAL
# without a sample here makes the tests fail loudly rather than pass untested.
OPTIONAL_SAMPLES: dict[str, Any] = {
    "callerName": "Alice",
    "groupNameSnapshot": "Kim family",
    "receiverNameSnapshot": "Grandpa Bob",
    "giverNameSnapshot": "Alice",
    "record": True,
}
NAME_FIELDS = tuple(sorted(name for name, value in OPTIONAL_SAMPLES.items() if isinstance(value, str)))


def actor_of(principal: str) -> Actor | None:
    """The calls.Actor a test principal plays (None for strangers and anonymous requests)."""
    return _ROLE_ACTOR.get(principal)


def permitted(principal: str, source: Status, target: Status) -> Transition | None:
    """The TRANSITIONS row that lets `principal` move a call from `source` to `target`, or None."""
    move = calls.find_transition(source, target)
    actor = actor_of(principal)
    if move is None or actor is None or actor not in move.actors:
        return None
    return move


def client_moves() -> list[tuple[Transition, str]]:
    """Every (transition, principal) pair an app may perform, from TRANSITIONS."""
    return [
        (move, principal)
        for move in calls.TRANSITIONS
        for principal in ("caller", "receiver")
        if actor_of(principal) in move.actors
    ]


def move_id(move: Transition) -> str:
    return f"{move.source.value}->{move.target.value}"


def all_stamps() -> list[str]:
    """The timestamp fields the transitions set, besides updatedAt."""
    return sorted({move.stamp for move in calls.TRANSITIONS})


def new_call(call_id: str = CALL_ID, **overrides: Any) -> dict[str, Any]:
    """The app-written fields of a valid new call, without the two server timestamps."""
    fields: dict[str, Any] = {
        "callId": call_id,
        "groupId": GROUP_ID,
        "callerId": CALLER,
        "receiverId": RECEIVER,
        "status": Status.PENDING.value,
    }
    fields.update(overrides)
    return fields


def full_new_call(call_id: str = CALL_ID) -> dict[str, Any]:
    """A valid new call carrying every CREATE_OPTIONAL field."""
    missing = calls.CREATE_OPTIONAL - OPTIONAL_SAMPLES.keys()
    if missing:
        raise AssertionError(f"no sample value for new optional create field(s) {sorted(missing)}")
    return new_call(call_id, **{name: OPTIONAL_SAMPLES[name] for name in calls.CREATE_OPTIONAL})


def _path_to(status: Status) -> list[Transition]:
    """The transitions that lead from `pending` to `status` (empty for pending itself)."""
    if status == Status.PENDING:
        return []
    move = next((t for t in calls.TRANSITIONS if t.target == status), None)
    if move is None:
        raise AssertionError(f"no transition reaches {status}")
    return [*_path_to(move.source), move]


def stored_call(status: Status, call_id: str = CALL_ID, **extra: Any) -> dict[str, Any]:
    """A call as the server would have stored it by the time it reached `status`."""
    doc = full_new_call(call_id) | {
        "status": status.value,
        "createdAt": T0,
        "updatedAt": T0,
        "channelName": CHANNEL,
        "ringDeadline": T0 + timedelta(seconds=60),
        "pushSent": True,
        "pushPlatform": "ios",
    }
    moment = T0
    for move in _path_to(status):
        moment += timedelta(seconds=10)
        doc[move.stamp] = moment
        doc["updatedAt"] = moment
    if status == Status.ENDED:
        doc["durationSec"] = 10
    doc.update(extra)
    return doc


def stored_recording(call_id: str = CALL_ID, **extra: Any) -> dict[str, Any]:
    """A recording session requested for the call, as stored."""
    return {
        "channel": CHANNEL,
        "callId": call_id,
        "status": "recording",
        "requestedBy": CALLER,
        "createdAt": T0,
        "uid": 999999,
        "workerId": "worker-1",
        "leaseUntil": T0 + timedelta(seconds=30),
    } | extra


def recording_request(requested_by: str = CALLER, **overrides: Any) -> dict[str, Any]:
    """The fields an app writes to request a recording (createdAt is added as the request time)."""
    return {"channel": CHANNEL, "callId": CALL_ID, "status": "requested", "requestedBy": requested_by} | overrides


@dataclass
class World:
    """The emulator as seen by the test's principals, over one shared connection."""

    base: FirestoreRest
    _clients: dict[str, FirestoreRest] = field(default_factory=dict)

    @property
    def owner(self) -> FirestoreRest:
        return self.client("owner")

    def client(self, principal: str) -> FirestoreRest:
        """'caller', 'receiver', 'stranger', 'anonymous', 'owner', or any other uid."""
        if principal not in self._clients:
            uid = {"caller": CALLER, "receiver": RECEIVER, "stranger": STRANGER}.get(principal, principal)
            if principal == "anonymous":
                self._clients[principal] = self.base.anonymous()
            elif principal == "owner":
                self._clients[principal] = self.base.as_owner()
            else:
                self._clients[principal] = self.base.as_user(uid)
        return self._clients[principal]

    def seed(self, path: str, fields: dict[str, Any]) -> str:
        """Write a document as the owner (bypassing the rules) and return its path."""
        result = self.owner.set(path, fields)
        assert result.ok, result
        return path

    def seed_call(self, status: Status = Status.PENDING, call_id: str = CALL_ID, **extra: Any) -> str:
        return self.seed(f"calls/{call_id}", stored_call(status, call_id, **extra))

    def stored(self, path: str) -> dict[str, Any] | None:
        """The document as the owner sees it, or None when it does not exist."""
        result = self.owner.get(path)
        if result.status == 404:
            return None
        return result.data
