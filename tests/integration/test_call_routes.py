"""The seed's /api/call/* routes end to end: `memharbor http` as a process on the Firestore emulator, real users."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from memharbor import calls
from memharbor.emulators import EmulatorSet
from tests.support.firestore_rest import FirestoreRest, format_timestamp
from tests.support.groups import seed_group
from tests.support.http_process import Api

ALICE, BOB, MALLORY, OPS = "alice-uid-0000000000000000001", "bob-uid-00000000000000000002", "mallory-uid", "ops"
INVITE = {"group_id": "grp1", "caller_id": ALICE, "receiver_id": BOB}
PUSH_WAIT_S = 3.0


# ---------------------------------------------------------------------------------------------- harness


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[FirestoreRest]:
    """The emptied Firestore emulator, through its REST API (use .as_owner() to bypass the rules)."""
    client = FirestoreRest(clean_emulators.firestore.address, clean_emulators.project_id)
    seed_group(client, "grp1", [ALICE, BOB])
    yield client
    client.close()


class FakeWatcher(threading.Thread):
    """Plays the watcher: shortly after a pending call appears, records a channel and a push result on it."""

    def __init__(self, emulators: EmulatorSet, delay_s: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.db = FirestoreRest(emulators.firestore.address, emulators.project_id).as_owner()
        self.delay_s = delay_s
        self.stop = threading.Event()
        self.seen: dict[str, float] = {}
        self.channels: dict[str, str] = {}

    def run(self) -> None:
        while not self.stop.wait(0.03):
            result = self.db.query("calls", [("status", "==", "pending")])
            if not result.ok:
                continue
            for doc in result.documents:
                if "pushSent" in doc:
                    continue
                call_id = doc["callId"]
                first = self.seen.setdefault(call_id, time.monotonic())
                if time.monotonic() - first < self.delay_s:
                    continue
                channel = calls.channel_name(
                    doc["groupId"], doc["callerId"], doc["receiverId"], call_id, int(time.time() * 1000)
                )
                self.channels[call_id] = channel
                self.db.update(f"calls/{call_id}", {"channelName": channel, "pushSent": True, "pushPlatform": "ios"})

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.db.close()


@pytest.fixture
def watcher(clean_emulators: EmulatorSet) -> Iterator[FakeWatcher]:
    """A stand-in watcher thread for this test."""
    fake = FakeWatcher(clean_emulators)
    fake.start()
    yield fake
    fake.close()


def place(api: Api, caller: str = ALICE, receiver: str = BOB) -> dict[str, Any]:
    """Invite through the API (a watcher must be running) and return the invite response."""
    status, data = api.post("/api/call/invite", {**INVITE, "caller_id": caller, "receiver_id": receiver}, caller)
    assert status == 200, data
    assert data["channelName"], "the watcher did not record a channel"
    return data


def seed_call(db: FirestoreRest, call_id: str, status: str, created: datetime, **extra: Any) -> None:
    """Write a call directly as the server (owner), e.g. with a past createdAt."""
    doc = {
        "callId": call_id,
        "groupId": "grp1",
        "callerId": ALICE,
        "receiverId": BOB,
        "status": status,
        "createdAt": created,
        "updatedAt": created,
        **extra,
    }
    assert db.as_owner().create(f"calls/{call_id}", doc).ok


# ---------------------------------------------------------------------------------------------- invite


class TestInvite:
    """POST /api/call/invite on the emulator."""

    def test_without_watcher_document_is_an_apps_and_push_is_null(self, api: Api, db: FirestoreRest) -> None:
        """The call is stored exactly as an app writes it, and after ~3 s the push result is null."""
        names = {"caller_name": "Alice", "group_name_snapshot": "Boston Care", "receiver_name_snapshot": "김영옥"}
        body = {**INVITE, **names}
        started = time.monotonic()
        status, data = api.post("/api/call/invite", body, ALICE)
        elapsed = time.monotonic() - started
        assert status == 200
        assert data == {
            "success": True,
            "callId": data["callId"],
            "channelName": None,
            "pushSent": None,
            "pushPlatform": None,
        }
        assert PUSH_WAIT_S - 0.1 <= elapsed < PUSH_WAIT_S + 6  # waited, and not much longer (slack for load)
        doc = db.as_owner().get(f"calls/{data['callId']}").data
        assert set(doc) >= calls.CREATE_REQUIRED
        assert set(doc) <= calls.CREATE_REQUIRED | calls.CREATE_OPTIONAL
        assert not set(doc) & calls.SERVER_FIELDS
        assert doc["status"] == "pending" and doc["callId"] == data["callId"]
        assert (doc["groupId"], doc["callerId"], doc["receiverId"]) == ("grp1", ALICE, BOB)
        assert doc["callerName"] == "Alice" and doc["receiverNameSnapshot"] == "김영옥"
        assert isinstance(doc["createdAt"], datetime) and doc["createdAt"] == doc["updatedAt"]
        # The same fields, written by Alice's app through the security rules, are accepted.
        app_fields = {k: v for k, v in doc.items() if k not in ("createdAt", "updatedAt")}
        app_fields["callId"] = "app-written-twin"
        created = db.as_user(ALICE).create("calls/app-written-twin", app_fields, server_time=["createdAt", "updatedAt"])
        assert created.ok, created

    def test_returns_the_push_result_the_watcher_records(
        self, api: Api, db: FirestoreRest, watcher: FakeWatcher
    ) -> None:
        """With a watcher recording the push shortly after, invite returns its channel and result early."""
        started = time.monotonic()
        status, data = api.post("/api/call/invite", INVITE, ALICE)
        assert status == 200
        assert time.monotonic() - started < PUSH_WAIT_S
        assert data["pushSent"] is True and data["pushPlatform"] == "ios"
        assert data["channelName"] == watcher.channels[data["callId"]]
        assert data["channelName"] == db.as_owner().get(f"calls/{data['callId']}").data["channelName"]

    def test_placing_a_call_as_someone_else_is_403(self, api: Api, db: FirestoreRest) -> None:
        """Bob cannot place a call with Alice as the caller; nothing is stored."""
        status, data = api.post("/api/call/invite", INVITE, BOB)
        assert status == 403 and data["field"] == "caller_id"
        assert db.as_owner().query("calls").documents == []

    @pytest.mark.parametrize(
        ("group_id", "members"),
        [("grp1", [ALICE]), ("grp1", [BOB]), ("nogroup", None)],
        ids=["no-receiver", "no-caller", "no-group"],
    )
    def test_non_members_are_403(self, api: Api, db: FirestoreRest, group_id: str, members: list[str] | None) -> None:
        """Caller and receiver must both be members of the group: else 403 naming group_id, and no call."""
        if members is not None:
            seed_group(db, group_id, members)
        status, body = api.post("/api/call/invite", {**INVITE, "group_id": group_id}, ALICE)
        assert status == 403 and body["field"] == "group_id"
        assert not db.as_owner().list("calls").data.get("documents")

    def test_open_mode_checks_membership_too(self, open_api: Api, db: FirestoreRest) -> None:
        """MEMHARBOR_AUTH=none trusts identities, not group membership."""
        status, body = open_api.post("/api/call/invite", {**INVITE, "caller_id": MALLORY})
        assert status == 403 and body["field"] == "group_id"

    def test_no_auth_is_401(self, api: Api, db: FirestoreRest) -> None:
        """Without an ID token the invite is refused and nothing is stored."""
        status, _ = api.post("/api/call/invite", INVITE)
        assert status == 401
        assert db.as_owner().query("calls").documents == []

    def test_missing_field_is_named(self, api: Api, db: FirestoreRest) -> None:
        """A body without receiver_id is a 400 naming it."""
        status, data = api.post("/api/call/invite", {"group_id": "grp1", "caller_id": ALICE}, ALICE)
        assert status == 400 and data["field"] == "receiver_id"


# ---------------------------------------------------------------------------------------------- transitions


class TestAnswer:
    """POST /api/call/answer as real users."""

    @pytest.mark.parametrize(("action", "expected"), [("accept", "accepted"), ("decline", "declined")])
    def test_receiver_answers(
        self, api: Api, db: FirestoreRest, watcher: FakeWatcher, action: str, expected: str
    ) -> None:
        """The receiver's answer is committed with answeredAt and echoed with the channel."""
        call = place(api)
        status, data = api.post("/api/call/answer", {"call_id": call["callId"], "action": action}, BOB)
        assert status == 200
        assert data == {
            "success": True,
            "callId": call["callId"],
            "channelName": call["channelName"],
            "status": expected,
        }
        doc = db.as_owner().get(f"calls/{call['callId']}").data
        assert doc["status"] == expected and isinstance(doc["answeredAt"], datetime)

    def test_caller_answering_is_403(self, api: Api, db: FirestoreRest, watcher: FakeWatcher) -> None:
        """The caller may not answer their own call."""
        call = place(api)
        status, _ = api.post("/api/call/answer", {"call_id": call["callId"], "action": "accept"}, ALICE)
        assert status == 403
        assert db.as_owner().get(f"calls/{call['callId']}").data["status"] == "pending"

    def test_stranger_is_403(self, api: Api, db: FirestoreRest, watcher: FakeWatcher) -> None:
        """A user outside the call may not answer it."""
        call = place(api)
        status, data = api.post("/api/call/answer", {"call_id": call["callId"], "action": "accept"}, MALLORY)
        assert status == 403 and data["field"] == "call_id"

    def test_answer_after_cancel_is_409(self, api: Api, db: FirestoreRest, watcher: FakeWatcher) -> None:
        """Once the caller cancelled, the receiver's accept is an illegal transition."""
        call = place(api)
        assert api.post("/api/call/cancel", {"call_id": call["callId"]}, ALICE)[0] == 200
        status, _ = api.post("/api/call/answer", {"call_id": call["callId"], "action": "accept"}, BOB)
        assert status == 409
        assert db.as_owner().get(f"calls/{call['callId']}").data["status"] == "cancelled"

    def test_unknown_call_is_404(self, api: Api, db: FirestoreRest) -> None:
        """An id that names no call is a 404."""
        status, _ = api.post("/api/call/answer", {"call_id": "no-such-call", "action": "accept"}, BOB)
        assert status == 404


class TestCancelMissedEnd:
    """Cancel, missed and end as real users."""

    @pytest.mark.parametrize(("path", "expected"), [("/api/call/cancel", "cancelled"), ("/api/call/missed", "missed")])
    def test_caller_ends_ringing(
        self, api: Api, db: FirestoreRest, watcher: FakeWatcher, path: str, expected: str
    ) -> None:
        """The caller cancels or times out a ringing call; endedAt is stamped."""
        call = place(api)
        status, data = api.post(path, {"call_id": call["callId"]}, ALICE)
        assert status == 200 and data == {"success": True, "callId": call["callId"], "status": expected}
        doc = db.as_owner().get(f"calls/{call['callId']}").data
        assert doc["status"] == expected and isinstance(doc["endedAt"], datetime)

    def test_receiver_cannot_cancel(self, api: Api, db: FirestoreRest, watcher: FakeWatcher) -> None:
        """Cancelling is the caller's move: the receiver gets 403."""
        call = place(api)
        assert api.post("/api/call/cancel", {"call_id": call["callId"]}, BOB)[0] == 403

    def test_end_reports_duration(self, api: Api, db: FirestoreRest) -> None:
        """end returns the whole seconds between answeredAt and the committed endedAt."""
        # Answered 90 s ago, as the server would have stamped it: no test has to wait for a duration.
        answered = datetime.now(UTC) - timedelta(seconds=90)
        seed_call(db, "c-long", "accepted", answered, answeredAt=answered, channelName="grp1_c-long_1")
        status, data = api.post("/api/call/end", {"call_id": "c-long"}, BOB)
        assert status == 200 and data["status"] == "ended" and data["success"] is True
        doc = db.as_owner().get("calls/c-long").data
        assert doc["status"] == "ended"
        assert data["durationSeconds"] == calls.duration_seconds(doc["answeredAt"], doc["endedAt"])
        assert data["durationSeconds"] >= 90

    def test_end_of_a_ringing_call_is_409(self, api: Api, db: FirestoreRest, watcher: FakeWatcher) -> None:
        """A pending call cannot end."""
        call = place(api)
        assert api.post("/api/call/end", {"call_id": call["callId"]}, ALICE)[0] == 409


class TestStatus:
    """GET /api/call/status/{call_id} as real users."""

    def test_seed_shape(self, api: Api, db: FirestoreRest, watcher: FakeWatcher) -> None:
        """The seed's keys and defaults, with the document's values and ISO 8601 timestamps."""
        status, placed = api.post(
            "/api/call/invite", {**INVITE, "caller_name": "Jungwon", "group_name_snapshot": "Boston"}, ALICE
        )
        assert status == 200
        api.post("/api/call/answer", {"call_id": placed["callId"], "action": "accept"}, BOB)
        status, data = api.request("GET", f"/api/call/status/{placed['callId']}", uid=BOB)
        doc = db.as_owner().get(f"calls/{placed['callId']}").data
        assert status == 200
        assert data == {
            "callId": placed["callId"],
            "channelName": placed["channelName"],
            "groupId": "grp1",
            "receiverId": BOB,
            "caregiverUserId": ALICE,
            "groupNameSnapshot": "Boston",
            "giverNameSnapshot": "Jungwon",
            "receiverNameSnapshot": None,
            "status": "accepted",
            "createdAt": format_timestamp(doc["createdAt"]),
            "answeredAt": format_timestamp(doc["answeredAt"]),
            "endedAt": None,
            "durationSec": None,
            "humanSummary": "",
            "humanKeywords": [],
            "humanNotes": "",
            "aiSummary": "",
            "reviewCount": 0,
            "lastReviewAt": None,
        }

    def test_stranger_is_403_and_unknown_is_404(self, api: Api, db: FirestoreRest, watcher: FakeWatcher) -> None:
        """A non-participant may not read the call; an unknown id is a 404."""
        call = place(api)
        assert api.request("GET", f"/api/call/status/{call['callId']}", uid=MALLORY)[0] == 403
        assert api.request("GET", "/api/call/status/no-such-call", uid=ALICE)[0] == 404
        assert api.request("GET", f"/api/call/status/{call['callId']}")[0] == 401


class TestSweep:
    """POST /api/call/timeout/sweep on the emulator."""

    def test_counts_only_calls_it_moved(self, api: Api, db: FirestoreRest) -> None:
        """Old pending calls become missed and are counted; fresh and answered ones are untouched."""
        now = datetime.now(UTC)
        seed_call(db, "old-1", "pending", now - timedelta(seconds=120))
        seed_call(db, "old-2", "pending", now - timedelta(seconds=90))
        seed_call(db, "fresh", "pending", now)
        seed_call(db, "talking", "accepted", now - timedelta(seconds=300), answeredAt=now - timedelta(seconds=280))
        status, data = api.post("/api/call/timeout/sweep", {"timeout_seconds": 60}, OPS, admin=True)
        assert status == 200 and data == {"success": True, "timeoutSeconds": 60, "updatedCount": 2}
        owner = db.as_owner()
        states = {c: owner.get(f"calls/{c}").data["status"] for c in ("old-1", "old-2", "fresh", "talking")}
        assert states == {"old-1": "missed", "old-2": "missed", "fresh": "pending", "talking": "accepted"}
        assert isinstance(owner.get("calls/old-1").data["endedAt"], datetime)
        # Nothing is left to time out: a second sweep changes (and counts) nothing.
        assert api.post("/api/call/timeout/sweep", {}, OPS, admin=True)[1]["updatedCount"] == 0

    def test_users_may_not_sweep(self, api: Api, db: FirestoreRest) -> None:
        """A user without the admin claim gets 403 and the old call stays pending."""
        seed_call(db, "old-1", "pending", datetime.now(UTC) - timedelta(seconds=120))
        assert api.post("/api/call/timeout/sweep", {}, ALICE)[0] == 403
        assert db.as_owner().get("calls/old-1").data["status"] == "pending"


class TestOpenMode:
    """MEMHARBOR_AUTH=none: the seed's behaviour, trusting the ids in the body."""

    def test_unauthenticated_flow(self, open_api: Api, db: FirestoreRest, watcher: FakeWatcher) -> None:
        """Invite with any member's caller_id, answer, read and end, all without an ID token."""
        seed_group(db, "grp1", [ALICE, BOB, "legacy-caller"])
        status, placed = open_api.post("/api/call/invite", {**INVITE, "caller_id": "legacy-caller"})
        assert status == 200 and placed["pushSent"] is True
        assert db.as_owner().get(f"calls/{placed['callId']}").data["callerId"] == "legacy-caller"
        status, answered = open_api.post("/api/call/answer", {"call_id": placed["callId"], "action": "accept"})
        assert status == 200 and answered["status"] == "accepted"
        status, read = open_api.request("GET", f"/api/call/status/{placed['callId']}")
        assert status == 200 and read["caregiverUserId"] == "legacy-caller" and read["status"] == "accepted"
        status, ended = open_api.post("/api/call/end", {"call_id": placed["callId"]})
        assert status == 200 and ended["status"] == "ended"

    def test_illegal_move_is_still_409(self, open_api: Api, db: FirestoreRest) -> None:
        """Open mode trusts identities, not transitions: ending a ringing call is still 409."""
        seed_call(db, "ringing", "pending", datetime.now(UTC))
        assert open_api.post("/api/call/end", {"call_id": "ringing"})[0] == 409
