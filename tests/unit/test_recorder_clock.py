"""Session clocks: the real one (optionally sped up) and the virtual one the unit tests run sessions on."""

from __future__ import annotations

import asyncio
import time

import pytest

from recorder.clock import SessionClock, VirtualClock


class TestVirtualClock:
    """Time moves from deadline to deadline, without real waiting."""

    async def test_an_hour_passes_at_once(self) -> None:
        """Sleeping 3600 s of virtual time takes well under a real second and moves both times by 3600."""
        clock = VirtualClock(start_wall=1000.0)
        started = time.monotonic()
        await clock.sleep(3600)
        assert time.monotonic() - started < 1.0
        assert clock.monotonic() == 3600 and clock.time() == 4600

    async def test_sleepers_wake_in_deadline_order_at_their_deadlines(self) -> None:
        """Tasks sleeping 0.3, 0.1 and 0.2 s wake in the order 0.1, 0.2, 0.3, each at its own time."""
        clock = VirtualClock()
        woke: list[tuple[str, float]] = []

        async def nap(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.monotonic()))

        await asyncio.gather(nap("c", 0.3), nap("a", 0.1), nap("b", 0.2))
        assert woke == [("a", 0.1), ("b", 0.2), ("c", 0.3)]

    async def test_periodic_tasks_interleave_as_in_real_time(self) -> None:
        """A 20 ms and a 50 ms ticker over 0.1 s tick 5 and 2 times, at their multiples."""
        clock = VirtualClock()
        ticks: dict[str, list[float]] = {"fast": [], "slow": []}

        async def ticker(name: str, every: float) -> None:
            while clock.monotonic() + every <= 0.1 + 1e-9:
                await clock.sleep(every)
                ticks[name].append(round(clock.monotonic(), 6))

        await asyncio.gather(ticker("fast", 0.02), ticker("slow", 0.05))
        assert ticks == {"fast": [0.02, 0.04, 0.06, 0.08, 0.1], "slow": [0.05, 0.1]}

    async def test_cancelled_sleeper_does_not_move_time(self) -> None:
        """A cancelled 100 s sleep leaves the clock at the next live deadline."""
        clock = VirtualClock()
        long = asyncio.create_task(clock.sleep(100))
        await asyncio.sleep(0)
        long.cancel()
        await clock.sleep(1)
        assert clock.monotonic() == 1 and long.cancelled()


class TestSessionClock:
    """The real clock, optionally sped up for demos."""

    async def test_speed_shortens_real_sleeps(self) -> None:
        """At speed 10, 0.5 s of clock time passes in about 0.05 s of real time."""
        clock = SessionClock(speed=10)
        started, before = time.monotonic(), clock.monotonic()
        await clock.sleep(0.5)
        assert time.monotonic() - started < 0.4 and clock.monotonic() - before >= 0.5

    def test_speed_must_be_positive(self) -> None:
        """Zero speed is refused."""
        with pytest.raises(ValueError, match="positive"):
            SessionClock(speed=0)
