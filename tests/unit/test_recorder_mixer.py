"""The timeline mixer: placement by time, saturating sums, silence in gaps, tracks."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np

from memharbor import wav
from recorder.mixer import TimelineMixer


def frame(value: int, n: int = 1) -> bytes:
    return np.full(160 * n, value, dtype="<i2").tobytes()


def samples(path: Path) -> np.ndarray:
    return np.frombuffer(wav.read_pcm(path)[1], dtype="<i2")


class MixerOptions(TypedDict, total=False):
    """The TimelineMixer sizes these tests set (the others keep their defaults)."""

    latency_slots: int
    capacity: int


def mixer(tmp_path: Path, **options: Unpack[MixerOptions]) -> TimelineMixer:
    return TimelineMixer(wav.WavWriter(tmp_path / "mix.wav"), **options)


class TestMixing:
    """Participants are summed per 10 ms slot without wrapping around."""

    def test_loud_frames_saturate_instead_of_wrapping(self, tmp_path: Path) -> None:
        """30000 + 30000 clips to 32767 and -30000 + -30000 to -32768."""
        m = mixer(tmp_path)
        m.add("a", 0.0, frame(30000) + frame(-30000))
        m.add("b", 0.0, frame(30000) + frame(-30000))
        m.finish(0.02)
        m.out.close()
        x = samples(tmp_path / "mix.wav")
        assert x[:160].tolist() == [32767] * 160 and x[160:].tolist() == [-32768] * 160

    def test_gap_is_silence_at_the_right_time(self, tmp_path: Path) -> None:
        """A participant talking at 0 s and again at 1 s leaves 990 ms of silence between."""
        m = mixer(tmp_path)
        m.add("a", 0.0, frame(100))
        m.advance(0.5)
        m.add("a", 1.0, frame(200))
        m.finish(1.01)
        m.out.close()
        x = samples(tmp_path / "mix.wav")
        assert len(x) == 101 * 160
        assert (x[:160] == 100).all() and (x[160 : 100 * 160] == 0).all() and (x[100 * 160 :] == 200).all()
        assert m.resyncs == 1

    def test_jittery_arrivals_stay_contiguous(self, tmp_path: Path) -> None:
        """Frames arriving a few ms early or late still take consecutive slots."""
        m = mixer(tmp_path)
        for k, jitter in enumerate([0.0, 0.004, -0.003, 0.006, 0.0]):
            m.add("a", k * 0.01 + jitter + 0.02, frame(k + 1))
        m.finish(0.07)
        m.out.close()
        x = samples(tmp_path / "mix.wav")
        assert [int(v) for v in x[::160]] == [0, 0, 1, 2, 3, 4, 5]

    def test_memory_is_bounded_and_old_slots_are_written(self, tmp_path: Path) -> None:
        """Ten seconds of audio pass through a one-second ring; everything reaches the file."""
        m = mixer(tmp_path, capacity=100, latency_slots=25)
        for k in range(1000):
            m.add("a", k * 0.01, frame(1))
            m.advance(k * 0.01)
            assert m.placed_end - m.written <= 100
        m.finish(10.0)
        m.out.close()
        assert (samples(tmp_path / "mix.wav") == 1).all() and m.duration_ms == 10000

    def test_late_frame_is_kept_not_dropped(self, tmp_path: Path) -> None:
        """A frame whose slot is already written goes into the oldest open slot and is counted."""
        m = mixer(tmp_path, latency_slots=5, capacity=20)
        for k in range(100):
            m.add("a", k * 0.01, frame(1))
        m.advance(1.0)  # slots before 0.95 s are on disk
        m.add("b", 0.05, frame(7))
        m.finish(1.0)
        m.out.close()
        x = samples(tmp_path / "mix.wav")
        assert m.late == 1 and len(x) == 100 * 160
        assert (x[95 * 160 : 96 * 160] == 8).all() and (x == 8).sum() == 160

    def test_burst_is_laid_end_to_end(self, tmp_path: Path) -> None:
        """Ten frames arriving at once take ten consecutive slots instead of piling up."""
        m = mixer(tmp_path)
        for k in range(10):
            m.add("a", 0.0, frame(k + 1))
        m.finish(0.0)
        m.out.close()
        assert [int(v) for v in samples(tmp_path / "mix.wav")[::160]] == list(range(1, 11))

    def test_torn_frame_is_trimmed(self, tmp_path: Path) -> None:
        """Bytes beyond whole 320-byte frames are counted and ignored."""
        m = mixer(tmp_path)
        m.add("a", 0.0, frame(3) + b"\x01\x02")
        m.finish(0.01)
        m.out.close()
        assert m.malformed == 1 and len(samples(tmp_path / "mix.wav")) == 160


class TestTrailingSilence:
    """Silence after the last frame is written only when later audio or the stop asks for it."""

    def test_silence_after_the_last_frame_is_held_back(self, tmp_path: Path) -> None:
        """Five seconds after a single frame only that frame is on disk; finish pads to the stop."""
        m = mixer(tmp_path)
        m.add("a", 0.0, frame(5))
        m.advance(5.0)
        assert m.written == 1 and m.out.data_bytes == 320
        m.finish(5.0)
        m.out.close()
        x = samples(tmp_path / "mix.wav")
        assert len(x) == 500 * 160 and (x[:160] == 5).all() and (x[160:] == 0).all()

    def test_trimmed_finish_ends_with_the_last_frame(self, tmp_path: Path) -> None:
        """finish(trim_silence=True) ends the file with the last placed frame, whatever the stop time."""
        m = mixer(tmp_path)
        m.add("a", 0.0, frame(5, 30))
        m.advance(40.0)
        m.finish(40.0, trim_silence=True)
        m.out.close()
        x = samples(tmp_path / "mix.wav")
        assert len(x) == 30 * 160 and (x == 5).all() and m.duration_ms == 300

    def test_long_gap_is_written_when_audio_returns(self, tmp_path: Path) -> None:
        """Audio a minute after the last frame lands at its true time, the minute between silent."""
        m = mixer(tmp_path)
        m.add("a", 0.0, frame(5))
        m.advance(59.0)
        m.add("a", 60.0, frame(6))
        m.finish(60.01, trim_silence=True)
        m.out.close()
        x = samples(tmp_path / "mix.wav")
        assert len(x) == 6001 * 160 and (x[:160] == 5).all() and (x[-160:] == 6).all()
        assert not x[160:-160].any() and m.late == 0


class TestTracks:
    """With tracks on, each participant also gets a WAV on the same timeline."""

    def test_track_starts_with_silence_until_its_first_frame(self, tmp_path: Path) -> None:
        """A participant first heard at 0.5 s has 0.5 s of silence at the start of its track."""
        writers: dict[str, wav.WavWriter] = {}

        def track(uid: str) -> wav.WavWriter:
            writers[uid] = wav.WavWriter(tmp_path / f"t{uid}.wav")
            return writers[uid]

        m = TimelineMixer(wav.WavWriter(tmp_path / "mix.wav"), track_writer=track)
        m.add("1", 0.0, frame(10, 100))
        m.advance(0.7)  # slots before 0.45 s are written before participant 2 is first heard
        m.add("2", 0.5, frame(20, 50))
        m.finish(1.0)
        for w in (m.out, *writers.values()):
            w.close()
        t1, t2, mix = samples(tmp_path / "t1.wav"), samples(tmp_path / "t2.wav"), samples(tmp_path / "mix.wav")
        assert len(t1) == len(t2) == len(mix) == 16000
        assert (t1 == 10).all()
        assert (t2[:8000] == 0).all() and (t2[8000:] == 20).all()
        assert (mix[8000:] == 30).all() and m.late == 0

    def test_held_back_silence_reaches_every_track(self, tmp_path: Path) -> None:
        """A ten-second gap before participant 1 speaks again is silence of the same length in both tracks."""
        writers: dict[str, wav.WavWriter] = {}

        def track(uid: str) -> wav.WavWriter:
            writers[uid] = wav.WavWriter(tmp_path / f"t{uid}.wav")
            return writers[uid]

        m = TimelineMixer(wav.WavWriter(tmp_path / "mix.wav"), track_writer=track)
        m.add("1", 0.0, frame(10))
        m.add("2", 0.0, frame(20))
        m.advance(9.0)
        m.add("1", 10.0, frame(30))
        m.finish(10.01)
        for w in (m.out, *writers.values()):
            w.close()
        t1, t2, mix = samples(tmp_path / "t1.wav"), samples(tmp_path / "t2.wav"), samples(tmp_path / "mix.wav")
        assert len(t1) == len(t2) == len(mix) == 1001 * 160
        assert (t1[:160] == 10).all() and (t1[-160:] == 30).all() and not t1[160:-160].any()
        assert (t2[:160] == 20).all() and not t2[160:].any() and (mix[-160:] == 30).all()
