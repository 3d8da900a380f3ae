"""The watcher's lifecycle: listen, react per call, keep ring timers, sweep, heartbeat, drain on stop."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor.calls import ACTIVE, FINAL, Status
from memharbor.clock import Clock
from memharbor.heartbeat import Heartbeat
from memharbor.logs import get_logger
from memharbor.store import CALLS
from watcher.listener import CallEvent, CallListener
from watcher.reactor import CALL_SERVER, CallReactor

log = get_logger()


@dataclass(frozen=True)
class WatcherConfig:
    """Timing of the watcher's loops."""

    sweep_interval_s: float
    drain_s: float = 10.0
    max_concurrency: int = 64
    # A change the stream has not delivered after this long counts as missed (a stalled listener);
    # generous, because a busy listener is slow rather than dead and a resubscribe re-lists everything.
    stall_grace_s: float = 10.0
    restart_min_interval_s: float = 30.0


class Watcher:
    """Turns call changes into side effects, one handler per call at a time."""

    def __init__(
        self,
        db: firestore.AsyncClient,
        listener: CallListener,
        reactor: CallReactor,
        heartbeat: Heartbeat,
        clock: Clock,
        config: WatcherConfig,
    ) -> None:
        self.db = db
        self.listener = listener
        self.reactor = reactor
        self.heartbeat = heartbeat
        self.clock = clock
        self.config = config
        self._sem = asyncio.Semaphore(config.max_concurrency)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        # What the feed delivered per call: the document's update time, and its app-facing `updatedAt`.
        self._seen: dict[str, datetime] = {}
        self._seen_app: dict[str, datetime] = {}
        self._timers: dict[str, tuple[datetime, asyncio.TimerHandle]] = {}
        self._due: set[str] = set()
        self._latest: dict[str, CallEvent] = {}
        self._last_restart = float("-inf")
        self._stopping = False
        self.stalls = 0

    # -- events ---------------------------------------------------------------------------------
    def on_events(self, events: list[CallEvent]) -> None:
        """Take a batch from the listener (on the loop's thread)."""
        for event in events:
            if event.change == "REMOVED":
                continue  # the call left the window, newer ones pushed it out: not a change
            if event.update_time is not None:
                self._seen[event.call_id] = max(event.update_time, self._seen.get(event.call_id, event.update_time))
            if event.updated_at is not None:
                self._seen_app[event.call_id] = max(
                    event.updated_at, self._seen_app.get(event.call_id, event.updated_at)
                )
            echo = self._is_echo(event)
            if not echo or event.call_id in self._running:
                self._latest[event.call_id] = event  # read by the handler; dropped when it finishes
            if not echo:
                self.submit(event.call_id)

    def _is_echo(self, event: CallEvent) -> bool:
        # An echo of our own write, or a change that leaves nothing to do: no claim needed.
        if event.change == "REMOVED" or (event.status in FINAL and self.reactor.known_final(event.call_id)):
            return True  # a final call this instance saw through (later writes are reviews)
        return self.reactor.known_done(event.call_id, event.status)

    def submit(self, call_id: str) -> None:
        """Schedule a handler for the call, or mark it to run again once the current one finishes."""
        if self._stopping:
            return
        if call_id in self._running:
            self._dirty.add(call_id)
            return
        self._running[call_id] = asyncio.create_task(self._process(call_id))

    async def _process(self, call_id: str) -> None:
        try:
            while not self._stopping:
                self._dirty.discard(call_id)
                async with self._sem:
                    await self._handle_once(call_id)
                latest = self._latest.get(call_id)
                if call_id not in self._dirty and call_id not in self._due:
                    return
                if call_id not in self._due and latest is not None and self._is_echo(latest):
                    return
        finally:
            self._running.pop(call_id, None)
            self._latest.pop(call_id, None)

    async def _handle_once(self, call_id: str) -> None:
        due = call_id in self._due
        self._due.discard(call_id)
        try:
            latest = self._latest.get(call_id)
            receiver = latest.receiver_id if latest is not None and isinstance(latest.receiver_id, str) else None
            group = latest.group_id if latest is not None and isinstance(latest.group_id, str) else None
            claim = await self.reactor.handle(call_id, receiver, time_out=due, group_hint=group)
            log.debug("call.handled", call_id=call_id, claim=claim.value)
        except Exception as exc:
            if due:
                # Contention or a dropped connection: try the timeout again shortly, not at the next sweep.
                log.warning("call.timeout_failed", call_id=call_id, error=type(exc).__name__)
                asyncio.get_running_loop().call_later(random.uniform(0.5, 1.5), self._fire, call_id)
            else:
                # The claim's lease lapses and the sweep retries; the watcher itself lives on.
                log.exception("call.handler_failed", call_id=call_id)

    # -- ring timers ----------------------------------------------------------------------------
    def schedule_timeout(self, call_id: str, deadline: datetime) -> None:
        """Arm the ring timer of a pending call (idempotent)."""
        current = self._timers.get(call_id)
        if self._stopping or call_id in self._due or (current is not None and current[0] == deadline):
            return
        if current is not None:
            current[1].cancel()
        delay = max(0.0, deadline.timestamp() - self.clock.time())
        handle = asyncio.get_running_loop().call_later(delay, self._fire, call_id)
        self._timers[call_id] = (deadline, handle)

    def cancel_timeout(self, call_id: str) -> None:
        """Disarm a call's ring timer, if any."""
        current = self._timers.pop(call_id, None)
        if current is not None:
            current[1].cancel()

    def _fire(self, call_id: str) -> None:
        # The timeout runs in the call's own handler, so it never races the call's other work here.
        self._timers.pop(call_id, None)
        self._due.add(call_id)
        self.submit(call_id)

    # -- sweep ----------------------------------------------------------------------------------
    async def sweep_once(self) -> dict[str, int]:
        """Back up the timers and the listener: time out overdue calls, re-handle anything missed."""
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        overdue = (
            self.db.collection(CALLS)
            .where(filter=FieldFilter("status", "==", Status.PENDING.value))
            .where(filter=FieldFilter("ringDeadline", "<=", now))
        )
        due = 0
        async for snap in overdue.stream():
            if snap.id not in self._timers and snap.id not in self._due:
                due += 1
                self._fire(snap.id)
        missed = await self._reconcile(now)
        if missed and self.clock.monotonic() - self._last_restart > self.config.restart_min_interval_s:
            self.stalls += 1
            self._last_restart = self.clock.monotonic()
            await self.listener.restart(f"stalled: {missed} change(s) not delivered")
        return {"overdue": due, "missed": missed}

    async def _reconcile(self, now: datetime) -> int:
        missed = 0
        active_ids = set()
        query = self.db.collection(CALLS).where(filter=FieldFilter("status", "in", sorted(s.value for s in ACTIVE)))
        async for snap in query.stream():
            active_ids.add(snap.id)
            if self._undelivered_app_change(snap, now):
                missed += 1
            seen = self._seen.get(snap.id)
            if snap.update_time is not None and (seen is None or snap.update_time > seen):
                self.submit(snap.id)  # changed since the feed last showed it (outside the window, or ours)
            elif not self.reactor.known_done(snap.id, snap.get("status")):
                self.submit(snap.id)
        for seen_map in (self._seen, self._seen_app):
            for call_id in [c for c in seen_map if c not in active_ids]:
                del seen_map[call_id]
        self.reactor.prune(active_ids)
        servers = self.db.collection(CALL_SERVER)
        open_effects = servers.where(filter=FieldFilter("effectOpen", "==", True))
        async for snap in open_effects.stream():
            self.submit(snap.id)
        tracked = servers.where(filter=FieldFilter("status", "in", sorted(s.value for s in ACTIVE)))
        async for snap in tracked.stream():
            if snap.id not in active_ids:
                self.submit(snap.id)  # left the active set while the stream was not looking
        return missed

    def _undelivered_app_change(self, snap: Any, now: datetime) -> bool:
        """An app change (a newer `updatedAt`) the feed has not shown after the grace: a stalled stream.

        Only changes made since the watch subscribed count (older calls may sit outside the window), and
        our own writes leave `updatedAt` alone, so they never count.
        """
        try:
            updated_at = snap.get("updatedAt")
        except KeyError:
            return False
        subscribed = self.listener.subscribed_at
        if not isinstance(updated_at, datetime) or subscribed is None or updated_at.timestamp() <= subscribed:
            return False
        seen = self._seen_app.get(snap.id)
        stale = seen is None or updated_at > seen
        return stale and (now - updated_at).total_seconds() > self.config.stall_grace_s

    async def _sweep_forever(self) -> None:
        # The first sweep runs at once: it arms the timers of ringing calls older than the feed's window.
        while True:
            try:
                result = await self.sweep_once()
                if any(result.values()):
                    log.info("sweep.done", **result)
            except Exception as exc:
                log.warning("sweep.failed", error=type(exc).__name__)
            await asyncio.sleep(self.config.sweep_interval_s)

    # -- lifecycle ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the heartbeat reports about this instance."""
        return {
            "listenerActive": self.listener.active,
            "listenerRestarts": self.listener.restarts,
            "stalls": self.stalls,
            "inFlight": len(self._running),
            "timers": len(self._timers),
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then stop taking events and drain in-flight work to a deadline."""
        await self.heartbeat.beat()
        await self.listener.start()
        loops = [
            asyncio.create_task(self.listener.supervise()),
            asyncio.create_task(self._sweep_forever()),
            asyncio.create_task(self.heartbeat.run()),
        ]
        log.info("watcher.started")
        await stop.wait()
        log.info("watcher.stopping", in_flight=len(self._running))
        self._stopping = True
        await self.listener.stop()
        for task in loops:
            task.cancel()
        for call_id in list(self._timers):
            self.cancel_timeout(call_id)
        pending = list(self._running.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.config.drain_s)
            for task in late:
                task.cancel()
            log.info("watcher.drained", finished=len(pending) - len(late), abandoned=len(late))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*loops, return_exceptions=True)
        await self.heartbeat.retire()
        log.info("watcher.stopped")
