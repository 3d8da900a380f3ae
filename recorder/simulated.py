"""SimulatedChannel: an AudioSource for dev and tests, with scripted participants that talk in real time.

Each participant joins, talks (a tone or a WAV file of 16 kHz mono 16-bit PCM) during its talk spans
and leaves, on cue, relative to the moment the bot joined. Frames are delivered every `tick_s` (all
frames that have come due since the last tick), each stamped with the instant it was due, as a
perfect network would deliver them; the same joined/left events as Agora's are sent.

A script is JSON: a list of participants, or `{"participants": [...]}`, each
`{"uid": "101", "tone_hz": 440, "amplitude": 0.3, "join_at": 0, "leave_at": null, "talk": [[0, null]]}`
or with `"wav": "path/to/file.wav"` instead of a tone (it repeats when `"loop": true`, default).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memharbor import wav
from recorder.audio import FRAME_BYTES, FRAME_S, JOINED, LEFT, SAMPLE_RATE, Inbox, JoinError
from recorder.clock import SessionClock


class ScriptError(ValueError):
    """A simulation script is malformed; the message says where."""


@dataclass(frozen=True)
class SimParticipant:
    """One scripted participant. Times are seconds after the bot joined; None means never/forever."""

    uid: str
    tone_hz: float | None = 440.0
    amplitude: float = 0.3
    wav: Path | None = None
    loop: bool = True
    join_at: float = 0.0
    leave_at: float | None = None
    talk: tuple[tuple[float, float | None], ...] = ((0.0, None),)

    def talking(self, t: float) -> bool:
        if t < self.join_at or (self.leave_at is not None and t >= self.leave_at):
            return False
        return any(start <= t and (end is None or t < end) for start, end in self.talk)


@dataclass
class _Voice:
    """A participant's signal: one second (or the whole WAV) of PCM read frame by frame."""

    pcm: bytes
    loop: bool
    frames: int = field(init=False)

    def __post_init__(self) -> None:
        self.frames = len(self.pcm) // FRAME_BYTES

    def frame(self, k: int) -> bytes | None:
        if self.frames == 0 or (k >= self.frames and not self.loop):
            return None
        k %= self.frames
        return self.pcm[k * FRAME_BYTES : (k + 1) * FRAME_BYTES]


def tone(hz: float, amplitude: float = 0.3, seconds: float = 1.0) -> bytes:
    """A sine tone as 16 kHz mono int16 PCM (a whole number of seconds repeats seamlessly for whole Hz)."""
    n = int(SAMPLE_RATE * seconds)
    samples = np.sin(2 * math.pi * hz * np.arange(n) / SAMPLE_RATE) * amplitude * 32767
    return np.round(samples).astype("<i2").tobytes()


def _voice(p: SimParticipant) -> _Voice:
    if p.wav is not None:
        info, pcm = wav.read_pcm(p.wav)
        if (info.sample_rate, info.channels, info.bits_per_sample) != (SAMPLE_RATE, 1, 16):
            raise ScriptError(f"{p.wav}: expected 16 kHz mono 16-bit PCM")
        return _Voice(pcm, p.loop)
    return _Voice(tone(p.tone_hz or 440.0, p.amplitude), True)


class SimulatedChannel:
    """Plays a script into the inbox, in (possibly sped-up) real time."""

    def __init__(
        self, participants: list[SimParticipant], clock: SessionClock | None = None, tick_s: float = 0.02
    ) -> None:
        self.participants = participants
        self.clock = clock or SessionClock()
        self.tick_s = tick_s
        self.inbox = Inbox()
        self.channel: str | None = None
        self.uid: int | None = None
        self.tokens: list[str] = []
        self.emitted = 0
        self._voices = [_voice(p) for p in participants]
        self._task: asyncio.Task[None] | None = None
        self._start = 0.0
        self._next_k = [0] * len(participants)
        self._present = [False] * len(participants)

    async def join(self, channel: str, uid: int, token: str) -> None:
        if self._task is not None:
            raise JoinError("already joined")
        self.channel, self.uid = channel, uid
        self.tokens.append(token)
        self._start = self.clock.monotonic()
        self._task = asyncio.create_task(self._play())

    async def renew_token(self, token: str) -> None:
        self.tokens.append(token)

    async def leave(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._step()  # a perfect network has delivered every frame due by now

    async def _play(self) -> None:
        while True:
            self._step()
            await self.clock.sleep(self.tick_s)

    def _step(self) -> None:
        now = self.clock.monotonic() - self._start
        for i, p in enumerate(self.participants):
            self._next_k[i] = self._emit(i, p, self._next_k[i], now, self._start)
            self._presence(i, p, now, self._start, self._present)

    def _presence(self, i: int, p: SimParticipant, now: float, start: float, present: list[bool]) -> None:
        here = now >= p.join_at and (p.leave_at is None or now < p.leave_at)
        if here and not present[i]:
            self.inbox.event(JOINED, p.uid, start + p.join_at)
        elif present[i] and not here:
            self.inbox.event(LEFT, p.uid, start + (p.leave_at or now))
        present[i] = here

    def _emit(self, i: int, p: SimParticipant, k: int, now: float, start: float) -> int:
        voice = self._voices[i]
        while (k + 1) * FRAME_S <= now + 1e-9:
            t = k * FRAME_S
            if p.talking(t):
                pcm = voice.frame(self._talk_frame(p, k))
                if pcm is not None:
                    self.inbox.frame(p.uid, start + t, pcm)
                    self.emitted += 1
            k += 1
        return k

    @staticmethod
    def _talk_frame(p: SimParticipant, k: int) -> int:
        """Frame number within the current talk span (each span starts the signal from its beginning)."""
        t = k * FRAME_S
        for span_start, end in p.talk:
            if span_start <= t and (end is None or t < end):
                return k - round(max(span_start, p.join_at) / FRAME_S)
        return k


def _number(item: dict[str, Any], name: str, default: float | None) -> float | None:
    value = item.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ScriptError(f"{name} must be a non-negative number")
    return float(value)


def _participant(item: Any, base: Path) -> SimParticipant:
    if not isinstance(item, dict) or not isinstance(item.get("uid"), str | int):
        raise ScriptError("each participant needs a uid")
    spans: list[tuple[float, float | None]] = []
    for span in item.get("talk", [[0, None]]):
        if not isinstance(span, list) or len(span) != 2:
            raise ScriptError("talk must be a list of [start, end] pairs")
        start = _number({"start": span[0]}, "start", 0.0) or 0.0
        spans.append((start, _number({"end": span[1]}, "end", None)))
    wav_path = item.get("wav")
    return SimParticipant(
        uid=str(item["uid"]),
        tone_hz=_number(item, "tone_hz", 440.0),
        amplitude=_number(item, "amplitude", 0.3) or 0.0,
        wav=(base / wav_path) if isinstance(wav_path, str) else None,
        loop=bool(item.get("loop", True)),
        join_at=_number(item, "join_at", 0.0) or 0.0,
        leave_at=_number(item, "leave_at", None),
        talk=tuple(spans),
    )


def parse_script(text: str, base: Path = Path()) -> list[SimParticipant]:
    """Participants from a JSON script (see the module docstring)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ScriptError(f"not JSON ({exc})") from None
    items = data.get("participants") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ScriptError("expected a list of participants")
    return [_participant(item, base) for item in items]


DEFAULT_SCRIPT = [
    SimParticipant(uid="1001", tone_hz=440.0),
    SimParticipant(uid="1002", tone_hz=1000.0, talk=((0.5, None),)),
]
