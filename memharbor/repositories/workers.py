"""The workers aggregate (`workers/{id}` heartbeats), read by /api/health: its port and Firestore adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from memharbor.repositories.guarded import FirestoreClient
from memharbor.repositories.paths import WORKERS

# Heartbeats /api/health reads at most (a few watchers and recorders per deployment).
MAX_HEARTBEATS = 200


class HealthSource(Protocol):
    """What /api/health asks of the database."""

    async def ping(self) -> None:
        """Return once Firestore answered a read; raise when it cannot."""
        ...

    async def heartbeats(self) -> list[dict[str, Any]]:
        """The workers' heartbeat documents."""
        ...


class FirestoreWorkers:
    """HealthSource over an asyncio Firestore client.

    Unguarded on purpose: /api/health bounds the whole check itself and reports the failure's class name.
    """

    def __init__(self, client: Callable[[], FirestoreClient]) -> None:
        self._client = client

    async def ping(self) -> None:
        # A read of a document that need not exist proves the round trip without writing anything.
        await self._client().collection(WORKERS).document("_ping").get()

    async def heartbeats(self) -> list[dict[str, Any]]:
        query = self._client().collection(WORKERS).limit(MAX_HEARTBEATS)
        return [snap.to_dict() or {} async for snap in query.stream()]
