"""The watcher's recording hooks on the Firestore emulator: as part of the watcher process (calls made by apps
through the rules), and called directly to pin down their idempotence and races.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor.emulators import EmulatorSet
from memharbor.recording_requests import SERVER_REQUESTER
from memharbor.repositories.recordings import FirestoreRecordingRepository, RequestOutcome, new_request
from tests.support.firestore_rest import FirestoreRest
from tests.support.frozen import Frozen
from tests.support.groups import seed_group
from tests.support.waiting import wait_for
from tests.support.watchers import WatcherProcess
from watcher.recording import FirestoreRecordingHooks

CHANNEL = "group1_alice_bob_1770000000000"


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[firestore.Client]:
    """An admin client on the wiped emulator."""
    client = firestore.Client(project=clean_emulators.project_id)
    seed_group(client)
    yield client
    client.close()


@pytest.fixture
def rest(clean_emulators: EmulatorSet) -> Iterator[FirestoreRest]:
    """A REST client that acts as app users through the security rules."""
    client = FirestoreRest(clean_emulators.firestore.address, clean_emulators.project_id)
    yield client
    client.close()


@pytest.fixture
def watchers(clean_emulators: EmulatorSet, tmp_path: Path) -> Iterator[Any]:
    """A factory of watcher processes sharing one push sink; all are stopped after the test."""
    started: list[WatcherProcess] = []

    def make(**env: str) -> WatcherProcess:
        process = WatcherProcess(clean_emulators, tmp_path / "pushes.jsonl", tmp_path, **env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def place_call(rest: FirestoreRest, **extra: Any) -> str:
    """Create a pending call as Alice's app does."""
    call_id = uuid.uuid4().hex
    fields = {"callId": call_id, "groupId": "group1", "callerId": "alice", "receiverId": "bob", "status": "pending"}
    result = rest.as_user("alice").create(
        f"calls/{call_id}", {**fields, **extra}, server_time=["createdAt", "updatedAt"]
    )
    assert result.ok, result
    return call_id


def move(rest: FirestoreRest, uid: str, call_id: str, status: str, stamp: str) -> None:
    """Change a call's status as a participant's app does."""
    result = rest.as_user(uid).update(f"calls/{call_id}", {"status": status}, server_time=[stamp, "updatedAt"])
    assert result.ok, result


def recordings_of(db: firestore.Client, call_id: str) -> dict[str, dict[str, Any]]:
    query = db.collection("recordings").where(filter=FieldFilter("callId", "==", call_id))
    return {snap.id: snap.to_dict() or {} for snap in query.stream()}


def effect_done(db: firestore.Client, call_id: str, status: str) -> bool:
    server = db.collection("callServer").document(call_id).get().to_dict() or {}
    return ((server.get("effects") or {}).get(status) or {}).get("state") == "done"


def accept(db: firestore.Client, rest: FirestoreRest, call_id: str) -> None:
    """Bob accepts once the watcher gave the call its channel, and the accepted effects are carried out."""
    wait_for(lambda: effect_done(db, call_id, "pending"), what="ring effects")
    move(rest, "bob", call_id, "accepted", "answeredAt")
    wait_for(lambda: effect_done(db, call_id, "accepted"), what="accepted effects")


# ---------------------------------------------------------------------------------------------- the watcher process


class TestWatcherRequestsRecordings:
    """`memharbor watcher` asks for a recording on accepted and for its stop on ended."""

    def test_record_all_calls(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """MEMHARBOR_RECORD_CALLS=1: one request appears on accept, for the call's channel, by the server."""
        watchers(MEMHARBOR_RECORD_CALLS="1").start(db)
        call_id = place_call(rest)
        accept(db, rest, call_id)
        call = db.collection("calls").document(call_id).get().to_dict() or {}
        sessions = recordings_of(db, call_id)
        assert list(sessions) == [f"call-{call_id}"]
        request = sessions[f"call-{call_id}"]
        assert set(request) == {"channel", "callId", "status", "requestedBy", "createdAt"}
        assert request["channel"] == call["channelName"] and request["callId"] == call_id
        assert request["status"] == "requested" and request["requestedBy"] == "server"
        assert isinstance(request["createdAt"], datetime)

        time.sleep(1.5)  # the sweep runs every second: nothing is requested again
        assert recordings_of(db, call_id) == sessions
        move(rest, "alice", call_id, "ended", "endedAt")
        stopped = wait_for(
            lambda: (s := recordings_of(db, call_id)[f"call-{call_id}"]).get("stopRequested") is True and s,
            what="stopRequested",
        )
        assert stopped["status"] == "requested" and stopped["createdAt"] == request["createdAt"]

    def test_record_flag_on_the_call(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """Without MEMHARBOR_RECORD_CALLS, a call with record: true is recorded and one without is not."""
        watchers().start(db)
        recorded = place_call(rest, record=True)
        plain = place_call(rest)
        accept(db, rest, recorded)
        accept(db, rest, plain)
        assert list(recordings_of(db, recorded)) == [f"call-{recorded}"]
        assert recordings_of(db, plain) == {}
        move(rest, "bob", plain, "ended", "endedAt")
        wait_for(lambda: effect_done(db, plain, "ended"), what="ended effects")
        assert recordings_of(db, plain) == {}

    def test_two_watchers_request_once(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """With two replicas, an accepted call still gets exactly one request."""
        watchers(MEMHARBOR_RECORD_CALLS="1").start(db)
        watchers(MEMHARBOR_RECORD_CALLS="1").start(db)
        call_ids = [place_call(rest) for _ in range(3)]
        for call_id in call_ids:
            accept(db, rest, call_id)
        time.sleep(1.5)
        for call_id in call_ids:
            assert list(recordings_of(db, call_id)) == [f"call-{call_id}"]

    def test_ended_stops_a_participants_recording(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any
    ) -> None:
        """A recording a participant asked for (no server request then) is stopped when the call ends."""
        watchers(MEMHARBOR_RECORD_CALLS="1").start(db)
        call_id = place_call(rest)
        wait_for(lambda: effect_done(db, call_id, "pending"), what="ring effects")
        channel = db.collection("calls").document(call_id).get().to_dict()["channelName"]  # type: ignore[index]
        request = {"channel": channel, "callId": call_id, "status": "requested", "requestedBy": "bob"}
        assert rest.as_user("bob").create("recordings/bobs", request, server_time=["createdAt"]).ok
        db.collection("recordings").document("bobs").update({"status": "recording"})  # the recorder began
        move(rest, "bob", call_id, "accepted", "answeredAt")
        wait_for(lambda: effect_done(db, call_id, "accepted"), what="accepted effects")
        assert list(recordings_of(db, call_id)) == ["bobs"]
        move(rest, "alice", call_id, "ended", "endedAt")
        wait_for(lambda: recordings_of(db, call_id)["bobs"].get("stopRequested") is True, what="stopRequested")


# ---------------------------------------------------------------------------------------------- the hooks directly


@pytest.fixture
async def adb(clean_emulators: EmulatorSet) -> AsyncIterator[firestore.AsyncClient]:
    """An asyncio admin client on the wiped emulator."""
    client = firestore.AsyncClient(project=clean_emulators.project_id)
    yield client
    client.close()


async def seed_call(adb: firestore.AsyncClient, call_id: str, status: str = "accepted", **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    doc = {
        "callId": call_id,
        "groupId": "group1",
        "callerId": "alice",
        "receiverId": "bob",
        "status": status,
        "channelName": CHANNEL,
        "createdAt": now,
        "updatedAt": now,
        **extra,
    }
    await adb.collection("calls").document(call_id).set(doc)
    return doc


async def sessions(adb: firestore.AsyncClient) -> dict[str, dict[str, Any]]:
    return {s.id: s.to_dict() or {} async for s in adb.collection("recordings").stream()}


def hooks_over(adb: firestore.AsyncClient, record_all_calls: bool) -> FirestoreRecordingHooks:
    """The hooks over the recordings repository on this client."""
    return FirestoreRecordingHooks(FirestoreRecordingRepository(lambda: adb), record_all_calls)


class TestHooks:
    """FirestoreRecordingHooks against the emulator, without the reactor around them."""

    async def test_repeated_accept_is_a_no_op(self, adb: firestore.AsyncClient) -> None:
        """A second on_accepted (a retried side effect) leaves the first request untouched."""
        call = await seed_call(adb, "c1")
        hooks = hooks_over(adb, record_all_calls=True)
        await hooks.on_accepted("c1", call)
        first = await sessions(adb)
        await hooks.on_accepted("c1", call)
        assert await sessions(adb) == first and list(first) == ["call-c1"]

    async def test_a_finished_request_is_not_renewed(self, adb: firestore.AsyncClient) -> None:
        """Once the call's recording stopped, a late repeat of on_accepted does not start another."""
        call = await seed_call(adb, "c1")
        hooks = hooks_over(adb, record_all_calls=True)
        await hooks.on_accepted("c1", call)
        await adb.collection("recordings").document("call-c1").update({"status": "stopped"})
        await hooks.on_accepted("c1", call)
        assert {sid: doc["status"] for sid, doc in (await sessions(adb)).items()} == {"call-c1": "stopped"}

    async def test_call_that_moved_on_is_not_recorded(self, adb: firestore.AsyncClient) -> None:
        """If the call ended before the request commits, nothing is requested."""
        call = await seed_call(adb, "c1", status="ended")
        await hooks_over(adb, record_all_calls=True).on_accepted("c1", {**call, "status": "accepted"})
        assert await sessions(adb) == {}

    async def test_not_wanted_or_no_channel(self, adb: firestore.AsyncClient) -> None:
        """Without record or the global flag nothing is requested; nor for a call without a channel."""
        call = await seed_call(adb, "c1")
        await hooks_over(adb, record_all_calls=False).on_accepted("c1", call)
        await hooks_over(adb, record_all_calls=False).on_accepted("c1", {**call, "record": False})
        no_channel = {k: v for k, v in call.items() if k != "channelName"}
        await hooks_over(adb, record_all_calls=True).on_accepted("c1", no_channel)
        assert await sessions(adb) == {}
        await hooks_over(adb, record_all_calls=False).on_accepted("c1", {**call, "record": True})
        assert list(await sessions(adb)) == ["call-c1"]

    async def test_ended_stops_only_unfinished_sessions_of_the_call(self, adb: firestore.AsyncClient) -> None:
        """on_ended flags the call's requested and recording sessions, not finished ones or other calls'."""
        call = await seed_call(adb, "c1", status="ended")
        rows = {
            "call-c1": ("c1", "recording"),
            "asked": ("c1", "requested"),
            "done": ("c1", "stopped"),
            "broken": ("c1", "failed"),
            "other": ("c2", "recording"),
        }
        for sid, (call_id, status) in rows.items():
            await adb.collection("recordings").document(sid).set({"callId": call_id, "status": status})
        await hooks_over(adb, record_all_calls=False).on_ended("c1", call)
        flagged = {sid for sid, doc in (await sessions(adb)).items() if doc.get("stopRequested") is True}
        assert flagged == {"call-c1", "asked"}

    async def test_ended_without_recording_writes_nothing(self, adb: firestore.AsyncClient) -> None:
        """A call that was never recorded ends without any recordings document appearing."""
        call = await seed_call(adb, "c1", status="ended")
        await hooks_over(adb, record_all_calls=True).on_ended("c1", call)
        assert await sessions(adb) == {}


class TestRequestHoldsNoLock:
    """The request is created without a transaction: a watcher frozen inside it holds no lock on the call."""

    def test_a_frozen_request_does_not_block_the_end(self, clean_emulators: EmulatorSet, db: firestore.Client) -> None:
        """Frozen after reading the call accepted, the request does not hold up the caller's `ended` write;
        thawed, it finds the call moved on and creates nothing (a transaction held the call until it
        committed, so a SIGSTOPped watcher made the app's end wait and fail)."""
        now = datetime.now(UTC)
        call = {"callId": "c1", "groupId": "group1", "callerId": "alice", "receiverId": "bob", "status": "accepted"}
        db.collection("calls").document("c1").set({**call, "createdAt": now, "updatedAt": now, "answeredAt": now})
        frozen = Frozen(clean_emulators.project_id, FirestoreRecordingRepository)
        doc = new_request(CHANNEL, SERVER_REQUESTER, "c1")
        frozen.start(lambda repository: repository.request_while_accepted("c1", "call-c1", doc))
        rest = FirestoreRest(clean_emulators.firestore.address, clean_emulators.project_id)
        try:
            started = time.monotonic()
            ended = rest.as_owner().update("calls/c1", {"status": "ended"}, ["endedAt", "updatedAt"])
            took = time.monotonic() - started
        finally:
            outcome = frozen.finish()
            rest.close()
        assert ended.ok, ended
        assert took < 2.0, f"the call's write waited {took:.1f}s for the frozen request"
        assert outcome is RequestOutcome.NOT_ACCEPTED
        assert not db.collection("recordings").document("call-c1").get().exists

    async def test_the_guard_write_changes_nothing(self, adb: firestore.AsyncClient) -> None:
        """The write that guards the request leaves the call as it was: same fields, same update time."""
        await seed_call(adb, "c1")
        before = await adb.collection("calls").document("c1").get()
        outcome = await FirestoreRecordingRepository(lambda: adb).request_while_accepted(
            "c1", "call-c1", new_request(CHANNEL, SERVER_REQUESTER, "c1")
        )
        after = await adb.collection("calls").document("c1").get()
        assert outcome is RequestOutcome.CREATED
        assert after.to_dict() == before.to_dict()
        assert after.update_time == before.update_time
