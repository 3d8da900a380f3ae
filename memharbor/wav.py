"""Streaming PCM WAV files: write as you go, keep the header true, repair what a crash left behind.

A canonical 44-byte RIFF/WAVE header (`fmt ` chunk of 16 bytes, then `data`) is written first with a
data size of zero, so the file is a valid (empty) WAV from its first byte on. Samples are appended
unbuffered (each write reaches the kernel, so a killed process loses nothing it wrote), and the RIFF and
data sizes are rewritten whenever `header_every_s` more seconds of audio have been written: a file cut
short by a crash plays up to its last header refresh as it is, and `repair` makes the rest playable.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SAMPLE_RATE = 16000
CHANNELS = 1
BITS_PER_SAMPLE = 16
HEADER_BYTES = 44
SPEC = {"sampleRate": SAMPLE_RATE, "channels": CHANNELS, "bitDepth": BITS_PER_SAMPLE}


class WavError(ValueError):
    """A file is not a PCM WAV file this module can read or repair."""


@dataclass(frozen=True)
class WavInfo:
    """What a WAV header says, and where its samples are."""

    sample_rate: int
    channels: int
    bits_per_sample: int
    data_offset: int
    data_bytes: int

    @property
    def block_align(self) -> int:
        return self.channels * self.bits_per_sample // 8

    @property
    def frames(self) -> int:
        return self.data_bytes // self.block_align

    @property
    def duration_ms(self) -> int:
        return self.frames * 1000 // self.sample_rate


def header(
    data_bytes: int, sample_rate: int = SAMPLE_RATE, channels: int = CHANNELS, bits: int = BITS_PER_SAMPLE
) -> bytes:
    """The canonical 44-byte PCM header for `data_bytes` bytes of samples."""
    block_align = channels * bits // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        bits,
        b"data",
        data_bytes,
    )


class WavWriter:
    """Appends PCM to a new WAV file, rewriting the header sizes every `header_every_s` seconds of audio.

    The file is created exclusively (an existing file is never overwritten) and an exclusive `flock`
    is held on it while it is open, so another process can tell a live recording from an abandoned one.
    """

    def __init__(
        self,
        path: Path,
        *,
        sample_rate: int = SAMPLE_RATE,
        channels: int = CHANNELS,
        bits: int = BITS_PER_SAMPLE,
        header_every_s: float = 2.0,
    ) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.channels = channels
        self.bits = bits
        self.data_bytes = 0
        self._block_align = channels * bits // 8
        self._refresh_bytes = max(self._block_align, int(header_every_s * sample_rate) * self._block_align)
        self._sized_at = 0
        self._pending = b""  # an odd byte waiting for its partner sample
        self._file: BinaryIO | None = open(path, "xb", buffering=0)  # noqa: SIM115 - closed by close()
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file.write(header(0, sample_rate, channels, bits))
        except BaseException:
            self._file.close()
            raise

    @property
    def closed(self) -> bool:
        return self._file is None

    @property
    def duration_ms(self) -> int:
        return self.data_bytes // self._block_align * 1000 // self.sample_rate

    def write(self, pcm: bytes) -> None:
        """Append samples (little-endian PCM); the header is refreshed when it is due."""
        if self._file is None:
            raise ValueError(f"{self.path.name} is closed")
        if self._pending:
            pcm = self._pending + pcm
            self._pending = b""
        usable = len(pcm) - len(pcm) % self._block_align
        if usable < len(pcm):
            self._pending = pcm[usable:]
            pcm = pcm[:usable]
        if not pcm:
            return
        self._file.write(pcm)
        self.data_bytes += len(pcm)
        if self.data_bytes - self._sized_at >= self._refresh_bytes:
            self.refresh_header()

    def write_silence(self, frames: int, chunk_frames: int = 16000) -> None:
        """Append `frames` sample frames of silence, in bounded chunks."""
        while frames > 0:
            n = min(frames, chunk_frames)
            self.write(bytes(n * self._block_align))
            frames -= n

    def refresh_header(self) -> None:
        """Rewrite the RIFF and data sizes to cover everything written so far."""
        if self._file is None:
            return
        self._file.seek(4)
        self._file.write(struct.pack("<I", 36 + self.data_bytes))
        self._file.seek(40)
        self._file.write(struct.pack("<I", self.data_bytes))
        self._file.seek(0, os.SEEK_END)
        self._sized_at = self.data_bytes

    def close(self) -> WavInfo:
        """Finalize the header, sync the file to disk and release it."""
        if self._file is not None:
            self.refresh_header()
            os.fsync(self._file.fileno())
            self._file.close()  # also releases the flock
            self._file = None
        return WavInfo(self.sample_rate, self.channels, self.bits, HEADER_BYTES, self.data_bytes)


def parse(head: bytes, file_size: int) -> WavInfo:
    """Parse the chunks of a PCM WAV file from its first bytes (`head`) and its total size."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    offset = 12
    fmt: tuple[int, int, int, int] | None = None
    while offset + 8 <= len(head):
        chunk_id, size = struct.unpack_from("<4sI", head, offset)
        body = offset + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(head):
                raise WavError("fmt chunk too short")
            audio_format, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, body)
            fmt = (audio_format, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError("data chunk before fmt chunk")
            audio_format, channels, rate, bits = fmt
            if audio_format != 1 or channels < 1 or rate < 1 or bits not in (8, 16, 24, 32):
                raise WavError(f"not integer PCM (format {audio_format}, {channels} ch, {rate} Hz, {bits} bit)")
            data_bytes = min(size, max(0, file_size - body))
            return WavInfo(rate, channels, bits, body, data_bytes)
        offset = body + size + (size & 1)
    raise WavError("no data chunk found")


def read_info(path: Path) -> WavInfo:
    """The header of a PCM WAV file on disk (WavError when it is not one)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    return parse(head, path.stat().st_size)


def read_pcm(path: Path) -> tuple[WavInfo, bytes]:
    """The header and the samples of a (small) PCM WAV file."""
    info = read_info(path)
    with open(path, "rb") as f:
        f.seek(info.data_offset)
        return info, f.read(info.data_bytes)


def repair(path: Path) -> WavInfo:
    """Make an unfinished WAV written by `WavWriter` playable: sizes cover every whole sample on disk.

    A trailing partial sample is cut off. Raises WavError when the file does not start with our
    canonical header (nothing is changed then).
    """
    size = path.stat().st_size
    with open(path, "r+b") as f:
        info = parse(f.read(HEADER_BYTES), size)
        if info.data_offset != HEADER_BYTES:
            raise WavError("not a canonical 44-byte header; refusing to rewrite it")
        data_bytes = (size - HEADER_BYTES) - (size - HEADER_BYTES) % info.block_align
        if HEADER_BYTES + data_bytes != size:
            f.truncate(HEADER_BYTES + data_bytes)
        f.seek(4)
        f.write(struct.pack("<I", 36 + data_bytes))
        f.seek(40)
        f.write(struct.pack("<I", data_bytes))
        f.flush()
        os.fsync(f.fileno())
    return WavInfo(info.sample_rate, info.channels, info.bits_per_sample, HEADER_BYTES, data_bytes)


def try_lock(path: Path) -> int | None:
    """Take the exclusive lock of a WAV file: a descriptor to pass to `unlock`, or None while some open
    `WavWriter` (of any process on this host) holds it. A dead process's lock is released by the kernel.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    """Release a lock taken with `try_lock`."""
    os.close(fd)
