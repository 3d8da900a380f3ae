"""Session time: the real clock (optionally sped up), or a virtual one for unit tests that never waits.

Sessions and simulated channels read the time and sleep only through a `Clock`, so a test can run an
hour-long script in milliseconds with `VirtualClock` and still see the same timeline.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """What a session and a simulated channel need of time."""

    def monotonic(self) -> float:
        """Seconds for durations and deadlines."""
        ...

    def time(self) -> float:
        """Wall time (Unix seconds) for stamps and token expiries."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SessionClock:
    """Monotonic and wall time for sessions and simulated channels, and a sleep that follows it."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin_mono = time.monotonic()
        self._origin_wall = time.time()

    def monotonic(self) -> float:
        return self._origin_mono + (time.monotonic() - self._origin_mono) * self.speed

    def time(self) -> float:
        return self._origin_wall + (time.monotonic() - self._origin_mono) * self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of this clock's time."""
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class VirtualClock:
    """Time that moves only when every task waiting on it is asleep: `sleep` returns at once in real time.

    The sleepers are woken in deadline order, and the clock jumps to each deadline. Before each jump
    the running tasks get `settle_rounds` turns of the event loop to reach their next `sleep`. Code that
    waits on something other than this clock (a thread, a socket) sees time jump meanwhile, so use it
    only where every wait is a `sleep` of this clock.
    """

    def __init__(self, start_wall: float = 1770120000.0, settle_rounds: int = 10) -> None:
        self._now = 0.0
        self._wall_offset = start_wall
        self._settle_rounds = settle_rounds
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._wall_offset + self._now

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of virtual time (no real waiting beyond a few turns of the loop)."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._order), wake))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await wake

    async def _drive(self) -> None:
        while self._sleepers:
            for _ in range(self._settle_rounds):
                await asyncio.sleep(0)
            deadline, _, wake = heapq.heappop(self._sleepers)
            if wake.done():
                continue  # its sleeper was cancelled: time need not move for it
            self._now = max(self._now, deadline)
            wake.set_result(None)
            # Everyone due at the same instant wakes together, as they would on a real clock.
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, other = heapq.heappop(self._sleepers)
                if not other.done():
                    other.set_result(None)
