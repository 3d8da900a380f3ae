"""The watcher's handling of change-feed events and of its stall check, with in-memory fakes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from watcher.listener import CallEvent
from watcher.worker import Watcher, WatcherConfig

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


class FakeReactor:
    """Knows which statuses' effects are done and which calls it saw to a final status."""

    def __init__(self, done: dict[str, str] | None = None, final: set[str] | None = None) -> None:
        self.done = done or {}
        self.final = final or set()
        self.handled: list[tuple[str, bool]] = []

    def known_done(self, call_id: str, status: Any) -> bool:
        return self.done.get(call_id) == status

    def known_final(self, call_id: str) -> bool:
        return call_id in self.final

    async def handle(
        self, call_id: str, receiver_hint: str | None = None, time_out: bool = False, group_hint: str | None = None
    ) -> Any:
        self.handled.append((call_id, time_out))
        return FakeClaim()


class FakeClaim:
    value = "done"


class FakeListener:
    """Only what the stall check reads: when the watch subscribed."""

    def __init__(self, subscribed_at: float | None) -> None:
        self.subscribed_at = subscribed_at


class FakeClock:
    def time(self) -> float:
        return T0.timestamp()

    def monotonic(self) -> float:
        return 0.0


class FakeSnapshot:
    """A call document as a query returns it."""

    def __init__(self, call_id: str, updated_at: Any) -> None:
        self.id = call_id
        self._updated_at = updated_at

    def get(self, name: str) -> Any:
        if name != "updatedAt" or self._updated_at is None:
            raise KeyError(name)
        return self._updated_at


def make_watcher(reactor: FakeReactor, subscribed_at: float | None = None) -> Watcher:
    return Watcher(
        db=None,  # type: ignore[arg-type]
        listener=FakeListener(subscribed_at),  # type: ignore[arg-type]
        reactor=reactor,  # type: ignore[arg-type]
        heartbeat=None,  # type: ignore[arg-type]
        clock=FakeClock(),
        config=WatcherConfig(sweep_interval_s=15.0, stall_grace_s=10.0),
    )


def event(call_id: str, change: str, status: str, updated_at: datetime | None = None) -> CallEvent:
    return CallEvent(call_id, change, status, update_time=updated_at, receiver_id="r1", updated_at=updated_at)


class TestOnEvents:
    """Which feed events lead to a handler run."""

    async def test_new_call_is_handled(self) -> None:
        """A call the watcher knows nothing about is handled."""
        reactor = FakeReactor()
        watcher = make_watcher(reactor)
        watcher.on_events([event("c1", "ADDED", "pending", T0)])
        await asyncio.sleep(0)
        await asyncio.gather(*watcher._running.values())
        assert reactor.handled == [("c1", False)]

    async def test_removed_means_pushed_out_of_the_window(self) -> None:
        """A REMOVED event is not a change: nothing runs and nothing is forgotten."""
        reactor = FakeReactor()
        watcher = make_watcher(reactor)
        watcher._seen_app["c1"] = T0
        watcher.on_events([event("c1", "REMOVED", "pending", T0)])
        assert not watcher._running and reactor.handled == []
        assert watcher._seen_app["c1"] == T0

    async def test_final_status_this_instance_finished_is_an_echo(self) -> None:
        """Our own timeout write (missed) or a later review edit of a finished call runs nothing."""
        reactor = FakeReactor(final={"c1"})
        watcher = make_watcher(reactor)
        watcher.on_events([event("c1", "MODIFIED", "missed", T0), event("c1", "MODIFIED", "ended", T0)])
        assert not watcher._running and reactor.handled == []

    async def test_final_status_of_another_call_is_handled(self) -> None:
        """A call that ended without this instance seeing it through is handled (e.g. the app ended it)."""
        reactor = FakeReactor(final={"other"})
        watcher = make_watcher(reactor)
        watcher.on_events([event("c1", "MODIFIED", "ended", T0)])
        await asyncio.gather(*watcher._running.values())
        assert reactor.handled == [("c1", False)]

    async def test_known_done_status_is_an_echo(self) -> None:
        """The echo of our own ring-setup write (status still pending, effects done) runs nothing."""
        reactor = FakeReactor(done={"c1": "pending"})
        watcher = make_watcher(reactor)
        watcher.on_events([event("c1", "MODIFIED", "pending", T0)])
        assert not watcher._running


class TestUndeliveredAppChange:
    """The stall check: an app change newer than the subscription that the feed never showed."""

    def test_change_after_subscribe_not_seen_past_the_grace_counts(self) -> None:
        """An updatedAt after the subscription, unseen and older than the grace, is a missed change."""
        watcher = make_watcher(FakeReactor(), subscribed_at=(T0 - timedelta(minutes=5)).timestamp())
        snap = FakeSnapshot("c1", T0 - timedelta(seconds=30))
        assert watcher._undelivered_app_change(snap, T0)

    def test_seen_change_does_not_count(self) -> None:
        """A change the feed delivered is not missed."""
        watcher = make_watcher(FakeReactor(), subscribed_at=(T0 - timedelta(minutes=5)).timestamp())
        watcher._seen_app["c1"] = T0 - timedelta(seconds=30)
        assert not watcher._undelivered_app_change(FakeSnapshot("c1", T0 - timedelta(seconds=30)), T0)

    def test_call_older_than_the_subscription_does_not_count(self) -> None:
        """A ringing call last changed before the watch subscribed may sit outside the window."""
        watcher = make_watcher(FakeReactor(), subscribed_at=(T0 - timedelta(seconds=20)).timestamp())
        assert not watcher._undelivered_app_change(FakeSnapshot("c1", T0 - timedelta(minutes=1)), T0)

    def test_recent_change_within_the_grace_does_not_count(self) -> None:
        """A change younger than the grace may still be on its way."""
        watcher = make_watcher(FakeReactor(), subscribed_at=(T0 - timedelta(minutes=5)).timestamp())
        assert not watcher._undelivered_app_change(FakeSnapshot("c1", T0 - timedelta(seconds=2)), T0)

    def test_missing_or_malformed_stamp_does_not_count(self) -> None:
        """Admin-written documents without a timestamp updatedAt never trip the check."""
        watcher = make_watcher(FakeReactor(), subscribed_at=(T0 - timedelta(minutes=5)).timestamp())
        assert not watcher._undelivered_app_change(FakeSnapshot("c1", None), T0)
        assert not watcher._undelivered_app_change(FakeSnapshot("c2", "yesterday"), T0)

    def test_before_any_subscription_nothing_counts(self) -> None:
        """Until the watch has subscribed there is no stream to blame."""
        watcher = make_watcher(FakeReactor(), subscribed_at=None)
        assert not watcher._undelivered_app_change(FakeSnapshot("c1", T0 - timedelta(seconds=30)), T0)
