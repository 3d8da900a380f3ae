"""The watcher's lifecycle: the change feed and its catch-up, one handler per call, ring timers, the sweep,
and the drain on stop."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from memharbor.calls import FINAL
from memharbor.clock import Clock
from memharbor.logs import get_logger
from memharbor.repositories.call_feed import CallEvent, CallSweeps, CatchUp, Feed, FeedSnapshot, Gap
from watcher.listener import FeedMark
from watcher.metrics import WatcherMetrics
from watcher.reactor import ClaimRace
from watcher.tracking import CallTracker, Job

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
    # An `updatedAt` this far past our clock is malformed (server clocks and ours differ far less).
    future_tolerance_s: float = 60.0
    catch_up_retry_s: float = 1.0
    # How often stale device documents of all users are deleted (a push prunes its receiver's at once).
    device_prune_interval_s: float = 3600.0
    # Each sweep reads once more the calls stamped up to this long ago (the settled re-read): the
    # emulator stamps `updatedAt` on receipt and may commit much later, below the feed's mark.
    settle_s: float = 10.0
    # How far back the first settled re-read reaches: changes made while no watcher ran (a restart). Each
    # call changed in it that this new process does not know costs a read, so not much further.
    reread_lookback_s: float = 30.0


class Reactor(Protocol):
    """What the watcher asks of watcher.reactor.CallReactor: handle a call, and what it knows is done."""

    async def handle(
        self, call_id: str, receiver_hint: str | None = None, time_out: bool = False, group_hint: str | None = None
    ) -> Any:
        """Bring the call's side effects up to date with its current document; returns the claim."""
        ...

    def known_done(self, call_id: str, status: Any) -> bool:
        """True when the call is still in the status whose effects are known done."""
        ...

    def known_final(self, call_id: str, updated_at: datetime | None = None) -> bool:
        """True when this instance handled the call's final status and no app wrote since."""
        ...

    def prune(self, active_ids: set[str]) -> None:
        """Forget active-status knowledge of calls that are no longer active."""
        ...


class Watcher:
    """Turns call changes into side effects, one handler per call at a time."""

    def __init__(
        self,
        sweeps: CallSweeps,
        reactor: Reactor,
        calls: CallTracker,
        clock: Clock,
        config: WatcherConfig,
        listen: Callable[[Callable[[FeedSnapshot], None]], Feed],
        catch_up: CatchUp,
        mark: FeedMark | None = None,
        prune_devices: Callable[[], Awaitable[int]] | None = None,
        metrics: WatcherMetrics | None = None,
    ) -> None:
        self.sweeps = sweeps
        self.metrics = metrics or WatcherMetrics()
        # For the probes: when the feed or the sweep last showed the watcher the database (monotonic
        # seconds), and whether the start-up sweep has armed the timers of calls from before the start.
        self._last_sign_of_life: float | None = None
        self._swept_once = False
        self.reactor = reactor
        self.calls = calls
        self.clock = clock
        self.config = config
        self.catch_up = catch_up
        self.mark = mark or FeedMark()
        self._prune_devices = prune_devices
        # The listener is made here, from the method it delivers to, so nothing refers to it before it exists.
        self.listener = listen(self.on_snapshot)
        self._sem = asyncio.Semaphore(config.max_concurrency)
        self._catching_up: asyncio.Task[None] | None = None
        self._malformed: dict[str, datetime | None] = {}
        self._last_restart = float("-inf")
        self._stopping = False
        self.stalls = 0
        self.catch_ups = 0
        self.caught_up_calls = 0
        self._settled: datetime | None = None  # the settled re-read has read every call stamped before this
        self.late_changes = 0  # changes only the settled re-read found

    # -- events ---------------------------------------------------------------------------------
    def on_snapshot(self, snapshot: FeedSnapshot) -> None:
        """Take one feed snapshot (on the loop's thread): its events, then whether to catch up."""
        self._last_sign_of_life = self.clock.monotonic()
        self.on_events(snapshot.events)
        if self.mark.observe(snapshot):
            self._catch_up_soon()

    def on_events(self, events: list[CallEvent]) -> int:
        """Take a batch of call events from the feed or the catch-up (on the loop's thread); returns
        how many changes it handed on (versions that had not arrived, other than echoes of our writes)."""
        handed = 0
        for event in events:
            if event.change == "REMOVED":
                continue  # the call left the window, newer ones pushed it out: not a change
            if not self.calls.arrived(event):
                continue  # this version arrived before (a catch-up overlapping the window, a re-listing)
            echo = self._is_echo(event)
            if not echo or self.calls.running(event.call_id):
                self.calls.hint(event)  # read by the handler; dropped when it finishes
            if not echo:
                handed += 1
                self.metrics.change(event.change)
                self.submit(event.call_id)
        return handed

    def _is_echo(self, event: CallEvent) -> bool:
        # An echo of our own write, or a change that leaves nothing to do: no claim needed.
        if event.change == "REMOVED":
            return True
        if event.status in FINAL and self.reactor.known_final(event.call_id, event.updated_at):
            return True  # a final call this instance saw through, unchanged by any app since
        return self.reactor.known_done(event.call_id, event.status)

    def submit(self, call_id: str) -> None:
        """Schedule a handler for the call, or mark it to run again once the current one finishes."""
        if not self._stopping and self.calls.request(call_id):
            self.calls.started(call_id, asyncio.create_task(self._process(call_id)))

    async def _process(self, call_id: str) -> None:
        try:
            while not self._stopping:
                async with self._sem:
                    await self._handle_once(call_id, self.calls.next_job(call_id))
                if not self.calls.run_again(call_id, self._is_echo):
                    return
        finally:
            self.calls.finished(call_id)

    async def _handle_once(self, call_id: str, job: Job) -> None:
        try:
            claim = await self.reactor.handle(call_id, job.receiver_hint, time_out=job.due, group_hint=job.group_hint)
            log.debug("call.handled", call_id=call_id, claim=getattr(claim, "value", claim))
        except Exception as exc:
            self.metrics.failure("claim_race" if isinstance(exc, ClaimRace) else type(exc).__name__)
            if job.due:
                # Contention or a dropped connection: try the timeout again shortly, not at the next sweep.
                log.warning("call.timeout_failed", call_id=call_id, error=type(exc).__name__)
                self.calls.retry_timeout_at(call_id, self.clock.time() + random.uniform(0.5, 1.5))
            else:
                # The claim's lease lapses and the sweep retries; the watcher itself lives on.
                log.exception("call.handler_failed", call_id=call_id)

    # -- catch-up -------------------------------------------------------------------------------
    def _catch_up_soon(self) -> None:
        # One catch-up at a time: it reads every gap opened while it runs before it ends.
        if not self._stopping and (self._catching_up is None or self._catching_up.done()):
            self._catching_up = asyncio.create_task(self._catch_up())

    async def _catch_up(self) -> None:
        while not self._stopping and (gap := self.mark.gap()) is not None:
            try:
                found = 0
                async for events in self.catch_up.pages(gap):
                    found += len(events)
                    self.on_events(events)
            except Exception as exc:
                # The mark stays put, so the next attempt reads the same calls; the sweep backs it up.
                log.warning("feed.catch_up_failed", error=type(exc).__name__)
                await asyncio.sleep(self.config.catch_up_retry_s)
                continue
            self.mark.closed(gap)
            self.catch_ups += 1
            self.caught_up_calls += found
            log.debug("feed.caught_up", since=gap.since.isoformat(), until=gap.until.isoformat(), calls=found)

    # -- ring timers ----------------------------------------------------------------------------
    async def _fire_timers_forever(self) -> None:
        # The timeout runs in the call's own handler, so it never races the call's other work here.
        while True:
            for call_id in self.calls.expired(self.clock.time()):
                self.submit(call_id)
            self.calls.timers_changed.clear()
            when = self.calls.next_timer()
            wait = None if when is None else max(0.0, when - self.clock.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.calls.timers_changed.wait(), wait)

    # -- sweep ----------------------------------------------------------------------------------
    async def sweep_once(self) -> dict[str, int]:
        """Back up the timers and the feed: time out overdue calls, re-handle anything missed, and
        report calls whose `updatedAt` is not a plausible timestamp."""
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        arrived_by = self.calls.arrivals()
        due = 0
        async for call_id in self.sweeps.overdue(now):
            if not self.calls.has_timer(call_id):
                due += 1
                self.calls.fire(call_id)
                self.submit(call_id)
        # Odd stamps first: the reactor may repair a call it judges, and its report must come before that.
        malformed = await self._malformed_stamps(now)
        missed, active_ids = await self._reconcile(now)
        late = await self._reread_settled(now)
        self.calls.keep_only(active_ids | malformed, arrived_by, self._settled)
        self.reactor.prune(active_ids)
        if missed and self.clock.monotonic() - self._last_restart > self.config.restart_min_interval_s:
            self.stalls += 1
            self._last_restart = self.clock.monotonic()
            await self.listener.restart(f"stalled: {missed} change(s) not delivered")
        return {"overdue": due, "missed": missed, "malformed": len(malformed), "late": late}

    async def _reconcile(self, now: datetime) -> tuple[int, set[str]]:
        missed = 0
        active_ids = set()
        subscribed = self.listener.subscribed_at
        async for call in self.sweeps.active():
            call_id = call.call_id
            active_ids.add(call_id)
            if self.calls.app_change_missed(call_id, call.updated_at, subscribed, now, self.config.stall_grace_s):
                missed += 1
            if self.calls.changed_since_arrival(call_id, call.update_time):
                self.submit(call_id)  # changed since the feed last showed it (outside the window, or ours)
            elif not self.reactor.known_done(call_id, call.status):
                self.submit(call_id)
        async for call_id in self.sweeps.open_effects():
            self.submit(call_id)
        async for call_id in self.sweeps.tracked_active():
            if call_id not in active_ids:
                self.submit(call_id)  # left the active set while the stream was not looking
        return missed, active_ids

    async def _reread_settled(self, now: datetime) -> int:
        """Read once more every call stamped since the last settled re-read, up to `settle_s` ago; returns
        how many changes it found that nothing else had delivered.

        The emulator stamps `updatedAt` when a write arrives and may commit it seconds later (behind a
        transaction's lock, or under load): the write then lands below the feed's mark and outside its
        window, where neither the feed nor a catch-up looks again. The sweep's other queries find such
        a change on an active call; this finds one on a final call (a review, an admin's edit).
        Production stamps the commit time, so there it finds nothing and costs a read per changed call.
        """
        until = now - timedelta(seconds=self.config.settle_s)
        since = self._settled or until - timedelta(seconds=self.config.reread_lookback_s)
        if until <= since:
            return 0
        late = 0
        try:
            async for events in self.catch_up.pages(Gap(since, until, until)):
                late += self.on_events(events)
        except Exception as exc:
            # The mark stays put: the next sweep reads the same range.
            log.warning("feed.reread_failed", error=type(exc).__name__)
            return late
        self._settled = until
        self.late_changes += late
        return late

    async def _malformed_stamps(self, now: datetime) -> set[str]:
        """Calls whose `updatedAt` is not a timestamp or lies in the future, whatever their status.

        The feed cannot see them (its range filter matches timestamps up to its horizon only), so each
        new version is reported here once and handed to the reactor, which judges the call.
        """
        future = now + timedelta(seconds=self.config.future_tolerance_s)
        found: dict[str, datetime | None] = {}
        async for odd in self.sweeps.malformed_stamps(future):
            call = odd.call
            found[call.call_id] = call.update_time
            fresh = self.calls.arrived(call)
            if self._malformed.get(call.call_id, False) != call.update_time:
                log.warning("call.updated_at_malformed", call_id=call.call_id, kind=odd.kind, value_type=odd.stamp_type)
                fresh = True
            if fresh:
                self.submit(call.call_id)
        self._malformed = found  # reported once per version, for as long as they stay malformed
        return set(found)

    async def _sweep_forever(self) -> None:
        # The first sweep runs at once: it arms the timers of ringing calls older than the feed's window.
        while True:
            try:
                result = await self.sweep_once()
                self._last_sign_of_life, self._swept_once = self.clock.monotonic(), True
                if any(result.values()):
                    log.info("sweep.done", **result)
            except Exception as exc:
                log.warning("sweep.failed", error=type(exc).__name__)
            await asyncio.sleep(self.config.sweep_interval_s)

    async def _prune_devices_forever(self, prune: Callable[[], Awaitable[int]]) -> None:
        # Devices of users nobody calls are never read for a push, so only this removes them.
        while True:
            try:
                deleted = await prune()
                if deleted:
                    log.info("devices.pruned", count=deleted)
            except Exception as exc:
                log.warning("devices.prune_failed", error=type(exc).__name__)
            await asyncio.sleep(self.config.device_prune_interval_s)

    # -- lifecycle ------------------------------------------------------------------------------
    def liveness_problems(self) -> list[str]:
        """What makes this watcher dead for /livez: an unsubscribed feed, or no snapshot nor sweep lately."""
        problems = []
        if not self.listener.active and not self._stopping:
            problems.append("the change feed is not subscribed")
        # A quiet database sends no snapshot, but the sweep runs every interval: a few missed in a row
        # means the event loop or the connection is stuck, which a restart cures.
        quiet_limit = max(3 * self.config.sweep_interval_s, 60.0)
        if self._last_sign_of_life is not None:
            quiet = self.clock.monotonic() - self._last_sign_of_life
            if quiet > quiet_limit:
                problems.append(f"no snapshot or sweep for {quiet:.0f} s (limit {quiet_limit:.0f} s)")
        return problems

    def readiness_problems(self) -> list[str]:
        """What keeps this watcher from being ready for /readyz: starting (no sweep yet) or draining."""
        if self._stopping:
            return ["draining"]
        return [] if self._swept_once else ["the start-up sweep has not finished"]

    def status(self) -> dict[str, Any]:
        """What the heartbeat reports about this instance."""
        return {
            "listenerActive": self.listener.active,
            "listenerRestarts": self.listener.restarts,
            "stalls": self.stalls,
            "inFlight": len(self.calls.in_flight()),
            "timers": self.calls.timers(),
            "catchUps": self.catch_ups,
            "caughtUpCalls": self.caught_up_calls,
            "lateChanges": self.late_changes,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then stop taking events and drain in-flight work to a deadline."""
        await self.listener.start()
        loops = [
            asyncio.create_task(self.listener.supervise()),
            asyncio.create_task(self._sweep_forever()),
            asyncio.create_task(self._fire_timers_forever()),
        ]
        if self._prune_devices is not None:
            loops.append(asyncio.create_task(self._prune_devices_forever(self._prune_devices)))
        log.info("watcher.started")
        await stop.wait()
        log.info("watcher.stopping", in_flight=len(self.calls.in_flight()))
        self._stopping = True
        self.calls.close()
        await self.listener.stop()
        if self._catching_up is not None:
            loops.append(self._catching_up)
        for task in loops:
            task.cancel()
        pending = self.calls.in_flight()
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.config.drain_s)
            for task in late:
                task.cancel()
            log.info("watcher.drained", finished=len(pending) - len(late), abandoned=len(late))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*loops, return_exceptions=True)
        log.info("watcher.stopped")
