"""An in-memory timeline store (TimelineWriter and TimelineReader) with FirestoreTimeline's semantics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from memharbor import calls
from memharbor.errors import InvalidInput
from memharbor.repositories.timeline import MAX_EVENTS, MAX_RECORDINGS
from memharbor.timeline import CallTimeline, Event, build_timeline, event_fields


class FakeTimeline:
    """Calls, server documents, events and recordings as plain documents; `failure` makes every operation raise it.

    Appended events get ids `e1`, `e2`, ... and `at` = `now()` (one commit: one time for all of them).
    """

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        self.now = now or (lambda: datetime.now(UTC))
        self.calls: dict[str, dict[str, Any]] = {}
        self.servers: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[tuple[str, Any]]] = {}
        self.recordings: dict[str, dict[str, Any]] = {}
        self.failure: Exception | None = None
        self.reads: list[str] = []

    def _check(self, call_id: str) -> None:
        if self.failure is not None:
            raise self.failure
        if not calls.ID_PATTERN.fullmatch(call_id):
            raise InvalidInput("call_id must be 1-128 characters of A-Z a-z 0-9 _ -, not __reserved__", "call_id")

    async def append(self, call_id: str, events: Sequence[Event]) -> None:
        self._check(call_id)
        documents = [event_fields(event) for event in events]  # all or nothing, as one batch
        stored, at = self.events.setdefault(call_id, []), self.now()
        for fields in documents:
            stored.append((f"e{len(stored) + 1}", {**fields, "at": at}))

    async def read(self, call_id: str) -> CallTimeline | None:
        self._check(call_id)
        self.reads.append(call_id)
        if call_id not in self.calls:
            return None
        stored = self.events.get(call_id, [])
        sessions = [(sid, doc) for sid, doc in self.recordings.items() if doc.get("callId") == call_id]
        return build_timeline(
            call_id,
            self.calls[call_id],
            self.servers.get(call_id),
            stored[:MAX_EVENTS],
            sessions[:MAX_RECORDINGS],
            len(stored) > MAX_EVENTS,
        )
