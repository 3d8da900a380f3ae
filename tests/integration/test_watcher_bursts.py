"""Bursts, malformed `updatedAt` stamps and listener failures against the Firestore emulator.

The watchers here run with a feed window of 5 and a sweep that only runs at start (once an hour), so a
call can only ring in time through the change feed and its catch-up.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor.emulators import EmulatorSet
from memharbor.repositories.call_feed import change_feed_query
from memharbor.repositories.calls import new_call_document
from memharbor.repositories.listening import SupervisedListener
from tests.support.firestore_rest import FirestoreRest, Result
from tests.support.groups import seed_group
from tests.support.waiting import wait_for
from tests.support.watchers import WatcherProcess

FEED_ONLY = {
    "MEMHARBOR_LOG_LEVEL": "debug",  # catch-ups are logged at debug: a failure names them
    "MEMHARBOR_LISTEN_WINDOW": "5",
    "MEMHARBOR_SWEEP_INTERVAL_S": "3600",
    "MEMHARBOR_RING_TIMEOUT_S": "60",
}
RECEIVERS = ("bob", "carol", "dan", "dave", "erin")


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[firestore.Client]:
    """An admin client on the wiped emulator, with the tests' care group and a device for every receiver."""
    client = firestore.Client(project=clean_emulators.project_id)
    seed_group(client)
    for uid in RECEIVERS:
        client.collection("users").document(uid).set({"platform": "android", "fcmToken": f"fcm-{uid}"})
    yield client
    client.close()


@pytest.fixture
def watcher(clean_emulators: EmulatorSet, db: firestore.Client, tmp_path: Path) -> Iterator[WatcherProcess]:
    """One watcher that only the feed (and the sweep at its start) can tell about calls."""
    process = WatcherProcess(clean_emulators, tmp_path / "pushes.jsonl", tmp_path, **FEED_ONLY)
    yield process
    process.stop()


def call_doc(index: int) -> tuple[str, dict[str, Any]]:
    """A new call from alice to one of the receivers, as an app writes it (server timestamps)."""
    call_id = uuid.uuid4().hex
    return call_id, new_call_document(call_id, "group1", "alice", RECEIVERS[index % len(RECEIVERS)])


def all_rang(watcher: WatcherProcess, call_ids: list[str]) -> bool:
    pushed = {p["payload"]["callId"] for p in watcher.pushes("incoming_call")}
    return pushed >= set(call_ids)


def wait_all_rang(db: firestore.Client, watcher: WatcherProcess, call_ids: list[str]) -> None:
    """Wait until every call rang; else fail naming each silent call, its stamps and the feed's catch-ups."""
    try:
        wait_for(lambda: all_rang(watcher, call_ids), timeout=30, what="every call of the burst rang")
    except AssertionError:
        pushed = {p["payload"]["callId"] for p in watcher.pushes("incoming_call")}
        silent = []
        for call_id in (c for c in call_ids if c not in pushed):
            snap = db.collection("calls").document(call_id).get()
            doc = snap.to_dict() or {}
            silent.append((call_id, doc.get("updatedAt"), snap.update_time, doc.get("channelName")))
        catch_ups = log_events(watcher, "feed.caught_up") + log_events(watcher, "feed.catch_up_failed")
        raise AssertionError(f"{len(silent)} calls never rang: {silent}; catch-ups: {catch_ups}") from None


def log_events(watcher: WatcherProcess, name: str) -> list[dict[str, Any]]:
    """The watcher's JSON log lines of one event."""
    if not watcher.log_file.exists():
        return []
    lines = [json.loads(line) for line in watcher.log_file.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


def start_feed_only(db: firestore.Client, watcher: WatcherProcess) -> None:
    """Start the watcher and let its start-up sweep finish, so only the feed can find later calls."""
    watcher.start(db)
    wait_for(lambda: log_events(watcher, "watcher.started"), what="watcher.started")
    time.sleep(1.0)


def caught_up(db: firestore.Client, watcher: WatcherProcess) -> int:
    """How many calls the watcher's catch-up has read, from its heartbeat."""
    beat = db.collection("workers").document(watcher.instance_id).get().to_dict() or {}
    return int((beat.get("status") or {}).get("caughtUpCalls", 0))


def pushed_call(db: firestore.Client, call_id: str) -> dict[str, Any]:
    """The call once its push result is written (the sink shows a push as it is sent, the result follows)."""

    def probe() -> dict[str, Any] | None:
        doc = db.collection("calls").document(call_id).get().to_dict() or {}
        return doc if doc.get("pushSent") is not None else None

    return wait_for(probe, what=f"the push result of {call_id}")


def assert_rang_once_in_time(db: firestore.Client, watcher: WatcherProcess, call_ids: list[str]) -> None:
    for call_id in call_ids:
        doc = pushed_call(db, call_id)
        assert doc.get("channelName") and doc.get("pushSent") is True, (call_id, doc.get("pushError"))
        assert len(watcher.pushes("incoming_call", call_id)) == 1, call_id


class TestBursts:
    """More calls at once than the feed's window holds all ring through the catch-up, not the sweep."""

    def test_one_commit(self, db: firestore.Client, watcher: WatcherProcess) -> None:
        """Forty calls created in one commit (eight windows' worth) all ring within seconds."""
        start_feed_only(db, watcher)
        batch, call_ids = db.batch(), []
        for index in range(40):
            call_id, doc = call_doc(index)
            batch.create(db.collection("calls").document(call_id), doc)
            call_ids.append(call_id)
        batch.commit()
        wait_all_rang(db, watcher, call_ids)
        assert_rang_once_in_time(db, watcher, call_ids)
        assert wait_for(lambda: caught_up(db, watcher) >= 35, what="catch-up counted in the heartbeat")

    def test_parallel_writers(self, db: firestore.Client, watcher: WatcherProcess) -> None:
        """Forty calls written by eight threads at once all ring, each once."""
        start_feed_only(db, watcher)
        docs = [call_doc(index) for index in range(40)]

        def create(item: tuple[str, dict[str, Any]]) -> str:
            db.collection("calls").document(item[0]).create(item[1])
            return item[0]

        with ThreadPoolExecutor(max_workers=8) as pool:
            call_ids = list(pool.map(create, docs))
        wait_all_rang(db, watcher, call_ids)
        assert_rang_once_in_time(db, watcher, call_ids)


class TestMalformedStamps:
    """Admin-written `updatedAt` values that are not plausible timestamps neither blind the feed nor go unreported."""

    def _write(self, db: firestore.Client, stamps: list[Any]) -> list[str]:
        call_ids = []
        for index, stamp in enumerate(stamps):
            call_id, doc = call_doc(index)
            doc["createdAt"] = datetime.now(UTC)
            doc["updatedAt"] = stamp
            db.collection("calls").document(call_id).set(doc)
            call_ids.append(call_id)
        return call_ids

    def test_strings_and_future_stamps(self, db: firestore.Client, watcher: WatcherProcess) -> None:
        """More odd stamps than the window holds: a new call still rings at once, and each odd one is reported."""
        future = datetime.now(UTC) + timedelta(days=365)
        odd = self._write(db, ["2099-01-01"] * 6 + [future] * 6 + [42])
        watcher.start(db)
        wait_for(lambda: len(log_events(watcher, "call.updated_at_malformed")) >= len(odd), what="reports")
        reported = {e["call_id"]: e["kind"] for e in log_events(watcher, "call.updated_at_malformed")}
        assert reported == {
            **dict.fromkeys(odd[:6], "above_timestamps"),
            **dict.fromkeys(odd[6:12], "future"),
            odd[12]: "below_timestamps",
        }
        assert all(e["level"] == "warning" for e in log_events(watcher, "call.updated_at_malformed"))
        started = time.monotonic()
        call_id, doc = call_doc(0)
        db.collection("calls").document(call_id).create(doc)
        wait_for(lambda: watcher.pushes("incoming_call", call_id), timeout=10, what="the new call rang")
        assert time.monotonic() - started < 10


def poisoned(change: Any) -> str:
    if change.document.get("poison"):
        raise ValueError("this document cannot be read")
    return str(change.document.id)


class TestListenerCallback:
    """The supervised listener over a real watch: a failing callback neither raises nor stops the events."""

    async def test_poisoned_document_does_not_stop_the_events(self, db: firestore.Client) -> None:
        """A document whose event cannot be built is skipped; events for later writes keep arriving."""
        received: list[str] = []
        listener = SupervisedListener(
            "poison-test",
            lambda: firestore.Client(project=db.project),
            lambda client: client.collection("probes"),
            poisoned,
            received.extend,
        )
        await listener.start()
        try:
            db.collection("probes").document("bad").set({"poison": True})
            db.collection("probes").document("first").set({"poison": False})
            await asyncio.to_thread(wait_for, lambda: "first" in received, 10.0, 0.05, "first event")
            db.collection("probes").document("bad").set({"poison": True, "again": 1})
            db.collection("probes").document("second").set({"poison": False})
            await asyncio.to_thread(wait_for, lambda: "second" in received, 10.0, 0.05, "second event")
            assert "bad" not in received and listener.unreadable_changes >= 2
            assert listener.active and listener.restarts == 0
        finally:
            await listener.stop()


def replay(changes: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """The window a listener's changes build: call id to the version last added or modified."""
    window: dict[str, Any] = {}
    for kind, call_id, update_time in changes:
        if kind == "REMOVED":
            window.pop(call_id, None)
        else:
            window[call_id] = update_time
    return window


class TestResentDocumentsWatch:
    """The feed's watch skips the emulator's resends but reports what the library's own watch reports."""

    def test_same_changes_as_the_library(self, db: firestore.Client) -> None:
        """Creates, server-side edits and calls pushed out of the window give the same changes to both."""
        calls = db.collection("calls")
        plain_query = (
            calls.where(filter=FieldFilter("updatedAt", "<=", datetime.now(UTC) + timedelta(minutes=5)))
            .order_by("updatedAt", direction=firestore.Query.DESCENDING)
            .limit(4)
        )
        seen: dict[str, list[tuple[str, str, Any]]] = {"feed": [], "library": []}
        lock = threading.Lock()

        def recorder(name: str) -> Any:
            def callback(docs: Any, changes: Any, read_time: Any) -> None:
                with lock:
                    seen[name].extend((c.type.name, c.document.id, c.document.update_time) for c in changes)

            return callback

        feed = change_feed_query(db, window=4).on_snapshot(recorder("feed"))
        library = plain_query.on_snapshot(recorder("library"))
        try:
            for index in range(8):
                doc = call_doc(index)[1]
                calls.document(f"c{index}").set({**doc, "callId": f"c{index}"})
                calls.document(f"c{max(0, index - 1)}").update({"pushSent": index})  # a write without a new stamp

            # Two listeners may coalesce the same writes into different snapshots (a create and the next
            # update seen as one ADDED by one of them), so what must agree is the window their changes
            # build: the calls the query holds now, at their current versions.
            expected = {doc.id: doc.update_time for doc in plain_query.get()}

            def caught_up() -> bool:
                with lock:
                    return replay(seen["feed"]) == expected == replay(seen["library"])

            try:
                wait_for(caught_up, timeout=20, what="both listeners at the window")
            except AssertionError:
                with lock:
                    built = {name: replay(changes) for name, changes in seen.items()}
                raise AssertionError(f"expected {expected}, built {built}, changes {seen}") from None
            with lock:
                assert {"ADDED", "REMOVED"} <= {kind for kind, _, _ in seen["feed"]}
        finally:
            feed.unsubscribe()
            library.unsubscribe()


class TestLateCommits:
    """A change committed long after the emulator stamped it, below the feed's mark and out of its window."""

    def test_a_late_review_is_counted_by_the_settled_reread(
        self, clean_emulators: EmulatorSet, db: firestore.Client, tmp_path: Path
    ) -> None:
        """A review held behind a transaction while newer calls fill the window is counted once it commits."""
        env = {**FEED_ONLY, "MEMHARBOR_SWEEP_INTERVAL_S": "1", "MEMHARBOR_SETTLE_S": "2"}
        watcher = WatcherProcess(clean_emulators, tmp_path / "pushes.jsonl", tmp_path, **env)
        rest = FirestoreRest(clean_emulators.firestore.address, clean_emulators.project_id)
        try:
            start_feed_only(db, watcher)
            call_id = ended_call(db)
            transaction = rest.as_owner().lock(f"calls/{call_id}")
            review: dict[str, Result] = {}

            def write_review() -> None:
                fields = {"humanSummary": "late"}
                review["result"] = rest.as_user("alice").update(f"calls/{call_id}", fields, ["updatedAt"])

            writer = threading.Thread(target=write_review)
            writer.start()
            time.sleep(0.5)  # the review has arrived and been stamped; it waits for the lock
            newer = [call_doc(i) for i in range(6)]
            for new_id, doc in newer:
                db.collection("calls").document(new_id).set(doc)
            wait_all_rang(db, watcher, [new_id for new_id, _ in newer])
            time.sleep(1.0)  # snapshots since then have moved the feed's mark past the review's stamp
            rest.as_owner().rollback(transaction)
            writer.join(timeout=30)
            result = review["result"]
            assert result.ok and result.commit_lag is not None, result

            def counted() -> dict[str, Any] | None:
                doc = db.collection("calls").document(call_id).get().to_dict() or {}
                return doc if doc.get("reviewCount") == 1 else None

            doc = wait_for(counted, timeout=15, what="the late review counted")
            assert doc["lastReviewAt"] == doc["updatedAt"] > doc["endedAt"]
            # Stamped before the six newer calls, committed after them all: outside the window of 5.
            newer_stamps = [db.collection("calls").document(new_id).get().get("updatedAt") for new_id, _ in newer]
            committed = doc["updatedAt"] + timedelta(seconds=result.commit_lag)
            assert doc["updatedAt"] < min(newer_stamps) and committed > max(newer_stamps)
            assert any(line.get("late", 0) >= 1 for line in log_events(watcher, "sweep.done"))
        finally:
            rest.close()
            watcher.stop()


def ended_call(db: firestore.Client) -> str:
    """A call alice placed to bob, answered and ended by admin writes, once the watcher handled its end."""
    call_id, doc = call_doc(0)
    ref = db.collection("calls").document(call_id)
    ref.set(doc)
    pushed_call(db, call_id)
    now = firestore.SERVER_TIMESTAMP
    ref.update({"status": "accepted", "answeredAt": now, "updatedAt": now})
    wait_for(lambda: (ref.get().to_dict() or {}).get("status") == "accepted", what="accepted")
    time.sleep(0.3)
    ref.update({"status": "ended", "endedAt": now, "updatedAt": now})
    wait_for(lambda: (ref.get().to_dict() or {}).get("durationSec") is not None, what="the end handled")
    return call_id
