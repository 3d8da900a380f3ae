"""A recording session over a SimulatedChannel, on a virtual clock: timing, content and stop conditions.

The virtual clock never waits, so a session of minutes runs in milliseconds on the same timeline.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
import pytest

from memharbor import wav
from recorder.audio import TOKEN_WILL_EXPIRE, Inbox
from recorder.clock import VirtualClock
from recorder.files import FINALIZED, RECORDING, RecordingDir
from recorder.session import RecordingSession, Segment, SessionConfig, SessionPlan
from recorder.simulated import ScriptError, SimParticipant, SimulatedChannel, _Voice, parse_script, tone


class Hooks:
    """Records what the session reported; `held` is what `started` answers."""

    def __init__(self, held: bool = True) -> None:
        self.held = held
        self.calls: list[tuple[str, str]] = []

    async def started(self, plan: SessionPlan, filename: str, started_at: datetime) -> bool:
        self.calls.append(("started", filename))
        return self.held

    async def stopping(self, plan: SessionPlan, reason: str) -> None:
        self.calls.append(("stopping", reason))


class SessionOptions(TypedDict, total=False):
    """The SessionConfig fields these tests set (the others keep their defaults)."""

    idle_s: float
    max_s: float
    record_tracks: bool
    token_ttl_s: int


def make(
    tmp_path: Path, participants: list[SimParticipant], hooks: Hooks | None = None, **config: Unpack[SessionOptions]
) -> RecordingSession:
    clock = VirtualClock()
    source = SimulatedChannel(participants, clock)
    settings = SessionConfig(**config)
    return RecordingSession(
        SessionPlan("sid-1", "group1_alice_bob", "worker-1", "call-1"),
        source,
        RecordingDir(tmp_path),
        clock,
        settings,
        lambda channel, uid, ttl: f"token-{channel}-{uid}-{ttl}",
        hooks or Hooks(),
    )


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1) -> None:
    writer = wav.WavWriter(path, sample_rate=rate, channels=channels)
    writer.write(samples.astype("<i2").tobytes())
    writer.close()


def pcm(tmp_path: Path, segment: Segment, name: str | None = None) -> np.ndarray:
    return np.frombuffer(wav.read_pcm(tmp_path / (name or segment.mix.filename))[1], dtype="<i2")


async def play_file(tmp_path: Path, loop: bool, seconds: float) -> np.ndarray:
    """Record one participant playing tmp_path/voice.wav (once or looping) for `seconds`; the mixed samples."""
    [participant] = parse_script(json.dumps([{"uid": "9", "wav": "voice.wav", "loop": loop}]), tmp_path)
    session = make(tmp_path / "out", [participant])
    task = asyncio.create_task(stop_after(session, seconds))
    segment = await session.run()
    await task
    return pcm(tmp_path / "out", segment)


def energy(x: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    return float(spectrum[np.abs(freqs - hz) < 20].sum() / max(spectrum.sum(), 1e-9))


def sound_span(x: np.ndarray) -> tuple[float, float]:
    loud = np.nonzero(np.abs(x) > 200)[0]
    return loud[0] / 16000, (loud[-1] + 1) / 16000


async def stop_after(session: RecordingSession, seconds: float) -> float:
    """Request a stop `seconds` after the recording began; returns the recording time of the request."""
    while session.mixer is None:
        await session.clock.sleep(0.001)
    while session.now() < seconds:
        await session.clock.sleep(seconds - session.now())
    at = session.now()
    session.request_stop("requested")
    return at


class TestTimeline:
    """The file's timeline matches the simulated talk."""

    async def test_talk_time_is_exact_within_50_ms(self, tmp_path: Path) -> None:
        """Talk from 0.5 s to 2.5 s appears from 0.5 s to 2.5 s (±50 ms); idle 0.5 s then stops it."""
        session = make(
            tmp_path,
            [SimParticipant("1", 440.0, talk=((0.5, 2.5),), leave_at=2.5)],
            idle_s=0.5,
        )
        segment = await session.run()
        x = pcm(tmp_path, segment)
        start, end = sound_span(x)
        assert abs(start - 0.5) <= 0.05 and abs(end - 2.5) <= 0.05
        assert abs((end - start) - 2.0) <= 0.05
        assert segment.stop_reason == "idle" and abs(session.stop_at - 3.0) <= 0.05
        assert 2.5 - 0.05 <= segment.mix.duration_ms / 1000 <= 2.5 + 0.05
        assert segment.late_frames == 0 and segment.dropped_frames == 0

    async def test_both_participants_audible_in_the_mix(self, tmp_path: Path) -> None:
        """A 440 Hz and a 1000 Hz speaker both carry a large share of the mix's spectrum."""
        session = make(tmp_path, [SimParticipant("1", 440.0), SimParticipant("2", 1000.0)])
        task = asyncio.create_task(stop_after(session, 1.5))
        segment = await session.run()
        await task
        x = pcm(tmp_path, segment)
        assert energy(x, 440) > 0.3 and energy(x, 1000) > 0.3
        assert energy(x, 700) < 0.01

    async def test_last_second_before_a_stop_is_in_the_file(self, tmp_path: Path) -> None:
        """Speech up to the stop request is written: the last second holds both voices."""
        session = make(tmp_path, [SimParticipant("1", 440.0), SimParticipant("2", 1000.0)])
        task = asyncio.create_task(stop_after(session, 2.0))
        segment = await session.run()
        stopped_at = await task
        x = pcm(tmp_path, segment)
        assert abs(len(x) / 16000 - stopped_at) <= 0.05
        last = x[-16000:]
        assert energy(last, 440) > 0.3 and energy(last, 1000) > 0.3
        assert np.abs(x[-160:]).max() > 1000

    async def test_pause_in_speech_stays_silent(self, tmp_path: Path) -> None:
        """Talk spans [0, 1) and [2, 3) leave the second in between silent."""
        session = make(tmp_path, [SimParticipant("1", 440.0, talk=((0, 1), (2, 3)), leave_at=3)], idle_s=0.2)
        segment = await session.run()
        x = pcm(tmp_path, segment)
        assert np.abs(x[int(1.05 * 16000) : int(1.95 * 16000)]).max() == 0
        assert np.abs(x[int(2.05 * 16000) : int(2.95 * 16000)]).max() > 1000


class TestStops:
    """Each stop condition ends the session with its reason."""

    async def test_max_duration(self, tmp_path: Path) -> None:
        """max_s=1 stops at one second."""
        segment = await make(tmp_path, [SimParticipant("1")], max_s=1.0).run()
        assert segment.stop_reason == "max_duration"
        assert abs(segment.mix.duration_ms - 1000) <= 100

    async def test_nobody_ever_joins(self, tmp_path: Path) -> None:
        """An empty channel is idle from the start."""
        segment = await make(tmp_path, [], idle_s=0.3).run()
        assert segment.stop_reason == "idle" and segment.frames == 0 and segment.mix.duration_ms == 0

    async def test_idle_waits_for_the_last_participant(self, tmp_path: Path) -> None:
        """One leaving does not stop it while the other stays; the stop comes idle_s after the last left."""
        people = [SimParticipant("1", leave_at=0.5), SimParticipant("2", 1000.0, leave_at=1.5)]
        session = make(tmp_path, people, idle_s=0.5)
        segment = await session.run()
        assert segment.stop_reason == "idle" and abs(session.stop_at - 2.0) <= 0.05
        assert abs(segment.mix.duration_ms - 1500) <= 10

    async def test_idle_stop_ends_the_file_at_the_last_audio(self, tmp_path: Path) -> None:
        """After the default 30 s idle wait the WAV ends with the last participant's audio (+ at most a frame)."""
        session = make(tmp_path, [SimParticipant("1", 440.0, talk=((0, 1.2),), leave_at=1.5)])
        segment = await session.run()
        x = pcm(tmp_path, segment)
        assert segment.stop_reason == "idle" and abs(session.stop_at - 31.5) <= 0.05
        assert 1.2 <= len(x) / 16000 <= 1.2 + 0.01 and sound_span(x)[1] >= 1.19
        info = wav.read_info(tmp_path / segment.mix.filename)
        assert segment.mix.duration_ms == info.duration_ms == len(x) * 1000 // 16000
        assert segment.mix.file_size == (tmp_path / segment.mix.filename).stat().st_size

    async def test_requested_stop_keeps_the_silence_before_it(self, tmp_path: Path) -> None:
        """Only an idle stop trims: a stop request 1 s after the talk ended keeps that second of silence."""
        session = make(tmp_path, [SimParticipant("1", 440.0, talk=((0, 0.5),))])
        task = asyncio.create_task(stop_after(session, 1.5))
        segment = await session.run()
        await task
        x = pcm(tmp_path, segment)
        assert abs(len(x) / 16000 - 1.5) <= 0.02 and np.abs(x[int(0.55 * 16000) :]).max() == 0

    async def test_lost_claim_stops_at_once(self, tmp_path: Path) -> None:
        """When `started` says the session is no longer ours, it stops with lease_lost."""
        hooks = Hooks(held=False)
        segment = await make(tmp_path, [SimParticipant("1")], hooks).run()
        assert segment.stop_reason == "lease_lost"
        assert hooks.calls[0][0] == "started" and hooks.calls[1] == ("stopping", "lease_lost")


class TestTokensAndFiles:
    """Token renewal, the sidecar and per-participant tracks."""

    async def test_token_is_renewed_before_it_expires(self, tmp_path: Path) -> None:
        """With a 2 s token, a new one is handed over at 1.6 s (not again by 2.5 s); Agora's warning renews at once."""
        session = make(tmp_path, [SimParticipant("1")], token_ttl_s=2)
        source = session.source
        assert isinstance(source, SimulatedChannel)
        task = asyncio.create_task(stop_after(session, 2.5))
        run = asyncio.create_task(session.run())
        await task
        await run
        assert source.tokens == ["token-group1_alice_bob-999999-2"] * 2
        session2 = make(tmp_path, [SimParticipant("1")])
        source2 = session2.source
        assert isinstance(source2, SimulatedChannel)
        run2 = asyncio.create_task(session2.run())
        await session2.clock.sleep(0.05)
        source2.inbox.event(TOKEN_WILL_EXPIRE, "", 0.0)
        await stop_after(session2, 0.5)
        await run2
        assert len(source2.tokens) == 2

    async def test_sidecar_marks_the_file_until_finalized(self, tmp_path: Path) -> None:
        """While recording the sidecar names the session and state `recording`; then `finalized`."""
        session = make(tmp_path, [SimParticipant("1")])
        run = asyncio.create_task(session.run())
        await session.clock.sleep(0.1)
        [sidecar] = RecordingDir(tmp_path).sidecars()
        assert (sidecar.sid, sidecar.call_id, sidecar.state) == ("sid-1", "call-1", RECORDING)
        assert wav.try_lock(tmp_path / sidecar.filename) is None
        session.request_stop("requested")
        segment = await run
        [done] = RecordingDir(tmp_path).sidecars()
        assert done.state == FINALIZED and done.stop_reason == "requested"
        assert segment.mix.filename == sidecar.filename and sidecar.filename.startswith("group1_alice_bob_")

    async def test_tracks_hold_one_participant_each(self, tmp_path: Path) -> None:
        """MEMHARBOR_RECORD_TRACKS: each track has its own tone only, on the mix's timeline."""
        session = make(tmp_path, [SimParticipant("1", 440.0), SimParticipant("2", 1000.0)], record_tracks=True)
        task = asyncio.create_task(stop_after(session, 1.0))
        segment = await session.run()
        await task
        by_uid = {t.uid: t for t in segment.tracks}
        assert set(by_uid) == {"1", "2"}
        one, two = pcm(tmp_path, segment, by_uid["1"].filename), pcm(tmp_path, segment, by_uid["2"].filename)
        assert len(one) == len(two) == len(pcm(tmp_path, segment))
        assert energy(one, 440) > 0.9 and energy(one, 1000) < 0.01
        assert energy(two, 1000) > 0.9 and energy(two, 440) < 0.01


class TestSimulation:
    """Scripts, WAV-file participants and the inbox bound."""

    def test_script_is_parsed(self) -> None:
        """Every field of a participant is read; numbers become seconds."""
        [p] = parse_script(json.dumps({"participants": [{"uid": 5, "tone_hz": 300, "join_at": 1, "talk": [[1, 2]]}]}))
        assert (p.uid, p.tone_hz, p.join_at, p.talk) == ("5", 300.0, 1.0, ((1.0, 2.0),))

    @pytest.mark.parametrize("text", ["nope", "{}", '[{"tone_hz": 1}]', '[{"uid": "1", "join_at": -1}]'])
    def test_bad_script_is_refused(self, text: str) -> None:
        """Not JSON, no list, no uid, negative times: ScriptError."""
        with pytest.raises(ScriptError):
            parse_script(text)

    async def test_wav_file_participant_plays_its_file_once(self, tmp_path: Path) -> None:
        """A WAV participant with loop false talks for the file's length only."""
        source = tmp_path / "voice.wav"
        writer = wav.WavWriter(source)
        writer.write(tone(1000.0, seconds=0.5))
        writer.close()
        start, end = sound_span(await play_file(tmp_path, loop=False, seconds=1.2))
        assert start <= 0.01 and abs(end - 0.5) <= 0.02

    async def test_later_talk_span_continues_the_file(self, tmp_path: Path) -> None:
        """Talk spans [0, 0.5) and [1, 1.5) say the file's first half, then its second half."""
        voice = np.random.default_rng(7).integers(-8000, 8000, 16000)
        write_wav(tmp_path / "voice.wav", voice)
        script = [{"uid": "9", "wav": "voice.wav", "loop": False, "talk": [[0, 0.5], [1, 1.5]], "leave_at": 1.5}]
        [p] = parse_script(json.dumps(script), tmp_path)
        segment = await make(tmp_path / "out", [p], idle_s=0.2).run()
        x = pcm(tmp_path / "out", segment)
        assert (x[:8000] == voice[:8000]).all() and (x[8000:16000] == 0).all()
        assert (x[16000:24000] == voice[8000:]).all() and len(x) == 24000

    async def test_partial_last_frame_is_played_padded(self, tmp_path: Path) -> None:
        """A file of 50.5 frames played once is heard whole, its last half frame followed by silence."""
        voice = np.random.default_rng(8).integers(-8000, 8000, 8080)
        write_wav(tmp_path / "voice.wav", voice)
        x = await play_file(tmp_path, loop=False, seconds=1.0)
        assert (x[:8080] == voice).all() and (x[8080:] == 0).all() and len(x) >= 16000

    async def test_looping_file_runs_on_without_a_gap(self, tmp_path: Path) -> None:
        """A looping file of 50.5 frames starts again right after its last sample, not at a frame boundary."""
        voice = np.random.default_rng(9).integers(-8000, 8000, 8080)
        write_wav(tmp_path / "voice.wav", voice)
        x = await play_file(tmp_path, loop=True, seconds=1.2)
        assert (x[: 2 * 8080] == np.tile(voice, 2)).all()

    async def test_file_shorter_than_a_frame_loops_within_each_frame(self) -> None:
        """A looping 100-sample file fills every 160-sample frame with itself, end to end."""
        voice = np.arange(100, dtype="<i2")
        clock = VirtualClock()
        channel = SimulatedChannel([SimParticipant("9")], clock)
        channel._voices[0] = _Voice(voice.tobytes(), True)
        await channel.join("c", 999999, "t")
        await clock.sleep(0.03)
        await channel.leave()
        frames = [item[2] for item in channel.inbox.drain() if isinstance(item, tuple)]
        played = np.frombuffer(b"".join(frames), dtype="<i2")
        assert len(frames) == 3 and (played == np.tile(voice, 5)[:480]).all()

    async def test_48_khz_stereo_file_plays_as_16_khz_mono(self, tmp_path: Path) -> None:
        """0.5 s of a 1000 Hz tone at 48 kHz in both channels is heard for 0.5 s at 1000 Hz and its level."""
        t = np.arange(24000) / 48000
        left = np.round(np.sin(2 * np.pi * 1000 * t) * 12000)
        write_wav(tmp_path / "voice.wav", np.stack([left, left], axis=1), rate=48000, channels=2)
        x = await play_file(tmp_path, loop=False, seconds=1.0)
        start, end = sound_span(x)
        assert start <= 0.002 and abs(end - 0.5) <= 0.002
        assert energy(x[:8000], 1000) > 0.99 and 11800 <= np.abs(x[200:7800]).max() <= 12200

    def test_float_wav_is_refused_naming_the_file(self, tmp_path: Path) -> None:
        """A 32-bit float WAV (format 3) cannot be played: ScriptError with its path."""
        head = bytearray(wav.header(4, bits=32))
        head[20:22] = (3).to_bytes(2, "little")
        (tmp_path / "float.wav").write_bytes(bytes(head) + b"\x00" * 4)
        [p] = parse_script(json.dumps([{"uid": "9", "wav": "float.wav"}]), tmp_path)
        with pytest.raises(ScriptError, match=r"float\.wav"):
            SimulatedChannel([p], VirtualClock())

    def test_inbox_counts_what_it_cannot_hold(self) -> None:
        """Beyond max_items frames are dropped and counted; events always fit."""
        inbox = Inbox(max_items=2)
        for _ in range(4):
            inbox.frame("1", 0.0, b"\x00" * 320)
        inbox.event("joined", "1", 0.0)
        assert inbox.dropped == 2 and len(inbox.drain()) == 3 and len(inbox) == 0
