"""Conversion of WAV input to the recorder's 16 kHz mono int16: sample formats, downmix, resampling."""

from __future__ import annotations

import numpy as np
import pytest

from recorder.pcm import decode, resample, to_recorder_format


def sine(hz: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def share(x: np.ndarray, hz: float, rate: int = 16000) -> float:
    """Share of the spectrum's energy within 20 Hz of `hz`."""
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spectrum[np.abs(freqs - hz) < 20].sum() / spectrum.sum())


class TestDecode:
    """Each integer PCM width becomes floats in [-1, 1), one column per channel."""

    def test_8_bit_is_unsigned(self) -> None:
        """WAV's 8-bit samples are offset by 128: 0, 128 and 255 are -1, 0 and 127/128."""
        assert decode(bytes([0, 128, 255]), 1, 8).ravel().tolist() == [-1.0, 0.0, 127 / 128]

    def test_24_bit_is_sign_extended(self) -> None:
        """Three little-endian bytes: 0x7FFFFF is just under 1, 0xFFFFFF is -1/2^23, 0x800000 is -1."""
        data = bytes([0xFF, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x80])
        assert decode(data, 1, 24).ravel().tolist() == [(2**23 - 1) / 2**23, -1 / 2**23, -1.0]

    def test_16_and_32_bit_and_stereo_layout(self) -> None:
        """Interleaved stereo comes out as (frames, 2); a torn last frame is cut off."""
        data = np.array([16384, -16384, 8192, 0], dtype="<i2").tobytes() + b"\x01"
        assert decode(data, 2, 16).tolist() == [[0.5, -0.5], [0.25, 0.0]]
        assert decode(np.array([-(2**31)], dtype="<i4").tobytes(), 1, 32).tolist() == [[-1.0]]

    def test_unsupported_width_is_refused(self) -> None:
        """A 12-bit claim is not guessed at."""
        with pytest.raises(ValueError, match="12-bit"):
            decode(b"\x00\x00", 1, 12)


class TestResample:
    """Length, level and frequency survive; what the target rate cannot hold is filtered, not aliased."""

    @pytest.mark.parametrize("rate", [48000, 44100, 32000, 22050, 8000])
    def test_tone_keeps_its_frequency_level_and_length(self, rate: int) -> None:
        """Two seconds of 1000 Hz at any rate are 32000 samples of 1000 Hz at the same level."""
        y = resample(sine(1000, rate, 2.0), rate, 16000)
        middle = y[1000:-1000]  # away from the zero padding at the edges
        assert len(y) == 32000
        assert share(middle, 1000) > 0.999 and abs(rms(middle) - 0.5 / np.sqrt(2)) < 0.005

    def test_content_above_8_khz_does_not_alias(self) -> None:
        """A 10 kHz tone at 48 kHz is removed (over 60 dB down), not folded onto 6 kHz."""
        y = resample(sine(10000, 48000, 1.0), 48000, 16000)
        assert rms(y[500:-500]) < 0.5 / np.sqrt(2) * 1e-3

    def test_upsampling_leaves_no_image(self) -> None:
        """1000 Hz at 8 kHz upsampled has no image at 7000 Hz."""
        y = resample(sine(1000, 8000, 1.0), 8000, 16000)[500:-500]
        assert share(y, 7000) < 1e-6

    def test_output_is_not_delayed(self) -> None:
        """An impulse at 48 kHz sample 3000 peaks at 16 kHz sample 1000."""
        x = np.zeros(6000)
        x[3000] = 1.0
        assert int(np.argmax(resample(x, 48000, 16000))) == 1000


class TestToRecorderFormat:
    """Whole files: 16 kHz mono int16 out, whatever went in."""

    def test_48_khz_stereo_becomes_16_khz_mono(self) -> None:
        """A 48 kHz stereo 1000 Hz tone is one third as many mono samples, same tone and level."""
        tone = np.round(sine(1000, 48000, 1.0, 0.3) * 32767).astype("<i2")
        out = np.frombuffer(to_recorder_format(np.stack([tone, tone], axis=1).tobytes(), 48000, 2, 16), "<i2")
        middle = out[4000:12000]  # a whole number of cycles, away from the edges
        assert len(out) == 16000 and share(middle.astype(np.float64), 1000) > 0.999
        assert abs(int(np.abs(middle).max()) - 9830) <= 60

    def test_stereo_is_averaged(self) -> None:
        """Opposite channels cancel; one silent channel halves the other."""
        left = np.full(1600, 10000, dtype="<i2")
        both = np.stack([left, -left], axis=1).tobytes()
        half = np.stack([left, np.zeros_like(left)], axis=1).tobytes()
        assert not np.frombuffer(to_recorder_format(both, 16000, 2, 16), "<i2").any()
        assert (np.frombuffer(to_recorder_format(half, 16000, 2, 16), "<i2") == 5000).all()

    def test_recorder_format_passes_through_unchanged(self) -> None:
        """16 kHz mono 16-bit input is returned byte for byte."""
        data = np.arange(-500, 500, dtype="<i2").tobytes()
        assert to_recorder_format(data, 16000, 1, 16) == data
