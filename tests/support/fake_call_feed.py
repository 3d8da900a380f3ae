"""In-memory fakes of the watcher's feed ports (memharbor/repositories/call_feed.py): Feed, CatchUp, CallSweeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from memharbor.calls import ACTIVE, Status
from memharbor.repositories.call_feed import CallEvent, FeedSnapshot, Gap, MalformedStamp

_ACTIVE = {s.value for s in ACTIVE}


class FakeFeed:
    """The listener as the watcher drives it, made from the watcher's own snapshot method."""

    def __init__(self, deliver: Callable[[FeedSnapshot], None]) -> None:
        self.deliver = deliver
        self.restarts = 0
        self.subscribed_at: float | None = None
        self.active = True
        self.steps: list[str] = []  # what the watcher asked of it, in order

    async def start(self) -> None:
        self.steps.append("start")

    async def restart(self, reason: str) -> None:
        self.restarts += 1
        self.steps.append(f"restart: {reason}")

    async def supervise(self) -> None:
        # The real feed resubscribes a dead watch here; a fake one never dies.
        self.steps.append("supervise")

    async def stop(self) -> None:
        self.active = False
        self.steps.append("stop")


class FakeCatchUp:
    """Serves the calls stored for it, page by page; can hold a pass, or fail the first one."""

    def __init__(self, calls: list[CallEvent] | None = None, fail_first: bool = False) -> None:
        self.calls = calls or []
        self.gaps: list[Gap] = []
        self.fail_first = fail_first
        self.gate = asyncio.Event()
        self.gate.set()

    async def pages(self, gap: Gap) -> AsyncIterator[list[CallEvent]]:
        self.gaps.append(gap)
        await self.gate.wait()
        if self.fail_first:
            self.fail_first = False
            raise ConnectionError("dropped")
        found = [c for c in self.calls if c.updated_at is not None and gap.since <= c.updated_at <= gap.until]
        for start in range(0, len(found), 2):
            yield found[start : start + 2]


def _stamp_kind(value: Any, future: datetime) -> str | None:
    """Where an `updatedAt` value falls among the sweep's malformed kinds (Firestore's order of types)."""
    if isinstance(value, datetime):
        return "future" if value > future else None
    if value is None or isinstance(value, bool | int | float):
        return "below_timestamps"
    return "above_timestamps"


class FakeCallSweeps:
    """Calls and their server documents in memory, read as the sweep's queries read them (CallSweeps).

    `calls` holds each call's fields (those the queries read: status, updatedAt, ringDeadline,
    receiverId, groupId), `versions` its document update time, `servers` each server document.
    """

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, datetime] = {}
        self.servers: dict[str, dict[str, Any]] = {}

    def put(self, call_id: str, version: datetime, **fields: Any) -> None:
        """Store a version of a call."""
        self.calls[call_id] = fields
        self.versions[call_id] = version

    def _event(self, call_id: str, fields: dict[str, Any]) -> CallEvent:
        updated_at = fields.get("updatedAt")
        return CallEvent(
            call_id,
            "SWEPT",
            fields.get("status"),
            self.versions.get(call_id),
            fields.get("receiverId"),
            fields.get("groupId"),
            updated_at if isinstance(updated_at, datetime) else None,
        )

    async def overdue(self, now: datetime) -> AsyncIterator[str]:
        for call_id, fields in list(self.calls.items()):
            deadline = fields.get("ringDeadline")
            if fields.get("status") == Status.PENDING.value and isinstance(deadline, datetime) and deadline <= now:
                yield call_id

    async def active(self) -> AsyncIterator[CallEvent]:
        for call_id, fields in list(self.calls.items()):
            if fields.get("status") in _ACTIVE:
                # The query selects the status and `updatedAt` only.
                yield self._event(call_id, {k: fields[k] for k in ("status", "updatedAt") if k in fields})

    async def open_effects(self) -> AsyncIterator[str]:
        for call_id, server in list(self.servers.items()):
            if server.get("effectOpen") is True:
                yield call_id

    async def tracked_active(self) -> AsyncIterator[str]:
        for call_id, server in list(self.servers.items()):
            if server.get("status") in _ACTIVE:
                yield call_id

    async def malformed_stamps(self, future: datetime) -> AsyncIterator[MalformedStamp]:
        for kind in ("future", "above_timestamps", "below_timestamps"):
            for call_id, fields in list(self.calls.items()):
                # A call without the field matches none of the queries (they order or filter by it).
                if "updatedAt" in fields and _stamp_kind(fields["updatedAt"], future) == kind:
                    stamp = fields["updatedAt"]
                    yield MalformedStamp(kind, self._event(call_id, fields), type(stamp).__name__)
