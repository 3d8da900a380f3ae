"""Delivery attempts, retries and per-transport bookkeeping shared by the APNs and FCM transports.

A transport turns one request into an `Attempt`: sent, the token is dead, a transient failure (worth
another try, perhaps after the service's Retry-After) or a permanent one. `deliver` repeats transient
failures with exponential back-off and jitter, but only while the push still matters: before its
expiry (the ring deadline) and while `still_wanted` says so (the call still rings).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from memharbor.logs import get_logger
from watcher.push import PushResult, PushTarget, StillWanted

Outcome = Literal["sent", "dead_token", "transient", "failed"]
log = get_logger()
_RNG = random.Random()  # jitter needs no cryptographic quality, and seeding one per push costs a syscall


@dataclass(frozen=True)
class Attempt:
    """What one request to the push service achieved."""

    outcome: Outcome
    error: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with jitter: delay n is drawn from [d/2, d], d = min(cap, base * factor**(n-1))."""

    base_s: float = 0.25
    factor: float = 2.0
    cap_s: float = 4.0
    max_attempts: int = 8

    def delay(self, retry: int, rng: random.Random) -> float:
        """The pause before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.cap_s, self.base_s * self.factor ** (retry - 1))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Delivery:
    """The final attempt and how many requests it took."""

    last: Attempt
    attempts: int
    gave_up: str | None = None  # why retrying stopped early: "expired", "not_wanted", "max_attempts"


async def deliver(
    attempt: Callable[[], Awaitable[Attempt]],
    expires_at: float,
    policy: RetryPolicy,
    *,
    still_wanted: StillWanted | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> Delivery:
    """Run `attempt` until it is not transient, the push expires, nobody wants it, or attempts run out."""
    rng = rng or _RNG
    count = 0
    while True:
        count += 1
        result = await attempt()
        if result.outcome != "transient":
            return Delivery(result, count)
        if count >= policy.max_attempts:
            return Delivery(result, count, "max_attempts")
        pause = max(policy.delay(count, rng), result.retry_after_s or 0.0)
        if clock() + pause >= expires_at:
            return Delivery(result, count, "expired")
        await sleep(pause)
        if still_wanted is not None and not await _wanted(still_wanted):
            return Delivery(result, count, "not_wanted")
        if clock() >= expires_at:
            # The pause and the still-wanted lookup (slow under load) may end past the expiry: a ring
            # then would be for a missed call.
            return Delivery(result, count, "expired")


async def _wanted(still_wanted: StillWanted) -> bool:
    try:
        return await still_wanted()
    except Exception as exc:
        # Not knowing is no reason to stop: the expiry still bounds the retries.
        log.warning("push.still_wanted_failed", error=type(exc).__name__)
        return True


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class TransportStats:
    """Counters and the last error of one transport, for the heartbeat and /api/health."""

    name: str
    sent: int = 0
    failed: int = 0
    retries: int = 0
    tokens_invalid: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_sent_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def note_attempt(self, result: Attempt, now: float) -> None:
        """Count one request; every failure except a dead token becomes the transport's last error."""
        if result.outcome in ("transient", "failed") and result.error:
            self.last_error, self.last_error_at = result.error, now

    def note_delivery(self, delivery: Delivery, now: float) -> None:
        """Count one push's final outcome."""
        self.retries += delivery.attempts - 1
        outcome = delivery.last.outcome
        if outcome == "sent":
            self.sent += 1
            self.last_sent_at = now
        elif outcome == "dead_token":
            self.tokens_invalid += 1
            self.failed += 1
        else:
            self.failed += 1

    def report(self) -> dict[str, Any]:
        """The JSON-able status: configured, counters, last error and when."""
        return {
            "configured": True,
            "sent": self.sent,
            "failed": self.failed,
            "retries": self.retries,
            "tokensInvalid": self.tokens_invalid,
            "lastError": self.last_error,
            "lastErrorAt": _iso(self.last_error_at),
            "lastSentAt": _iso(self.last_sent_at),
            **self.extra,
        }


def _iso(at: float | None) -> str | None:
    return datetime.fromtimestamp(at, UTC).isoformat() if at is not None else None


async def send_counted(
    target: PushTarget,
    attempt: Callable[[], Awaitable[Attempt]],
    expires_at: float,
    policy: RetryPolicy,
    stats: TransportStats,
    clock: Callable[[], float],
    still_wanted: StillWanted | None = None,
) -> PushResult:
    """A transport's whole send: refuse an expired push, retry `attempt` per `policy`, count both in `stats`."""
    if clock() >= expires_at:
        return PushResult(sent=False, platform=target.platform, error="expired")

    async def counted() -> Attempt:
        result = await attempt()
        stats.note_attempt(result, clock())
        return result

    delivery = await deliver(counted, expires_at, policy, still_wanted=still_wanted, clock=clock)
    stats.note_delivery(delivery, clock())
    return to_push_result(target, delivery)


def to_push_result(target: PushTarget, delivery: Delivery) -> PushResult:
    """The notifier's answer for a finished delivery."""
    last = delivery.last
    if last.outcome == "sent":
        return PushResult(sent=True, platform=target.platform)
    return PushResult(
        sent=False, platform=target.platform, error=last.error, token_invalid=last.outcome == "dead_token"
    )
