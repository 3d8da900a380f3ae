"""Firestore access shared by the processes: the ports they depend on and their Firestore adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

CALLS = "calls"
GROUPS = "groups"
USERS = "users"
RECORDINGS = "recordings"
WORKERS = "workers"


class CallDirectory(Protocol):
    """Finds the calls that use an Agora channel."""

    async def calls_on_channel(self, channel: str) -> list[dict[str, Any]]: ...


class HealthSource(Protocol):
    """What /api/health asks of the database."""

    async def ping(self) -> None: ...

    async def heartbeats(self) -> list[dict[str, Any]]: ...


class FirestoreStore:
    """CallDirectory and HealthSource over an asyncio Firestore client.

    The client is made on first use: its gRPC channel binds to the event loop that is running then.
    """

    def __init__(self, make_client: Callable[[], firestore.AsyncClient]) -> None:
        self._make_client = make_client
        self._client: firestore.AsyncClient | None = None

    @property
    def client(self) -> firestore.AsyncClient:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    async def calls_on_channel(self, channel: str) -> list[dict[str, Any]]:
        query = self.client.collection(CALLS).where(filter=FieldFilter("channelName", "==", channel)).limit(20)
        return [snap.to_dict() or {} async for snap in query.stream()]

    async def ping(self) -> None:
        # A read of a document that need not exist proves the round trip without writing anything.
        await self.client.collection(WORKERS).document("_ping").get()

    async def heartbeats(self) -> list[dict[str, Any]]:
        return [snap.to_dict() or {} async for snap in self.client.collection(WORKERS).limit(200).stream()]

    def close(self) -> None:
        """Close the client's channel if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None
