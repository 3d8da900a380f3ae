"""The recordings aggregate (`recordings/{sid}`) as the REST shim uses it: its port and Firestore adapter,
and the document of a request.

The shim only creates requests, reads sessions, asks for stops and lists; the recorder does the rest
(memharbor/repositories/recording_sessions.py). Who may do what is decided by the caller
(token_http/recording_routes.py).
"""

from __future__ import annotations

import asyncio
import enum
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor.calls import Status
from memharbor.errors import Conflict, NotFound
from memharbor.recording_requests import IN_PROGRESS, STOP_FIELD, LiveCapReached, RecordingStatus, request_fields
from memharbor.repositories.guarded import (
    DEFAULT_TIMEOUT_S,
    Decided,
    FirestoreClient,
    Guard,
    Refusals,
    WritingClient,
    optimistic,
)
from memharbor.repositories.paths import CALLS, RECORDINGS

# A session is its id with its document.
Session = tuple[str, dict[str, Any]]

# In-progress sessions live minutes to hours and there are a few per live call; a scan reads at most this.
MAX_IN_PROGRESS_SCAN = 1000
# Sessions of one call (normally one; a participant may have asked for another); a read takes at most this.
MAX_SESSIONS_PER_CALL = 50


class RequestOutcome(enum.Enum):
    """What became of a request made for a call (`CallRecordings.request_while_accepted`)."""

    CREATED = "created"
    EXISTS = "exists"  # requested before (a repeat of this side effect)
    NOT_ACCEPTED = "not_accepted"  # the call moved on before the request could be made
    GONE = "gone"  # the call does not exist


_EPOCH = datetime.fromtimestamp(0, UTC)


def created_at(session: Session) -> datetime:
    """The session's createdAt for sorting (sessions without one sort last)."""
    value = session[1].get("createdAt")
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return _EPOCH


def new_request(channel: str, requested_by: str, call_id: str | None = None) -> dict[str, Any]:
    """The document of a recording request: its fields (`request_fields`) and createdAt, the server's time."""
    return {**request_fields(channel, requested_by, call_id), "createdAt": firestore.SERVER_TIMESTAMP}


class RecordingRepository(Protocol):
    """Recording sessions, as the REST shim uses them."""

    async def create(self, sid: str, doc: dict[str, Any], live_cap: int | None = None) -> None:
        """Create `recordings/{sid}` as `doc` (made by `new_request`); Conflict when it exists.

        With `live_cap`, LiveCapReached when doc's requestedBy already has that many sessions in progress.
        """
        ...

    async def get(self, sid: str) -> dict[str, Any] | None:
        """The session document, or None."""
        ...

    async def request_stop(self, sid: str) -> None:
        """Set `stopRequested: true` on the session; NotFound when it does not exist."""
        ...

    async def in_progress(self, channel: str | None = None) -> list[Session]:
        """Sessions that are requested, recording or stopping (on `channel` when given), newest first."""
        ...

    async def stored(self, limit: int, uid: str | None = None) -> list[Session]:
        """Stopped sessions (their file is stored), newest first; with `uid`, those naming it as user1 or user2."""
        ...


class CallRecordings(Protocol):
    """Recording sessions of calls, as the watcher requests and stops them."""

    async def sessions_of_call(self, call_id: str) -> list[Session]:
        """The sessions whose callId is `call_id` (at most MAX_SESSIONS_PER_CALL)."""
        ...

    async def request_while_accepted(self, call_id: str, sid: str, doc: dict[str, Any]) -> RequestOutcome:
        """Create `recordings/{sid}` as `doc` if it does not exist and the call is `accepted`, atomically."""
        ...

    async def request_stop(self, sid: str) -> None:
        """Set `stopRequested: true` on the session; NotFound when it does not exist."""
        ...


class FirestoreRecordingRepository:
    """RecordingRepository and CallRecordings over an asyncio Firestore client; every operation is guarded
    (time bound, Unavailable)."""

    def __init__(self, client: Callable[[], WritingClient], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        refusals: Refusals = {
            gexc.AlreadyExists: lambda: Conflict("a recording session with this id already exists", field="sid"),
            gexc.NotFound: lambda: NotFound("unknown recording session", field="sid"),
        }
        self._guard = Guard(client, timeout_s, refusals)
        # One capped create per requester at a time in this process, so parallel starts cannot all count
        # the same free places; other processes can still race (the cap then holds per process).
        self._requester_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def create(self, sid: str, doc: dict[str, Any], live_cap: int | None = None) -> None:
        if live_cap is None:
            await self._guard.run(lambda client: client.collection(RECORDINGS).document(sid).create(doc))
            return
        requested_by = str(doc.get("requestedBy"))
        lock = self._requester_locks.get(requested_by)
        if lock is None:
            lock = self._requester_locks[requested_by] = asyncio.Lock()
        async with lock:
            if await self._live_count(requested_by, live_cap) >= live_cap:
                raise LiveCapReached(requested_by, live_cap)
            await self._guard.run(lambda client: client.collection(RECORDINGS).document(sid).create(doc))

    async def _live_count(self, requested_by: str, at_most: int) -> int:
        """How many sessions `requested_by` asked for are in progress, counting no further than `at_most`."""

        async def scan(client: FirestoreClient) -> int:
            query = (
                client.collection(RECORDINGS)
                .where(filter=FieldFilter("status", "in", sorted(s.value for s in IN_PROGRESS)))
                .where(filter=FieldFilter("requestedBy", "==", requested_by))
                .limit(at_most)
            )
            return len([snap async for snap in query.stream()])

        return await self._guard.run(scan)

    async def get(self, sid: str) -> dict[str, Any] | None:
        async def read(client: FirestoreClient) -> dict[str, Any] | None:
            snap = await client.collection(RECORDINGS).document(sid).get()
            return snap.to_dict() if snap.exists else None

        return await self._guard.run(read)

    async def request_stop(self, sid: str) -> None:
        # update() requires the document to exist: a stop never creates a session.
        await self._guard.run(lambda client: client.collection(RECORDINGS).document(sid).update({STOP_FIELD: True}))

    async def in_progress(self, channel: str | None = None) -> list[Session]:
        async def scan(client: FirestoreClient) -> list[Session]:
            # Equality and `in` filters only: Firestore serves them without a composite index.
            query = client.collection(RECORDINGS).where(
                filter=FieldFilter("status", "in", sorted(s.value for s in IN_PROGRESS))
            )
            if channel is not None:
                query = query.where(filter=FieldFilter("channel", "==", channel))
            return [(snap.id, snap.to_dict() or {}) async for snap in query.limit(MAX_IN_PROGRESS_SCAN).stream()]

        sessions = await self._guard.run(scan)
        return sorted(sessions, key=created_at, reverse=True)

    async def stored(self, limit: int, uid: str | None = None) -> list[Session]:
        async def scan(client: FirestoreClient) -> list[Session]:
            base = client.collection(RECORDINGS).where(
                filter=FieldFilter("status", "==", RecordingStatus.STOPPED.value)
            )
            # Each needs a composite index (rules/firestore.indexes.json): [user1|user2,] status, createdAt desc.
            queries = (
                [base]
                if uid is None
                else [base.where(filter=FieldFilter(name, "==", uid)) for name in ("user1", "user2")]
            )
            found: dict[str, dict[str, Any]] = {}
            for query in queries:
                ordered = query.order_by("createdAt", direction=firestore.Query.DESCENDING).limit(limit)
                async for snap in ordered.stream():
                    found[snap.id] = snap.to_dict() or {}
            return list(found.items())

        sessions = await self._guard.run(scan)
        return sorted(sessions, key=created_at, reverse=True)[:limit]

    async def sessions_of_call(self, call_id: str) -> list[Session]:
        async def scan(client: FirestoreClient) -> list[Session]:
            query = (
                client.collection(RECORDINGS)
                .where(filter=FieldFilter("callId", "==", call_id))
                .limit(MAX_SESSIONS_PER_CALL)
            )
            return [(snap.id, snap.to_dict() or {}) async for snap in query.stream()]

        return await self._guard.run(scan)

    async def request_while_accepted(self, call_id: str, sid: str, doc: dict[str, Any]) -> RequestOutcome:
        # No transaction: its read lock on the call would outlive a watcher frozen or killed inside it, and
        # the app's next write to the call (ending it, first of all) would wait for the lock and fail. The
        # request is created in one batch with a write to the call that changes nothing (the status it has)
        # under a precondition on the update time read: if the call moved on since, nothing is created and
        # the call is read again. If it moves on after, the ended hook (which runs after that change) finds
        # the request and stops it.
        async def request(client: WritingClient) -> RequestOutcome:
            call_ref = client.collection(CALLS).document(call_id)
            rec_ref = client.collection(RECORDINGS).document(sid)

            async def decide(db: WritingClient, call: dict[str, Any] | None) -> Decided[RequestOutcome]:
                if (await rec_ref.get()).exists:
                    return Decided(RequestOutcome.EXISTS)
                if call is None:
                    return Decided(RequestOutcome.GONE)
                if call.get("status") != Status.ACCEPTED.value:
                    return Decided(RequestOutcome.NOT_ACCEPTED)
                return Decided(RequestOutcome.CREATED, {"status": Status.ACCEPTED.value}, creates=[(rec_ref, doc)])

            try:
                return await optimistic(client, call_ref, decide, f"the recording request of calls/{call_id}")
            except gexc.AlreadyExists:
                return RequestOutcome.EXISTS  # made meanwhile by another watcher

        return await self._guard.run(request)
