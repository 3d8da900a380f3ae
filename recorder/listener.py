"""The supervised Firestore listener over unfinished recording sessions.

The sync client calls back on its own thread: the callback copies the few fields the worker needs and
hands them to the asyncio loop with `call_soon_threadsafe`, nothing else. A supervisor resubscribes
(with back-off) whenever the watch stops, since the client's listeners can die without a word; the
worker's periodic sweep covers whatever a dead watch missed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor.logs import get_logger
from memharbor.recording_requests import IN_PROGRESS, STOP_FIELD
from memharbor.store import RECORDINGS

log = get_logger()


@dataclass(frozen=True)
class SessionEvent:
    """One change of one recording session, as the listener saw it."""

    sid: str
    change: str  # ADDED | MODIFIED | REMOVED (REMOVED: it left the unfinished set)
    status: str | None
    stop_requested: bool
    worker_id: str | None
    lease_until: datetime | None


def _event(change: Any) -> SessionEvent:
    doc = change.document
    data = (doc.to_dict() or {}) if doc.exists else {}
    lease = data.get("leaseUntil")
    worker = data.get("workerId")
    return SessionEvent(
        sid=doc.id,
        change=change.type.name,
        status=data.get("status") if isinstance(data.get("status"), str) else None,
        stop_requested=data.get(STOP_FIELD) is True,
        worker_id=worker if isinstance(worker, str) else None,
        lease_until=lease if isinstance(lease, datetime) else None,
    )


class SessionListener:
    """Owns one `on_snapshot` watch on `recordings where status in [requested, recording, stopping]`."""

    def __init__(
        self,
        make_client: Callable[[], firestore.Client],
        deliver: Callable[[list[SessionEvent]], None],
        max_backoff_s: float = 30.0,
    ) -> None:
        self._make_client = make_client
        self._client: firestore.Client | None = None
        self._deliver = deliver
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: Any = None
        self._max_backoff_s = max_backoff_s
        self.restarts = 0

    def _on_snapshot(self, docs: Any, changes: Any, read_time: Any) -> None:
        # The client's thread: copy the facts out, hand them over, return.
        events = [_event(change) for change in changes]
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, events)

    @property
    def active(self) -> bool:
        return self._watch is not None and bool(self._watch.is_active)

    def _subscribe(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        query = self._client.collection(RECORDINGS).where(
            filter=FieldFilter("status", "in", sorted(s.value for s in IN_PROGRESS))
        )
        self._watch = query.on_snapshot(self._on_snapshot)

    def _unsubscribe(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                watch.unsubscribe()
            except Exception as exc:
                log.debug("recorder.listener.unsubscribe_failed", error=type(exc).__name__)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._subscribe)
        log.info("recorder.listener.started")

    async def supervise(self, check_every_s: float = 1.0) -> None:
        """Resubscribe whenever the watch has stopped, backing off with jitter while it keeps failing."""
        backoff = 1.0
        while True:
            await asyncio.sleep(check_every_s)
            if self.active:
                backoff = 1.0
                continue
            self.restarts += 1
            log.warning("recorder.listener.restart", restarts=self.restarts)
            try:
                await asyncio.to_thread(self._unsubscribe)
                await asyncio.to_thread(self._subscribe)
            except Exception as exc:
                log.warning("recorder.listener.resubscribe_failed", error=type(exc).__name__)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self._max_backoff_s)

    async def stop(self) -> None:
        self._loop = None
        await asyncio.to_thread(self._unsubscribe)
        if self._client is not None:
            self._client.close()
            self._client = None
