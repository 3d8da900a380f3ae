"""token_http's Firestore client, made on first use, with the read ports its composition root wires in.

The collection names live in `memharbor.repositories.paths`; they are importable from here too,
where the watcher and recorder/listener.py still read them. The repositories themselves (one per
aggregate) are in `memharbor.repositories`.
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

    async def aclose(self) -> None:
        """Close the client if one was made: its HTTP session and its gRPC channel."""
        client, self._client = self._client, None
        if client is not None:
            await close_async_client(client)


async def close_async_client(client: firestore.AsyncClient) -> None:
    """Close an asyncio Firestore client for good: `client.close()` and then its gRPC channel.

    `AsyncClient.close()` only closes the HTTP session it inherits; the gRPC channel of its GAPIC
    client (made on the first RPC) stays open until the process exits. google-cloud-firestore has no
    public way to reach it, so this reads the lazily made GAPIC client's private attribute, and does
    nothing more when no RPC ever made one.
    """
    client.close()
    api = getattr(client, "_firestore_api_internal", None)
    if api is not None:
        await api.transport.close()
