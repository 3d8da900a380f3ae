"""The calls as the watcher follows them: the change feed over a window of calls, the catch-up read of a
gap in it, and the sweep's reads of calls and their server documents. Ports and Firestore adapters.

Why a window and not `status in [pending, accepted]`: every app write to a call stamps `updatedAt`
(the rules demand it), so the `window` most recently updated calls always hold the latest app change,
and the listener's result set stays small however many calls ring. The Firestore emulator resends a
listener's whole result set on every write to the collection, so an unbounded active set made each
write cost O(active calls) on both sides (the watcher fell over at 20 calls/s); production Firestore
sends deltas, and there a small set keeps resubscribes cheap. What a window cannot show, and when the
watcher reads the calls that may have passed it, is `watcher.listener.FeedMark`'s.

The feed query is `updatedAt <= now + horizon`: a range filter matches timestamps only, so admin-written
strings (which sort above every timestamp) never enter the window, nor does a timestamp beyond the
horizon (the query is rebuilt every horizon / 2, so the bound moves with time). The sync client calls
back on its own thread, so the callback only copies what it needs (the changes, and the facts about the
window that the catch-up decision needs) and hands them to the asyncio loop.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.document import DocumentSnapshot
from google.cloud.firestore_v1.watch import WATCH_TARGET_ID, Watch

from memharbor.calls import ACTIVE, Status
from memharbor.repositories.guarded import DEFAULT_TIMEOUT_S, FirestoreClient, Guard
from memharbor.repositories.listening import ListenClient, SupervisedWatch
from memharbor.repositories.paths import CALL_SERVER, CALLS

# Small on purpose: the catch-up reads whatever overflows it, and on the emulator (which resends the
# whole window on every write to `calls`) each held call costs both sides decoding on every change:
# 5 instead of 20 cut the watcher's CPU per call by a fifth and a burst's write-to-push p99 by a third.
DEFAULT_WINDOW = 5
# How far past the listener's clock the feed query reaches; the query is rebuilt every half of it. A call
# stamped later than that (only an admin can write one) sits outside the window instead of filling it.
FEED_HORIZON_S = 60.0
CATCH_UP_PAGE = 200
# What the catch-up and the sweep read of a call: what an event carries (the update time comes anyway).
EVENT_FIELDS = ("status", "receiverId", "groupId", "updatedAt")
# The smallest Firestore timestamp: `updatedAt` values ordered before it are not timestamps.
_EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
_ACTIVE = FieldFilter("status", "in", sorted(s.value for s in ACTIVE))


@dataclass(frozen=True)
class CallEvent:
    """One change of one call, as the listener (or the catch-up) saw it."""

    call_id: str
    change: str  # ADDED | MODIFIED | REMOVED (left the window: not a change) | CAUGHT_UP | SWEPT
    status: str | None
    update_time: datetime | None
    receiver_id: str | None = None
    group_id: str | None = None
    updated_at: datetime | None = None  # the app-facing `updatedAt` stamp


@dataclass(frozen=True)
class FeedSnapshot:
    """What one snapshot of the feed says: its changes, and whether calls may have gone past it unseen."""

    events: list[CallEvent]
    full: bool  # the window holds as many calls as its limit: older changes may lie below it
    floor: datetime | None  # the oldest `updatedAt` in the window
    read_time: datetime | None  # the server time the snapshot is consistent at
    commit_lag_s: float = 0.0  # the longest `createdAt`-to-commit delay among the changed calls


@dataclass(frozen=True)
class Gap:
    """Calls updated in [since, until] may have passed the window unseen; those at or above `floor` did not."""

    since: datetime
    until: datetime
    floor: datetime


class Feed(Protocol):
    """The change feed's listener, as the watcher drives it."""

    restarts: int
    subscribed_at: float | None

    @property
    def active(self) -> bool: ...

    async def start(self) -> None: ...

    async def restart(self, reason: str) -> None: ...

    async def supervise(self) -> None: ...

    async def stop(self) -> None: ...


class CatchUp(Protocol):
    """Reads the calls of a gap in the feed, a page of events at a time."""

    def pages(self, gap: Gap) -> AsyncIterator[list[CallEvent]]: ...


@dataclass(frozen=True)
class MalformedStamp:
    """A call whose `updatedAt` is no plausible timestamp, as the sweep found it."""

    kind: str  # future | above_timestamps | below_timestamps (in Firestore's order of types)
    call: CallEvent  # a SWEPT event: what the feed would have carried
    stamp_type: str  # the type name of the stored `updatedAt` value


class CallSweeps(Protocol):
    """The sweep's reads, each a stream of results: calls by status or stamp, server documents by state."""

    def overdue(self, now: datetime) -> AsyncIterator[str]:
        """Ids of the pending calls whose `ringDeadline` is at or before `now`."""
        ...

    def active(self) -> AsyncIterator[CallEvent]:
        """The active calls (pending, accepted) as SWEPT events carrying their status and `updatedAt`."""
        ...

    def open_effects(self) -> AsyncIterator[str]:
        """Ids of the calls whose server document has a claim open (`effectOpen`)."""
        ...

    def tracked_active(self) -> AsyncIterator[str]:
        """Ids of the calls whose server document last saw them in an active status."""
        ...

    def malformed_stamps(self, future: datetime) -> AsyncIterator[MalformedStamp]:
        """The calls whose `updatedAt` lies after `future` or is not a timestamp, whatever their status."""
        ...


def _field(snapshot: Any, name: str) -> Any:
    # The decoded fields as held, read without the deep copy `get` makes: our readers never mutate them,
    # and that copy was most of the comparator's cost.
    data = snapshot._data if snapshot.exists else None
    return data.get(name) if data else None


class ResentDocumentsWatch(Watch):
    """The client library's watch, minus decoding documents the server resends unchanged.

    The emulator resends a listener's whole result set on every write to the collection; the library
    decodes every document before finding its update time unchanged (half the listener's CPU). A
    document already held at the same update time is taken as held. Production sends only changes, so
    there this never applies.
    """

    def on_snapshot(self, proto: Any) -> None:
        """Take one message of the listen stream (on the consumer's thread)."""
        try:
            known = self._held_unchanged(proto)
        except Exception:  # whatever went wrong, the library's own path decides
            known = None
        if known is None:
            super().on_snapshot(proto)
        else:
            self.change_map[known[0]] = known[1]

    def _held_unchanged(self, proto: Any) -> tuple[str, Any] | None:
        if proto is None or self._closing.locked():
            return None
        message = proto._pb
        if message.WhichOneof("response_type") != "document_change":
            return None
        change = message.document_change
        name = change.document.name
        held = self.doc_map.get(name)
        if held is None or WATCH_TARGET_ID not in change.target_ids:
            return None
        return (name, held) if held.update_time.timestamp_pb() == change.document.update_time else None


def by_stamp_then_name(doc1: Any, doc2: Any) -> int:
    """Order two snapshots as the client library orders the feed query's result set.

    The client keeps the listener's result set sorted with `query._comparator`, which builds protobuf
    messages on every comparison (a quarter of the watcher's CPU in a profile); this compares the
    decoded values instead. The library multiplies by the DESCENDING enum (2) rather than -1, so it sorts
    `updatedAt`, then name, ascending whatever the query says; only the changes and the window's two
    ends matter to us (`feed_snapshot` takes the older end), and a unit test holds this function to the
    library's order.
    """
    a, b = _field(doc1, "updatedAt"), _field(doc2, "updatedAt")
    if a != b:
        try:
            return 1 if a > b else -1
        except TypeError:
            # A malformed `updatedAt` (admin-written): any fixed order will do.
            return 1 if type(a).__name__ > type(b).__name__ else -1
    name_a, name_b = doc1.reference._path, doc2.reference._path
    return (name_a > name_b) - (name_a < name_b)


def change_feed_query(client: firestore.Client, window: int = DEFAULT_WINDOW, until: datetime | None = None) -> Any:
    """`calls where updatedAt <= until order by updatedAt desc limit window`, with the fast comparator
    and a watch that skips resent documents.

    `until` defaults to now + FEED_HORIZON_S; the range filter also keeps non-timestamp values out.
    """
    bound = until or datetime.now(UTC) + timedelta(seconds=FEED_HORIZON_S)
    query = (
        client.collection(CALLS)
        .where(filter=FieldFilter("updatedAt", "<=", bound))
        .order_by("updatedAt", direction=firestore.Query.DESCENDING)
        .limit(window)
    )
    query._comparator = by_stamp_then_name  # type: ignore[method-assign]
    query.on_snapshot = functools.partial(  # type: ignore[method-assign]
        ResentDocumentsWatch.for_query, query, document_snapshot_cls=DocumentSnapshot
    )
    return query


def call_event(document: Any, change: str) -> CallEvent:
    """The event for one call document (a listener's change, or a query result)."""
    updated_at = _field(document, "updatedAt")
    return CallEvent(
        call_id=document.id,
        change=change,
        status=_field(document, "status"),
        update_time=document.update_time,
        receiver_id=_field(document, "receiverId"),
        group_id=_field(document, "groupId"),
        updated_at=updated_at if isinstance(updated_at, datetime) else None,
    )


def _change_event(change: Any) -> CallEvent:
    return call_event(change.document, change.type.name)


def feed_snapshot(
    docs: Sequence[Any], changes: Sequence[Any], events: list[CallEvent], window: int, read_time: Any
) -> FeedSnapshot:
    """The facts of one snapshot of a `window`-limited feed (`docs` sorted by `by_stamp_then_name`)."""
    floor_doc = None
    if docs:
        # Either end may be the oldest, should the library ever sort the way the query says.
        first, last = docs[0], docs[-1]
        floor_doc = last if by_stamp_then_name(last, first) < 0 else first
    floor = _field(floor_doc, "updatedAt") if floor_doc is not None else None
    changed = [change for change in changes if change.type.name != "REMOVED"]
    return FeedSnapshot(
        events=events,
        full=len(docs) >= window,
        floor=floor if isinstance(floor, datetime) else None,
        read_time=read_time if isinstance(read_time, datetime) else None,
        commit_lag_s=max((_commit_lag(change.document) for change in changed), default=0.0),
    )


def _commit_lag(document: Any) -> float:
    """Seconds from the call's `createdAt` stamp to the commit that created it (0 when unknown)."""
    created, committed = _field(document, "createdAt"), getattr(document, "create_time", None)
    if not isinstance(created, datetime) or not isinstance(committed, datetime):
        return 0.0
    return max(0.0, (committed - created).total_seconds())


class FirestoreCallFeed(SupervisedWatch[FeedSnapshot]):
    """Feed: the supervised watch on the `window` most recently updated calls, rebuilt every horizon / 2.

    `make_client` makes the sync client (the only one with `on_snapshot`) on first subscribe.
    """

    def __init__(
        self,
        make_client: Callable[[], ListenClient],
        deliver: Callable[[FeedSnapshot], None],
        window: int = DEFAULT_WINDOW,
        max_backoff_s: float = 30.0,
        horizon_s: float = FEED_HORIZON_S,
    ) -> None:
        def make_query(client: firestore.Client) -> Any:
            return change_feed_query(client, window, datetime.fromtimestamp(time.time() + horizon_s, UTC))

        super().__init__("calls", make_client, make_query, deliver, max_backoff_s, refresh_every_s=horizon_s / 2)
        self.window = window

    def _batch(self, docs: Sequence[Any], changes: Sequence[Any], read_time: Any) -> FeedSnapshot:
        events = self._each_change(changes, _change_event)
        return feed_snapshot(docs, changes, events, self.window, read_time)


class FirestoreCatchUp:
    """CatchUp: the calls of a gap, oldest `updatedAt` first, a guarded page at a time, until the window's floor."""

    def __init__(
        self,
        client: Callable[[], FirestoreClient],
        page_size: int = CATCH_UP_PAGE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._guard = Guard(client, timeout_s)
        self._page_size = page_size

    async def pages(self, gap: Gap) -> AsyncIterator[list[CallEvent]]:
        """Pages of events for the calls updated in [gap.since, gap.until]; stops past `gap.floor`."""
        after = None
        while True:
            snaps = await self._guard.run(functools.partial(self._page, gap, after))
            yield [call_event(snap, "CAUGHT_UP") for snap in snaps]
            if len(snaps) < self._page_size:
                return
            after = snaps[-1]
            last = _field(after, "updatedAt")
            if isinstance(last, datetime) and last > gap.floor:
                return  # every call from here up was in the window of the snapshot that opened the gap

    async def _page(self, gap: Gap, after: Any, client: FirestoreClient) -> list[Any]:
        query = (
            client.collection(CALLS)
            .where(filter=FieldFilter("updatedAt", ">=", gap.since))
            .where(filter=FieldFilter("updatedAt", "<=", gap.until))
            .order_by("updatedAt")
            .select(EVENT_FIELDS)
            .limit(self._page_size)
        )
        page = query if after is None else query.start_after(after)
        return [snap async for snap in page.stream()]


class FirestoreCallSweeps:
    """CallSweeps over an asyncio Firestore client; every wait for the next result is guarded."""

    def __init__(self, client: Callable[[], FirestoreClient], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._guard = Guard(client, timeout_s)

    async def _results(self, query: Callable[[FirestoreClient], Any]) -> AsyncIterator[Any]:
        # A sweep streams every match, however many: the time bound holds for each result, not the whole.
        stream: AsyncIterator[Any] | None = None

        async def next_result(client: FirestoreClient) -> Any:
            nonlocal stream
            if stream is None:
                stream = query(client).stream()
            return await anext(stream, None)

        while (snap := await self._guard.run(next_result)) is not None:
            yield snap

    async def overdue(self, now: datetime) -> AsyncIterator[str]:
        def query(client: FirestoreClient) -> Any:
            return (
                client.collection(CALLS)
                .where(filter=FieldFilter("status", "==", Status.PENDING.value))
                .where(filter=FieldFilter("ringDeadline", "<=", now))
                .select(["status"])
            )

        async for snap in self._results(query):
            yield snap.id

    async def active(self) -> AsyncIterator[CallEvent]:
        def query(client: FirestoreClient) -> Any:
            return client.collection(CALLS).where(filter=_ACTIVE).select(["status", "updatedAt"])

        async for snap in self._results(query):
            yield call_event(snap, "SWEPT")

    async def open_effects(self) -> AsyncIterator[str]:
        def query(client: FirestoreClient) -> Any:
            return client.collection(CALL_SERVER).where(filter=FieldFilter("effectOpen", "==", True)).select(["status"])

        async for snap in self._results(query):
            yield snap.id

    async def tracked_active(self) -> AsyncIterator[str]:
        def query(client: FirestoreClient) -> Any:
            return client.collection(CALL_SERVER).where(filter=_ACTIVE).select(["status"])

        async for snap in self._results(query):
            yield snap.id

    async def malformed_stamps(self, future: datetime) -> AsyncIterator[MalformedStamp]:
        for kind in ("future", "above_timestamps", "below_timestamps"):
            async for snap in self._results(functools.partial(_malformed_stamps, kind=kind, future=future)):
                stamp = _field(snap, "updatedAt")
                yield MalformedStamp(kind, call_event(snap, "SWEPT"), type(stamp).__name__)


def _malformed_stamps(client: FirestoreClient, kind: str, future: datetime) -> Any:
    calls = client.collection(CALLS).select(EVENT_FIELDS)
    if kind == "future":
        return calls.where(filter=FieldFilter("updatedAt", ">", future))
    # Firestore orders values by type first: strings, bytes, references, maps, ... above timestamps,
    if kind == "above_timestamps":
        return calls.order_by("updatedAt").start_at({"updatedAt": ""})
    # and null, booleans and numbers below them.
    return calls.order_by("updatedAt").end_before({"updatedAt": _EARLIEST})
