"""The recordings aggregate (`recordings/{sid}`) as the recorder uses it: claims, leases, results; its port
and Firestore adapter, and the query of unfinished sessions its listener and sweep read.

A session is held by the worker named in `workerId` until `leaseUntil`. A `requested` session is
claimed by setting both; the holder renews the lease while it records. Once a lease has lapsed,
another worker takes a `recording` session over (a new file segment: the old holder's audio stays on
its disk until its recovery uploads it), while a session that was asked to stop (or was `stopping`)
is marked `failed` instead, to be upgraded to `stopped` if the old holder's file is ever recovered.

Every write first reads who holds the session's lease and is committed only if the session is still as
read (a result also sets `calls/{callId}.recordingId`). The requests themselves are the REST shim's and
the watcher's (memharbor/repositories/recordings.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor import agora
from memharbor.calls import ACTIVE
from memharbor.recording_requests import IN_PROGRESS, STOP_FIELD, RecordingStatus, parse_legacy_channel
from memharbor.repositories.guarded import (
    DEFAULT_TIMEOUT_S,
    Decide,
    Decided,
    FirestoreClient,
    Guard,
    WritingClient,
    optimistic,
)
from memharbor.repositories.paths import CALLS, RECORDINGS
from memharbor.repositories.recordings import Session
from memharbor.wav import SPEC

_IN_PROGRESS = sorted(s.value for s in IN_PROGRESS)
T = TypeVar("T")

# The thread-based client, the only one that offers on_snapshot: the recorder's listener watches through it.
SyncClient = firestore.Client


def unfinished_sessions(client: FirestoreClient) -> Any:
    """The query of sessions not finished yet (requested, recording or stopping), on either client."""
    return client.collection(RECORDINGS).where(filter=FieldFilter("status", "in", _IN_PROGRESS))


class Claim(enum.Enum):
    NEW = "new"  # ours now; nobody recorded it before
    TAKEOVER = "takeover"  # ours now; its previous holder stopped renewing the lease mid-recording
    BUSY = "busy"  # another live worker holds it
    DONE = "done"  # already finished
    GONE = "gone"  # no such document
    FAILED = "failed"  # it cannot be recorded; marked failed with the reason


@dataclass
class ClaimResult:
    """What a claim found. When the session is ours (NEW, TAKEOVER), `channel` is set, and `call_id` when it
    is a call's; when it failed, `error` says why."""

    claim: Claim
    channel: str | None = None
    call_id: str | None = None
    error: str | None = None


@dataclass
class SegmentReport:
    """The results of one finished file segment, as written to the recording document."""

    filename: str
    url: str | None
    storage_path: str | None
    duration_ms: int
    file_size: int
    recorded_at: datetime
    worker_id: str
    stop_reason: str | None
    interrupted: bool = False
    tracks: list[dict[str, Any]] = field(default_factory=list)

    def as_entry(self) -> dict[str, Any]:
        """The segment as one entry of the document's `segments`."""
        entry: dict[str, Any] = {
            "filename": self.filename,
            "url": self.url,
            "storagePath": self.storage_path,
            "duration": self.duration_ms,
            "fileSize": self.file_size,
            "recordedAt": self.recorded_at,
            "workerId": self.worker_id,
            "stopReason": self.stop_reason,
            "interrupted": self.interrupted,
        }
        if self.tracks:
            entry["tracks"] = self.tracks
        return entry


class RecordingSessions(Protocol):
    """The stored sessions as one recorder worker uses them: claims, leases and results."""

    async def claim(self, sid: str) -> ClaimResult:
        """Try to take the session: a new one, or one whose holder's lease lapsed."""
        ...

    async def mark_recording(self, sid: str, filename: str, started_at: datetime) -> bool:
        """`status: recording` with the file being written; False when the session is no longer ours."""
        ...

    async def mark_stopping(self, sid: str, reason: str) -> bool:
        """`status: stopping` with the reason; False when the session is no longer ours."""
        ...

    async def renew(self, sid: str) -> bool:
        """Extend the lease; False when another worker holds the session now (or it is over)."""
        ...

    async def release(self, sid: str) -> bool:
        """Give back a session claimed but not begun (on shutdown), for another worker to claim at once."""
        ...

    async def fail(self, sid: str, error: str) -> bool:
        """Mark a session this worker holds `failed` with the reason."""
        ...

    async def complete(self, sid: str, owner_id: str, report: SegmentReport, call_id: str | None) -> str:
        """Write a finished segment: the session's result when `owner_id` still holds it ("final"), else
        one more entry of its `segments` ("segment"); "gone" when the document does not exist.
        """
        ...

    async def in_progress(self, limit: int = 500) -> list[Session]:
        """Sessions not yet finished (for the sweep)."""
        ...


def _ts(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _participants(doc: dict[str, Any], call: dict[str, Any] | None) -> dict[str, Any]:
    if call is not None:
        return {"groupId": call.get("groupId"), "user1": call.get("callerId"), "user2": call.get("receiverId")}
    legacy = parse_legacy_channel(str(doc.get("channel")))
    if legacy is None:
        return {"groupId": None, "user1": None, "user2": None}
    return {"groupId": legacy.group_id, "user1": legacy.user1, "user2": legacy.user2}


def _final_update(doc: dict[str, Any], report: SegmentReport, entry: dict[str, Any]) -> dict[str, Any]:
    """The fields that make `report` the session's result."""
    update: dict[str, Any] = {
        "status": RecordingStatus.STOPPED.value,
        "filename": report.filename,
        "url": report.url,
        "storagePath": report.storage_path,
        "duration": report.duration_ms,
        "fileSize": report.file_size,
        "format": "wav",
        "spec": dict(SPEC),
        "stoppedAt": firestore.SERVER_TIMESTAMP,
        "stopReason": report.stop_reason,
        "leaseUntil": firestore.DELETE_FIELD,
        "error": firestore.DELETE_FIELD,
        "segments": firestore.ArrayUnion([entry]),
    }
    if _ts(doc.get("recordedAt")) is None:
        update["recordedAt"] = report.recorded_at
    if report.interrupted:
        update["interrupted"] = True
    elif not doc.get("takeovers") and not doc.get("segments"):
        # A sweep marks a session interrupted when its holder's lease lapses (a crash, or only a stall or
        # partition); this holder recorded it whole and delivers it as the only segment: nothing was lost.
        update["interrupted"] = firestore.DELETE_FIELD
    if report.tracks:
        update["tracks"] = report.tracks
    return update


def completion(doc: dict[str, Any], owner_id: str, report: SegmentReport) -> tuple[str, dict[str, Any] | None]:
    """What delivering `report` does to the session `doc`: "final" or "segment", and the update (None: none).

    The holder's segment is the result; any other is a late segment of a session taken over, which lost
    audio in between. A segment already in `segments` is a retry after a commit whose answer was lost
    (a cut connection): it changes nothing, least of all marks the session interrupted.
    """
    entry = report.as_entry()
    listed = doc.get("segments")
    segments: list[Any] = listed if isinstance(listed, list) else []
    delivered = any(
        isinstance(seg, dict) and seg.get("filename") == entry["filename"] and seg.get("workerId") == entry["workerId"]
        for seg in segments
    )
    stopped = doc.get("status") == RecordingStatus.STOPPED.value
    if delivered:
        return ("final" if stopped and doc.get("filename") == entry["filename"] else "segment"), None
    if doc.get("workerId") != owner_id or stopped:
        return "segment", {"segments": firestore.ArrayUnion([entry]), "interrupted": True}
    return "final", _final_update(doc, report, entry)


def _request_error(doc: dict[str, Any], call: dict[str, Any] | None) -> str | None:
    """Why a requested session cannot be recorded (its channel, or its call), or None."""
    channel = doc.get("channel")
    problem = agora.channel_name_error(channel)
    if problem is not None:
        return f"invalid channel: {problem}"
    if doc.get("callId"):
        if call is None:
            return f"unknown call {doc.get('callId')}"
        if call.get("status") not in {s.value for s in ACTIVE}:
            return f"the call is {call.get('status')}, not active"
        if call.get("channelName") != channel:
            return "channel is not the call's channel"
    return None


def _failure(error: str) -> dict[str, Any]:
    return {
        "status": RecordingStatus.FAILED.value,
        "error": error,
        "stoppedAt": firestore.SERVER_TIMESTAMP,
        "leaseUntil": firestore.DELETE_FIELD,
    }


def claim_decision(
    doc: dict[str, Any], call: dict[str, Any] | None, worker_id: str, bot_uid: int, now: datetime, lease_until: datetime
) -> tuple[ClaimResult, dict[str, Any] | None]:
    """What worker `worker_id` claiming the session `doc` (of `call`) finds at `now`, and the update it writes."""
    status = doc.get("status")
    if status not in _IN_PROGRESS:
        return ClaimResult(Claim.DONE), None
    lease = _ts(doc.get("leaseUntil"))
    holder = doc.get("workerId")
    if holder and holder != worker_id and lease is not None and lease > now:
        return ClaimResult(Claim.BUSY), None
    stop_asked = bool(doc.get(STOP_FIELD))
    if status == RecordingStatus.REQUESTED:
        error = _request_error(doc, call) or ("stopped before recording began" if stop_asked else None)
        if error is not None:
            return ClaimResult(Claim.FAILED, error=error), _failure(error)
        claim = Claim.NEW
        update: dict[str, Any] = {"uid": bot_uid, **_participants(doc, call)}
    elif stop_asked or status == RecordingStatus.STOPPING:
        error = f"recorder {holder} stopped answering while {status}; its file is uploaded if it is recovered"
        return ClaimResult(Claim.FAILED, error=error), {**_failure(error), "workerId": holder, "interrupted": True}
    else:
        claim = Claim.TAKEOVER
        update = {"interrupted": True, "takeovers": firestore.Increment(1), "previousWorkerId": holder}
    call_id = doc.get("callId") if isinstance(doc.get("callId"), str) else None
    result = ClaimResult(claim, channel=str(doc["channel"]), call_id=call_id)
    return result, {**update, "workerId": worker_id, "leaseUntil": lease_until}


class FirestoreRecordingSessions:
    """RecordingSessions over an asyncio Firestore client, for the worker `worker_id`; every operation is
    guarded (time bound, Unavailable).

    No operation uses a transaction. A transaction's reads lock their documents until it commits, and a
    recorder killed or frozen inside one (a lease renewal runs every third of the lease) would leave the
    session locked until the database expires the lock: no other worker could take it over, no app or
    watcher write to it. Each write is instead guarded by the update time of the session as read
    (`guarded.optimistic`).
    """

    def __init__(
        self,
        client: Callable[[], WritingClient],
        worker_id: str,
        lease_s: float,
        bot_uid: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._guard = Guard(client, timeout_s)
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.bot_uid = bot_uid

    def _lease(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.lease_s)

    async def _change(self, sid: str, decide: Decide[T]) -> T:
        """Decide about the session as read and write the decision if it is unchanged (see `optimistic`)."""

        async def operation(db: WritingClient) -> T:
            return await optimistic(db, db.collection(RECORDINGS).document(sid), decide, f"recordings/{sid}")

        return await self._guard.run(operation)

    async def claim(self, sid: str) -> ClaimResult:
        async def decide(db: WritingClient, doc: dict[str, Any] | None) -> Decided[ClaimResult]:
            if doc is None:
                return Decided(ClaimResult(Claim.GONE))
            call = None
            call_id = doc.get("callId")
            if isinstance(call_id, str) and call_id:
                # The watcher stops a recording whose call ends after this read.
                call_snap = await db.collection(CALLS).document(call_id).get()
                call = call_snap.to_dict() if call_snap.exists else None
            result, update = claim_decision(doc, call, self.worker_id, self.bot_uid, datetime.now(UTC), self._lease())
            return Decided(result, update)

        return await self._change(sid, decide)

    async def _if_held(
        self, sid: str, update: Callable[[dict[str, Any]], dict[str, Any]], statuses: frozenset[str]
    ) -> bool:
        """Apply `update(doc)` when this worker holds the session in one of `statuses`."""

        async def decide(db: WritingClient, doc: dict[str, Any] | None) -> Decided[bool]:
            if doc is None or doc.get("workerId") != self.worker_id or doc.get("status") not in statuses:
                return Decided(False)
            return Decided(True, update(doc))

        return await self._change(sid, decide)

    async def mark_recording(self, sid: str, filename: str, started_at: datetime) -> bool:
        def update(doc: dict[str, Any]) -> dict[str, Any]:
            fields: dict[str, Any] = {
                "status": RecordingStatus.RECORDING.value,
                "filename": filename,
                "format": "wav",
                "spec": dict(SPEC),
                "leaseUntil": self._lease(),
            }
            if _ts(doc.get("recordedAt")) is None:
                fields["recordedAt"] = started_at
            return fields

        statuses = frozenset({RecordingStatus.REQUESTED.value, RecordingStatus.RECORDING.value})
        return await self._if_held(sid, update, statuses)

    async def mark_stopping(self, sid: str, reason: str) -> bool:
        def update(_: dict[str, Any]) -> dict[str, Any]:
            return {"status": RecordingStatus.STOPPING.value, "stopReason": reason, "leaseUntil": self._lease()}

        return await self._if_held(sid, update, frozenset(_IN_PROGRESS))

    async def renew(self, sid: str) -> bool:
        return await self._if_held(sid, lambda _: {"leaseUntil": self._lease()}, frozenset(_IN_PROGRESS))

    async def release(self, sid: str) -> bool:
        update = {"workerId": firestore.DELETE_FIELD, "leaseUntil": firestore.DELETE_FIELD}
        return await self._if_held(sid, lambda _: update, frozenset({RecordingStatus.REQUESTED.value}))

    async def fail(self, sid: str, error: str) -> bool:
        return await self._if_held(sid, lambda _: _failure(error), frozenset(_IN_PROGRESS))

    async def complete(self, sid: str, owner_id: str, report: SegmentReport, call_id: str | None) -> str:
        async def decide(db: WritingClient, doc: dict[str, Any] | None) -> Decided[str]:
            if doc is None:
                return Decided("gone")
            outcome, update = completion(doc, owner_id, report)
            # A result links its call, when the call still exists (one deleted after this read: a retry).
            call_ref = db.collection(CALLS).document(call_id) if call_id else None
            final = update is not None and outcome == "final"
            if final and call_ref is not None and (await call_ref.get()).exists:
                return Decided(outcome, update, [(call_ref, {"recordingId": sid})])
            return Decided(outcome, update)

        return await self._change(sid, decide)

    async def in_progress(self, limit: int = 500) -> list[Session]:
        async def operation(db: FirestoreClient) -> list[Session]:
            return [(snap.id, snap.to_dict() or {}) async for snap in unfinished_sessions(db).limit(limit).stream()]

        return await self._guard.run(operation)
