"""In-memory recordings repositories: the REST shim's (with a recorder that acts on its sessions as the real one
would), and the recorder's own."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from memharbor.errors import Conflict, NotFound
from memharbor.recording_requests import IN_PROGRESS, LiveCapReached, parse_legacy_channel
from memharbor.repositories.recording_sessions import Claim, ClaimResult, SegmentReport
from memharbor.repositories.recordings import Session, created_at
from tests.support.http_fakes import FakeClock


@dataclass
class FakeRecorder:
    """Plays the recorder on each read of a session: begins a request, finishes a stop, or neither."""

    begins: bool = True
    finishes: bool = True
    fail_with: str | None = None  # the request fails instead of beginning
    storage: bool = True  # Storage configured: url and storagePath written
    reads_before_acting: int = 0
    # The participants a stopped session names when its channel is not a legacy one.
    user1: str = "alice"
    user2: str = "bob"

    def step(self, sid: str, doc: dict[str, Any], reads: int, now: datetime) -> None:
        if reads <= self.reads_before_acting:
            return
        if doc["status"] == "requested" and self.fail_with is not None:
            doc.update({"status": "failed", "error": self.fail_with, "stoppedAt": now})
        elif doc["status"] == "requested" and self.begins:
            stamp = now.strftime("%Y-%m-%dT%H-%M-%S")
            doc.update(
                {"status": "recording", "uid": 999999, "filename": f"{doc['channel']}_{stamp}.wav", "recordedAt": now}
            )
        if doc["status"] in ("recording", "stopping") and doc.get("stopRequested") and self.finishes:
            legacy = parse_legacy_channel(doc["channel"])
            doc.update(
                {
                    "status": "stopped",
                    "groupId": "g1",
                    "user1": legacy.user1 if legacy else self.user1,
                    "user2": legacy.user2 if legacy else self.user2,
                    "duration": 120000,
                    "fileSize": 3840044,
                    "format": "wav",
                    "spec": {"sampleRate": 16000, "channels": 1, "bitDepth": 16},
                    "stoppedAt": now,
                }
            )
            if self.storage:
                doc["storagePath"] = f"recordings/{doc['filename']}"
                doc["url"] = f"http://storage.test/{doc['storagePath']}"


class FakeRecordingRepository:
    """An in-memory recordings collection (RecordingRepository) with FirestoreRecordingRepository's semantics.

    It also holds the calls the sessions belong to and serves their lookups (CallReader).
    """

    def __init__(self, clock: FakeClock, caller: str, receiver: str, channel: str) -> None:
        self.clock = clock
        self.caller, self.receiver, self.channel = caller, receiver, channel
        self.calls: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.created: list[tuple[str, dict[str, Any]]] = []  # each request as it was written
        self.stops: list[str] = []
        self.reads: dict[str, int] = {}
        self.stored_calls: list[tuple[int, str | None]] = []
        self.failure: Exception | None = None
        self.recorder = FakeRecorder(user1=caller, user2=receiver)
        # Sessions a racing writer created after in_progress() scanned: the scan does not return them.
        self.unseen: set[str] = set()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), UTC)

    def _fail(self) -> None:
        if self.failure is not None:
            raise self.failure

    def add_call(self, call_id: str = "c1", status: str = "accepted", **fields: Any) -> dict[str, Any]:
        doc = {
            "callId": call_id,
            "groupId": "g1",
            "callerId": self.caller,
            "receiverId": self.receiver,
            "status": status,
            "channelName": self.channel,
            **fields,
        }
        self.calls[call_id] = doc
        return doc

    def add_session(self, sid: str, status: str, age_s: float = 0.0, **fields: Any) -> dict[str, Any]:
        doc = {
            "channel": self.channel,
            "callId": "c1",
            "status": status,
            "requestedBy": self.caller,
            "createdAt": self.now() - timedelta(seconds=age_s),
            **fields,
        }
        self.sessions[sid] = doc
        return doc

    async def calls_on_channel(self, channel: str) -> list[dict[str, Any]]:
        self._fail()
        return [dict(c) for c in self.calls.values() if c.get("channelName") == channel]

    async def get_calls(self, call_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        self._fail()
        return {i: dict(self.calls[i]) for i in set(call_ids) if i in self.calls}

    async def create(self, sid: str, doc: dict[str, Any], live_cap: int | None = None) -> None:
        self._fail()
        if sid in self.sessions:
            raise Conflict("a recording session with this id already exists", field="sid")
        mine = [d for d in self.sessions.values() if d["requestedBy"] == doc["requestedBy"]]
        if live_cap is not None and len([d for d in mine if d["status"] in IN_PROGRESS]) >= live_cap:
            raise LiveCapReached(doc["requestedBy"], live_cap)
        stored = {k: self.now() if v is firestore.SERVER_TIMESTAMP else v for k, v in doc.items()}
        self.created.append((sid, dict(stored)))
        self.sessions[sid] = stored

    async def get(self, sid: str) -> dict[str, Any] | None:
        self._fail()
        doc = self.sessions.get(sid)
        if doc is None:
            return None
        self.reads[sid] = self.reads.get(sid, 0) + 1
        self.recorder.step(sid, doc, self.reads[sid], self.now())
        return dict(doc)

    async def request_stop(self, sid: str) -> None:
        self._fail()
        if sid not in self.sessions:
            raise NotFound("unknown recording session", field="sid")
        self.stops.append(sid)
        self.sessions[sid]["stopRequested"] = True

    async def in_progress(self, channel: str | None = None) -> list[Session]:
        self._fail()
        found = [
            (sid, dict(doc))
            for sid, doc in self.sessions.items()
            if doc["status"] in ("requested", "recording", "stopping")
            and channel in (None, doc["channel"])
            and sid not in self.unseen
        ]
        return sorted(found, key=created_at, reverse=True)

    async def stored(self, limit: int, uid: str | None = None) -> list[Session]:
        self._fail()
        self.stored_calls.append((limit, uid))
        found = [
            (sid, dict(doc))
            for sid, doc in self.sessions.items()
            if doc["status"] == "stopped" and (uid is None or uid in (doc.get("user1"), doc.get("user2")))
        ]
        return sorted(found, key=created_at, reverse=True)[:limit]


class FakeRecordingSessions:
    """RecordingSessions that holds no session (claims find nothing) and keeps every completed segment."""

    def __init__(self) -> None:
        self.completed: list[tuple[str, str, SegmentReport, str | None]] = []

    async def claim(self, sid: str) -> ClaimResult:
        return ClaimResult(Claim.GONE)

    async def mark_recording(self, sid: str, filename: str, started_at: datetime) -> bool:
        return False

    async def mark_stopping(self, sid: str, reason: str) -> bool:
        return False

    async def renew(self, sid: str) -> bool:
        return False

    async def release(self, sid: str) -> bool:
        return False

    async def fail(self, sid: str, error: str) -> bool:
        return False

    async def complete(self, sid: str, owner_id: str, report: SegmentReport, call_id: str | None) -> str:
        self.completed.append((sid, owner_id, report, call_id))
        return "final"

    async def in_progress(self, limit: int = 500) -> list[Session]:
        return []
