"""The audio-source port: what a recording session needs from a channel, and the inbox it reads.

A source (Agora's SDK, or the simulation) joins a channel as an audience-only bot and reports, from any
thread, per-participant 10 ms frames of 16 kHz mono 16-bit PCM and user joined/left events. It does no
work of its own beyond copying the bytes into the session's `Inbox`, a bounded thread-safe queue that
the session drains on its own schedule.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Protocol

SAMPLE_RATE = 16000
FRAME_S = 0.010
FRAME_SAMPLES = 160
FRAME_BYTES = FRAME_SAMPLES * 2
FRAMES_PER_S = 100

JOINED = "joined"
LEFT = "left"
TOKEN_WILL_EXPIRE = "token_will_expire"
CONNECTION_FAILED = "connection_failed"


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened in the channel (not audio)."""

    kind: str
    uid: str
    at: float  # the session clock's monotonic seconds
    detail: str = ""


class Inbox:
    """Frames and events from a source, drained by the session.

    Safe to fill from any thread: `collections.deque.append` and `popleft` are atomic. It holds at most
    `max_items`; beyond that new items are counted in `dropped` and discarded (only a session loop
    stalled for seconds gets there).
    """

    def __init__(self, max_items: int = 3000) -> None:
        self._items: collections.deque[tuple[str, float, bytes] | Event] = collections.deque()
        self._max = max_items
        self.dropped = 0
        self.received = 0

    def frame(self, uid: str, at: float, pcm: bytes) -> None:
        """One participant's PCM (a whole number of 10 ms frames) that arrived at `at`."""
        if len(self._items) >= self._max:
            self.dropped += 1
            return
        self.received += 1
        self._items.append((uid, at, pcm))

    def event(self, kind: str, uid: str, at: float, detail: str = "") -> None:
        """A channel event (never dropped: they are rare and small)."""
        self._items.append(Event(kind, uid, at, detail))

    def drain(self) -> list[tuple[str, float, bytes] | Event]:
        """Everything received so far, oldest first."""
        items = self._items
        return [items.popleft() for _ in range(len(items))]

    def __len__(self) -> int:
        return len(self._items)


class AudioSource(Protocol):
    """One channel connection of the recording bot."""

    inbox: Inbox

    async def join(self, channel: str, uid: int, token: str) -> None:
        """Join as audience and start delivering frames; raise JoinError when that fails."""
        ...

    async def renew_token(self, token: str) -> None:
        """Hand the connection a fresh token before the current one expires."""
        ...

    async def leave(self) -> None:
        """Leave the channel; no frame is delivered after this returns."""
        ...


class JoinError(RuntimeError):
    """The bot could not join the channel."""
