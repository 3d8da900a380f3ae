"""The workers aggregate (`workers/{id}` heartbeats): written by every worker, read by /api/health.

Two ports, because the writers and the reader are different processes with different needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from memharbor.repositories.guarded import DEFAULT_TIMEOUT_S, FirestoreClient, Guard
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


class HeartbeatStore(Protocol):
    """Where a worker keeps its one heartbeat document."""

    async def put(self, instance_id: str, beat: dict[str, Any]) -> None:
        """Write `workers/{instance_id}` as `beat` (replacing what was there)."""
        ...

    async def remove(self, instance_id: str) -> None:
        """Delete `workers/{instance_id}` (nothing happens when it does not exist)."""
        ...


class FirestoreHeartbeats:
    """HeartbeatStore over an asyncio Firestore client; guarded (time bound, Unavailable)."""

    def __init__(self, client: Callable[[], FirestoreClient], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._guard = Guard(client, timeout_s)

    async def put(self, instance_id: str, beat: dict[str, Any]) -> None:
        await self._guard.run(lambda client: client.collection(WORKERS).document(instance_id).set(beat))

    async def remove(self, instance_id: str) -> None:
        await self._guard.run(lambda client: client.collection(WORKERS).document(instance_id).delete())


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
