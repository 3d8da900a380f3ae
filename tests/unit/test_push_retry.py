"""The retry loop shared by both transports, with a fake clock and a recording sleep: no network."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from watcher.push import PushTarget
from watcher.retry import Attempt, Delivery, RetryPolicy, TransportStats, deliver, retry_after_seconds, to_push_result

NOW = 1_800_000_000.0


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = NOW
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(*attempts: Attempt) -> tuple[Callable[[], Awaitable[Attempt]], list[int]]:
    """An attempt function that returns these in order (the last one forever) and counts calls."""
    calls = [0]

    async def attempt() -> Attempt:
        calls[0] += 1
        return attempts[min(calls[0], len(attempts)) - 1]

    return attempt, calls


TRANSIENT = Attempt("transient", "apns:500:InternalServerError")


class TestDeliver:
    """Transient failures are retried with back-off, only while the push still matters."""

    async def test_transient_failures_are_retried_until_sent(self) -> None:
        """Two 500s then success: three attempts, two pauses, the last outcome sent."""
        time = FakeTime()
        attempt, calls = scripted(TRANSIENT, TRANSIENT, Attempt("sent"))
        delivery = await deliver(attempt, NOW + 60, RetryPolicy(), clock=time.clock, sleep=time.sleep)
        assert delivery == Delivery(Attempt("sent"), 3)
        assert calls[0] == 3
        assert len(time.sleeps) == 2

    async def test_dead_token_and_permanent_failures_are_not_retried(self) -> None:
        """A dead token or a permanent failure ends delivery after one attempt."""
        for final in (Attempt("dead_token", "apns:410:Unregistered"), Attempt("failed", "apns:400:BadTopic")):
            time = FakeTime()
            attempt, calls = scripted(final)
            delivery = await deliver(attempt, NOW + 60, RetryPolicy(), clock=time.clock, sleep=time.sleep)
            assert delivery.last == final and calls[0] == 1 and time.sleeps == []

    async def test_back_off_grows_exponentially_with_jitter_and_a_cap(self) -> None:
        """Pauses lie in [d/2, d] for d = base * 2^(n-1), capped, and are not all equal."""
        time = FakeTime()
        policy = RetryPolicy(base_s=0.25, factor=2.0, cap_s=4.0, max_attempts=8)
        attempt, _ = scripted(TRANSIENT)
        await deliver(attempt, NOW + 3600, policy, clock=time.clock, sleep=time.sleep, rng=random.Random(7))
        ceilings = [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
        assert len(time.sleeps) == len(ceilings)
        for pause, ceiling in zip(time.sleeps, ceilings, strict=True):
            assert ceiling / 2 <= pause <= ceiling
        assert len(set(time.sleeps)) > 1

    async def test_retry_after_is_honoured_when_longer_than_the_back_off(self) -> None:
        """A Retry-After of 3 s makes the pause at least 3 s."""
        time = FakeTime()
        attempt, _ = scripted(Attempt("transient", "fcm:503:UNAVAILABLE", retry_after_s=3.0), Attempt("sent"))
        delivery = await deliver(attempt, NOW + 60, RetryPolicy(), clock=time.clock, sleep=time.sleep)
        assert delivery.last.outcome == "sent"
        assert time.sleeps[0] >= 3.0

    async def test_no_retry_past_the_expiry(self) -> None:
        """Retrying stops once the next pause would end after expires_at (the ring deadline)."""
        time = FakeTime()
        attempt, calls = scripted(TRANSIENT)
        delivery = await deliver(attempt, NOW + 2.0, RetryPolicy(), clock=time.clock, sleep=time.sleep)
        assert delivery.gave_up == "expired"
        assert delivery.last == TRANSIENT
        assert time.now < NOW + 2.0
        assert calls[0] >= 2

    async def test_no_retry_once_the_still_wanted_lookup_ran_past_the_expiry(self) -> None:
        """A slow still-wanted lookup that ends after expires_at makes no further attempt."""
        time = FakeTime()

        async def slow_still_wanted() -> bool:
            time.now += 5.0  # a loaded Firestore answers late
            return True

        attempt, calls = scripted(TRANSIENT)
        delivery = await deliver(
            attempt, NOW + 3.0, RetryPolicy(), still_wanted=slow_still_wanted, clock=time.clock, sleep=time.sleep
        )
        assert delivery.gave_up == "expired" and delivery.last == TRANSIENT
        assert calls[0] == 1

    async def test_retry_after_beyond_the_expiry_gives_up_at_once(self) -> None:
        """A Retry-After longer than the time left ends delivery without sleeping."""
        time = FakeTime()
        attempt, calls = scripted(Attempt("transient", "fcm:429:QUOTA_EXCEEDED", retry_after_s=120))
        delivery = await deliver(attempt, NOW + 30, RetryPolicy(), clock=time.clock, sleep=time.sleep)
        assert delivery.gave_up == "expired" and calls[0] == 1 and time.sleeps == []

    async def test_retrying_stops_when_the_call_stops_ringing(self) -> None:
        """still_wanted() turning False (call answered or cancelled) ends the retries."""
        time = FakeTime()
        answers = iter([True, False])
        asked = []

        async def still_wanted() -> bool:
            asked.append(time.now)
            return next(answers)

        attempt, calls = scripted(TRANSIENT)
        delivery = await deliver(
            attempt, NOW + 60, RetryPolicy(), still_wanted=still_wanted, clock=time.clock, sleep=time.sleep
        )
        assert delivery.gave_up == "not_wanted"
        assert calls[0] == 2
        assert len(asked) == 2

    async def test_still_wanted_is_not_asked_before_the_first_attempt(self) -> None:
        """A push that succeeds at once costs no still-wanted lookup."""
        asked = []

        async def still_wanted() -> bool:
            asked.append(1)
            return True

        attempt, _ = scripted(Attempt("sent"))
        await deliver(attempt, NOW + 60, RetryPolicy(), still_wanted=still_wanted, clock=FakeTime().clock)
        assert asked == []

    async def test_a_failing_still_wanted_does_not_stop_retries(self) -> None:
        """If asking fails (Firestore down), retries go on, still bounded by the expiry."""
        time = FakeTime()

        async def still_wanted() -> bool:
            raise ConnectionError("firestore unreachable")

        attempt, _ = scripted(TRANSIENT, Attempt("sent"))
        delivery = await deliver(
            attempt, NOW + 60, RetryPolicy(), still_wanted=still_wanted, clock=time.clock, sleep=time.sleep
        )
        assert delivery.last.outcome == "sent"

    async def test_attempts_are_bounded(self) -> None:
        """max_attempts caps the number of requests even with time left."""
        time = FakeTime()
        attempt, calls = scripted(TRANSIENT)
        delivery = await deliver(attempt, NOW + 3600, RetryPolicy(max_attempts=3), clock=time.clock, sleep=time.sleep)
        assert delivery.gave_up == "max_attempts" and calls[0] == 3


class TestRetryAfter:
    """Retry-After values in both HTTP forms."""

    def test_delta_seconds(self) -> None:
        """An integer is seconds."""
        assert retry_after_seconds("12") == 12.0

    def test_http_date(self) -> None:
        """An HTTP date is the time left until then."""
        when = datetime.fromtimestamp(NOW + 30, UTC)
        assert retry_after_seconds(format_datetime(when, usegmt=True), now=NOW) == pytest.approx(30.0)

    def test_absent_or_garbage_is_none(self) -> None:
        """No header or an unreadable one gives None (the back-off alone decides)."""
        assert retry_after_seconds(None) is None
        assert retry_after_seconds("soon") is None


class TestStats:
    """Per-transport counters and the last error, as the heartbeat reports them."""

    def test_dead_tokens_are_counted_but_are_not_the_last_error(self) -> None:
        """A 410 counts as tokensInvalid; a 500 becomes lastError with its time."""
        stats = TransportStats("apns")
        stats.note_attempt(Attempt("dead_token", "apns:410:Unregistered"), NOW)
        stats.note_delivery(Delivery(Attempt("dead_token", "apns:410:Unregistered"), 1), NOW)
        assert stats.report()["lastError"] is None
        stats.note_attempt(TRANSIENT, NOW + 1)
        stats.note_attempt(Attempt("sent"), NOW + 2)
        stats.note_delivery(Delivery(Attempt("sent"), 2), NOW + 2)
        report = stats.report()
        assert report["tokensInvalid"] == 1 and report["sent"] == 1 and report["failed"] == 1 and report["retries"] == 1
        assert report["lastError"] == "apns:500:InternalServerError"
        assert report["lastErrorAt"] == datetime.fromtimestamp(NOW + 1, UTC).isoformat()

    def test_push_result_carries_the_error_and_dead_token_flag(self) -> None:
        """A dead-token delivery becomes token_invalid; a sent one has no error."""
        target = PushTarget("bob", "ios", "t")
        dead = to_push_result(target, Delivery(Attempt("dead_token", "apns:410:Unregistered"), 1))
        assert (dead.sent, dead.error, dead.token_invalid) == (False, "apns:410:Unregistered", True)
        sent = to_push_result(target, Delivery(Attempt("sent"), 3))
        assert (sent.sent, sent.error, sent.token_invalid) == (True, None, False)
