"""The watcher's handling of feed snapshots, of the catch-up they call for and of its sweep, with in-memory fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from structlog.testing import capture_logs

from memharbor.repositories.call_feed import CallEvent, FeedSnapshot, Gap
from tests.support.fake_call_feed import FakeCallSweeps, FakeCatchUp, FakeFeed
from tests.support.http_fakes import FakeClock
from watcher.listener import FeedMark
from watcher.tracking import CallTracker
from watcher.worker import Watcher, WatcherConfig

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


class FakeReactor:
    """Knows which statuses' effects are done, which calls it saw to a final status, and the stamp of
    each ended call it handled."""

    def __init__(
        self,
        done: dict[str, str] | None = None,
        final: set[str] | None = None,
        ended: dict[str, datetime] | None = None,
    ) -> None:
        self.done = done or {}
        self.final = final or set()
        self.ended = ended or {}
        self.handled: list[tuple[str, bool]] = []

    def known_done(self, call_id: str, status: Any) -> bool:
        return self.done.get(call_id) == status

    def known_final(self, call_id: str, updated_at: datetime | None = None) -> bool:
        return call_id in self.final or (updated_at is not None and self.ended.get(call_id) == updated_at)

    async def handle(
        self, call_id: str, receiver_hint: str | None = None, time_out: bool = False, group_hint: str | None = None
    ) -> Any:
        self.handled.append((call_id, time_out))
        return "done"

    def prune(self, active_ids: set[str]) -> None:
        self.done = {c: s for c, s in self.done.items() if c in active_ids}


def make_watcher(
    reactor: FakeReactor, catch_up: FakeCatchUp | None = None, sweeps: FakeCallSweeps | None = None
) -> Watcher:
    return Watcher(
        sweeps=sweeps or FakeCallSweeps(),
        reactor=reactor,
        calls=CallTracker(),
        clock=FakeClock(T0.timestamp(), mono=0.0),
        config=WatcherConfig(sweep_interval_s=15.0, catch_up_retry_s=0.01),
        listen=FakeFeed,
        catch_up=catch_up or FakeCatchUp(),
        mark=FeedMark(min_lag_s=0.0),
    )


def event(call_id: str, change: str, status: str, updated_at: datetime | None = None) -> CallEvent:
    return CallEvent(call_id, change, status, update_time=updated_at, receiver_id="r1", updated_at=updated_at)


def snapshot(
    read_s: float, events: list[CallEvent] | None = None, full: bool = True, floor_s: float = 0
) -> FeedSnapshot:
    """A feed snapshot read at T0 + read_s whose window's oldest stamp is T0 + floor_s."""
    return FeedSnapshot(events or [], full, T0 + timedelta(seconds=floor_s), T0 + timedelta(seconds=read_s))


async def settle(done: Callable[[], bool]) -> None:
    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the watcher did not settle")


class TestOnEvents:
    """Which feed events lead to a handler run."""

    async def test_new_call_is_handled(self) -> None:
        """A call the watcher knows nothing about is handled."""
        reactor = FakeReactor()
        watcher = make_watcher(reactor)
        watcher.on_events([event("c1", "ADDED", "pending", T0)])
        await asyncio.gather(*watcher.calls.in_flight())
        assert reactor.handled == [("c1", False)]

    async def test_removed_means_pushed_out_of_the_window(self) -> None:
        """A REMOVED event is not a change: nothing runs and what arrived stays known."""
        reactor = FakeReactor(done={"c1": "pending"})
        watcher = make_watcher(reactor)
        watcher.on_events([event("c1", "ADDED", "pending", T0)])
        watcher.on_events([event("c1", "REMOVED", "pending", T0 + timedelta(seconds=1))])
        assert watcher.calls.in_flight() == [] and reactor.handled == []
        assert not watcher.calls.changed_since_arrival("c1", T0)

    async def test_final_status_this_instance_finished_is_an_echo(self) -> None:
        """Our own timeout write (missed) or a later review edit of a finished call runs nothing."""
        reactor = FakeReactor(final={"c1"})
        watcher = make_watcher(reactor)
        later = T0 + timedelta(seconds=1)
        watcher.on_events([event("c1", "MODIFIED", "missed", T0), event("c1", "MODIFIED", "ended", later)])
        assert watcher.calls.in_flight() == [] and reactor.handled == []

    async def test_ended_call_runs_again_only_for_a_newer_stamp(self) -> None:
        """Our own write to an ended call (same `updatedAt`) runs nothing; a review (newer stamp) runs."""
        reactor = FakeReactor(ended={"c1": T0})
        watcher = make_watcher(reactor)
        watcher.on_events([CallEvent("c1", "MODIFIED", "ended", T0 + timedelta(seconds=1), updated_at=T0)])
        assert watcher.calls.in_flight() == []
        review = T0 + timedelta(seconds=2)
        watcher.on_events([CallEvent("c1", "MODIFIED", "ended", review, updated_at=review)])
        await asyncio.gather(*watcher.calls.in_flight())
        assert reactor.handled == [("c1", False)]

    async def test_final_status_of_another_call_is_handled(self) -> None:
        """A call that ended without this instance seeing it through is handled (e.g. the app ended it)."""
        reactor = FakeReactor(final={"other"})
        watcher = make_watcher(reactor)
        watcher.on_events([event("c1", "MODIFIED", "ended", T0)])
        await asyncio.gather(*watcher.calls.in_flight())
        assert reactor.handled == [("c1", False)]

    async def test_known_done_status_is_an_echo(self) -> None:
        """The echo of our own ring-setup write (status still pending, effects done) runs nothing."""
        reactor = FakeReactor(done={"c1": "pending"})
        watcher = make_watcher(reactor)
        watcher.on_events([event("c1", "MODIFIED", "pending", T0)])
        assert watcher.calls.in_flight() == []

    async def test_a_version_that_arrived_before_runs_nothing(self) -> None:
        """The same version again (a catch-up overlapping the window, a re-listing) is not a change."""
        reactor = FakeReactor()
        watcher = make_watcher(reactor)
        watcher.on_events([event("c1", "ADDED", "pending", T0)])
        await asyncio.gather(*watcher.calls.in_flight())
        watcher.on_events([event("c1", "CAUGHT_UP", "pending", T0)])
        assert watcher.calls.in_flight() == [] and reactor.handled == [("c1", False)]


class TestCatchUp:
    """A window that may have overflowed is followed by a read of the calls updated since the mark."""

    async def test_no_catch_up_while_the_window_keeps_its_floor(self) -> None:
        """Snapshots whose oldest call was already in the window read nothing more."""
        catch_up = FakeCatchUp()
        watcher = make_watcher(FakeReactor(), catch_up)
        for second in range(5):
            watcher.on_snapshot(snapshot(second, [event(f"c{second}", "ADDED", "pending", T0)]))
        await asyncio.sleep(0.02)
        assert catch_up.gaps == [] and watcher.catch_ups == 0

    async def test_overflow_reads_the_gap_and_handles_its_calls(self) -> None:
        """Calls that changed past a full window reach their handlers through the catch-up."""
        passed = [event(f"p{i}", "CAUGHT_UP", "pending", T0 + timedelta(seconds=1.5)) for i in range(5)]
        catch_up = FakeCatchUp(passed)
        reactor = FakeReactor()
        watcher = make_watcher(reactor, catch_up)
        watcher.on_snapshot(snapshot(1))
        watcher.on_snapshot(snapshot(2, [event("w1", "ADDED", "pending", T0 + timedelta(seconds=2))], floor_s=1.9))
        await settle(lambda: watcher.catch_ups == 1)
        await asyncio.gather(*watcher.calls.in_flight())
        assert catch_up.gaps == [Gap(T0 + timedelta(seconds=1), T0 + timedelta(seconds=2), T0 + timedelta(seconds=1.9))]
        assert sorted(c for c, _ in reactor.handled) == ["p0", "p1", "p2", "p3", "p4", "w1"]
        assert watcher.mark.mark == T0 + timedelta(seconds=2) and watcher.mark.gap() is None

    async def test_overflows_during_a_catch_up_are_read_together(self) -> None:
        """A burst of overflowing snapshots makes few reads, the last one up to the newest snapshot."""
        catch_up = FakeCatchUp()
        catch_up.gate.clear()
        watcher = make_watcher(FakeReactor(), catch_up)
        watcher.on_snapshot(snapshot(1))
        watcher.on_snapshot(snapshot(2, floor_s=1.5))
        await settle(lambda: len(catch_up.gaps) == 1)  # the first read has begun and waits
        for second in range(3, 12):
            watcher.on_snapshot(snapshot(second, floor_s=second - 0.5))
        catch_up.gate.set()
        await settle(lambda: watcher.mark.gap() is None)
        assert [gap.until for gap in catch_up.gaps] == [T0 + timedelta(seconds=2), T0 + timedelta(seconds=11)]
        assert catch_up.gaps[1].since == T0 + timedelta(seconds=2)

    async def test_a_failed_catch_up_is_tried_again(self) -> None:
        """A read that fails leaves the mark in place and is retried shortly."""
        passed = [event("p1", "CAUGHT_UP", "pending", T0 + timedelta(seconds=1.5))]
        catch_up = FakeCatchUp(passed, fail_first=True)
        reactor = FakeReactor()
        watcher = make_watcher(reactor, catch_up)
        watcher.on_snapshot(snapshot(1))
        watcher.on_snapshot(snapshot(2, floor_s=1.5))
        await settle(lambda: watcher.catch_ups == 1)
        await asyncio.gather(*watcher.calls.in_flight())
        assert len(catch_up.gaps) == 2 and catch_up.gaps[0] == catch_up.gaps[1]
        assert reactor.handled == [("p1", False)]


class TestProbes:
    """What /livez and /readyz report about the watcher."""

    def test_not_ready_before_the_start_up_sweep(self) -> None:
        """Until the first sweep has armed the older calls' timers, the watcher is not ready."""
        watcher = make_watcher(FakeReactor())
        assert watcher.readiness_problems() == ["the start-up sweep has not finished"]
        assert watcher.liveness_problems() == []

    def test_dead_when_the_feed_and_the_sweep_fall_silent(self) -> None:
        """No snapshot nor sweep for longer than the limit, or an unsubscribed feed, fails liveness."""
        watcher = make_watcher(FakeReactor())
        clock = watcher.clock
        assert isinstance(clock, FakeClock)
        watcher.on_snapshot(snapshot(1, full=False))
        clock.mono = 59.0
        assert watcher.liveness_problems() == []
        clock.mono = 100.0
        assert watcher.liveness_problems() == ["no snapshot or sweep for 100 s (limit 60 s)"]
        feed = watcher.listener
        assert isinstance(feed, FakeFeed)
        feed.active = False
        assert "the change feed is not subscribed" in watcher.liveness_problems()


class TestChangeCounts:
    """Changes handed to a handler are counted by where they came from; echoes are not."""

    async def test_counted_by_source(self) -> None:
        """A feed change and a caught-up one count once each; an echo of our own write does not."""
        reactor = FakeReactor(done={"echo": "pending"})
        watcher = make_watcher(reactor)
        watcher.on_events(
            [
                event("c1", "ADDED", "pending", T0),
                event("c2", "CAUGHT_UP", "pending", T0),
                event("echo", "MODIFIED", "pending", T0),
            ]
        )
        await asyncio.gather(*watcher.calls.in_flight())
        registry = watcher.metrics.registry
        assert registry.get_sample_value("memharbor_watcher_changes_total", {"source": "feed"}) == 1
        assert registry.get_sample_value("memharbor_watcher_changes_total", {"source": "catch_up"}) == 1


def ago(seconds: float) -> datetime:
    return T0 - timedelta(seconds=seconds)


class TestSweep:
    """The sweep backs up the timers and the feed through the CallSweeps port."""

    async def test_overdue_call_without_a_timer_is_timed_out(self) -> None:
        """A ringing call past its deadline is timed out unless its own timer is armed."""
        sweeps = FakeCallSweeps()
        sweeps.put("late", ago(60), status="pending", updatedAt=ago(60), ringDeadline=ago(1))
        sweeps.put("armed", ago(60), status="pending", updatedAt=ago(60), ringDeadline=ago(1))
        reactor = FakeReactor()
        watcher = make_watcher(reactor, sweeps=sweeps)
        watcher.calls.schedule_timeout("armed", T0 + timedelta(seconds=5))
        assert (await watcher.sweep_once())["overdue"] == 1
        await asyncio.gather(*watcher.calls.in_flight())
        assert ("late", True) in reactor.handled and ("armed", True) not in reactor.handled

    async def test_missed_changes_and_open_effects_are_handled(self) -> None:
        """An unseen active call, an open claim and a call that left the active set run; a known one does not."""
        sweeps = FakeCallSweeps()
        sweeps.put("known", T0, status="accepted", updatedAt=ago(30))
        sweeps.put("unseen", T0, status="pending", updatedAt=ago(30))
        sweeps.put("left", T0, status="ended", updatedAt=ago(30))
        sweeps.servers = {"left": {"status": "accepted"}, "claimed": {"status": "ended", "effectOpen": True}}
        reactor = FakeReactor(done={"known": "accepted"})
        watcher = make_watcher(reactor, sweeps=sweeps)
        watcher.on_events([event("known", "MODIFIED", "accepted", T0)])  # arrived; its effects are done
        assert await watcher.sweep_once() == {"overdue": 0, "missed": 0, "malformed": 0, "late": 0}
        await asyncio.gather(*watcher.calls.in_flight())
        assert sorted(c for c, _ in reactor.handled) == ["claimed", "left", "unseen"]

    async def test_an_undelivered_app_change_restarts_the_feed(self) -> None:
        """An app change made after the watch subscribed and not delivered within the grace is a stall."""
        sweeps = FakeCallSweeps()
        sweeps.put("lost", ago(20), status="pending", updatedAt=ago(20))
        watcher = make_watcher(FakeReactor(), sweeps=sweeps)
        feed = watcher.listener
        assert isinstance(feed, FakeFeed)
        feed.subscribed_at = ago(60).timestamp()
        assert (await watcher.sweep_once())["missed"] == 1
        assert feed.restarts == 1 and watcher.stalls == 1

    async def test_malformed_stamp_is_reported_once_per_version(self) -> None:
        """A call whose `updatedAt` is no timestamp is reported and handled once, again when it changes."""
        sweeps = FakeCallSweeps()
        sweeps.put("odd", T0, status="ended", updatedAt="yesterday")
        reactor = FakeReactor()
        watcher = make_watcher(reactor, sweeps=sweeps)
        with capture_logs() as logs:
            for version in (T0, T0, T0 + timedelta(seconds=1)):
                sweeps.versions["odd"] = version
                assert (await watcher.sweep_once())["malformed"] == 1
                await asyncio.gather(*watcher.calls.in_flight())
        reports = [e for e in logs if e["event"] == "call.updated_at_malformed"]
        assert [(e["kind"], e["value_type"]) for e in reports] == [("above_timestamps", "str")] * 2
        assert reactor.handled == [("odd", False)] * 2


class TestSettledReread:
    """Each sweep reads once more the calls stamped since the last one, up to `settle_s` ago."""

    async def test_a_late_commit_below_the_mark_is_handled(self) -> None:
        """A review committed long after its stamp, which no snapshot showed, reaches the reactor."""
        review = event("c1", "CAUGHT_UP", "ended", ago(30))
        catch_up = FakeCatchUp([review])
        reactor = FakeReactor()
        watcher = make_watcher(reactor, catch_up)
        assert (await watcher.sweep_once())["late"] == 1
        await asyncio.gather(*watcher.calls.in_flight())
        assert reactor.handled == [("c1", False)] and watcher.status()["lateChanges"] == 1

    async def test_each_stamp_range_is_read_once(self) -> None:
        """The first re-read reaches back `reread_lookback_s`; the next starts where it ended."""
        catch_up = FakeCatchUp()
        watcher = make_watcher(FakeReactor(), catch_up)
        await watcher.sweep_once()
        clock = watcher.clock
        assert isinstance(clock, FakeClock)
        clock.advance(15)
        await watcher.sweep_once()
        settled = T0 - timedelta(seconds=watcher.config.settle_s)
        lookback = timedelta(seconds=watcher.config.reread_lookback_s)
        later = settled + timedelta(seconds=15)
        assert catch_up.gaps == [Gap(settled - lookback, settled, settled), Gap(settled, later, later)]

    async def test_a_change_the_feed_delivered_is_not_handled_again(self) -> None:
        """A final call's version that arrived through the feed stays known until the re-read passes it."""
        ended = event("c1", "MODIFIED", "ended", ago(5))
        catch_up = FakeCatchUp([ended])
        reactor = FakeReactor()
        watcher = make_watcher(reactor, catch_up)
        watcher.on_events([ended])
        await asyncio.gather(*watcher.calls.in_flight())
        await watcher.sweep_once()  # reads up to 10 s ago: the call is final but not yet passed
        clock = watcher.clock
        assert isinstance(clock, FakeClock)
        clock.advance(15)
        assert (await watcher.sweep_once())["late"] == 0
        assert reactor.handled == [("c1", False)]

    async def test_an_echo_of_our_own_write_is_not_a_late_change(self) -> None:
        """A version the feed never showed, of a call this watcher saw through, is neither run nor counted."""
        catch_up = FakeCatchUp([event("c1", "CAUGHT_UP", "missed", ago(30))])
        reactor = FakeReactor(final={"c1"})
        watcher = make_watcher(reactor, catch_up)
        assert (await watcher.sweep_once())["late"] == 0
        assert reactor.handled == [] and watcher.status()["lateChanges"] == 0

    async def test_a_failed_reread_reads_the_same_range_again(self) -> None:
        """A dropped connection leaves the settled mark where it was."""
        catch_up = FakeCatchUp([event("c1", "CAUGHT_UP", "ended", ago(30))], fail_first=True)
        reactor = FakeReactor()
        watcher = make_watcher(reactor, catch_up)
        with capture_logs() as logs:
            assert (await watcher.sweep_once())["late"] == 0
        assert [e["event"] for e in logs if e["event"].startswith("feed.")] == ["feed.reread_failed"]
        assert (await watcher.sweep_once())["late"] == 1
        assert catch_up.gaps[0] == catch_up.gaps[1]
