"""Worker heartbeats: one document per running instance in `workers`, read by /api/health.

The document is written through the workers repository (memharbor/repositories/workers.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from memharbor.errors import Unavailable
from memharbor.logs import get_logger
from memharbor.repositories.guarded import FirestoreClient
from memharbor.repositories.workers import FirestoreHeartbeats, HeartbeatStore

log = get_logger()


def _cause(exc: Exception) -> str:
    # The guard reports an outage as Unavailable carrying the client's error class; log that class.
    return str(exc) if isinstance(exc, Unavailable) else type(exc).__name__


class Heartbeat:
    """Writes `workers/{instance_id}` every `interval_s`; it counts as alive until `expiresAt` (3 intervals)."""

    def __init__(
        self,
        client: FirestoreClient,
        kind: str,
        instance_id: str,
        interval_s: float,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._store: HeartbeatStore = FirestoreHeartbeats(lambda: client)
        self._kind = kind
        self._instance_id = instance_id
        self._interval_s = interval_s
        self._status = status or dict
        self._started = datetime.now(UTC)

    async def beat(self) -> None:
        """Write one heartbeat."""
        now = datetime.now(UTC)
        await self._store.put(
            self._instance_id,
            {
                "kind": self._kind,
                "instanceId": self._instance_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "startedAt": self._started,
                "beatAt": now,
                "expiresAt": now + timedelta(seconds=3 * self._interval_s),
                "status": self._status(),
            },
        )

    async def try_beat(self) -> bool:
        """Write one heartbeat; a failure is logged, not raised (a slow database must not stop a worker)."""
        try:
            await self.beat()
        except Exception as exc:
            log.warning("heartbeat.failed", kind=self._kind, error=_cause(exc))
            return False
        return True

    async def run(self) -> None:
        """Beat until cancelled; a failed beat is logged and retried at the next interval."""
        while True:
            await self.try_beat()
            await asyncio.sleep(self._interval_s)

    async def retire(self) -> None:
        """Delete the heartbeat on a clean exit so health stops counting this instance at once."""
        try:
            await self._store.remove(self._instance_id)
        except Exception as exc:
            log.warning("heartbeat.retire_failed", kind=self._kind, error=_cause(exc))
