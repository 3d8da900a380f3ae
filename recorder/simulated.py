"""SimulatedChannel: an AudioSource for dev and tests, with scripted participants that talk in real time.

Each participant joins, talks (a tone or a WAV file) during its talk spans and leaves, on cue, relative
to the moment the bot joined. Frames are delivered every `tick_s` (all frames that have come due since
the last tick), each stamped with the instant it was due, as a perfect network would deliver them; the
same joined/left events as Agora's are sent.

A participant's signal runs on only while it talks: a later talk span continues where the previous one
stopped, so one WAV file can hold what a participant says in several turns. A WAV file may be any
integer PCM (8/16/24/32-bit, any rate, any number of channels): it is converted to 16 kHz mono once, as
`recorder.pcm` describes (channels averaged, polyphase resampling with an anti-alias filter). A file
that is played once ends with its last partial 10 ms frame padded with silence; a looping file runs on
from its last sample into its first with no gap.

A script is JSON: a list of participants, or `{"participants": [...]}`, each
`{"uid": "101", "tone_hz": 440, "amplitude": 0.3, "join_at": 0, "leave_at": null, "talk": [[0, null]]}`
or with `"wav": "path/to/file.wav"` instead of a tone (it repeats when `"loop": true`, default).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memharbor import wav
from recorder.audio import FRAME_BYTES, FRAME_S, JOINED, LEFT, SAMPLE_RATE, Inbox, JoinError
from recorder.clock import Clock, SessionClock
from recorder.pcm import to_recorder_format


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


class _Voice:
    """A participant's signal (one second of tone, or the whole WAV) read frame by frame.

    `frame(k)` is the k-th 10 ms frame of talk. A looping signal wraps at the sample, so a file whose
    length is not a whole number of frames loops without a gap; a signal played once has its last
    partial frame padded with silence and then ends.
    """

    def __init__(self, pcm: bytes, loop: bool) -> None:
        self.loop = loop
        self.pcm = pcm if loop else pcm + bytes(-len(pcm) % FRAME_BYTES)
        self.frames = -(-len(self.pcm) // FRAME_BYTES)

    def frame(self, k: int) -> bytes | None:
        size = len(self.pcm)
        if size == 0 or (k >= self.frames and not self.loop):
            return None
        start = k * FRAME_BYTES % size
        end = start + FRAME_BYTES
        if end <= size:
            return self.pcm[start:end]
        # Across the loop point: the end of the signal, then its beginning (as often as it takes).
        need = (end - size) // size + 2
        return (self.pcm[start:] + self.pcm * need)[:FRAME_BYTES]


def tone(hz: float, amplitude: float = 0.3, seconds: float = 1.0) -> bytes:
    """A sine tone as 16 kHz mono int16 PCM (a whole number of seconds repeats seamlessly for whole Hz)."""
    n = int(SAMPLE_RATE * seconds)
    samples = np.sin(2 * math.pi * hz * np.arange(n) / SAMPLE_RATE) * amplitude * 32767
    return np.round(samples).astype("<i2").tobytes()


@functools.lru_cache(maxsize=16)
def _converted(path: Path, mtime_ns: int, size: int) -> bytes:
    """A WAV file's samples as 16 kHz mono int16, converted once per version of the file (every session reuses it)."""
    try:
        info, pcm = wav.read_pcm(path)
    except (OSError, wav.WavError) as exc:
        raise ScriptError(f"{path}: {exc}") from None
    return to_recorder_format(pcm, info.sample_rate, info.channels, info.bits_per_sample)


def load_wav(path: Path) -> bytes:
    """The samples of a WAV file of any integer PCM format, as 16 kHz mono int16 PCM."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise ScriptError(f"{path}: {exc.strerror}") from None
    return _converted(path, stat.st_mtime_ns, stat.st_size)


def _voice(p: SimParticipant) -> _Voice:
    if p.wav is not None:
        return _Voice(load_wav(p.wav), p.loop)
    return _Voice(tone(p.tone_hz or 440.0, p.amplitude), True)


class SimulatedChannel:
    """Plays a script into the inbox, in (possibly sped-up) real time."""

    def __init__(self, participants: list[SimParticipant], clock: Clock | None = None, tick_s: float = 0.02) -> None:
        self.participants = participants
        self.clock: Clock = clock or SessionClock()
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
        self._spoken = [0] * len(participants)  # frames of talk so far: where each signal continues
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
                pcm = voice.frame(self._spoken[i])
                self._spoken[i] += 1
                if pcm is not None:
                    self.inbox.frame(p.uid, start + t, pcm)
                    self.emitted += 1
            k += 1
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
