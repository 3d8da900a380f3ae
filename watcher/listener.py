"""The watcher's change feed: a supervised listener over the most recently updated calls, and the
catch-up that finds what changed faster than that window.

The sync client calls back on its own thread, so the callback only copies what it needs (the changes,
and the facts about the window that the catch-up decision needs) and hands them to the asyncio loop.

Why a window and not `status in [pending, accepted]`: every app write to a call stamps `updatedAt`
(the rules demand it), so the `window` most recently updated calls always hold the latest app change,
and the listener's result set stays small however many calls ring. The Firestore emulator resends a
listener's whole result set on every write to the collection, so an unbounded active set made each
write cost O(active calls) on both sides (the watcher fell over at 20 calls/s); production Firestore
sends deltas, and there a small set keeps resubscribes cheap. A document leaving the window is not a
change: REMOVED events are ignored.

What a window cannot show: more app changes between two snapshots than it holds. `FeedMark` notices
when that may have happened (the window is full and even its oldest call is new in this snapshot) and
the watcher then reads the calls updated since the mark, oldest first (`FirestoreCatchUp`). The feed
query is `updatedAt <= now + horizon`: a range filter matches timestamps only, so admin-written strings
(which sort above every timestamp) never enter the window, nor does a timestamp beyond the horizon (the
query is rebuilt every horizon / 2, so the bound moves with time).
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.document import DocumentSnapshot
from google.cloud.firestore_v1.watch import WATCH_TARGET_ID, Watch

from memharbor.listening import SupervisedWatch
from memharbor.repositories.paths import CALLS

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
# The emulator stamps `updatedAt` when it receives a write and commits it up to a few hundred ms later
# (production stamps the commit time), so a call may appear with a stamp older than a snapshot already
# seen. The mark trails each snapshot's read time by twice the longest such delay seen lately (each
# call's `createdAt` against its document's create time), and never by less than this:
MIN_COMMIT_LAG_S = 0.05
COMMIT_LAG_MEMORY_S = 60.0


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


class CallListener(SupervisedWatch[FeedSnapshot]):
    """The supervised watch on the `window` most recently updated calls, rebuilt every horizon / 2."""

    def __init__(
        self,
        make_client: Callable[[], firestore.Client],
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


@dataclass(frozen=True)
class Gap:
    """Calls updated in [since, until] may have passed the window unseen; those at or above `floor` did not."""

    since: datetime
    until: datetime
    floor: datetime


class FeedMark:
    """The feed's high-water mark: every call whose `updatedAt` is older than `mark` reached the watcher.

    A full window shows only the calls stamped at or above its floor (its oldest `updatedAt`). So a
    snapshot vouches for everything up to its read time, less the commit lag, when its window is not
    full, or when its floor is at or below the mark (what lies below the floor is below the mark, and
    was seen). A full window whose floor is above the mark cannot tell what happened in [mark, floor):
    calls stamped there may have been pushed through the window between two snapshots, or committed
    late with a stamp older than calls committed before them (seen in parallel bursts: such a call
    never appears in any window). That opens a gap from the mark to the snapshot's read time, which a
    catch-up closes. The first snapshot only sets the mark: the start-up sweep covers what came before.
    """

    def __init__(self, min_lag_s: float = MIN_COMMIT_LAG_S, lag_memory_s: float = COMMIT_LAG_MEMORY_S) -> None:
        self._min_lag_s = min_lag_s
        self._lag_memory = timedelta(seconds=lag_memory_s)
        self._lags: deque[tuple[datetime, float]] = deque()  # (read time, longest lag seen in that snapshot)
        self.mark: datetime | None = None
        self._pending: tuple[datetime, datetime] | None = None  # (until, floor) of the newest gap

    @property
    def lag(self) -> timedelta:
        """How far the mark trails a read time: twice the longest recent commit lag, at least the minimum."""
        longest = max((lag for _, lag in self._lags), default=0.0)
        return timedelta(seconds=max(self._min_lag_s, 2 * longest))

    def _remember_lag(self, read_time: datetime, lag_s: float) -> None:
        while self._lags and self._lags[0][0] < read_time - self._lag_memory:
            self._lags.popleft()
        while self._lags and self._lags[-1][1] <= lag_s:
            self._lags.pop()  # a smaller lag seen earlier never matters again
        self._lags.append((read_time, lag_s))

    def observe(self, snapshot: FeedSnapshot) -> bool:
        """Take one snapshot's facts; True when a catch-up is needed."""
        if snapshot.read_time is None:
            return False
        self._remember_lag(snapshot.read_time, snapshot.commit_lag_s)
        settled = snapshot.read_time - self.lag
        if not snapshot.full or self.mark is None:
            self.mark = settled if self.mark is None else max(self.mark, settled)
            if not snapshot.full:
                self._pending = None
            return False
        if snapshot.floor is not None and snapshot.floor > self.mark:
            if self._pending is None or snapshot.read_time > self._pending[0]:
                self._pending = (snapshot.read_time, snapshot.floor)
            return True
        if self._pending is None:
            # A gap still open keeps the mark where it is: this snapshot vouches only for the newest changes.
            self.mark = max(self.mark, settled)
        return False

    def gap(self) -> Gap | None:
        """The gap to read now, if any."""
        if self._pending is None or self.mark is None:
            return None
        return Gap(self.mark, *self._pending)

    def closed(self, gap: Gap) -> None:
        """Record that every call of `gap` has been read."""
        settled = gap.until - self.lag
        self.mark = settled if self.mark is None else max(self.mark, settled)
        if self._pending is not None and self._pending[0] <= gap.until:
            self._pending = None


class FirestoreCatchUp:
    """Reads the calls of a gap, oldest `updatedAt` first, a page at a time, until the window's floor."""

    def __init__(self, db: firestore.AsyncClient, page_size: int = CATCH_UP_PAGE) -> None:
        self._db = db
        self._page_size = page_size

    async def pages(self, gap: Gap) -> AsyncIterator[list[CallEvent]]:
        """Pages of events for the calls updated in [gap.since, gap.until]; stops past `gap.floor`."""
        query = (
            self._db.collection(CALLS)
            .where(filter=FieldFilter("updatedAt", ">=", gap.since))
            .where(filter=FieldFilter("updatedAt", "<=", gap.until))
            .order_by("updatedAt")
            .select(EVENT_FIELDS)
            .limit(self._page_size)
        )
        after = None
        while True:
            page = query if after is None else query.start_after(after)
            snaps = [snap async for snap in page.stream()]
            yield [call_event(snap, "CAUGHT_UP") for snap in snaps]
            if len(snaps) < self._page_size:
                return
            after = snaps[-1]
            last = _field(after, "updatedAt")
            if isinstance(last, datetime) and last > gap.floor:
                return  # every call from here up was in the window of the snapshot that opened the gap
