"""The uploader's retries and their metrics, with a bucket that fails on command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from recorder.metrics import RecorderMetrics
from recorder.upload import Uploader, UploadError


class FlakyBucket:
    """A bucket whose first `failures` uploads raise; later ones succeed."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0

    def blob(self, name: str) -> Any:
        return FlakyBlob(self, name)


class FlakyBlob:
    def __init__(self, bucket: FlakyBucket, name: str) -> None:
        self.bucket = bucket
        self.public_url = f"http://storage/{name}"
        self.chunk_size = 0

    def upload_from_filename(self, path: str, content_type: str) -> None:
        self.bucket.attempts += 1
        if self.bucket.attempts <= self.bucket.failures:
            raise ConnectionError("storage unreachable")


def counts(metrics: RecorderMetrics) -> dict[str, float]:
    """Uploads by result and retries, as a scrape reads them."""
    values = {
        f"{sample.name}{sample.labels.get('result', '')}": sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name.startswith("memharbor_recorder_upload")
    }
    return {
        "uploaded": values["memharbor_recorder_uploads_totaluploaded"],
        "failed": values["memharbor_recorder_uploads_totalfailed"],
        "retries": values["memharbor_recorder_upload_retries_total"],
    }


@pytest.fixture
def wav_file(tmp_path: Path) -> Path:
    path = tmp_path / "c1_2026.wav"
    path.write_bytes(b"RIFF")
    return path


class TestUploadMetrics:
    """Each file counts once as uploaded or failed; every repeated attempt counts as a retry."""

    async def test_retried_upload_counts_retries_and_one_upload(self, wav_file: Path) -> None:
        """Two failures then a success: two retries, one uploaded file, no failure."""
        metrics = RecorderMetrics()
        uploader = Uploader(FlakyBucket(failures=2), attempts=3, backoff_s=0.0, metrics=metrics)
        assert await uploader.upload(wav_file) == ("http://storage/recordings/c1_2026.wav", "recordings/c1_2026.wav")
        assert counts(metrics) == {"uploaded": 1, "failed": 0, "retries": 2}

    async def test_exhausted_attempts_count_one_failure(self, wav_file: Path) -> None:
        """Three failed attempts out of three: two retries and one failed file, then UploadError."""
        metrics = RecorderMetrics()
        uploader = Uploader(FlakyBucket(failures=5), attempts=3, backoff_s=0.0, metrics=metrics)
        with pytest.raises(UploadError):
            await uploader.upload(wav_file)
        assert counts(metrics) == {"uploaded": 0, "failed": 1, "retries": 2}

    async def test_without_a_bucket_nothing_is_counted(self, wav_file: Path) -> None:
        """Files kept local are neither uploads nor failures."""
        metrics = RecorderMetrics()
        assert await Uploader(None, metrics=metrics).upload(wav_file) is None
        assert counts(metrics) == {"uploaded": 0, "failed": 0, "retries": 0}
