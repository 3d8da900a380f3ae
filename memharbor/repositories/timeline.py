"""The per-call timeline in Firestore: events under the server-only `callServer/{callId}/events/{autoId}`.

Writers: `add_events` puts events into a batch or transaction its caller commits, so an event lands
atomically with the write it describes (a claim, a push record); `TimelineWriter.append` commits events
on their own. Each stored event is `memharbor.timeline.event_fields` plus `at`, the server's commit time.
Reader: `TimelineReader.read` gathers the call, its server document, its events and its recordings into
a `memharbor.timeline.CallTimeline` (`memharbor inspect`, the admin route of token_http).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor import calls
from memharbor.errors import InvalidInput
from memharbor.repositories.guarded import DEFAULT_TIMEOUT_S, FirestoreClient, Guard
from memharbor.repositories.paths import CALL_SERVER, CALLS, RECORDINGS
from memharbor.timeline import CallTimeline, Event, build_timeline, event_fields

# The subcollection of each call's server document that holds its events.
EVENTS = "events"
# Events one read takes: a call's steps are a few dozen (a push per device and attempt, its recording);
# past this the timeline keeps the earliest.
MAX_EVENTS = 500
# Recording sessions of one call read at most (one per call, a few more after manual starts).
MAX_RECORDINGS = 20
# Firestore commits at most 500 writes at once; `append` splits longer lists.
MAX_BATCH = 500

Documents = list[tuple[str, Any]]


class Writes(Protocol):
    """A write batch or a transaction: what `add_events` adds its writes to."""

    def set(self, reference: Any, document_data: dict[str, Any]) -> Any: ...


def _checked(call_id: str) -> str:
    # The id becomes a document path: a slash would address some other document.
    if not calls.ID_PATTERN.fullmatch(call_id):
        raise InvalidInput(f"call_id {calls.ID_WORDS}", field="call_id")
    return call_id


def add_events(batch: Writes, client: FirestoreClient, call_id: str, events: Iterable[Event]) -> None:
    """Add one write per event to `batch` (a WriteBatch or Transaction of `client`); the caller commits it.

    Each event gets a new document id and `at` = the commit's server time. InvalidInput for a malformed
    call id, ValueError for an event of no known kind (before anything is added).
    """
    documents = [event_fields(event) for event in events]
    collection = client.collection(CALL_SERVER).document(_checked(call_id)).collection(EVENTS)
    for fields in documents:
        batch.set(collection.document(), {**fields, "at": firestore.SERVER_TIMESTAMP})


class TimelineWriter(Protocol):
    """Stores events of a call on their own (not as part of another write)."""

    async def append(self, call_id: str, events: Sequence[Event]) -> None:
        """Store the events in one batch write (several when more than MAX_BATCH); nothing for none."""
        ...


class TimelineReader(Protocol):
    """Reads a call's timeline back."""

    async def read(self, call_id: str) -> CallTimeline | None:
        """The call's timeline, or None when `calls/{call_id}` does not exist; InvalidInput for a malformed id."""
        ...


class FirestoreTimeline:
    """TimelineWriter and TimelineReader over an asyncio Firestore client; guarded (time bound, Unavailable)."""

    def __init__(self, client: Callable[[], FirestoreClient], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._guard = Guard(client, timeout_s)

    async def append(self, call_id: str, events: Sequence[Event]) -> None:
        _checked(call_id)
        if not events:
            return

        async def write(client: FirestoreClient) -> None:
            for start in range(0, len(events), MAX_BATCH):
                batch = client.batch()  # type: ignore[attr-defined]
                add_events(batch, client, call_id, events[start : start + MAX_BATCH])
                await batch.commit()

        await self._guard.run(write)

    async def read(self, call_id: str) -> CallTimeline | None:
        _checked(call_id)

        async def gather(client: FirestoreClient) -> CallTimeline | None:
            server_ref = client.collection(CALL_SERVER).document(call_id)
            # One round trip's latency for all four reads; a failure cancels the others.
            try:
                async with asyncio.TaskGroup() as group:
                    call = group.create_task(client.collection(CALLS).document(call_id).get())
                    server = group.create_task(server_ref.get())
                    events = group.create_task(_events(server_ref.collection(EVENTS)))
                    recordings = group.create_task(_recordings(client, call_id))
            except ExceptionGroup as failed:
                # The Guard translates one client error (an outage becomes Unavailable), not a group of them.
                raise failed.exceptions[0] from None
            if not call.result().exists:
                return None
            server_snap = server.result()
            stored_events, truncated = events.result()
            return build_timeline(
                call_id,
                call.result().to_dict() or {},
                (server_snap.to_dict() or {}) if server_snap.exists else None,
                stored_events,
                recordings.result(),
                truncated,
            )

        return await self._guard.run(gather)


async def _events(collection: Any) -> tuple[Documents, bool]:
    """The call's events (at most MAX_EVENTS) and whether there were more."""
    # Unordered first, so documents that lack a valid `at` (an admin's junk) are read and shown too.
    found = [(snap.id, snap.to_dict()) async for snap in collection.limit(MAX_EVENTS + 1).stream()]
    if len(found) <= MAX_EVENTS:
        return found, False
    # Too many to show: the earliest by server time, the ones that explain how the call began.
    ordered = collection.order_by("at").limit(MAX_EVENTS)
    return [(snap.id, snap.to_dict()) async for snap in ordered.stream()], True


async def _recordings(client: FirestoreClient, call_id: str) -> Documents:
    # Equality on callId alone: Firestore serves it from its single-field index.
    query = client.collection(RECORDINGS).where(filter=FieldFilter("callId", "==", call_id)).limit(MAX_RECORDINGS)
    return [(snap.id, snap.to_dict()) async for snap in query.stream()]
