"""The streaming WAV writer, the header parser and the crash repair."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import pytest

from memharbor import wav


def _header_fields(path: Path) -> tuple[object, ...]:
    return struct.unpack("<4sI4s4sIHHIIHH4sI", path.read_bytes()[:44])


class TestHeader:
    """The header written is the canonical 16 kHz mono 16-bit PCM one, with true sizes."""

    def test_every_field_of_a_finished_file(self, tmp_path: Path) -> None:
        """RIFF size, fmt fields, byte rate, block align and data size are exactly right."""
        path = tmp_path / "a.wav"
        writer = wav.WavWriter(path)
        writer.write(b"\x01\x00" * 16000)
        info = writer.close()
        fields = _header_fields(path)
        assert fields == (b"RIFF", 36 + 32000, b"WAVE", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16, b"data", 32000)
        assert info.duration_ms == 1000 and path.stat().st_size == 44 + 32000
        with wave.open(str(path)) as reader:
            assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (16000, 1, 2)
            assert reader.getnframes() == 16000

    def test_header_is_refreshed_while_writing(self, tmp_path: Path) -> None:
        """Sizes on disk follow the data every `header_every_s` seconds, before close."""
        path = tmp_path / "b.wav"
        writer = wav.WavWriter(path, header_every_s=0.5)
        writer.write(bytes(16000 * 2 // 4))  # 0.25 s: not yet due
        assert _header_fields(path)[-1] == 0
        writer.write(bytes(16000 * 2 // 4))  # 0.5 s: refreshed
        assert _header_fields(path)[-1] == 16000
        assert wav.read_info(path).duration_ms == 500
        writer.close()

    def test_odd_bytes_wait_for_their_partner(self, tmp_path: Path) -> None:
        """A write that splits a sample keeps the half until the next write completes it."""
        path = tmp_path / "c.wav"
        writer = wav.WavWriter(path)
        writer.write(b"\x01")
        writer.write(b"\x02\x03\x04")
        writer.close()
        assert wav.read_pcm(path)[1] == b"\x01\x02\x03\x04"

    def test_existing_file_is_never_overwritten(self, tmp_path: Path) -> None:
        """The writer creates its file exclusively."""
        path = tmp_path / "d.wav"
        path.write_bytes(b"keep")
        with pytest.raises(FileExistsError):
            wav.WavWriter(path)
        assert path.read_bytes() == b"keep"


class TestParse:
    """The chunk parser reads other writers' files and refuses what is not PCM WAV."""

    def test_extra_chunks_before_data_are_skipped(self) -> None:
        """A LIST chunk between fmt and data does not confuse it."""
        fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16)
        body = fmt + b"LIST" + struct.pack("<I", 3) + b"abc\x00" + b"data" + struct.pack("<I", 4) + b"\x00" * 4
        data = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body
        info = wav.parse(data, len(data))
        assert (info.sample_rate, info.data_offset, info.data_bytes) == (8000, len(data) - 4, 4)

    @pytest.mark.parametrize("blob", [b"", b"RIFX0000WAVE", b"RIFF0000WAVEdata\x00\x00\x00\x00"])
    def test_non_wav_is_refused(self, blob: bytes) -> None:
        """Wrong magic, or data before fmt, raises WavError."""
        with pytest.raises(wav.WavError):
            wav.parse(blob, len(blob))


class TestRepair:
    """What a killed writer leaves behind becomes a playable file with every whole sample."""

    def test_unfinished_file_gets_true_sizes(self, tmp_path: Path) -> None:
        """Sizes cover all the samples written after the last header refresh; a half sample is cut."""
        path = tmp_path / "e.wav"
        writer = wav.WavWriter(path, header_every_s=60)
        writer.write(b"\x05\x00" * 8000)
        # Simulate the crash: nothing closes the writer; a torn last sample sits on disk.
        with open(path, "ab") as f:
            f.write(b"\x07")
        assert _header_fields(path)[-1] == 0
        info = wav.repair(path)
        assert info.data_bytes == 16000 and path.stat().st_size == 44 + 16000
        with wave.open(str(path)) as reader:
            assert reader.getnframes() == 8000
        writer.close()

    def test_foreign_file_is_left_alone(self, tmp_path: Path) -> None:
        """A file that does not start with our canonical header raises and is not modified."""
        path = tmp_path / "f.wav"
        path.write_bytes(b"not a wav at all")
        with pytest.raises(wav.WavError):
            wav.repair(path)
        assert path.read_bytes() == b"not a wav at all"


class TestLock:
    """An open writer holds its file's lock; a closed one releases it."""

    def test_lock_follows_the_writer(self, tmp_path: Path) -> None:
        """try_lock fails while the writer is open and succeeds after close."""
        path = tmp_path / "g.wav"
        writer = wav.WavWriter(path)
        assert wav.try_lock(path) is None
        writer.close()
        fd = wav.try_lock(path)
        assert fd is not None
        wav.unlock(fd)
