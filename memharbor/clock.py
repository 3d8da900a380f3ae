"""The clock port: wall time for stamps and expiries, monotonic time for deadlines and durations."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What code that needs the time depends on, so tests can move it."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
