"""The supervised Firestore listener over active calls.

The sync client calls back on its own thread, so the callback only copies what it needs and hands it
to the asyncio loop with `call_soon_threadsafe`. Listeners of the Python client can stop without a word,
so a supervisor checks the watch is alive and resubscribes with back-off; the sweep's reconciliation
can also ask for a resubscribe when it finds changes the stream never delivered.
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

from memharbor.calls import ACTIVE
from memharbor.logs import get_logger
from memharbor.store import CALLS

log = get_logger()


@dataclass(frozen=True)
class CallEvent:
    """One change of one call, as the listener saw it."""

    call_id: str
    change: str  # ADDED | MODIFIED | REMOVED (REMOVED carries the last matching version)
    status: str | None
    update_time: datetime | None
    receiver_id: str | None = None


def _field(snapshot: Any, name: str) -> Any:
    try:
        return snapshot.get(name) if snapshot.exists else None
    except KeyError:
        return None


def by_document_name(doc1: Any, doc2: Any) -> int:
    """Order two snapshots by document name: what the client does for a query without order_by."""
    a, b = doc1.reference._path, doc2.reference._path
    return (a > b) - (a < b)


def active_calls_query(client: firestore.Client) -> Any:
    """`calls where status in [pending, accepted]`, with a fast comparator for the listener.

    The client keeps the listener's result set sorted with `query._comparator`, which builds protobuf
    messages on every comparison: profiling showed a quarter of the watcher's CPU there at 10 calls/s.
    This query has no order_by, so plain name order is the same order (a unit test holds the library
    to that), at a small fraction of the cost.
    """
    query = client.collection(CALLS).where(filter=FieldFilter("status", "in", sorted(s.value for s in ACTIVE)))
    query._comparator = by_document_name  # type: ignore[method-assign]
    return query


class CallListener:
    """Owns one `on_snapshot` watch on `calls where status in [pending, accepted]`."""

    def __init__(
        self,
        make_client: Callable[[], firestore.Client],
        deliver: Callable[[list[CallEvent]], None],
        max_backoff_s: float = 30.0,
    ) -> None:
        self._make_client = make_client
        self._client: firestore.Client | None = None
        self._deliver = deliver
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: Any = None
        self._max_backoff_s = max_backoff_s
        self.restarts = 0
        self.snapshots = 0

    def _on_snapshot(self, docs: Any, changes: Any, read_time: Any) -> None:
        # Runs on the client's thread: copy the bare facts out and hand them to the loop, nothing else.
        events = [
            CallEvent(
                call_id=change.document.id,
                change=change.type.name,
                status=_field(change.document, "status"),
                update_time=change.document.update_time,
                receiver_id=_field(change.document, "receiverId"),
            )
            for change in changes
        ]
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._received, events)

    def _received(self, events: list[CallEvent]) -> None:
        self.snapshots += 1
        self._deliver(events)

    @property
    def active(self) -> bool:
        """True while the watch's stream is running."""
        return self._watch is not None and bool(self._watch.is_active)

    def _subscribe(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        self._watch = active_calls_query(self._client).on_snapshot(self._on_snapshot)

    def _unsubscribe(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                watch.unsubscribe()
            except Exception as exc:  # a dead stream may fail to close; it is dropped either way
                log.debug("listener.unsubscribe_failed", error=type(exc).__name__)

    async def start(self) -> None:
        """Subscribe (the client library does blocking set-up, so off the loop)."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._subscribe)
        log.info("listener.started")

    async def restart(self, reason: str) -> None:
        """Drop the current watch and subscribe again (the first snapshot re-lists every active call)."""
        self.restarts += 1
        log.warning("listener.restart", reason=reason, restarts=self.restarts)
        await asyncio.to_thread(self._unsubscribe)
        await asyncio.to_thread(self._subscribe)

    async def supervise(self, check_every_s: float = 1.0) -> None:
        """Resubscribe whenever the watch has stopped, backing off with jitter while it keeps failing."""
        backoff = 1.0
        while True:
            await asyncio.sleep(check_every_s)
            if self.active:
                backoff = 1.0
                continue
            try:
                await self.restart("watch stopped")
            except Exception as exc:
                log.warning("listener.resubscribe_failed", error=type(exc).__name__)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self._max_backoff_s)

    async def stop(self) -> None:
        """Stop listening; no event is delivered after this returns."""
        self._loop = None
        await asyncio.to_thread(self._unsubscribe)
        if self._client is not None:
            self._client.close()
            self._client = None
