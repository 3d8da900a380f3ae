"""The watcher's per-call bookkeeping on its own: arrivals, handler runs, ring timers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from memharbor.repositories.call_feed import CallEvent
from watcher.tracking import CallTracker, Job

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def event(call_id: str, version: datetime | None = T0, updated_at: datetime | None = T0, **extra: str) -> CallEvent:
    return CallEvent(call_id, "MODIFIED", "pending", update_time=version, updated_at=updated_at, **extra)


class TestArrivals:
    """Which versions of a call count as new, and what the sweep learns from them."""

    def test_first_and_newer_versions_are_new_older_ones_not(self) -> None:
        """A version arrives once: the same or an older update time is a repeat."""
        calls = CallTracker()
        assert calls.arrived(event("c1", T0))
        assert not calls.arrived(event("c1", T0))
        assert not calls.arrived(event("c1", T0 - timedelta(seconds=1)))
        assert calls.arrived(event("c1", T0 + timedelta(seconds=1)))

    def test_changed_since_arrival(self) -> None:
        """The sweep re-handles a call only when its document is newer than what arrived."""
        calls = CallTracker()
        assert calls.changed_since_arrival("c1", T0)
        calls.arrived(event("c1", T0))
        assert not calls.changed_since_arrival("c1", T0)
        assert calls.changed_since_arrival("c1", T0 + timedelta(milliseconds=1))
        assert not calls.changed_since_arrival("c1", None)

    def test_keep_only_forgets_the_others(self) -> None:
        """Calls that left the active set are forgotten, so a later version of them counts as new again."""
        calls = CallTracker()
        calls.arrived(event("c1"))
        calls.arrived(event("c2"))
        calls.keep_only({"c2"}, calls.arrivals())
        assert calls.arrived(event("c1"))
        assert not calls.arrived(event("c2"))

    def test_keep_only_spares_calls_the_settled_reread_has_yet_to_pass(self) -> None:
        """A final call stamped at or after the settled mark stays known, so the re-read sees it as known."""
        calls = CallTracker()
        calls.arrived(event("passed", updated_at=T0 - timedelta(seconds=1)))
        calls.arrived(event("ahead", updated_at=T0))
        calls.keep_only(set(), calls.arrivals(), stamped_since=T0)
        assert calls.arrived(event("passed", updated_at=T0 - timedelta(seconds=1)))
        assert not calls.arrived(event("ahead", updated_at=T0))

    def test_keep_only_spares_calls_that_arrived_after_the_list_was_read(self) -> None:
        """A call new since the sweep read the active calls is not on the list, yet must be kept."""
        calls = CallTracker()
        calls.arrived(event("old"))
        listed = calls.arrivals()
        calls.arrived(event("new", updated_at=T0 - timedelta(seconds=30)))
        calls.keep_only(set(), listed)
        assert calls.arrived(event("old"))
        assert not calls.arrived(event("new"))
        subscribed = (T0 - timedelta(minutes=5)).timestamp()
        assert not calls.app_change_missed("new", T0 - timedelta(seconds=30), subscribed, T0, 10.0)


class TestAppChangeMissed:
    """The stall check: an app change newer than the subscription that never arrived."""

    SUBSCRIBED = (T0 - timedelta(minutes=5)).timestamp()

    def test_unseen_change_past_the_grace_counts(self) -> None:
        """An updatedAt after the subscription, unseen and older than the grace, is a missed change."""
        calls = CallTracker()
        assert calls.app_change_missed("c1", T0 - timedelta(seconds=30), self.SUBSCRIBED, T0, 10.0)

    def test_change_that_arrived_does_not_count(self) -> None:
        """A change the feed delivered is not missed."""
        calls = CallTracker()
        calls.arrived(event("c1", updated_at=T0 - timedelta(seconds=30)))
        assert not calls.app_change_missed("c1", T0 - timedelta(seconds=30), self.SUBSCRIBED, T0, 10.0)

    def test_call_older_than_the_subscription_does_not_count(self) -> None:
        """A ringing call last changed before the watch subscribed may sit outside the window."""
        calls = CallTracker()
        subscribed = (T0 - timedelta(seconds=20)).timestamp()
        assert not calls.app_change_missed("c1", T0 - timedelta(minutes=1), subscribed, T0, 10.0)

    def test_change_within_the_grace_does_not_count(self) -> None:
        """A change younger than the grace may still be on its way."""
        calls = CallTracker()
        assert not calls.app_change_missed("c1", T0 - timedelta(seconds=2), self.SUBSCRIBED, T0, 10.0)

    def test_malformed_or_future_stamps_do_not_count(self) -> None:
        """A missing, non-timestamp or future updatedAt is the sweep's to report, not a stall."""
        calls = CallTracker()
        assert not calls.app_change_missed("c1", None, self.SUBSCRIBED, T0, 10.0)
        assert not calls.app_change_missed("c2", "yesterday", self.SUBSCRIBED, T0, 10.0)
        assert not calls.app_change_missed("c3", T0 + timedelta(days=300), self.SUBSCRIBED, T0, 10.0)

    def test_before_any_subscription_nothing_counts(self) -> None:
        """Until the watch has subscribed there is no stream to blame."""
        calls = CallTracker()
        assert not calls.app_change_missed("c1", T0 - timedelta(seconds=30), None, T0, 10.0)


async def _idle() -> None:
    await asyncio.sleep(0)


class TestHandlerRuns:
    """One handler per call at a time, run again when the call changed meanwhile."""

    async def test_request_starts_once_then_asks_again(self) -> None:
        """The first request starts a handler; one while it runs asks for another run instead."""
        calls = CallTracker()
        assert calls.request("c1")
        task = asyncio.create_task(_idle())
        calls.started("c1", task)
        assert calls.running("c1") and calls.in_flight() == [task]
        assert not calls.request("c1")
        calls.next_job("c1")
        assert not calls.run_again("c1", lambda e: False)  # the request came before this run began
        assert not calls.request("c1")
        assert calls.run_again("c1", lambda e: False)
        calls.finished("c1")
        assert not calls.running("c1") and calls.in_flight() == []
        await task

    async def test_newest_change_that_is_an_echo_needs_no_rerun(self) -> None:
        """A change that only echoes what the run just did does not run the handler again."""
        calls = CallTracker()
        calls.request("c1")
        calls.started("c1", task := asyncio.create_task(_idle()))
        calls.next_job("c1")
        calls.request("c1")
        calls.hint(event("c1"))
        assert not calls.run_again("c1", lambda e: True)
        assert calls.run_again("c1", lambda e: False)
        await task

    def test_job_carries_the_hints_and_the_due_flag(self) -> None:
        """The run reads the newest event's receiver and group, and whether the ring timer fired."""
        calls = CallTracker()
        calls.hint(event("c1", receiver_id="bob", group_id="g1"))
        calls.fire("c1")
        assert calls.next_job("c1") == Job(due=True, receiver_hint="bob", group_hint="g1")
        assert calls.next_job("c1") == Job(due=False, receiver_hint="bob", group_hint="g1")

    def test_a_fired_timer_always_runs_again(self) -> None:
        """A timer that fires during a run makes one more run, echo or not."""
        calls = CallTracker()
        calls.next_job("c1")
        calls.fire("c1")
        assert calls.run_again("c1", lambda e: True)

    def test_finished_drops_the_hint(self) -> None:
        """Once the handler ends, its hint goes with it."""
        calls = CallTracker()
        calls.hint(event("c1", receiver_id="bob"))
        calls.finished("c1")
        assert calls.next_job("c1").receiver_hint is None

    def test_closed_tracker_starts_nothing(self) -> None:
        """After close, no handler is started and no timer armed."""
        calls = CallTracker()
        calls.close()
        assert not calls.request("c1")
        calls.schedule_timeout("c1", T0)
        assert calls.timers() == 0 and calls.next_timer() is None


class TestRingTimers:
    """Ring timers as data: armed, moved, cancelled, and fired when their time comes."""

    def test_expired_fires_in_time_order_and_only_what_is_due(self) -> None:
        """Timers fire at their deadline, earliest first, and a fired call is due for its handler."""
        calls = CallTracker()
        calls.schedule_timeout("late", T0 + timedelta(seconds=5))
        calls.schedule_timeout("early", T0 + timedelta(seconds=1))
        assert calls.next_timer() == (T0 + timedelta(seconds=1)).timestamp()
        assert calls.expired(T0.timestamp()) == []
        assert calls.expired((T0 + timedelta(seconds=6)).timestamp()) == ["early", "late"]
        assert calls.has_timer("early") and calls.next_job("early").due
        assert calls.timers() == 0 and calls.next_timer() is None

    def test_cancelled_and_moved_timers(self) -> None:
        """A cancelled timer never fires; a moved one fires at its new time only."""
        calls = CallTracker()
        calls.schedule_timeout("gone", T0 + timedelta(seconds=1))
        calls.cancel_timeout("gone")
        calls.schedule_timeout("moved", T0 + timedelta(seconds=1))
        calls.schedule_timeout("moved", T0 + timedelta(seconds=3))
        assert calls.expired((T0 + timedelta(seconds=2)).timestamp()) == []
        assert not calls.has_timer("gone")
        assert calls.expired((T0 + timedelta(seconds=3)).timestamp()) == ["moved"]

    def test_rearming_the_same_deadline_is_a_no_op(self) -> None:
        """The reactor re-arms on every run; the same deadline neither duplicates nor wakes the timer loop."""
        calls = CallTracker()
        calls.schedule_timeout("c1", T0)
        calls.timers_changed.clear()
        calls.schedule_timeout("c1", T0)
        assert not calls.timers_changed.is_set()
        assert calls.expired(T0.timestamp()) == ["c1"]
        assert calls.expired(T0.timestamp()) == []

    def test_only_an_earlier_timer_wakes_the_loop(self) -> None:
        """The timer loop sleeps until the earliest timer, so only an earlier one needs to wake it."""
        calls = CallTracker()
        calls.schedule_timeout("c1", T0)
        assert calls.timers_changed.is_set()
        calls.timers_changed.clear()
        calls.schedule_timeout("c2", T0 + timedelta(seconds=1))
        assert not calls.timers_changed.is_set()
        calls.schedule_timeout("c3", T0 - timedelta(seconds=1))
        assert calls.timers_changed.is_set()

    def test_a_due_call_is_not_rearmed_until_it_ran(self) -> None:
        """Between firing and its handler run, re-arming the same call is ignored."""
        calls = CallTracker()
        calls.fire("c1")
        calls.schedule_timeout("c1", T0 + timedelta(seconds=9))
        assert calls.timers() == 0
        calls.next_job("c1")
        calls.schedule_timeout("c1", T0 + timedelta(seconds=9))
        assert calls.timers() == 1

    def test_retry_replaces_the_deadline(self) -> None:
        """A failed timeout is retried at the time given, not at the old deadline."""
        calls = CallTracker()
        calls.schedule_timeout("c1", T0)
        calls.retry_timeout_at("c1", (T0 + timedelta(seconds=1)).timestamp())
        assert calls.expired(T0.timestamp()) == []
        assert calls.expired((T0 + timedelta(seconds=1)).timestamp()) == ["c1"]
