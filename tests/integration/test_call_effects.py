"""The watcher's writes on the Firestore emulator: what `after` says a write left is what a read finds, so a
ring timer can commit from it without reading."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore

from memharbor.clock import SystemClock
from memharbor.emulators import EmulatorSet
from memharbor.repositories.call_effects import SERVER_TIME, CallRead, FirestoreCallEffects, after
from memharbor.repositories.devices import FirestoreDevices
from memharbor.timeline import Event, EventKind
from tests.support.groups import seed_group
from watcher.decisions import ReactorConfig
from watcher.push import PushResult, PushTarget
from watcher.reactor import CallReactor, Claim

CALL_ID = "c0ffee"


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[firestore.Client]:
    """An admin client on the wiped emulator holding the tests' care group, bob's token and one pending call."""
    client = firestore.Client(project=clean_emulators.project_id)
    seed_group(client)
    client.collection("users").document("bob").set({"platform": "android", "fcmToken": "fcm-bob"})
    now = datetime.now(UTC)
    client.collection("calls").document(CALL_ID).set(
        {
            "callId": CALL_ID,
            "groupId": "group1",
            "callerId": "alice",
            "receiverId": "bob",
            "status": "pending",
            "callerName": "Alice Kim",
            "createdAt": now,
            "updatedAt": now,
        }
    )
    yield client
    client.close()


class CountingStore(FirestoreCallEffects):
    """FirestoreCallEffects that counts its reads of a call."""

    def __init__(self, project: str) -> None:
        super().__init__(lambda: firestore.AsyncClient(project=project))
        self.reads = 0

    async def read(self, call_id: str, user: str | None = None, group: str | None = None) -> CallRead:
        self.reads += 1
        return await super().read(call_id, user, group)


class Accepting:
    """A Notifier whose every push is accepted."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    async def send(
        self, target: PushTarget, kind: Any, payload: Mapping[str, str], expires_at: float, still_wanted: Any = None
    ) -> PushResult:
        self.kinds.append(kind)
        return PushResult(True, target.platform)


def reactor(store: CountingStore, project: str, notifier: Accepting, ring_timeout_s: float) -> CallReactor:
    """A reactor over the emulator whose ring timers nobody fires (the tests fire them)."""
    return CallReactor(
        store,
        FirestoreDevices(lambda: firestore.AsyncClient(project=project)),
        notifier,
        SystemClock(),
        ReactorConfig("it-watcher", ring_timeout_s=ring_timeout_s),
        schedule_timeout=lambda call_id, at: None,
        cancel_timeout=lambda call_id: None,
    )


def event(kind: EventKind, **detail: Any) -> Event:
    return Event(kind, detail, "it-watcher", datetime.now(UTC).timestamp())


class TestWhatAWriteLeft:
    """`after` over FirestoreCallEffects' writes equals a read of the documents, versions included."""

    async def test_claim_then_finish(self, db: firestore.Client, clean_emulators: EmulatorSet) -> None:
        """A claim creating the server document, then a finishing write with server times and quoted
        paths holding dots: each time, what `after` tells is what the emulator returns."""
        store = CountingStore(clean_emulators.project_id)
        read = await store.read(CALL_ID, "bob", "group1")
        lease = datetime.now(UTC) + timedelta(seconds=15)
        claim_call = {"channelName": "ch-1", "ringDeadline": lease}
        claim_server = {
            "callId": CALL_ID,
            "status": "pending",
            "effectOpen": True,
            "effects.`pending`": {"state": "claimed", "by": "w", "leaseUntil": lease},
            "identity": {"callId": CALL_ID, "callerId": "alice"},
        }
        written = await store.commit(read, claim_call, claim_server, [event(EventKind.CALL_SEEN, status="pending")])
        claimed = after(read, claim_call, claim_server, written)
        assert claimed is not None
        fresh = await store.read(CALL_ID)
        assert (claimed.call, claimed.server, claimed.versions) == (fresh.call, fresh.server, fresh.versions)

        finish_call = {"pushSent": True, "pushPlatform": "android", "pushError": None}
        finish_server = {
            "effects.`pending`.state": "done",
            "effects.`pending`.doneAt": SERVER_TIME,
            "pushes.`pending`.`android.fcm:d.1`": {"result": "sent", "at": SERVER_TIME},
            "effectOpen": False,
        }
        done = await store.update(
            CALL_ID, finish_call, finish_server, [event(EventKind.PUSH_SENT)], claimed.versions[1], claimed.versions[0]
        )
        left = after(claimed, finish_call, finish_server, done)
        assert left is not None
        fresh = await store.read(CALL_ID)
        assert (left.call, left.server, left.versions) == (fresh.call, fresh.server, fresh.versions)
        assert left.server is not None and left.server["effects"]["pending"]["doneAt"] == done.server_time


class TestRingTimerWithoutARead:
    """A ring timer on the emulator times the call out from what the ring left, reading only when needed."""

    async def test_times_out_without_a_read(self, db: firestore.Client, clean_emulators: EmulatorSet) -> None:
        """Rung, then past its deadline: the timer's run moves the call to missed without reading it."""
        store = CountingStore(clean_emulators.project_id)
        notifier = Accepting()
        watcher = reactor(store, clean_emulators.project_id, notifier, ring_timeout_s=0.0)
        assert await watcher.handle(CALL_ID, "bob", group_hint="group1") is Claim.RUN
        assert store.reads == 1
        assert await watcher.handle(CALL_ID, time_out=True) is Claim.RUN
        assert store.reads == 1
        call = db.collection("calls").document(CALL_ID).get().to_dict() or {}
        server = db.collection("callServer").document(CALL_ID).get().to_dict() or {}
        assert (call["status"], server["effects"]["missed"]["state"], server["effectOpen"]) == ("missed", "done", False)

    async def test_an_app_write_since_makes_it_read(self, db: firestore.Client, clean_emulators: EmulatorSet) -> None:
        """A write the reactor did not make, between the ring and the timer: the emulator refuses the guarded
        commit, the timer reads once, and the write is kept."""
        store = CountingStore(clean_emulators.project_id)
        watcher = reactor(store, clean_emulators.project_id, Accepting(), ring_timeout_s=0.0)
        assert await watcher.handle(CALL_ID, "bob", group_hint="group1") is Claim.RUN
        db.collection("calls").document(CALL_ID).update({"callerName": "Alice K."})
        assert await watcher.handle(CALL_ID, time_out=True) is Claim.RUN
        assert store.reads == 2
        call = db.collection("calls").document(CALL_ID).get().to_dict() or {}
        assert (call["status"], call["callerName"]) == ("missed", "Alice K.")
