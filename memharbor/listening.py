"""A supervised Firestore `on_snapshot` listener, shared by the watcher and the recorder.

The sync client calls back on its own thread, so the callback only turns each change into a small
event (the `to_event` function given) and hands the batch to the asyncio loop with
`call_soon_threadsafe`. Listeners of the Python client can stop without a word, so `supervise`
resubscribes with back-off and jitter whenever the watch is no longer active; a worker can also ask
for `restart` when it finds changes the stream never delivered.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from google.cloud import firestore

from memharbor.logs import get_logger

E = TypeVar("E")
log = get_logger()


class SupervisedListener(Generic[E]):
    """Owns one watch on the query `make_query(client)`; delivers lists of events on the loop."""

    def __init__(
        self,
        name: str,
        make_client: Callable[[], firestore.Client],
        make_query: Callable[[firestore.Client], Any],
        to_event: Callable[[Any], E],
        deliver: Callable[[list[E]], None],
        max_backoff_s: float = 30.0,
    ) -> None:
        self._name = name
        self._make_client = make_client
        self._make_query = make_query
        self._to_event = to_event
        self._deliver = deliver
        self._client: firestore.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: Any = None
        self._max_backoff_s = max_backoff_s
        self.restarts = 0
        self.snapshots = 0
        # Unix time of the latest subscribe: changes made after it must reach us through this watch.
        self.subscribed_at: float | None = None

    def _on_snapshot(self, docs: Any, changes: Any, read_time: Any) -> None:
        # Runs on the client's thread: copy the bare facts out and hand them to the loop, nothing else.
        events = [self._to_event(change) for change in changes]
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._received, events)

    def _received(self, events: list[E]) -> None:
        self.snapshots += 1
        self._deliver(events)

    @property
    def active(self) -> bool:
        """True while the watch's stream is running."""
        return self._watch is not None and bool(self._watch.is_active)

    def _subscribe(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        self.subscribed_at = time.time()
        self._watch = self._make_query(self._client).on_snapshot(self._on_snapshot)

    def _unsubscribe(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                watch.unsubscribe()
            except Exception as exc:  # a dead stream may fail to close; it is dropped either way
                log.debug("listener.unsubscribe_failed", listener=self._name, error=type(exc).__name__)

    async def start(self) -> None:
        """Subscribe (the client library does blocking set-up, so off the loop)."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._subscribe)
        log.info("listener.started", listener=self._name)

    async def restart(self, reason: str) -> None:
        """Drop the current watch and subscribe again (the first snapshot re-lists every match)."""
        self.restarts += 1
        log.warning("listener.restart", listener=self._name, reason=reason, restarts=self.restarts)
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
                log.warning("listener.resubscribe_failed", listener=self._name, error=type(exc).__name__)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self._max_backoff_s)

    async def stop(self) -> None:
        """Stop listening; no event is delivered after this returns."""
        self._loop = None
        await asyncio.to_thread(self._unsubscribe)
        if self._client is not None:
            self._client.close()
            self._client = None
