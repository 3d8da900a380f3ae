"""The watcher as a real subprocess against the Firestore emulator, with apps writing through the rules."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore

from memharbor.emulators import EmulatorSet, free_port
from tests.support.firestore_rest import FirestoreRest, encode_fields
from tests.support.groups import seed_group
from tests.support.prometheus import call, scrape
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for
from tests.support.watchers import WatcherProcess

SEED_PAYLOAD_KEYS = {"type", "callId", "channelName", "callerName", "callerID", "groupId", "receiverId"}


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[firestore.Client]:
    """An admin client on the wiped emulator, which holds only the care group of the tests' users."""
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
    sink = tmp_path / "pushes.jsonl"

    def make(**env: str) -> WatcherProcess:
        process = WatcherProcess(clean_emulators, sink, tmp_path, **env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def seed_user(db: firestore.Client, uid: str, platform: str = "ios") -> None:
    """Register a device for `uid`, as the app would."""
    ios = {"voipToken": f"voip-{uid}", "apnsToken": f"apns-{uid}"}  # PushKit token, and the regular one for alerts
    token = {"ios": ios, "android": {"fcmToken": f"fcm-{uid}"}}[platform]
    db.collection("users").document(uid).set({"platform": platform, **token})


def place_call(rest: FirestoreRest, caller: str = "alice", receiver: str = "bob", **extra: Any) -> str:
    """Create a call as the caller's app does: a pending document with server timestamps."""
    call_id = uuid.uuid4().hex
    fields = {
        "callId": call_id,
        "groupId": "group1",
        "callerId": caller,
        "receiverId": receiver,
        "status": "pending",
        "callerName": "Alice Kim",
        **extra,
    }
    result = rest.as_user(caller).create(f"calls/{call_id}", fields, server_time=["createdAt", "updatedAt"])
    assert result.ok, result
    return call_id


def move(rest: FirestoreRest, uid: str, call_id: str, status: str, stamp: str) -> None:
    """Change a call's status as a participant's app does."""
    result = rest.as_user(uid).update(f"calls/{call_id}", {"status": status}, server_time=[stamp, "updatedAt"])
    assert result.ok, result


def call_doc(db: firestore.Client, call_id: str) -> dict[str, Any]:
    return db.collection("calls").document(call_id).get().to_dict() or {}


def status_is(db: firestore.Client, call_id: str, status: str) -> dict[str, Any] | None:
    doc = call_doc(db, call_id)
    return doc if doc.get("status") == status else None


class TestAppCallFlow:
    """A whole call made with plain Firestore writes under the rules."""

    def test_push_carries_the_seed_payload(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """The receiver's device gets the seed's incoming_call payload with the server-assigned channel."""
        seed_user(db, "bob")
        watcher = watchers().start(db)
        call_id = place_call(rest)
        pushes = wait_for(lambda: watcher.pushes("incoming_call", call_id), what="incoming push")
        payload = pushes[0]["payload"]
        assert set(payload) == SEED_PAYLOAD_KEYS
        doc = wait_for(lambda: (d := call_doc(db, call_id)).get("pushSent") is not None and d, what="push result")
        assert payload == {
            "type": "incoming_call",
            "callId": call_id,
            "channelName": doc["channelName"],
            "callerName": "Alice Kim",
            "callerID": "alice",
            "groupId": "group1",
            "receiverId": "bob",
        }
        assert doc["channelName"].startswith("group1_")
        assert (doc["pushSent"], doc["pushPlatform"], doc["pushError"]) == (True, "ios", None)
        assert (doc["ringDeadline"] - doc["createdAt"]).total_seconds() == pytest.approx(60, abs=0.01)

    def test_accept_then_end(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """The receiver accepts (answeredAt stamped), the caller ends, the watcher adds durationSec."""
        seed_user(db, "bob")
        watcher = watchers().start(db)
        call_id = place_call(rest)
        wait_for(lambda: call_doc(db, call_id).get("pushSent") is not None, what="push result")
        move(rest, "bob", call_id, "accepted", "answeredAt")
        accepted = call_doc(db, call_id)
        assert accepted["status"] == "accepted" and accepted["answeredAt"] is not None
        time.sleep(1.1)
        move(rest, "alice", call_id, "ended", "endedAt")
        ended = wait_for(lambda: (d := call_doc(db, call_id)).get("durationSec") is not None and d, what="durationSec")
        assert ended["durationSec"] == round((ended["endedAt"] - ended["answeredAt"]).total_seconds())
        assert ended["durationSec"] >= 1
        assert watcher.pushes("call_ended", call_id) == []

    def test_receiver_without_device(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """A receiver with no device token gets pushSent false and pushError no_device_token."""
        watchers().start(db)
        call_id = place_call(rest, receiver="carol")
        doc = wait_for(lambda: (d := call_doc(db, call_id)).get("pushSent") is not None and d, what="push result")
        assert (doc["pushSent"], doc["pushError"]) == (False, "no_device_token")

    def test_cancel_stops_ringing(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """A cancelled call sends the receiver exactly one stop-ringing notice."""
        seed_user(db, "bob", "android")
        watcher = watchers().start(db)
        call_id = place_call(rest)
        wait_for(lambda: watcher.pushes("incoming_call", call_id), what="incoming push")
        move(rest, "alice", call_id, "cancelled", "endedAt")
        notice = wait_for(lambda: watcher.pushes("call_ended", call_id), what="stop-ringing notice")
        expected = {"type": "call_ended", "callId": call_id, "status": "cancelled", "receiverId": "bob"}
        expected["callerName"] = "Alice Kim"
        assert notice[0]["payload"] == expected
        assert notice[0]["platform"] == "android"
        time.sleep(1.5)
        assert len(watcher.pushes("call_ended", call_id)) == 1


class TestRingTimeout:
    """Unanswered calls become missed at their ring deadline, once."""

    def test_times_out_once(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """A call nobody answers is missed shortly after ringDeadline, with one stop-ringing notice."""
        seed_user(db, "bob")
        watcher = watchers(MEMHARBOR_RING_TIMEOUT_S="2").start(db)
        call_id = place_call(rest)
        doc = wait_for(lambda: status_is(db, call_id, "missed"), timeout=10, what="missed")
        lateness = (doc["endedAt"] - doc["ringDeadline"]).total_seconds()
        assert 0 <= lateness < 1.0
        time.sleep(2.5)
        assert len(watcher.pushes("incoming_call", call_id)) == 1
        assert len(watcher.pushes("call_ended", call_id)) == 1

    def test_answered_call_does_not_time_out(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """Accepting before the deadline keeps the call accepted after the deadline passes."""
        seed_user(db, "bob")
        watchers(MEMHARBOR_RING_TIMEOUT_S="1.5").start(db)
        call_id = place_call(rest)
        wait_for(lambda: call_doc(db, call_id).get("ringDeadline"), what="ring deadline")
        move(rest, "bob", call_id, "accepted", "answeredAt")
        time.sleep(3)
        assert call_doc(db, call_id)["status"] == "accepted"

    def test_survives_sigkill(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """A watcher killed while a call rings is replaced, and the call still times out exactly once."""
        seed_user(db, "bob")
        first = watchers(MEMHARBOR_RING_TIMEOUT_S="4").start(db)
        call_id = place_call(rest)
        wait_for(lambda: call_doc(db, call_id).get("pushSent") is not None, what="push result")
        first.kill()
        assert not first.alive()
        second = watchers(MEMHARBOR_RING_TIMEOUT_S="4").start(db)
        doc = wait_for(lambda: status_is(db, call_id, "missed"), timeout=15, what="missed after restart")
        assert (doc["endedAt"] - doc["ringDeadline"]).total_seconds() < 2.0
        time.sleep(2)
        assert len(second.pushes("incoming_call", call_id)) == 1
        assert len(second.pushes("call_ended", call_id)) == 1


class TestMetrics:
    """The watcher's /metrics, /livez and /readyz on MEMHARBOR_METRICS_PORT, after a real call."""

    def test_a_missed_call_moves_the_counters(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """Ready after the start-up sweep; one ring, one timeout and its stop notice are counted."""
        seed_user(db, "bob")
        port = free_port()
        watchers(MEMHARBOR_RING_TIMEOUT_S="2", MEMHARBOR_METRICS_PORT=str(port)).start(db)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: call(base, "GET", "/readyz")[0] == 200, timeout=15, what="/readyz 200")
        assert call(base, "GET", "/livez")[0] == 200
        call_id = place_call(rest)
        wait_for(lambda: status_is(db, call_id, "missed"), timeout=10, what="missed")
        runs = ("memharbor_watcher_decisions_total", (("outcome", "run"),))
        # Both handler runs (the ring, then the timeout with its stop notice) have finished.
        samples = wait_for(lambda: (got := scrape(base)).get(runs) == 2 and got, what="two runs counted")
        for kind in ("incoming_call", "call_ended"):
            labels = (("kind", kind), ("platform", "ios"), ("result", "sent"))
            assert samples[("memharbor_watcher_pushes_total", labels)] == 1
            assert samples[("memharbor_watcher_push_duration_seconds_count", labels[:2])] == 1
        assert samples[("memharbor_watcher_ring_timeout_lateness_seconds_count", ())] == 1
        assert samples[("memharbor_watcher_changes_total", (("source", "feed"),))] >= 1
        assert samples[("memharbor_watcher_listener_active", ())] == 1
        assert samples.get(("memharbor_watcher_violations_total", (("reason", "invalid"),)), 0) == 0


def timeline_events(db: firestore.Client, call_id: str) -> list[dict[str, Any]]:
    """The call's timeline events as stored, in the order they happened (server time, then worker time)."""
    docs = [
        snap.to_dict() or {} for snap in db.collection("callServer").document(call_id).collection("events").stream()
    ]
    return sorted(docs, key=lambda doc: (doc["at"], doc["t"]))


class TestTimeline:
    """The watcher writes each step on a call to the call's timeline, with its instance id."""

    def test_a_missed_call_tells_its_story(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """Seen, channel, the push; then seen missed, the ring timeout and the stop-ringing notice."""
        seed_user(db, "bob")
        watcher = watchers(MEMHARBOR_RING_TIMEOUT_S="2").start(db)
        call_id = place_call(rest)
        wait_for(lambda: status_is(db, call_id, "missed"), timeout=10, what="missed")
        events = wait_for(lambda: len(e := timeline_events(db, call_id)) >= 6 and e, what="six timeline events")
        kinds = [event["kind"] for event in events]
        assert sorted(kinds[:2]) == ["call.seen", "channel.assigned"] and kinds[2] == "push.sent"
        assert sorted(kinds[3:5]) == ["call.seen", "ring.timeout"] and kinds[5:] == ["stop_ringing.sent"]
        assert {event["worker"] for event in events} == {watcher.instance_id}
        push = events[2]["detail"]
        assert (push["device"], push["platform"], push["result"]) == ("~user", "ios", "sent")
        timeout = next(event for event in events if event["kind"] == "ring.timeout")
        assert 0 <= timeout["detail"]["lateMs"] < 1000


class TestReplicas:
    """Several watchers at once still act once per transition."""

    def test_two_watchers_act_once(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """With two watchers running, each call is pushed once and timed out once."""
        for uid in ("bob", "dan", "erin"):
            seed_user(db, uid)
        one = watchers(MEMHARBOR_RING_TIMEOUT_S="3").start(db)
        watchers(MEMHARBOR_RING_TIMEOUT_S="3").start(db)
        call_ids = [place_call(rest, receiver=r) for r in ("bob", "dan", "erin")]
        for call_id in call_ids:
            wait_for(lambda c=call_id: status_is(db, c, "missed"), timeout=20, what=f"{call_id} missed")
        time.sleep(2.5)
        for call_id in call_ids:
            assert len(one.pushes("incoming_call", call_id)) == 1, call_id
            assert len(one.pushes("call_ended", call_id)) == 1, call_id


class TestResilience:
    """Bad documents and broken connections do not stop the watcher."""

    def test_malformed_documents(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """Malformed calls written with admin rights get a violation and no push; the watcher carries on."""
        seed_user(db, "bob")
        watcher = watchers().start(db)
        bad = {
            "bad-types": {"callId": "bad-types", "status": "pending", "callerId": 42, "receiverId": ["x"]},
            "bad-status": {"callId": "bad-status", "status": "ringing", "groupId": "g", "callerId": "a"},
            "bad-bare": {"status": "pending"},
            "bad-accepted": {"status": "accepted", "callId": None, "createdAt": "yesterday"},
        }
        for call_id, fields in bad.items():
            db.collection("calls").document(call_id).set(fields)
        db.collection("calls").document("bad-status").update({"status": "pending"})
        for call_id in bad:
            doc = wait_for(lambda c=call_id: call_doc(db, c).get("violation"), what=f"violation on {call_id}")
            assert doc["reason"]
        good = place_call(rest)
        wait_for(lambda: watcher.pushes("incoming_call", good), what="push after bad documents")
        assert watcher.alive()
        assert all(not watcher.pushes(call_id=c) for c in bad)

    def test_non_members_are_not_rung(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """A call between non-members, written with admin rights, gets a violation, no channel and no push."""
        seed_user(db, "bob")
        watcher = watchers().start(db)
        denied = rest.as_user("mallory").create(
            "calls/by-app",
            {"callId": "by-app", "groupId": "group1", "callerId": "mallory", "receiverId": "bob", "status": "pending"},
            server_time=["createdAt", "updatedAt"],
        )
        assert denied.denied
        fields = {"groupId": "group1", "callerId": "mallory", "receiverId": "bob", "status": "pending"}
        fields |= {"callerName": "Your grandson", "createdAt": firestore.SERVER_TIMESTAMP}
        for call_id, extra in (("stranger", {}), ("no-group", {"groupId": "nogroup"})):
            now = {"updatedAt": firestore.SERVER_TIMESTAMP}
            db.collection("calls").document(call_id).set({**fields, "callId": call_id, **now, **extra})
        for call_id in ("stranger", "no-group"):
            doc = wait_for(lambda c=call_id: (d := call_doc(db, c)).get("violation") and d, what=f"violation {call_id}")
            assert doc["violation"]["reason"] == "not_group_members"
            assert "channelName" not in doc and "pushSent" not in doc
        good = place_call(rest)
        wait_for(lambda: watcher.pushes("incoming_call", good), what="a member's call still rings")
        assert watcher.pushes(call_id="stranger") == [] and watcher.pushes(call_id="no-group") == []

    def test_illegal_change_is_reverted(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """An admin moving an ended call back to accepted is reverted, with a violation and no side effect."""
        seed_user(db, "bob")
        watcher = watchers().start(db)
        call_id = place_call(rest)
        wait_for(lambda: call_doc(db, call_id).get("pushSent") is not None, what="push result")
        move(rest, "bob", call_id, "accepted", "answeredAt")
        move(rest, "bob", call_id, "ended", "endedAt")
        wait_for(lambda: call_doc(db, call_id).get("durationSec") is not None, what="durationSec")
        db.collection("calls").document(call_id).update({"status": "pending"})
        doc = wait_for(lambda: (d := call_doc(db, call_id)).get("violation") and d, what="violation")
        assert doc["status"] == "ended"
        assert doc["violation"]["attempted"] == "pending" and doc["violation"]["restored"] == "ended"
        time.sleep(1.5)
        assert len(watcher.pushes("incoming_call", call_id)) == 1
        assert watcher.pushes("call_ended", call_id) == []

    def test_connection_cut_and_restored(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any, clean_emulators: EmulatorSet
    ) -> None:
        """Changes made while the watcher's connection to Firestore is cut are handled once it returns."""
        seed_user(db, "bob")
        proxy = TcpProxy(clean_emulators.firestore.address, free_port())
        proxy.start()
        try:
            watcher = watchers(FIRESTORE_EMULATOR_HOST=proxy.address).start(db)
            before = place_call(rest)
            wait_for(lambda: watcher.pushes("incoming_call", before), what="push before the cut")
            proxy.cut()
            time.sleep(1.0)
            during = place_call(rest)
            move(rest, "alice", before, "cancelled", "endedAt")
            time.sleep(2.0)
            proxy.start()
            wait_for(lambda: watcher.pushes("incoming_call", during), timeout=45, what="push after restore")
            wait_for(lambda: watcher.pushes("call_ended", before), timeout=30, what="stop-ringing after restore")
            assert watcher.alive()
            assert len(watcher.pushes("incoming_call", during)) == 1
        finally:
            proxy.stop()


class TestLifecycle:
    """Start-up, heartbeat and shutdown."""

    def test_sigterm_drains_and_retires(self, db: firestore.Client, watchers: Any) -> None:
        """SIGTERM makes the watcher exit 0 and delete its heartbeat document."""
        watcher = watchers().start(db)
        ref = db.collection("workers").document(watcher.instance_id)
        beat = wait_for(lambda: (b := ref.get().to_dict() or {}).get("status", {}).get("listenerActive") and b)
        assert beat["kind"] == "watcher" and beat["expiresAt"] > beat["beatAt"]
        assert watcher.terminate() == 0
        assert not db.collection("workers").document(watcher.instance_id).get().exists


def logged(watcher: WatcherProcess, event: str, call_id: str) -> list[dict[str, Any]]:
    """The watcher's JSON log lines of `event` about `call_id`."""
    lines = [json.loads(line) for line in watcher.log_file.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event and line.get("call_id") == call_id]


def violation_of(db: firestore.Client, call_id: str) -> dict[str, Any] | None:
    """The call document once it carries a violation."""
    doc = call_doc(db, call_id)
    return doc if doc.get("violation") else None


def create_in_one_commit(rest: FirestoreRest, caller: str, receivers: list[str]) -> list[str]:
    """Create calls in a single commit as the caller's app could: they share createdAt to the microsecond."""
    app = rest.as_user(caller)
    ids, writes = [], []
    for receiver in receivers:
        call_id = uuid.uuid4().hex
        fields = {"callId": call_id, "groupId": "group1", "callerId": caller, "receiverId": receiver}
        fields["status"] = "pending"
        stamps = [{"fieldPath": name, "setToServerValue": "REQUEST_TIME"} for name in ("createdAt", "updatedAt")]
        writes.append(
            {
                "update": {"name": app.name(f"calls/{call_id}"), "fields": encode_fields(fields)},
                "updateTransforms": stamps,
                "currentDocument": {"exists": False},
            }
        )
        ids.append(call_id)
    result = app.commit(writes)
    assert result.ok, result
    return ids


class TestInvariants:
    """States are judged by their invariants; violations are restored where possible and logged, never looped."""

    def test_jump_without_answer_is_reverted(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """An admin write pending -> ended without answeredAt is put back to pending, with no durationSec."""
        seed_user(db, "bob")
        watcher = watchers().start(db)
        call_id = place_call(rest)
        wait_for(lambda: call_doc(db, call_id).get("pushSent") is not None, what="push result")
        db.collection("calls").document(call_id).update(
            {"status": "ended", "endedAt": firestore.SERVER_TIMESTAMP, "updatedAt": firestore.SERVER_TIMESTAMP}
        )
        doc = wait_for(lambda: violation_of(db, call_id), what="violation")
        assert doc["status"] == "pending" and "endedAt" not in doc and "durationSec" not in doc
        assert (doc["violation"]["attempted"], doc["violation"]["restored"]) == ("ended", "pending")
        assert "answeredAt must be a timestamp" in doc["violation"]["reason"]
        # The log line follows the violation's write (and is flushed after it): wait for it as well.
        lines = wait_for(lambda: logged(watcher, "call.violation", call_id), what="call.violation line")
        assert [line["level"] for line in lines] == ["warning"]

    def test_created_as_ended_is_a_violation(self, db: firestore.Client, watchers: Any) -> None:
        """A call written directly as ended (admin rights) gets a violation and no durationSec or channel."""
        watcher = watchers().start(db)
        now = {name: firestore.SERVER_TIMESTAMP for name in ("createdAt", "updatedAt", "answeredAt", "endedAt")}
        fields = {"callId": "born-ended", "groupId": "group1", "callerId": "alice", "receiverId": "bob"}
        db.collection("calls").document("born-ended").set({**fields, "status": "ended", **now})
        doc = wait_for(lambda: violation_of(db, "born-ended"), what="violation")
        assert "answeredAt must be later than createdAt" in doc["violation"]["reason"]
        time.sleep(1.5)
        doc = call_doc(db, "born-ended")
        assert "durationSec" not in doc and "channelName" not in doc
        lines = wait_for(lambda: logged(watcher, "call.violation", "born-ended"), what="call.violation line")
        assert lines[0]["reason"] == doc["violation"]["reason"]

    @pytest.mark.parametrize(
        ("preset", "field"),
        [
            ({"channelName": "group1_alice_bob_1"}, "channelName"),
            ({"pushSent": True}, "pushSent"),
            ({"ringDeadline": datetime.now(UTC) + timedelta(days=365)}, "ringDeadline"),
        ],
    )
    def test_server_fields_on_a_new_call(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any, preset: dict[str, Any], field: str
    ) -> None:
        """A new call carrying a server-owned field never rings: violation, no push."""
        seed_user(db, "bob")
        watcher = watchers().start(db)
        stamps = {"createdAt": firestore.SERVER_TIMESTAMP, "updatedAt": firestore.SERVER_TIMESTAMP}
        fields = {"callId": "preset", "groupId": "group1", "callerId": "alice", "receiverId": "bob"}
        db.collection("calls").document("preset").set({**fields, "status": "pending", **stamps, **preset})
        doc = wait_for(lambda: violation_of(db, "preset"), what="violation")
        assert field in doc["violation"]["reason"] and doc["violation"]["restored"] is None
        good = place_call(rest)
        wait_for(lambda: watcher.pushes("incoming_call", good), what="a valid call still rings")
        assert watcher.pushes(call_id="preset") == []

    def test_caller_removed_then_accepted(self, db: firestore.Client, rest: FirestoreRest, watchers: Any) -> None:
        """A known call whose callerId was removed and status set to accepted is restored, and no handler fails."""
        seed_user(db, "bob")
        watcher = watchers().start(db)
        call_id = place_call(rest)
        wait_for(lambda: call_doc(db, call_id).get("pushSent") is not None, what="push result")
        db.collection("calls").document(call_id).update({"callerId": firestore.DELETE_FIELD})
        db.collection("calls").document(call_id).update({"status": "accepted"})
        wait_for(lambda: (d := call_doc(db, call_id)).get("status") == "pending" and d.get("violation"), what="revert")
        time.sleep(3.5)  # three sweeps (MEMHARBOR_SWEEP_INTERVAL_S=1) look at the call again
        doc = call_doc(db, call_id)
        assert (doc["status"], doc["callerId"]) == ("pending", "alice")
        assert "callerId changed" in doc["violation"]["reason"]
        assert logged(watcher, "call.handler_failed", call_id) == []
        assert watcher.alive()
        assert wait_for(lambda: logged(watcher, "call.violation", call_id), what="call.violation line")

    def test_same_millisecond_calls_get_their_own_channels(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any
    ) -> None:
        """Two calls between the same short uids created in one commit (one createdAt) get different channels."""
        seed_user(db, "bob")
        watchers().start(db)
        first, second = create_in_one_commit(rest, "alice", ["bob", "bob"])
        docs = [wait_for(lambda c=c: (d := call_doc(db, c)).get("channelName") and d) for c in (first, second)]
        assert docs[0]["createdAt"] == docs[1]["createdAt"]
        epoch_ms = int(docs[0]["createdAt"].timestamp() * 1000)
        assert all(d["channelName"].startswith(f"group1_alice_bob_{epoch_ms}_") for d in docs)
        assert docs[0]["channelName"] != docs[1]["channelName"]

    def test_no_usable_device_has_no_push_platform(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any
    ) -> None:
        """An iOS receiver with only its regular APNs token (no VoIP token) gets pushPlatform null."""
        db.collection("users").document("bob").set({"platform": "ios", "apnsToken": "apns-bob"})
        watcher = watchers().start(db)
        call_id = place_call(rest)
        doc = wait_for(lambda: (d := call_doc(db, call_id)).get("pushSent") is not None and d, what="push result")
        assert (doc["pushSent"], doc["pushPlatform"], doc["pushError"]) == (False, None, "no_device_token")
        assert watcher.pushes(call_id=call_id) == []

    def test_reviews_counted_once_each_with_two_watchers(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any
    ) -> None:
        """Each review write bumps reviewCount once and sets lastReviewAt to its updatedAt within 2 s."""
        seed_user(db, "bob")
        watchers().start(db)
        watchers().start(db)
        call_id = place_call(rest)
        wait_for(lambda: call_doc(db, call_id).get("pushSent") is not None, what="push result")
        move(rest, "bob", call_id, "accepted", "answeredAt")
        move(rest, "alice", call_id, "ended", "endedAt")
        wait_for(lambda: call_doc(db, call_id).get("durationSec") is not None, what="durationSec")
        reviews = [("alice", "humanSummary"), ("bob", "humanNotes"), ("alice", "humanSummary")]
        for count, (uid, field) in enumerate(reviews, 1):
            result = rest.as_user(uid).update(f"calls/{call_id}", {field: f"review {count}"}, server_time=["updatedAt"])
            assert result.ok, result
            doc = wait_for(lambda n=count: (d := call_doc(db, call_id)).get("reviewCount") == n and d, timeout=2.0)
            assert doc["lastReviewAt"] == doc["updatedAt"] > doc["endedAt"]
        time.sleep(2.0)
        doc = call_doc(db, call_id)
        assert doc["reviewCount"] == 3 and doc["status"] == "ended" and "violation" not in doc


def seed_device(db: firestore.Client, uid: str, device_id: str, platform: str, updated: Any) -> None:
    """Write users/{uid}/devices/{device_id} (with admin credentials, so `updated` may lie in the past)."""
    ios = {"voipToken": f"voip-{device_id}", "apnsToken": f"apns-{device_id}"}
    tokens = ios if platform == "ios" else {"fcmToken": f"fcm-{device_id}"}
    doc = {"platform": platform, **tokens, "updatedAt": updated}
    db.collection("users").document(uid).collection("devices").document(device_id).set(doc)


class TestDevices:
    """The watcher rings every device, stops the others on an answer, prunes stale and surplus devices."""

    def test_every_device_rings_and_the_sink_names_it(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any
    ) -> None:
        """Two devices and the legacy tokens each get one incoming-call push, recorded with their device."""
        seed_user(db, "bob", "android")
        for device_id, platform in (("phone", "ios"), ("tab", "android")):
            seed_device(db, "bob", device_id, platform, firestore.SERVER_TIMESTAMP)
        watcher = watchers().start(db)
        call_id = place_call(rest)
        pushes = wait_for(lambda: len(p := watcher.pushes("incoming_call", call_id)) == 3 and p, what="three rings")
        assert sorted(p["device"] for p in pushes) == ["phone", "tab", "~user"]
        # The sink shows a push as it is sent; the call's push result is written just after.
        doc = wait_for(lambda: (d := call_doc(db, call_id)).get("pushSent") is not None and d, what="push result")
        assert doc["pushSent"] is True

    def test_answered_on_one_device_stops_the_others(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any
    ) -> None:
        """Accepted with answeredOn phone: the tablet alone gets call_ended with status accepted."""
        for device_id, platform in (("phone", "ios"), ("tab", "android")):
            seed_device(db, "bob", device_id, platform, firestore.SERVER_TIMESTAMP)
        watcher = watchers().start(db)
        call_id = place_call(rest)
        wait_for(lambda: len(watcher.pushes("incoming_call", call_id)) == 2, what="two rings")
        result = rest.as_user("bob").update(
            f"calls/{call_id}",
            {"status": "accepted", "answeredOn": "phone"},
            server_time=["answeredAt", "updatedAt"],
        )
        assert result.ok, result
        [stop] = wait_for(lambda: watcher.pushes("call_ended", call_id), what="answered elsewhere")
        assert (stop["device"], stop["payload"]["status"]) == ("tab", "accepted")
        time.sleep(1.0)
        assert len(watcher.pushes("call_ended", call_id)) == 1

    def test_answer_unseen_by_any_watcher_still_stops_the_others(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any
    ) -> None:
        """The only watcher is SIGKILLed after the ring; the call is answered on the phone and ends. The next
        watcher, seeing only `ended`, sends the tablet its answered-elsewhere notice, once."""
        for device_id, platform in (("phone", "ios"), ("tab", "android")):
            seed_device(db, "bob", device_id, platform, firestore.SERVER_TIMESTAMP)
        first = watchers().start(db)
        call_id = place_call(rest)
        wait_for(lambda: call_doc(db, call_id).get("pushSent") is not None, what="the ring recorded")
        first.kill()
        receiver = rest.as_user("bob")
        answered = receiver.update(
            f"calls/{call_id}", {"status": "accepted", "answeredOn": "phone"}, server_time=["answeredAt", "updatedAt"]
        )
        assert answered.ok, answered
        ended = receiver.update(f"calls/{call_id}", {"status": "ended"}, server_time=["endedAt", "updatedAt"])
        assert ended.ok, ended
        second = watchers().start(db)
        [stop] = wait_for(lambda: second.pushes("call_ended", call_id), what="answered elsewhere after the end")
        assert (stop["device"], stop["payload"]["status"]) == ("tab", "accepted")
        wait_for(lambda: call_doc(db, call_id).get("durationSec") is not None, what="the end handled")
        time.sleep(1.0)
        assert len(second.pushes("call_ended", call_id)) == 1

    def test_stale_and_surplus_devices_are_pruned(
        self, db: firestore.Client, rest: FirestoreRest, watchers: Any
    ) -> None:
        """With a cap of 2 and a TTL of 30 days: the 40-day-old and the oldest fresh device are deleted, unrung."""
        now = datetime.now(UTC)
        ages = {"new": 1, "mid": 2, "old": 3, "stale": 40}
        for device_id, days in ages.items():
            seed_device(db, "bob", device_id, "android", now - timedelta(days=days))
        watcher = watchers(MEMHARBOR_DEVICE_TTL_DAYS="30", MEMHARBOR_MAX_DEVICES_PER_USER="2").start(db)
        call_id = place_call(rest)
        pushes = wait_for(lambda: watcher.pushes("incoming_call", call_id), what="rings")
        devices = db.collection("users").document("bob").collection("devices")
        left = wait_for(lambda: len(ids := sorted(d.id for d in devices.stream())) == 2 and ids, what="pruning")
        assert left == ["mid", "new"]
        time.sleep(0.5)
        assert sorted(p["device"] for p in watcher.pushes("incoming_call", call_id)) == ["mid", "new"]
        assert len(pushes) <= 2

    def test_stale_devices_of_users_nobody_calls_are_pruned(self, db: firestore.Client, watchers: Any) -> None:
        """The periodic prune (run at start) deletes every user's devices older than the TTL, and only those."""
        now = datetime.now(UTC)
        seed_device(db, "carol", "stale", "ios", now - timedelta(days=40))
        seed_device(db, "carol", "fresh", "ios", now - timedelta(days=1))
        seed_device(db, "dave", "stale", "android", now - timedelta(days=31))
        watchers(MEMHARBOR_DEVICE_TTL_DAYS="30").start(db)

        def left() -> list[str] | None:
            paths = sorted(d.reference.path for d in db.collection_group("devices").stream())
            return paths if len(paths) == 1 else None

        assert wait_for(left, what="periodic prune") == ["users/carol/devices/fresh"]
