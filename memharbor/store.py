"""token_http's Firestore client, made on first use, with the read ports its composition root wires in.

The collection names live in `memharbor.repositories.paths` and are importable from here too, the
place the watcher, the recorder and the heartbeat read them from. The repositories themselves (one
per aggregate) are in `memharbor.repositories`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from google.cloud import firestore

from memharbor.repositories.calls import FirestoreCallRepository
from memharbor.repositories.paths import CALLS, GROUPS, RECORDINGS, USERS, WORKERS
from memharbor.repositories.workers import FirestoreWorkers

__all__ = ["CALLS", "GROUPS", "RECORDINGS", "USERS", "WORKERS", "FirestoreStore"]


class FirestoreStore:
    """The process's asyncio Firestore client with the call lookups (CallReader) and health probe (HealthSource).

    The client is made on first use: its gRPC channel binds to the event loop that is running then.
    """

    def __init__(self, make_client: Callable[[], firestore.AsyncClient]) -> None:
        self._make_client = make_client
        self._client: firestore.AsyncClient | None = None
        self._calls = FirestoreCallRepository(lambda: self.client)
        self._workers = FirestoreWorkers(lambda: self.client)

    @property
    def client(self) -> firestore.AsyncClient:
        """The client, made now if this is its first use."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    async def calls_on_channel(self, channel: str) -> list[dict[str, Any]]:
        """The call documents whose channelName is `channel` (FirestoreCallRepository's lookup)."""
        return await self._calls.calls_on_channel(channel)

    async def get_calls(self, call_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The call documents of these ids that exist, by id."""
        return await self._calls.get_calls(call_ids)

    async def ping(self) -> None:
        """Return once Firestore answered a read."""
        await self._workers.ping()

    async def heartbeats(self) -> list[dict[str, Any]]:
        """The workers' heartbeat documents."""
        return await self._workers.heartbeats()

    def close(self) -> None:
        """Close the client's channel if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None
