"""The watcher's per-call bookkeeping: which version of each call has arrived, which call has a handler
in flight (and must run again), the latest event as the next run's hint, and the ring timers.

It holds state only and never calls out: the watcher asks it what to do, and reads the timers it must
fire (`expired`, `next_timer`, woken through `timers_changed`). So it can exist before every object that
uses it: the reactor gets `schedule_timeout` and `cancel_timeout` at construction.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from memharbor.repositories.call_feed import CallEvent


@dataclass(frozen=True)
class Job:
    """What one handler run of a call is asked to do."""

    due: bool  # its ring timer fired: time it out if it still rings
    receiver_hint: str | None
    group_hint: str | None


class CallTracker:
    """Per-call bookkeeping of one watcher (all of it on the event loop's thread)."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._latest: dict[str, CallEvent] = {}
        # What has arrived per call: the document's update time, and its app-facing `updatedAt`.
        self._update_time: dict[str, datetime] = {}
        self._updated_at: dict[str, datetime] = {}
        self._arrivals = 0
        self._arrival: dict[str, int] = {}  # call id -> number of its latest arrival
        self._timers: dict[str, float] = {}  # call id -> unix time its timer fires
        self._heap: list[tuple[float, str]] = []  # may hold stale entries, skipped when they surface
        self._due: set[str] = set()
        self._closed = False
        self.timers_changed = asyncio.Event()  # set when a timer earlier than any armed one is added

    # -- what has arrived -----------------------------------------------------------------------
    def arrived(self, event: CallEvent) -> bool:
        """Record a version of a call seen by the feed, the catch-up or the sweep; False if not newer."""
        call_id = event.call_id
        self._arrivals += 1
        self._arrival[call_id] = self._arrivals
        if event.updated_at is not None:
            self._updated_at[call_id] = max(event.updated_at, self._updated_at.get(call_id, event.updated_at))
        if event.update_time is None:
            return True
        known = self._update_time.get(call_id)
        if known is not None and event.update_time <= known:
            return False
        self._update_time[call_id] = event.update_time
        return True

    def changed_since_arrival(self, call_id: str, update_time: datetime | None) -> bool:
        """True when a document version is newer than any that arrived (or none did)."""
        known = self._update_time.get(call_id)
        return update_time is not None and (known is None or update_time > known)

    def app_change_missed(
        self, call_id: str, updated_at: object, subscribed_at: float | None, now: datetime, grace_s: float
    ) -> bool:
        """An app change (a newer `updatedAt`) made since the watch subscribed that has not arrived
        within the grace: the stream has stalled. Our own writes leave `updatedAt` alone.
        """
        if not isinstance(updated_at, datetime) or subscribed_at is None or updated_at.timestamp() <= subscribed_at:
            return False
        if updated_at > now:
            return False  # a stamp from the future is malformed, not late; the sweep reports it
        known = self._updated_at.get(call_id)
        stale = known is None or updated_at > known
        return stale and (now - updated_at).total_seconds() > grace_s

    def arrivals(self) -> int:
        """A counter of arrivals, to pass to `keep_only` later."""
        return self._arrivals

    def keep_only(self, call_ids: set[str], arrived_by: int, stamped_since: datetime | None = None) -> None:
        """Forget calls outside `call_ids` (those no longer active) that have not arrived since the
        counter read `arrived_by` (a call that arrived meanwhile may be newer than the list), nor carry
        an `updatedAt` at or after `stamped_since` (the settled re-read has yet to pass them)."""
        for call_id in [c for c, n in self._arrival.items() if n <= arrived_by and c not in call_ids]:
            stamp = self._updated_at.get(call_id)
            if stamped_since is not None and stamp is not None and stamp >= stamped_since:
                continue
            del self._arrival[call_id]
            self._update_time.pop(call_id, None)
            self._updated_at.pop(call_id, None)

    # -- handler runs ---------------------------------------------------------------------------
    def request(self, call_id: str) -> bool:
        """A call needs handling: True when no handler runs for it (start one), else it runs again."""
        if self._closed:
            return False
        if call_id in self._running:
            self._again.add(call_id)
            return False
        return True

    def started(self, call_id: str, task: asyncio.Task[None]) -> None:
        """Record the handler task just started for a call."""
        self._running[call_id] = task

    def running(self, call_id: str) -> bool:
        """True while a handler runs for the call."""
        return call_id in self._running

    def hint(self, event: CallEvent) -> None:
        """Keep the newest event of a call for its next run (receiver and group to read along)."""
        self._latest[event.call_id] = event

    def next_job(self, call_id: str) -> Job:
        """Begin one run of the call's handler: what it is to do."""
        self._again.discard(call_id)
        due = call_id in self._due
        self._due.discard(call_id)
        latest = self._latest.get(call_id)
        receiver = latest.receiver_id if latest is not None and isinstance(latest.receiver_id, str) else None
        group = latest.group_id if latest is not None and isinstance(latest.group_id, str) else None
        return Job(due, receiver, group)

    def run_again(self, call_id: str, is_echo: Callable[[CallEvent], bool]) -> bool:
        """After a run: True when the call must run once more (its timer fired, or it changed since and
        the newest change is not an echo of what was just done)."""
        if call_id in self._due:
            return True
        if call_id not in self._again:
            return False
        latest = self._latest.get(call_id)
        return latest is None or not is_echo(latest)

    def finished(self, call_id: str) -> None:
        """The call's handler has ended."""
        self._running.pop(call_id, None)
        self._latest.pop(call_id, None)
        self._again.discard(call_id)

    def in_flight(self) -> list[asyncio.Task[None]]:
        """The handler tasks now running."""
        return list(self._running.values())

    # -- ring timers ----------------------------------------------------------------------------
    def schedule_timeout(self, call_id: str, deadline: datetime) -> None:
        """Arm the ring timer of a pending call (idempotent)."""
        self._arm(call_id, deadline.timestamp())

    def retry_timeout_at(self, call_id: str, when: float) -> None:
        """Fire the call's timer again at unix time `when` (a timeout that failed)."""
        self._timers.pop(call_id, None)
        self._arm(call_id, when)

    def _arm(self, call_id: str, when: float) -> None:
        if self._closed or call_id in self._due or self._timers.get(call_id) == when:
            return
        head = self.next_timer()
        self._timers[call_id] = when
        heapq.heappush(self._heap, (when, call_id))
        if head is None or when < head:
            self.timers_changed.set()

    def cancel_timeout(self, call_id: str) -> None:
        """Disarm a call's ring timer, if any."""
        self._timers.pop(call_id, None)

    def fire(self, call_id: str) -> None:
        """Make the call due now (its timer fired, or the sweep found it overdue)."""
        self._timers.pop(call_id, None)
        self._due.add(call_id)

    def next_timer(self) -> float | None:
        """When the earliest armed timer fires (unix time), or None."""
        while self._heap:
            when, call_id = self._heap[0]
            if self._timers.get(call_id) == when:
                return when
            heapq.heappop(self._heap)
        return None

    def expired(self, now: float) -> list[str]:
        """Fire every timer due at `now`; returns their calls, to be handled."""
        fired = []
        while (when := self.next_timer()) is not None and when <= now:
            _, call_id = heapq.heappop(self._heap)
            self.fire(call_id)
            fired.append(call_id)
        return fired

    def has_timer(self, call_id: str) -> bool:
        """True when the call's ring timer is armed or has fired and waits for its handler."""
        return call_id in self._timers or call_id in self._due

    def timers(self) -> int:
        """How many ring timers are armed."""
        return len(self._timers)

    def close(self) -> None:
        """Shutting down: disarm every timer and refuse new work."""
        self._closed = True
        self._timers.clear()
        self._heap.clear()
        self.timers_changed.set()
