"""Any integer PCM (8/16/24/32-bit, any rate, any channel count) to the recorder's 16 kHz mono int16.

Used by the simulation to play WAV files made elsewhere (a phone's 48 kHz stereo, a 44.1 kHz clip).
Channels are averaged into one (a plain downmix: a signal present in one channel of two comes out at
half its level). The rate is changed by a polyphase resampler: in effect the signal is upsampled by
`up` (zeros between samples), low-pass filtered and decimated by `down`, where up/down is the ratio of
the rates in lowest terms; only the filter products that land on an output sample are computed. The
filter is a Kaiser-windowed sinc (beta 5, 16 zero crossings each side) cut off at 90 % of the lower
of the two Nyquist frequencies. Its transition band lies below that Nyquist frequency, so when
downsampling, content the 16 kHz output cannot hold (above 8 kHz) is removed before it can alias,
by 50 dB or more. When upsampling, the spectral images are removed the same way. The passband is flat
to about 80 % of that Nyquist frequency (6.4 kHz at a 16 kHz output), which is plenty for voice.
"""

from __future__ import annotations

import math

import numpy as np

TARGET_RATE = 16000
_ZERO_CROSSINGS = 16
_CUTOFF = 0.9
_KAISER_BETA = 5.0


def decode(data: bytes, channels: int, bits: int) -> np.ndarray:
    """Little-endian integer PCM as floats in [-1, 1), shaped (frames, channels); a torn last frame is cut."""
    width = bits // 8
    if bits not in (8, 16, 24, 32) or channels < 1:
        raise ValueError(f"unsupported PCM: {bits}-bit, {channels} channels")
    usable = len(data) - len(data) % (width * channels)
    raw = np.frombuffer(data[:usable], dtype=np.uint8)
    if bits == 8:
        samples = (raw.astype(np.float64) - 128.0) / 128.0  # WAV's 8-bit samples are unsigned
    elif bits == 24:
        b = raw.reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = ((value ^ 0x800000) - 0x800000) / float(1 << 23)  # sign-extend the 24-bit value
    else:
        samples = np.frombuffer(raw.tobytes(), dtype=f"<i{width}").astype(np.float64) / float(1 << (bits - 1))
    return samples.reshape(-1, channels)


def lowpass(up: int, down: int) -> np.ndarray:
    """The resampling filter for up/down, designed at the upsampled rate, with a DC gain of `up`."""
    factor = max(up, down)
    half = _ZERO_CROSSINGS * factor
    cutoff = _CUTOFF * 0.5 / factor  # cycles per upsampled sample
    t = np.arange(-half, half + 1, dtype=np.float64)
    taps = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(2 * half + 1, _KAISER_BETA)
    # Zero-stuffing by `up` divides the level by `up`; the filter gives it back.
    return taps * (up / taps.sum())


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Mono float samples at `rate_in` resampled to `rate_out`: ceil(len * rate_out / rate_in) samples, no delay."""
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    if up == down or len(x) == 0:
        return x.astype(np.float64)
    h = lowpass(up, down)
    half = (len(h) - 1) // 2
    per_phase = -(-len(h) // up)
    # phases[j, r] is tap r + j*up: output t uses phase r_t = (t*down + half) % up on the input
    # samples q_t, q_t - 1, ... where q_t = (t*down + half) // up (the filter centred on t*down).
    padded_taps = np.zeros(per_phase * up)
    padded_taps[: len(h)] = h
    phases = padded_taps.reshape(per_phase, up)
    n_out = -(-len(x) * up // down)
    position = np.arange(n_out, dtype=np.int64) * down + half
    r, q = position % up, position // up
    pad_front = per_phase - 1
    padded = np.concatenate([np.zeros(pad_front), x, np.zeros(max(0, int(q[-1]) + 1 - len(x)))])
    y = np.zeros(n_out)
    for j in range(per_phase):
        y += phases[j, r] * padded[q - j + pad_front]
    return y


def to_recorder_format(data: bytes, rate: int, channels: int, bits: int) -> bytes:
    """Integer PCM of any rate, channel count and width as 16 kHz mono little-endian int16 PCM."""
    if (rate, channels, bits) == (TARGET_RATE, 1, 16):
        return data[: len(data) - len(data) % 2]
    mono = decode(data, channels, bits).mean(axis=1)
    out = resample(mono, rate, TARGET_RATE)
    return np.clip(np.round(out * 32768.0), -32768, 32767).astype("<i2").tobytes()
