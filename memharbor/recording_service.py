"""Old import path of the recordings repository, kept for token_http/main.py (the composition root).

The port and its adapter live in `memharbor.repositories.recordings`.
"""

from __future__ import annotations

from memharbor.repositories.recordings import FirestoreRecordingRepository, RecordingRepository

RecordingService = RecordingRepository
FirestoreRecordingService = FirestoreRecordingRepository

__all__ = ["FirestoreRecordingService", "RecordingService"]
