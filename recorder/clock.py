"""Session time: the real clock, or a faster one for unit tests (simulated seconds pass `speed` times faster)."""

from __future__ import annotations

import asyncio
import time


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
