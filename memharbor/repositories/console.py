"""What the admin console reads: the most recently updated calls with their server documents, the newest
recording sessions, and a stored recording's audio.

Reads only; the console changes nothing through these ports (its demo panel writes as the apps do,
through the Firestore emulator's REST API under the security rules).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from google.cloud import firestore

from memharbor.repositories.guarded import DEFAULT_TIMEOUT_S, FirestoreClient, Guard
from memharbor.repositories.paths import CALL_SERVER, CALLS, RECORDINGS

# A call with its server document (None until a watcher first acted on it).
CallWithServer = tuple[str, dict[str, Any], dict[str, Any] | None]
# How many documents one console read takes at most (the page shows the newest).
MAX_CONSOLE_ROWS = 200


class ConsoleReader(Protocol):
    """The console's views of calls and recording sessions."""

    async def recent_calls(self, limit: int) -> list[CallWithServer]:
        """The `limit` most recently updated calls (updatedAt descending), each with its server document."""
        ...

    async def recent_recordings(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """The `limit` newest recording sessions (createdAt descending), as (sid, document)."""
        ...

    async def recording(self, sid: str) -> dict[str, Any] | None:
        """The session document `recordings/{sid}`, or None."""
        ...


class FirestoreConsole:
    """ConsoleReader over an asyncio Firestore client; guarded (time bound, Unavailable)."""

    def __init__(self, client: Callable[[], FirestoreClient], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._guard = Guard(client, timeout_s)

    async def recent_calls(self, limit: int) -> list[CallWithServer]:
        async def read(client: FirestoreClient) -> list[CallWithServer]:
            # Single-field ordering: served by Firestore's automatic index (the watcher's feed uses the same).
            query = client.collection(CALLS).order_by("updatedAt", direction=firestore.Query.DESCENDING)
            found = [
                (snap.id, snap.to_dict() or {}) async for snap in query.limit(min(limit, MAX_CONSOLE_ROWS)).stream()
            ]
            if not found:
                return []
            refs = [client.collection(CALL_SERVER).document(call_id) for call_id, _ in found]
            # One batched read for every server document, in whatever order Firestore answers.
            servers = {snap.id: snap.to_dict() async for snap in client.get_all(refs) if snap.exists}
            return [(call_id, doc, servers.get(call_id)) for call_id, doc in found]

        return await self._guard.run(read)

    async def recent_recordings(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        async def read(client: FirestoreClient) -> list[tuple[str, dict[str, Any]]]:
            query = client.collection(RECORDINGS).order_by("createdAt", direction=firestore.Query.DESCENDING)
            return [
                (snap.id, snap.to_dict() or {}) async for snap in query.limit(min(limit, MAX_CONSOLE_ROWS)).stream()
            ]

        return await self._guard.run(read)

    async def recording(self, sid: str) -> dict[str, Any] | None:
        async def read(client: FirestoreClient) -> dict[str, Any] | None:
            snap = await client.collection(RECORDINGS).document(sid).get()
            return snap.to_dict() if snap.exists else None

        return await self._guard.run(read)


class RecordingAudio(Protocol):
    """Reads a stopped session's file."""

    async def read(self, session: dict[str, Any]) -> bytes | None:
        """The file's bytes (from `storagePath` in Storage, else the local copy), or None when neither exists."""
        ...


class StoredAudio:
    """RecordingAudio over a Storage bucket (None: no bucket) and the recorder's local directory (None: none)."""

    # A recording of the default maximum (2 h of 16 kHz mono 16-bit) is about 230 MB; the console plays
    # calls of minutes, so anything over this is refused rather than held in memory.
    MAX_BYTES = 64 * 1024 * 1024

    def __init__(self, bucket: Any | None, local_dir: Path | None) -> None:
        self._bucket = bucket
        self._local_dir = local_dir

    async def read(self, session: dict[str, Any]) -> bytes | None:
        storage_path, filename = session.get("storagePath"), session.get("filename")
        if self._bucket is not None and isinstance(storage_path, str) and storage_path:
            return await asyncio.to_thread(self._download, storage_path)
        if self._local_dir is not None and isinstance(filename, str) and filename:
            # The name comes from the database: only a plain file name inside the directory is read.
            path = self._local_dir / Path(filename).name
            if path.is_file() and path.stat().st_size <= self.MAX_BYTES:
                return await asyncio.to_thread(path.read_bytes)
        return None

    def _download(self, storage_path: str) -> bytes | None:
        assert self._bucket is not None
        blob = self._bucket.get_blob(storage_path)
        if blob is None or (blob.size or 0) > self.MAX_BYTES:
            return None
        return blob.download_as_bytes()  # type: ignore[no-any-return]
