"""Fakes of token_http's ports shared by the route tests: clock, authenticator, call lookups, health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from memharbor import logs
from memharbor.access import Principal
from token_http.errors import ApiError


class FakeClock:
    """Wall and monotonic time that only move when a test moves them."""

    def __init__(self, wall: float, mono: float = 1000.0) -> None:
        self.wall = float(wall)
        self.mono = mono

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class SteppedClock:
    """The real clock, whose monotonic time a test can also move ahead (past a cache's lifetime, say)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class FakeAuthenticator:
    """Bearer tokens from a fixed table; anything else is a 401, as the real authenticator answers."""

    def __init__(self, table: Mapping[str, Principal]) -> None:
        self.table = table
        self.seen: list[str | None] = []

    async def authenticate(self, authorization: str | None) -> Principal:
        self.seen.append(authorization)
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, "missing Authorization: Bearer <Firebase ID token>", field="Authorization")
        principal = self.table.get(authorization.removeprefix("Bearer "))
        if principal is None:
            raise ApiError(401, "invalid or expired Firebase ID token", field="Authorization")
        return principal


class Unused:
    """The call lookups and health probe, for routes that must never touch them."""

    async def calls_on_channel(self, channel: str) -> list[dict[str, Any]]:
        raise AssertionError("call lookups are not used here")

    async def get_calls(self, call_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        raise AssertionError("call lookups are not used here")

    async def ping(self) -> None:
        raise AssertionError("health is not used here")

    async def heartbeats(self) -> list[dict[str, Any]]:
        raise AssertionError("health is not used here")


class FakeCallLookup:
    """An in-memory `calls` collection read by channel name (the CallReader port of /api/token)."""

    def __init__(self, channel: str, caller: str, receiver: str) -> None:
        self.channel, self.caller, self.receiver = channel, caller, receiver
        self.calls: list[dict[str, Any]] = []
        self.queries: list[str] = []
        # Raised by the next lookups: Unavailable is an outage, anything else plays a bug.
        self.failure: Exception | None = None
        self.delay = 0.0

    def add(
        self, status: str, caller: str | None = None, receiver: str | None = None, channel: str | None = None
    ) -> None:
        """A call in `status` (between the default caller and receiver, on the default channel unless given)."""
        self.calls.append(
            {
                "callId": f"call{len(self.calls)}",
                "callerId": caller or self.caller,
                "receiverId": receiver or self.receiver,
                "status": status,
                "channelName": channel or self.channel,
            }
        )

    async def calls_on_channel(self, channel: str) -> list[dict[str, Any]]:
        self.queries.append(channel)
        # Logged so a test can see the request id bound while a port runs.
        logs.get_logger().info("fake.calls_on_channel", channel=channel)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failure is not None:
            raise self.failure
        return [dict(c) for c in self.calls if c["channelName"] == channel]

    async def get_calls(self, call_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        wanted = set(call_ids)
        return {c["callId"]: dict(c) for c in self.calls if c["callId"] in wanted}


class FakeHealth:
    """A database that answers, fails or hangs on ping, with a settable list of worker heartbeats."""

    def __init__(self) -> None:
        self.pings = 0
        self.delay = 0.0
        self.failure: Exception | None = None
        self.beats: list[dict[str, Any]] = []

    async def ping(self) -> None:
        self.pings += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failure is not None:
            raise self.failure

    async def heartbeats(self) -> list[dict[str, Any]]:
        return list(self.beats)
