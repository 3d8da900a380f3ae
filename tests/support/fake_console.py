"""In-memory ConsoleReader and RecordingAudio with FirestoreConsole's and StoredAudio's semantics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from memharbor.repositories.console import CallWithServer

_EPOCH = datetime.fromtimestamp(0, UTC)


class FakeConsole:
    """Calls, server documents and recording sessions as plain documents; `failure` makes every read raise it."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self.servers: dict[str, dict[str, Any]] = {}
        self.recordings: dict[str, dict[str, Any]] = {}
        self.failure: Exception | None = None
        self.limits: list[int] = []

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def recent_calls(self, limit: int) -> list[CallWithServer]:
        self._check()
        self.limits.append(limit)
        newest = sorted(self.calls.items(), key=lambda item: item[1].get("updatedAt") or _EPOCH, reverse=True)
        return [(call_id, doc, self.servers.get(call_id)) for call_id, doc in newest[:limit]]

    async def recent_recordings(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        self._check()
        self.limits.append(limit)
        newest = sorted(self.recordings.items(), key=lambda item: item[1].get("createdAt") or _EPOCH, reverse=True)
        return newest[:limit]

    async def recording(self, sid: str) -> dict[str, Any] | None:
        self._check()
        return self.recordings.get(sid)


class FakeAudio:
    """Files by session id (the `filename` field); None for a session without one."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    async def read(self, session: dict[str, Any]) -> bytes | None:
        return self.files.get(str(session.get("filename")))
