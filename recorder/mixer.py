"""The timeline mixer: participants' frames placed by time, summed with saturation, written as they age.

Slot k of the recording holds the audio of [k*10 ms, (k+1)*10 ms) after the bot joined. A participant's
first frame lands at the slot of its arrival time; its following frames take consecutive slots (so
network jitter does not tear the audio apart, and a burst never piles onto the speaker's own audio)
until its arrival time runs more than `resync_slots` ahead of that count, e.g. after it paused or was
muted, when it is placed by arrival time again: the gap stays silent and the timeline stays true.
Slots are kept in a small ring of int32 sums and written out (clipped to int16) once they are
`latency_slots` behind the present, so memory is constant. Silence after the last placed frame is held
back: it is written only once later audio arrives (as the gap before it) or when `finish` is asked to
end later, so a recording that stops because everyone left can end where the last audio ended.
A frame whose slot has already been written (its sender fell behind by more than the latency) is
put in the oldest open slot instead of being thrown away, and counted in `late`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from memharbor.wav import WavWriter
from recorder.audio import FRAME_BYTES, FRAME_SAMPLES, FRAMES_PER_S

INT16_MIN = -32768
INT16_MAX = 32767


def slot_of(seconds: float) -> int:
    """The slot index of a time (seconds since the recording began), rounded to the nearest slot."""
    return int(seconds * FRAMES_PER_S + 0.5) if seconds >= 0 else 0


class _Track:
    """One participant's own timeline, written to its own WAV (MEMHARBOR_RECORD_TRACKS=1)."""

    def __init__(self, writer: WavWriter, capacity: int) -> None:
        self.writer = writer
        self.ring = np.zeros((capacity, FRAME_SAMPLES), dtype=np.int32)


class TimelineMixer:
    """Mixes per-participant frames into one WAV (and optionally one WAV per participant)."""

    def __init__(
        self,
        out: WavWriter,
        *,
        latency_slots: int = 25,
        capacity: int = 100,
        resync_slots: int = 10,
        track_writer: Callable[[str], WavWriter] | None = None,
    ) -> None:
        if capacity <= latency_slots:
            raise ValueError("capacity must exceed latency_slots")
        self.out = out
        self.latency_slots = latency_slots
        self.capacity = capacity
        self.resync_slots = resync_slots
        self._ring = np.zeros((capacity, FRAME_SAMPLES), dtype=np.int32)
        self._next: dict[str, int] = {}
        self._track_writer = track_writer
        self.tracks: dict[str, _Track] = {}
        self.written = 0  # slots [0, written) are on disk
        self.placed_end = 0  # one past the last slot any frame was placed in
        self.frames = 0
        self.late = 0
        self.resyncs = 0
        self.malformed = 0

    @property
    def duration_ms(self) -> int:
        return self.written * 10

    def add(self, uid: str, at_s: float, pcm: bytes) -> None:
        """Place `pcm` (n x 320 bytes) of participant `uid`, which arrived `at_s` after the recording began."""
        count, rest = divmod(len(pcm), FRAME_BYTES)
        if rest:
            self.malformed += 1
            pcm = pcm[: count * FRAME_BYTES]
        if count == 0:
            return
        arrival = slot_of(at_s)
        expected = self._next.get(uid)
        if expected is None:
            index = arrival
        elif arrival - expected > self.resync_slots:
            index = arrival  # a pause: leave the gap silent
            self.resyncs += 1
        else:
            index = expected  # never backwards: a burst must not pile onto the speaker's own audio
        if index < self.written:
            self.late += count
            index = self.written
        end = index + count
        if end > self.written + self.capacity:
            self._flush_to(end - self.capacity)
        samples = np.frombuffer(pcm, dtype="<i2").reshape(count, FRAME_SAMPLES)
        track = self._track(uid) if self._track_writer is not None else None
        for i in range(count):
            pos = (index + i) % self.capacity
            self._ring[pos] += samples[i]
            if track is not None:
                track.ring[pos] += samples[i]
        self._next[uid] = end
        self.frames += count
        if end > self.placed_end:
            self.placed_end = end

    def _track(self, uid: str) -> _Track:
        track = self.tracks.get(uid)
        if track is None:
            assert self._track_writer is not None
            track = _Track(self._track_writer(uid), self.capacity)
            track.writer.write_silence(self.written * FRAME_SAMPLES)
            self.tracks[uid] = track
        return track

    def advance(self, now_s: float) -> None:
        """Write out every slot more than the latency behind `now_s`, up to the last placed frame."""
        target = min(slot_of(now_s) - self.latency_slots, self.placed_end)
        if target > self.written:
            self._flush_to(target)

    def finish(self, end_s: float, *, trim_silence: bool = False) -> None:
        """Write everything: up to `end_s`, or to the end of the last placed frame if that is later.

        With `trim_silence` the file ends with the last placed frame whatever `end_s` says.
        """
        self._flush_to(self.placed_end if trim_silence else max(slot_of(end_s), self.placed_end))

    def _flush_to(self, target: int) -> None:
        while self.written < target:
            if self.written >= self.placed_end:
                # Beyond the last placed frame the ring holds only zeros; held-back silence can be long
                # (participants present but muted), so it bypasses the ring in large writes.
                samples = (target - self.written) * FRAME_SAMPLES
                for writer in (self.out, *(track.writer for track in self.tracks.values())):
                    writer.write_silence(samples)
                self.written = target
                return
            start = self.written % self.capacity
            n = min(target - self.written, self.capacity - start)
            self.out.write(self._take(self._ring, start, n))
            for track in self.tracks.values():
                track.writer.write(self._take(track.ring, start, n))
            self.written += n

    @staticmethod
    def _take(ring: np.ndarray, start: int, n: int) -> bytes:
        block = ring[start : start + n]
        data = np.clip(block, INT16_MIN, INT16_MAX).astype("<i2").tobytes()
        block[:] = 0
        return data
