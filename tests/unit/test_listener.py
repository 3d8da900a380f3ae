"""The watcher's listener and the supervised watch under it, without a server (a fake watch stands in)."""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.document import DocumentSnapshot
from google.cloud.firestore_v1.watch import ChangeType, DocumentChange

from memharbor.repositories.call_feed import (
    FeedSnapshot,
    FirestoreCallFeed,
    Gap,
    by_stamp_then_name,
    change_feed_query,
    feed_snapshot,
)
from memharbor.repositories.listening import SupervisedListener
from watcher.listener import FeedMark

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> firestore.Client:
    """A client that never connects (no request is made in these tests)."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
    return firestore.Client(project="unit")


def _snapshot(client: firestore.Client, call_id: str, updated_at: object = None) -> DocumentSnapshot:
    ref = client.collection("calls").document(call_id)
    stamp = updated_at if updated_at is not None else datetime(2026, 1, 1, tzinfo=UTC)
    return DocumentSnapshot(ref, {"status": "pending", "updatedAt": stamp}, True, None, None, None)


class TestByStampThenName:
    """The fast comparator agrees with the client library's own for the feed query."""

    def test_same_order_as_the_library(self, client: firestore.Client) -> None:
        """Sorting by our comparator and by the library's query comparator gives the same order."""
        rng = random.Random(7)
        alphabet = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
        base = datetime(2026, 11, 28, tzinfo=UTC)
        docs = [
            # Few distinct stamps, so many ties fall through to the document name.
            _snapshot(
                client,
                "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))),
                base + timedelta(milliseconds=rng.randint(0, 20)),
            )
            for _ in range(300)
        ]
        library = client.collection("calls").order_by("updatedAt", direction=firestore.Query.DESCENDING)
        expected = sorted(docs, key=functools.cmp_to_key(library._comparator))
        ours = sorted(docs, key=functools.cmp_to_key(by_stamp_then_name))
        assert [d.id for d in ours] == [d.id for d in expected]

    def test_equal_documents_compare_equal(self, client: firestore.Client) -> None:
        """A document compares equal to itself; with equal stamps the names decide."""
        a, b = _snapshot(client, "a"), _snapshot(client, "b")
        assert by_stamp_then_name(a, a) == 0
        assert by_stamp_then_name(a, b) == -1 and by_stamp_then_name(b, a) == 1

    def test_stamp_decides_before_name(self, client: firestore.Client) -> None:
        """Different `updatedAt` stamps order the calls whatever their names."""
        old = _snapshot(client, "z", datetime(2026, 1, 1, tzinfo=UTC))
        new = _snapshot(client, "a", datetime(2026, 1, 2, tzinfo=UTC))
        assert by_stamp_then_name(old, new) == -1 and by_stamp_then_name(new, old) == 1

    def test_malformed_stamp_does_not_raise(self, client: firestore.Client) -> None:
        """An admin-written `updatedAt` of another type still gets a fixed order instead of a TypeError."""
        good, odd = _snapshot(client, "a"), _snapshot(client, "b", "yesterday")
        assert by_stamp_then_name(good, odd) == -by_stamp_then_name(odd, good) != 0

    def test_query_uses_it(self, client: firestore.Client) -> None:
        """The feed query carries the fast comparator, orders by updatedAt descending and is limited."""
        query = change_feed_query(client, window=7)
        assert query._comparator is by_stamp_then_name
        proto = str(query._to_protobuf())
        assert "updatedAt" in proto and "DESCENDING" in proto and "7" in proto

    def test_query_is_bounded_to_timestamps_up_to_the_horizon(self, client: firestore.Client) -> None:
        """A range filter `updatedAt <= until` keeps strings and far-future stamps out of the window."""
        proto = str(change_feed_query(client, window=7, until=T0)._to_protobuf())
        assert "LESS_THAN_OR_EQUAL" in proto and str(int(T0.timestamp())) in proto


def _change(kind: ChangeType, doc: DocumentSnapshot) -> DocumentChange:
    return DocumentChange(kind, doc, -1, 0)


class TestFeedSnapshot:
    """The facts a snapshot gives the catch-up decision."""

    def _window(self, client: firestore.Client, count: int) -> list[DocumentSnapshot]:
        docs = [_snapshot(client, f"c{i}", T0 + timedelta(seconds=i)) for i in range(count)]
        return sorted(docs, key=functools.cmp_to_key(by_stamp_then_name))

    def test_full_window_and_its_floor(self, client: firestore.Client) -> None:
        """A window holding as many calls as its limit is full, and its floor is the oldest stamp."""
        docs = self._window(client, 3)
        facts = feed_snapshot(docs, [_change(ChangeType.ADDED, docs[0])], [], 3, T0 + timedelta(seconds=9))
        assert facts == FeedSnapshot([], True, T0, T0 + timedelta(seconds=9))

    def test_commit_lag_of_the_changed_calls(self, client: firestore.Client) -> None:
        """The longest delay from a changed call's `createdAt` to its create time is reported."""
        ref = client.collection("calls").document
        slow = DocumentSnapshot(ref("slow"), {"updatedAt": T0, "createdAt": T0}, True, None, at(0.3), at(0.3))
        quick = DocumentSnapshot(ref("quick"), {"updatedAt": T0, "createdAt": T0}, True, None, at(0.01), at(0.01))
        unknown = _snapshot(client, "unknown")
        changes = [_change(ChangeType.ADDED, doc) for doc in (quick, slow, unknown)]
        assert feed_snapshot([quick, slow, unknown], changes, [], 5, T0).commit_lag_s == pytest.approx(0.3)

    def test_oldest_call_unchanged(self, client: firestore.Client) -> None:
        """Changes above the floor, or the removal of a call, leave the floor as it was."""
        docs = self._window(client, 3)
        gone = _snapshot(client, "gone", T0 - timedelta(seconds=1))
        changes = [_change(ChangeType.MODIFIED, docs[2]), _change(ChangeType.REMOVED, gone)]
        facts = feed_snapshot(docs, changes, [], 3, T0)
        assert facts.full and facts.floor == T0

    def test_window_not_full_or_empty(self, client: firestore.Client) -> None:
        """Fewer calls than the limit is not full; an empty window has no floor."""
        assert not feed_snapshot(self._window(client, 2), [], [], 3, T0).full
        empty = feed_snapshot([], [], [], 3, T0)
        assert (empty.full, empty.floor) == (False, None)

    def test_reversed_order_gives_the_same_floor(self, client: firestore.Client) -> None:
        """Should the library ever sort the way the query says (newest first), the floor is the same."""
        docs = self._window(client, 3)
        assert feed_snapshot(list(reversed(docs)), [], [], 3, T0).floor == T0


def facts(read_s: float | None, full: bool = True, floor_s: float = 0) -> FeedSnapshot:
    """A feed snapshot read at T0 + read_s whose window's oldest stamp is T0 + floor_s."""
    read_time = None if read_s is None else T0 + timedelta(seconds=read_s)
    return FeedSnapshot([], full, T0 + timedelta(seconds=floor_s), read_time)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class TestFeedMark:
    """When the high-water mark moves, and when a gap opens and closes."""

    def test_first_snapshot_only_sets_the_mark(self) -> None:
        """The start-up sweep covers what came before the first snapshot: no catch-up, the mark is set."""
        mark = FeedMark(min_lag_s=1.0)
        assert not mark.observe(facts(10, floor_s=9.5))
        assert mark.mark == at(9) and mark.gap() is None

    def test_floor_at_or_below_the_mark_moves_it(self) -> None:
        """A full window reaching down to the mark vouches for every change up to its read time."""
        mark = FeedMark(min_lag_s=0.5)
        mark.observe(facts(1))
        assert not mark.observe(facts(5, floor_s=0.5))
        assert mark.mark == at(4.5)

    def test_floor_above_the_mark_opens_a_gap_and_holds_the_mark(self) -> None:
        """A full window that no longer reaches the mark opens a gap from it; later snapshots wait for it."""
        mark = FeedMark(min_lag_s=0.0)
        mark.observe(facts(1))
        assert mark.observe(facts(2, floor_s=1.5))
        assert mark.gap() == Gap(at(1), at(2), at(1.5))
        assert not mark.observe(facts(3))
        assert mark.mark == at(1)
        mark.closed(Gap(at(1), at(2), at(1.5)))
        assert mark.mark == at(2) and mark.gap() is None

    def test_a_late_commit_below_an_unchanged_floor_is_caught_up(self) -> None:
        """Calls stamped under a floor that was already in the window may have committed since: a gap opens.

        Seen with parallel writers: a call stamped before five others but committed after them never
        enters a window of five, and the window's oldest call does not change.
        """
        mark = FeedMark(min_lag_s=0.0)
        mark.observe(facts(1, floor_s=0.5))
        assert mark.observe(facts(1.2, floor_s=1.1))  # the floor moved above the mark
        mark.closed(Gap(at(1), at(1.2), at(1.1)))
        assert mark.observe(facts(1.4, floor_s=1.3))  # whether or not its floor call is new
        assert mark.gap() == Gap(at(1.2), at(1.4), at(1.3))

    def test_newer_gap_supersedes_and_outlives_an_older_read(self) -> None:
        """Gaps opened while one is read merge into the newest; closing the older leaves the newer open."""
        mark = FeedMark(min_lag_s=0.0)
        mark.observe(facts(1))
        mark.observe(facts(2, floor_s=1.5))
        first = mark.gap()
        assert first is not None
        mark.observe(facts(4, floor_s=3))
        mark.observe(facts(3, floor_s=2.5))  # a late snapshot of a watch being replaced
        mark.closed(first)
        assert mark.gap() == Gap(at(2), at(4), at(3))

    def test_a_server_write_to_the_oldest_call_is_no_overflow(self) -> None:
        """A floor below the mark (our own ring set-up on an old call, say) opens no gap; one above it does."""
        mark = FeedMark(min_lag_s=0.0)
        mark.observe(facts(5))
        assert not mark.observe(facts(6, floor_s=1))
        assert mark.mark == at(6)
        assert mark.observe(facts(7, floor_s=6.5))

    def test_a_window_that_is_not_full_shows_everything(self) -> None:
        """With room left in the window every call is in it: the mark moves and any gap is closed."""
        mark = FeedMark(min_lag_s=0.0)
        mark.observe(facts(1))
        mark.observe(facts(2, floor_s=1.5))
        assert not mark.observe(facts(3, full=False, floor_s=2.5))
        assert mark.mark == at(3) and mark.gap() is None

    def test_the_mark_trails_by_twice_the_longest_recent_commit_lag(self) -> None:
        """A slow commit seen lately widens the margin below each read time; it is forgotten after a while."""
        mark = FeedMark(min_lag_s=0.1, lag_memory_s=60.0)
        mark.observe(facts(1))
        assert mark.mark == at(0.9)
        mark.observe(FeedSnapshot([], True, T0, at(10), commit_lag_s=0.4))
        mark.observe(facts(20))
        assert mark.mark == at(19.2)
        mark.observe(facts(100))
        assert mark.mark == at(99.9)

    def test_snapshot_without_read_time_is_ignored(self) -> None:
        """No read time, no claim about what was seen."""
        mark = FeedMark()
        assert not mark.observe(facts(None, floor_s=5))
        assert mark.mark is None and mark.gap() is None


class FakeWatch:
    """What `query.on_snapshot` returns: the callback it will call, and whether it is open."""

    def __init__(self, callback: Callable[..., None]) -> None:
        self.callback = callback
        self.is_active = True

    def unsubscribe(self) -> None:
        self.is_active = False

    def send(self, *args: Any) -> None:
        """Call back from another thread, as the client library's consumer does; fail if it raises."""
        failures: list[BaseException] = []

        def run() -> None:
            try:
                self.callback(*args)
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        assert failures == [], failures


class FakeQuery:
    """A query (and the client that builds it) whose watches are fakes the test drives."""

    def __init__(self) -> None:
        self.watches: list[FakeWatch] = []

    def collection(self, *args: Any, **kwargs: Any) -> FakeQuery:
        return self

    where = order_by = limit = collection

    def close(self) -> None:
        pass

    def open(self, callback: Callable[..., None]) -> FakeWatch:
        self.watches.append(FakeWatch(callback))
        return self.watches[-1]

    @property
    def on_snapshot(self) -> Callable[[Callable[..., None]], FakeWatch]:
        return self.open

    @on_snapshot.setter
    def on_snapshot(self, replacement: object) -> None:
        pass  # the feed query brings its own watch class, for real queries; the fake keeps its own


class FakeClient:
    def close(self) -> None:
        pass


async def until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def poisoned_event(change: Any) -> str:
    if change.document.id == "poison":
        raise ValueError("cannot read this document")
    return str(change.document.id)


class TestCallbackSafety:
    """The snapshot callback never raises into the client's thread, and the supervisor recovers."""

    async def test_unreadable_change_is_skipped_and_events_keep_flowing(self, client: firestore.Client) -> None:
        """A change whose event cannot be built is logged and left out; the rest and later ones arrive."""
        query, delivered = FakeQuery(), list[list[str]]()
        listener = SupervisedListener("t", FakeClient, lambda c: query, poisoned_event, delivered.append)
        await listener.start()
        watch = query.watches[0]
        poison, good = _snapshot(client, "poison"), _snapshot(client, "good")
        watch.send([poison, good], [_change(ChangeType.ADDED, poison), _change(ChangeType.ADDED, good)], T0)
        later = _snapshot(client, "later")
        watch.send([later], [_change(ChangeType.ADDED, later)], T0)
        await until(lambda: len(delivered) == 2)
        assert delivered == [["good"], ["later"]]
        assert listener.unreadable_changes == 1 and listener.active
        await listener.stop()

    async def test_failed_callback_breaks_the_watch_and_the_supervisor_resubscribes(
        self, client: firestore.Client
    ) -> None:
        """Any other failure is caught, the watch counts as stopped, and a new one delivers afterwards."""
        query, delivered = FakeQuery(), list[FeedSnapshot]()
        listener = FirestoreCallFeed(lambda: query, delivered.append, window=2)
        await listener.start()

        class Unsortable(list[Any]):
            def __len__(self) -> int:
                raise RuntimeError("broken result set")

        query.watches[0].send(Unsortable(), [], T0)
        assert listener.callback_failures == 1 and not listener.active
        supervisor = asyncio.create_task(listener.supervise(check_every_s=0.01))
        try:
            await until(lambda: len(query.watches) == 2)
            assert not query.watches[0].is_active and listener.active and listener.restarts == 1
            doc = _snapshot(client, "after")
            query.watches[1].send([doc], [_change(ChangeType.ADDED, doc)], T0)
            await until(lambda: len(delivered) == 1)
            assert [e.call_id for e in delivered[0].events] == ["after"]
        finally:
            supervisor.cancel()
            await listener.stop()

    async def test_refresh_keeps_the_old_watch_until_the_new_one_speaks(self, client: firestore.Client) -> None:
        """A refresh overlaps the watches, and a late failure of the old one does not break the new."""
        query, delivered = FakeQuery(), list[list[str]]()
        listener = SupervisedListener("t", FakeClient, lambda c: query, poisoned_event, delivered.append)
        await listener.start()
        refresh = asyncio.create_task(listener.refresh())
        await until(lambda: len(query.watches) == 2)
        old, new = query.watches
        await asyncio.sleep(0.05)
        assert old.is_active and not refresh.done()
        new.send([], [], T0)
        await refresh
        assert not old.is_active and new.is_active
        old.send(None, None, T0)  # iterating None fails inside the callback
        assert listener.callback_failures == 1 and listener.active
        await listener.stop()
