"""Uploads finished WAV files to Storage `recordings/{filename}` (content type audio/wav), with retries."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from memharbor.logs import get_logger
from recorder.metrics import RecorderMetrics

log = get_logger()
PREFIX = "recordings/"


class UploadError(RuntimeError):
    """Every attempt to upload a file failed."""


class Uploader:
    """Puts files into one bucket; without a bucket it keeps them local (`upload` returns None)."""

    def __init__(
        self, bucket: Any | None, attempts: int = 3, backoff_s: float = 1.0, metrics: RecorderMetrics | None = None
    ) -> None:
        self.bucket = bucket
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.metrics = metrics if metrics is not None else RecorderMetrics()

    @property
    def configured(self) -> bool:
        return self.bucket is not None

    def _put(self, path: Path, name: str) -> str:
        assert self.bucket is not None
        blob = self.bucket.blob(name)
        blob.chunk_size = 8 * 1024 * 1024  # resumable upload in 8 MB chunks for long recordings
        blob.upload_from_filename(str(path), content_type="audio/wav")
        return str(blob.public_url)

    async def upload(self, path: Path) -> tuple[str, str] | None:
        """Upload `path` as `recordings/{its name}`; returns (url, storagePath), or None without Storage."""
        if self.bucket is None:
            return None
        name = PREFIX + path.name
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                url = await asyncio.to_thread(self._put, path, name)
            except Exception as exc:
                log.warning("upload.failed", file=path.name, attempt=attempt, error=f"{type(exc).__name__}: {exc}")
                if attempt == self.attempts:
                    self.metrics.uploads.labels("failed").inc()
                    raise UploadError(f"upload of {path.name} failed: {type(exc).__name__}") from exc
                self.metrics.upload_retries.inc()
                await asyncio.sleep(delay)
                delay *= 2
            else:
                self.metrics.uploads.labels("uploaded").inc()
                return url, name
        raise AssertionError("unreachable")
