"""Recording requests: the `recordings/{sid}` fields token_http and the watcher write, and who may see a session.

The recorder owns a session once it is requested (DESIGN.md, `recordings/{sid}`): it moves `status`
through `requested -> recording -> stopping -> stopped | failed` and writes the results. The other
processes only create a request (`channel`, `callId` when the channel is a call's, `status: requested`,
`requestedBy`, `createdAt`) and ask for a stop by setting `stopRequested: true`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from memharbor import calls
from memharbor.access import Principal, is_participant


class RecordingStatus(StrEnum):
    REQUESTED = "requested"
    RECORDING = "recording"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


# Sessions the recorder still works on (or has yet to claim).
IN_PROGRESS = frozenset({RecordingStatus.REQUESTED, RecordingStatus.RECORDING, RecordingStatus.STOPPING})
FINISHED = frozenset({RecordingStatus.STOPPED, RecordingStatus.FAILED})
# Statuses that prove the recorder joined the channel and began writing.
BEGUN = frozenset({RecordingStatus.RECORDING, RecordingStatus.STOPPING, RecordingStatus.STOPPED})

# The bot's Agora uid when the session does not name one (the seed's and the recorder's default).
DEFAULT_RECORDER_UID = 999999
# requestedBy of the sessions the watcher asks for.
SERVER_REQUESTER = "server"
STOP_FIELD = calls.RECORDING_STOP_FIELD


class LiveCapReached(Exception):
    """The requester already has `cap` recording requests in progress, so a new one is refused."""

    def __init__(self, requested_by: str, cap: int) -> None:
        super().__init__(f"{requested_by} already has {cap} recording requests in progress")
        self.requested_by = requested_by
        self.cap = cap


@dataclass(frozen=True)
class LegacyChannel:
    """A seed-era channel `{groupId}_{user1}_{user2}` that belongs to no call."""

    group_id: str
    user1: str
    user2: str


def parse_legacy_channel(channel: str) -> LegacyChannel | None:
    """The parts of `{groupId}_{user1}_{user2}`, or None when the channel has another shape.

    Exactly three `_`-separated ids: with more parts the split would be ambiguous (ids may hold `_`),
    so such a channel names nobody.
    """
    parts = channel.split("_")
    if len(parts) != 3:
        return None
    group_id, user1, user2 = parts
    if not calls.GROUP_ID_PATTERN.fullmatch(group_id) or not all(calls.ID_PATTERN.fullmatch(u) for u in (user1, user2)):
        return None
    return LegacyChannel(group_id, user1, user2)


def call_session_id(call_id: str) -> str:
    """The id of a call's first recording session, whoever asks for it (the watcher or a REST start).

    One id per call makes a repeated or simultaneous request a collision on one document, not a duplicate.
    """
    return f"call-{call_id}"


def request_fields(channel: str, requested_by: str, call_id: str | None = None) -> dict[str, Any]:
    """The fields of a recording request but createdAt, the server's time the repository adds
    (`memharbor.repositories.recordings.new_request`)."""
    doc: dict[str, Any] = {"channel": channel, "status": RecordingStatus.REQUESTED.value, "requestedBy": requested_by}
    if call_id is not None:
        doc["callId"] = call_id
    return doc


def may_access(principal: Principal, session: Mapping[str, Any], call: Mapping[str, Any] | None) -> bool:
    """True when the principal may see or stop `session`; `call` is its call document, if it has one.

    Admins and the open mode may; a user when they are user1/user2 of the session, a participant of
    its call, or (for a session without a call) named by its legacy channel.
    """
    if principal.unrestricted:
        return True
    uid = principal.uid
    if uid is None:
        return False
    if uid in (session.get("user1"), session.get("user2")):
        return True
    if session.get("callId"):
        return call is not None and is_participant(uid, call)
    channel = session.get("channel")
    legacy = parse_legacy_channel(channel) if isinstance(channel, str) else None
    return legacy is not None and uid in (legacy.user1, legacy.user2)


def status_of(session: Mapping[str, Any]) -> RecordingStatus | None:
    """The session's status, or None when it is not one of the known ones."""
    value = session.get("status")
    try:
        return RecordingStatus(value) if isinstance(value, str) else None
    except ValueError:
        return None
