"""A supervised Firestore `on_snapshot` listener (the watch-stream adapter), shared by the watcher's feed
(memharbor/repositories/call_feed.py) and the recorder.

The sync client calls back on its own thread, so the callback only turns the snapshot into a small
batch (`_batch`) and hands it to the asyncio loop with `call_soon_threadsafe`. An exception escaping
that callback ends the client's consumer thread and with it the watch, for good, so the callback
catches everything: a change that cannot be read is logged and skipped, and any other failure marks
the watch broken, which the supervisor treats like a stopped watch. Listeners of the Python client can
also stop without a word, so `supervise` resubscribes with back-off and jitter whenever the watch is no
longer active; a worker can ask for `restart` when it finds changes the stream never delivered, and a
listener whose query moves with time is `refresh`ed (a new watch before the old one is dropped).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from memharbor.logs import get_logger

B = TypeVar("B")
E = TypeVar("E")
log = get_logger()

# How long a refresh keeps the old watch while the new one has not delivered its first snapshot.
_REFRESH_OVERLAP_S = 10.0


class ListenClient(Protocol):
    """The part of the sync `google.cloud.firestore.Client` a watch holds itself: it closes it on stop.

    The client is made on first subscribe (`make_client`) and handed to `make_query`, which knows what it
    is; tests pass stand-ins whose queries they drive.
    """

    def close(self) -> None: ...


class SupervisedWatch(abc.ABC, Generic[B]):
    """Owns one watch on the query `make_query(client)`; delivers one batch per snapshot on the loop.

    Subclasses say what a batch is (`_batch`, on the client's thread).
    """

    def __init__(
        self,
        name: str,
        make_client: Callable[[], ListenClient],
        make_query: Callable[[Any], Any],
        deliver: Callable[[B], None],
        max_backoff_s: float = 30.0,
        refresh_every_s: float | None = None,
    ) -> None:
        self._name = name
        self._make_client = make_client
        self._make_query = make_query
        self._deliver = deliver
        self._client: ListenClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: Any = None
        self._max_backoff_s = max_backoff_s
        self._refresh_every_s = refresh_every_s
        # Each subscribe is one generation; callbacks carry theirs, so a late one from a dropped watch
        # can neither break nor vouch for the current watch.
        self._generation = 0
        self._first_snapshot_of = 0  # the newest generation that has delivered a snapshot
        self._broken_generation = 0
        self._subscribed_mono = 0.0
        self.restarts = 0
        self.snapshots = 0
        self.callback_failures = 0
        self.unreadable_changes = 0
        # Unix time of the latest subscribe that began a new stretch of listening (a refresh overlaps the
        # previous watch, so it keeps this): changes made after it must reach us through the watch.
        self.subscribed_at: float | None = None

    @abc.abstractmethod
    def _batch(self, docs: Sequence[Any], changes: Sequence[Any], read_time: Any) -> B:
        """What one snapshot hands to the loop (on the client's thread; it may raise, the caller catches)."""

    def _each_change(self, changes: Sequence[Any], to_event: Callable[[Any], E]) -> list[E]:
        """`to_event` of every change; one that cannot be read is logged and left out, never raised."""
        events: list[E] = []
        for change in changes:
            try:
                events.append(to_event(change))
            except Exception:
                self.unreadable_changes += 1
                doc_id = getattr(getattr(change, "document", None), "id", None)
                log.exception("listener.unreadable_change", listener=self._name, doc_id=doc_id)
        return events

    def _on_snapshot(self, generation: int, docs: Any, changes: Any, read_time: Any) -> None:
        # Runs on the client's thread and must never raise: an exception here ends the watch for good.
        try:
            batch = self._batch(docs, changes, read_time)
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._received, batch)
            self._first_snapshot_of = max(self._first_snapshot_of, generation)
        except BaseException:
            self.callback_failures += 1
            if generation == self._generation:
                self._broken_generation = generation  # the supervisor resubscribes: the batch is lost
            with contextlib.suppress(BaseException):  # not even the log may take the client's thread down
                log.exception("listener.callback_failed", listener=self._name, generation=generation)

    def _received(self, batch: B) -> None:
        self.snapshots += 1
        self._deliver(batch)

    @property
    def active(self) -> bool:
        """True while the watch's stream is running and its callback has not failed."""
        healthy = self._broken_generation != self._generation
        return self._watch is not None and bool(self._watch.is_active) and healthy

    def _subscribe(self) -> Any:
        """Open a new watch and make it current; returns the one it replaces (still open)."""
        if self._client is None:
            self._client = self._make_client()
        self._generation += 1
        callback = functools.partial(self._on_snapshot, self._generation)
        watch = self._make_query(self._client).on_snapshot(callback)
        previous, self._watch = self._watch, watch
        self._subscribed_mono = time.monotonic()
        return previous

    def _close(self, watch: Any) -> None:
        if watch is not None:
            try:
                watch.unsubscribe()
            except Exception as exc:  # a dead stream may fail to close; it is dropped either way
                log.debug("listener.unsubscribe_failed", listener=self._name, error=type(exc).__name__)

    def _unsubscribe(self) -> None:
        watch, self._watch = self._watch, None
        self._close(watch)

    def _resubscribe(self) -> None:
        self._unsubscribe()
        self.subscribed_at = time.time()
        self._subscribe()

    async def start(self) -> None:
        """Subscribe (the client library does blocking set-up, so off the loop)."""
        self._loop = asyncio.get_running_loop()
        self.subscribed_at = time.time()
        await asyncio.to_thread(self._subscribe)
        log.info("listener.started", listener=self._name)

    async def restart(self, reason: str) -> None:
        """Drop the current watch and subscribe again (the first snapshot re-lists every match)."""
        self.restarts += 1
        log.warning("listener.restart", listener=self._name, reason=reason, restarts=self.restarts)
        await asyncio.to_thread(self._resubscribe)

    async def refresh(self) -> None:
        """Subscribe anew (the query is built again) and drop the old watch once the new one has spoken."""
        previous = await asyncio.to_thread(self._subscribe)
        generation = self._generation
        give_up = time.monotonic() + _REFRESH_OVERLAP_S
        while self._first_snapshot_of < generation and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(self._close, previous)
        log.debug("listener.refreshed", listener=self._name, generation=generation)

    def _refresh_due(self) -> bool:
        every = self._refresh_every_s
        return every is not None and time.monotonic() - self._subscribed_mono >= every

    async def supervise(self, check_every_s: float = 1.0) -> None:
        """Resubscribe whenever the watch has stopped or broken, backing off with jitter while it keeps
        failing; refresh a healthy watch every `refresh_every_s`."""
        backoff = 1.0
        while True:
            await asyncio.sleep(check_every_s)
            try:
                if self.active:
                    backoff = 1.0
                    if self._refresh_due():
                        await self.refresh()
                    continue
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


class SupervisedListener(SupervisedWatch[list[E]], Generic[E]):
    """A supervised watch that delivers the snapshot's changes, each turned into an event by `to_event`."""

    def __init__(
        self,
        name: str,
        make_client: Callable[[], ListenClient],
        make_query: Callable[[Any], Any],
        to_event: Callable[[Any], E],
        deliver: Callable[[list[E]], None],
        max_backoff_s: float = 30.0,
    ) -> None:
        super().__init__(name, make_client, make_query, deliver, max_backoff_s)
        self._to_event = to_event

    def _batch(self, docs: Sequence[Any], changes: Sequence[Any], read_time: Any) -> list[E]:
        return self._each_change(changes, self._to_event)
