"""Unit tests for the seed's /api/call/* routes over an in-memory CallService that applies the real state machine."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.api_core import exceptions as gexc
from google.cloud import firestore

from memharbor import calls
from memharbor.errors import Conflict, InvalidInput, NotFound, Unavailable
from memharbor.repositories.calls import FirestoreCallRepository
from tests.support.api_worlds import (
    ALICE,
    AS_ADMIN,
    AS_ALICE,
    AS_BOB,
    AS_MALLORY,
    BOB,
    CHANNEL,
    INVITE,
    CallWorld,
    make_settings,
)
from tests.support.fake_firestore import FakeFirestore
from tests.support.json_client import Client, post
from tests.support.openapi_shapes import ResponseShapes
from tests.support.raw_http import raw_get
from token_http.app import create_app

pytestmark = pytest.mark.usefixtures("short_push_wait")

SEED_STATUS_KEYS = {
    "callId",
    "channelName",
    "groupId",
    "receiverId",
    "caregiverUserId",
    "groupNameSnapshot",
    "giverNameSnapshot",
    "receiverNameSnapshot",
    "status",
    "createdAt",
    "answeredAt",
    "endedAt",
    "durationSec",
    "humanSummary",
    "humanKeywords",
    "humanNotes",
    "aiSummary",
    "reviewCount",
    "lastReviewAt",
}

World = CallWorld


@pytest.fixture
def world() -> World:
    return World()


# ---------------------------------------------------------------------------------------------- invite


class TestInvite:
    """POST /api/call/invite creates the call as an app would and reports the watcher's push result."""

    async def test_creates_the_document_an_app_would_write(self, client: Client, world: World) -> None:
        """The stored call has the app's fields only (pending, stamped, no server-owned field)."""
        body = {**INVITE, "caller_name": "Alice", "group_name_snapshot": "Care", "receiver_name_snapshot": "김영옥"}
        status, data = await post(client, "/api/call/invite", body, AS_ALICE)
        assert status == 200
        doc = world.service.docs[data["callId"]]
        assert set(doc) <= calls.CREATE_REQUIRED | calls.CREATE_OPTIONAL
        assert set(doc) >= calls.CREATE_REQUIRED
        assert not set(doc) & calls.SERVER_FIELDS
        assert doc["status"] == "pending" and doc["callerId"] == ALICE and doc["receiverId"] == BOB
        assert doc["callerName"] == "Alice" and doc["receiverNameSnapshot"] == "김영옥"
        assert doc["createdAt"] == doc["updatedAt"] == world.service.now()

    async def test_reports_the_push_result_once_the_watcher_records_it(self, client: Client, world: World) -> None:
        """When the push result appears on the document, invite answers with it (seed shape)."""
        world.service.push_after_gets = 3
        status, data = await post(client, "/api/call/invite", INVITE, AS_ALICE)
        assert status == 200
        assert set(data) == {"success", "callId", "channelName", "pushSent", "pushPlatform"}
        assert data["success"] is True
        assert data["channelName"] == CHANNEL and data["pushSent"] is True and data["pushPlatform"] == "ios"
        assert world.service.gets == 3

    async def test_push_result_false_is_reported_as_false(self, client: Client, world: World) -> None:
        """A failed push (pushSent false) is reported as false, not as null."""
        world.service.push_after_gets = 1
        world.service.push_result = {"channelName": CHANNEL, "pushSent": False, "pushPlatform": "android"}
        _, data = await post(client, "/api/call/invite", INVITE, AS_ALICE)
        assert data["pushSent"] is False and data["pushPlatform"] == "android"

    async def test_without_a_watcher_push_is_null_after_the_wait(self, client: Client, world: World) -> None:
        """No push result within the wait: pushSent, pushPlatform and channelName are null."""
        started = time.monotonic()
        status, data = await post(client, "/api/call/invite", INVITE, AS_ALICE)
        assert status == 200
        assert time.monotonic() - started >= 0.3
        assert data["pushSent"] is None and data["pushPlatform"] is None and data["channelName"] is None
        assert world.service.docs[data["callId"]]["status"] == "pending"
        assert world.service.gets > 3  # it polled

    async def test_caller_name_defaults_to_caller_id(self, client: Client, world: World) -> None:
        """Without caller_name the stored callerName is the caller's id, as the seed did."""
        _, data = await post(client, "/api/call/invite", INVITE, AS_ALICE)
        doc = world.service.docs[data["callId"]]
        assert doc["callerName"] == ALICE
        assert "groupNameSnapshot" not in doc and "record" not in doc

    async def test_someone_elses_caller_id_is_forbidden(self, client: Client, world: World) -> None:
        """A user may only place calls as themselves: 403 naming caller_id, nothing stored."""
        status, data = await post(client, "/api/call/invite", INVITE, AS_BOB)
        assert status == 403 and data["field"] == "caller_id"
        assert world.service.docs == {}

    async def test_admin_may_place_a_call_for_anyone(self, client: Client, world: World) -> None:
        """An admin acts as the server and may create a call on a user's behalf."""
        status, data = await post(client, "/api/call/invite", INVITE, AS_ADMIN)
        assert status == 200
        assert world.service.docs[data["callId"]]["callerId"] == ALICE

    async def test_open_mode_trusts_the_ids_in_the_body(self, open_client: Client, world: World) -> None:
        """MEMHARBOR_AUTH=none: no Authorization needed, the body's caller_id is used."""
        status, data = await post(open_client, "/api/call/invite", {**INVITE, "caller_id": "carol"})
        assert status == 200
        assert world.service.docs[data["callId"]]["callerId"] == "carol"

    @pytest.mark.parametrize("missing", ["group_id", "caller_id", "receiver_id"])
    async def test_missing_required_field_is_named(self, client: Client, missing: str) -> None:
        """Each required field, when absent, gets a 400 that names it."""
        body = {k: v for k, v in INVITE.items() if k != missing}
        status, data = await post(client, "/api/call/invite", body, AS_ALICE)
        assert status == 400 and data["field"] == missing and "required" in data["error"]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("group_id", 5),
            ("caller_id", ["alice"]),
            ("receiver_id", {"id": "bob"}),
            ("caller_name", 3),
            ("group_name_snapshot", True),
            ("receiver_name_snapshot", 1.5),
            ("record", "yes"),
        ],
    )
    async def test_wrong_type_is_named(self, client: Client, world: World, field: str, value: Any) -> None:
        """A field of the wrong JSON type gets a 400 naming it."""
        status, data = await post(client, "/api/call/invite", {**INVITE, field: value}, AS_ALICE)
        assert status == 400 and data["field"] == field
        assert world.service.docs == {}

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("group_id", "g" * 37),
            ("group_id", "g/1"),
            ("caller_id", "al ice"),
            ("receiver_id", "b" * 129),
            ("caller_name", "x" * 201),
        ],
    )
    async def test_malformed_value_is_named(self, client: Client, field: str, value: str) -> None:
        """Ids outside the id alphabet/length and names over 200 characters are 400s naming the field."""
        headers = AS_ADMIN if field == "caller_id" else AS_ALICE
        status, data = await post(client, "/api/call/invite", {**INVITE, field: value}, headers)
        assert status == 400 and data["field"] == field

    async def test_calling_yourself_is_refused(self, client: Client) -> None:
        """receiver_id equal to caller_id is a 400 naming receiver_id."""
        status, data = await post(client, "/api/call/invite", {**INVITE, "receiver_id": ALICE}, AS_ALICE)
        assert status == 400 and data["field"] == "receiver_id"

    async def test_record_flag_is_stored(self, client: Client, world: World) -> None:
        """The optional record flag reaches the document as a boolean."""
        _, data = await post(client, "/api/call/invite", {**INVITE, "record": True}, AS_ALICE)
        assert world.service.docs[data["callId"]]["record"] is True

    async def test_no_authorization_is_401(self, client: Client, world: World) -> None:
        """Without a bearer token the request is refused before anything is written."""
        status, data = await post(client, "/api/call/invite", INVITE)
        assert status == 401 and data["field"] == "Authorization"
        assert world.service.docs == {}

    async def test_invalid_token_is_401(self, client: Client) -> None:
        """An unknown bearer token is a 401."""
        status, _ = await post(client, "/api/call/invite", INVITE, {"Authorization": "Bearer nope"})
        assert status == 401

    async def test_invalid_json_is_400(self, client: Client) -> None:
        """A body that is not JSON is a 400 naming the body."""
        response = await client.post(
            "/api/call/invite", data=b"{oops", headers={**AS_ALICE, "Content-Type": "application/json"}
        )
        assert response.status == 400 and (await response.json())["field"] == "body"

    async def test_firestore_down_is_503(self, client: Client, world: World) -> None:
        """A Firestore failure while creating the call is a 503."""
        world.service.failure = Unavailable("down")
        status, data = await post(client, "/api/call/invite", INVITE, AS_ALICE)
        assert status == 503 and "Firestore" in data["error"]

    async def test_unconfigured_service_is_503(self, world: World) -> None:
        """An app built without a call service answers the call routes with 503, not a crash."""
        app = create_app(make_settings(), world.deps(with_service=False))
        async with TestClient(TestServer(app)) as test_client:
            status, _ = await post(test_client, "/api/call/invite", INVITE, AS_ALICE)
        assert status == 503


# ---------------------------------------------------------------------------------------------- answer


class TestAnswer:
    """POST /api/call/answer: the receiver accepts or declines a pending call."""

    @pytest.mark.parametrize(("action", "expected"), [("accept", "accepted"), ("decline", "declined")])
    async def test_receiver_answers(self, client: Client, world: World, action: str, expected: str) -> None:
        """The receiver's answer is stored with answeredAt and reported in the seed's shape."""
        world.service.add("c1")
        status, data = await post(client, "/api/call/answer", {"call_id": "c1", "action": action}, AS_BOB)
        assert status == 200
        assert data == {"success": True, "callId": "c1", "channelName": CHANNEL, "status": expected}
        assert world.service.docs["c1"]["status"] == expected
        assert world.service.docs["c1"]["answeredAt"] == world.service.now()

    async def test_caller_may_not_answer(self, client: Client, world: World) -> None:
        """The caller answering their own call is a 403 and changes nothing."""
        world.service.add("c1")
        status, _ = await post(client, "/api/call/answer", {"call_id": "c1", "action": "accept"}, AS_ALICE)
        assert status == 403
        assert world.service.docs["c1"]["status"] == "pending"

    async def test_stranger_may_not_answer(self, client: Client, world: World) -> None:
        """Someone who is not a participant gets 403 naming call_id."""
        world.service.add("c1")
        status, data = await post(client, "/api/call/answer", {"call_id": "c1", "action": "accept"}, AS_MALLORY)
        assert status == 403 and data["field"] == "call_id"
        assert world.service.docs["c1"]["status"] == "pending"

    async def test_answering_a_cancelled_call_is_409(self, client: Client, world: World) -> None:
        """A call that is no longer pending cannot be answered: 409."""
        world.service.add("c1", status="cancelled")
        status, data = await post(client, "/api/call/answer", {"call_id": "c1", "action": "accept"}, AS_BOB)
        assert status == 409 and "cancelled" in data["error"]
        assert world.service.docs["c1"]["status"] == "cancelled"

    async def test_unknown_call_is_404(self, client: Client) -> None:
        """An id that names no call is a 404 naming call_id."""
        status, data = await post(client, "/api/call/answer", {"call_id": "nope", "action": "accept"}, AS_BOB)
        assert status == 404 and data["field"] == "call_id"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"call_id": "c1"}, "action"),
            ({"call_id": "c1", "action": "maybe"}, "action"),
            ({"call_id": "c1", "action": 1}, "action"),
            ({"action": "accept"}, "call_id"),
            ({"call_id": 7, "action": "accept"}, "call_id"),
            ({"call_id": "c/1", "action": "accept"}, "call_id"),
            ({"call_id": "c" * 129, "action": "accept"}, "call_id"),
        ],
    )
    async def test_bad_input_is_named(self, client: Client, world: World, body: dict[str, Any], field: str) -> None:
        """Missing, mistyped or malformed call_id/action: 400 naming the field, nothing changed."""
        world.service.add("c1")
        status, data = await post(client, "/api/call/answer", body, AS_BOB)
        assert status == 400 and data["field"] == field
        assert world.service.docs["c1"]["status"] == "pending"

    async def test_admin_acts_as_the_server_which_may_not_answer(self, client: Client, world: World) -> None:
        """An admin who is not a participant is the server, which has no right to accept: 403."""
        world.service.add("c1")
        status, _ = await post(client, "/api/call/answer", {"call_id": "c1", "action": "accept"}, AS_ADMIN)
        assert status == 403

    async def test_open_mode_answers_as_the_receiver(self, open_client: Client, world: World) -> None:
        """MEMHARBOR_AUTH=none: answer acts as the receiver, as the body implies."""
        world.service.add("c1")
        status, data = await post(open_client, "/api/call/answer", {"call_id": "c1", "action": "accept"})
        assert status == 200 and data["status"] == "accepted"

    async def test_firestore_down_is_503(self, client: Client, world: World) -> None:
        """A Firestore failure is a 503 JSON error."""
        world.service.add("c1")
        world.service.failure = Unavailable("down")
        status, _ = await post(client, "/api/call/answer", {"call_id": "c1", "action": "accept"}, AS_BOB)
        assert status == 503


# ---------------------------------------------------------------------------------------------- cancel, missed


class TestCancelAndMissed:
    """POST /api/call/cancel and /api/call/missed: the caller ends a pending call."""

    @pytest.mark.parametrize(("path", "expected"), [("/api/call/cancel", "cancelled"), ("/api/call/missed", "missed")])
    async def test_caller_moves_pending_call(self, client: Client, world: World, path: str, expected: str) -> None:
        """The caller's cancel/missed is stored with endedAt and answered in the seed's shape."""
        world.service.add("c1")
        status, data = await post(client, path, {"call_id": "c1"}, AS_ALICE)
        assert status == 200
        assert data == {"success": True, "callId": "c1", "status": expected}
        assert world.service.docs["c1"]["status"] == expected
        assert world.service.docs["c1"]["endedAt"] == world.service.now()

    @pytest.mark.parametrize("path", ["/api/call/cancel", "/api/call/missed"])
    async def test_receiver_may_not(self, client: Client, world: World, path: str) -> None:
        """The receiver cannot cancel or mark missed: 403."""
        world.service.add("c1")
        status, _ = await post(client, path, {"call_id": "c1"}, AS_BOB)
        assert status == 403
        assert world.service.docs["c1"]["status"] == "pending"

    async def test_cancel_after_accept_is_409(self, client: Client, world: World) -> None:
        """An accepted call can no longer be cancelled: 409."""
        world.service.add("c1", status="accepted")
        status, _ = await post(client, "/api/call/cancel", {"call_id": "c1"}, AS_ALICE)
        assert status == 409

    async def test_admin_may_mark_missed_as_the_server(self, client: Client, world: World) -> None:
        """The server may time out a pending call, so an admin's missed succeeds."""
        world.service.add("c1")
        status, _ = await post(client, "/api/call/missed", {"call_id": "c1"}, AS_ADMIN)
        assert status == 200 and world.service.docs["c1"]["status"] == "missed"

    async def test_admin_may_not_cancel(self, client: Client, world: World) -> None:
        """Cancelling is the caller's move only; the server (an admin) gets 403."""
        world.service.add("c1")
        status, _ = await post(client, "/api/call/cancel", {"call_id": "c1"}, AS_ADMIN)
        assert status == 403

    async def test_open_mode_cancels_as_the_caller(self, open_client: Client, world: World) -> None:
        """MEMHARBOR_AUTH=none: cancel acts as the caller."""
        world.service.add("c1")
        status, _ = await post(open_client, "/api/call/cancel", {"call_id": "c1"})
        assert status == 200 and world.service.docs["c1"]["status"] == "cancelled"

    async def test_missing_call_id_is_named(self, client: Client) -> None:
        """A body without call_id is a 400 naming it."""
        status, data = await post(client, "/api/call/cancel", {}, AS_ALICE)
        assert status == 400 and data["field"] == "call_id"


# ---------------------------------------------------------------------------------------------- end


class TestEnd:
    """POST /api/call/end: a participant ends an accepted call and gets its duration."""

    @pytest.mark.parametrize("who", [AS_ALICE, AS_BOB])
    async def test_participant_ends_with_duration(self, client: Client, world: World, who: dict[str, str]) -> None:
        """Either participant ends; durationSeconds runs from answeredAt to the committed endedAt."""
        world.service.add("c1", status="accepted", answeredAt=world.service.now() - timedelta(seconds=125))
        status, data = await post(client, "/api/call/end", {"call_id": "c1"}, who)
        assert status == 200
        assert data == {"success": True, "callId": "c1", "status": "ended", "durationSeconds": 125}
        assert world.service.docs["c1"]["status"] == "ended"

    async def test_duration_without_the_read_back_is_measured_to_now(self, client: Client, world: World) -> None:
        """If Firestore fails after the end committed, the call still reports ended, timed to now."""
        world.service.add("c1", status="accepted", answeredAt=world.service.now() - timedelta(seconds=30))
        world.service.fail_after_transition = True
        status, data = await post(client, "/api/call/end", {"call_id": "c1"}, AS_ALICE)
        assert status == 200 and data["durationSeconds"] == 30
        assert world.service.docs["c1"]["status"] == "ended"

    async def test_ending_a_pending_call_is_409(self, client: Client, world: World) -> None:
        """A call that was never accepted cannot end: 409."""
        world.service.add("c1")
        status, _ = await post(client, "/api/call/end", {"call_id": "c1"}, AS_ALICE)
        assert status == 409

    async def test_stranger_may_not_end(self, client: Client, world: World) -> None:
        """A non-participant gets 403 and the call stays accepted."""
        world.service.add("c1", status="accepted", answeredAt=world.service.now())
        status, _ = await post(client, "/api/call/end", {"call_id": "c1"}, AS_MALLORY)
        assert status == 403 and world.service.docs["c1"]["status"] == "accepted"

    async def test_admin_ends_as_the_server(self, client: Client, world: World) -> None:
        """The server may end an accepted call, so an admin's end succeeds."""
        world.service.add("c1", status="accepted", answeredAt=world.service.now())
        status, data = await post(client, "/api/call/end", {"call_id": "c1"}, AS_ADMIN)
        assert status == 200 and data["durationSeconds"] == 0

    async def test_unknown_call_is_404(self, client: Client) -> None:
        """Ending an unknown call is a 404."""
        status, _ = await post(client, "/api/call/end", {"call_id": "nope"}, AS_ALICE)
        assert status == 404


# ---------------------------------------------------------------------------------------------- sweep


class TestSweep:
    """POST /api/call/timeout/sweep: the server times out old pending calls."""

    async def test_moves_only_old_pending_calls(self, client: Client, world: World) -> None:
        """Pending calls older than the timeout become missed; fresh or answered ones are untouched."""
        world.service.add("old1", age_s=120)
        world.service.add("old2", age_s=61)
        world.service.add("fresh", age_s=30)
        world.service.add("talking", status="accepted", age_s=300)
        status, data = await post(client, "/api/call/timeout/sweep", {"timeout_seconds": 60}, AS_ADMIN)
        assert status == 200
        assert data == {"success": True, "timeoutSeconds": 60, "updatedCount": 2}
        statuses = {k: d["status"] for k, d in world.service.docs.items()}
        assert statuses == {"old1": "missed", "old2": "missed", "fresh": "pending", "talking": "accepted"}

    async def test_call_answered_meanwhile_is_not_counted(self, client: Client, world: World) -> None:
        """A call answered between the scan and its transaction stays accepted and is not counted."""
        world.service.add("old1", age_s=120)
        world.service.add("old2", age_s=120)

        def answer_old2() -> None:
            world.service.docs["old2"]["status"] = "accepted"

        world.service.after_scan = answer_old2
        _, data = await post(client, "/api/call/timeout/sweep", {"timeout_seconds": 60}, AS_ADMIN)
        assert data["updatedCount"] == 1
        assert world.service.docs["old2"]["status"] == "accepted"

    async def test_default_timeout_without_a_body(self, client: Client, world: World) -> None:
        """With no body at all the timeout is the seed's 60 s."""
        world.service.add("old", age_s=61)
        world.service.add("young", age_s=59)
        response = await client.post("/api/call/timeout/sweep", headers=AS_ADMIN)
        data = await response.json()
        assert response.status == 200 and data["timeoutSeconds"] == 60 and data["updatedCount"] == 1

    async def test_fractional_timeout_is_accepted(self, client: Client, world: World) -> None:
        """timeout_seconds may be a fraction of a second."""
        world.service.add("c1", age_s=1)
        _, data = await post(client, "/api/call/timeout/sweep", {"timeout_seconds": 0.5}, AS_ADMIN)
        assert data["timeoutSeconds"] == 0.5 and data["updatedCount"] == 1

    @pytest.mark.parametrize("value", [0, -5, "60", True, [60], 10**12])
    async def test_bad_timeout_is_named(self, client: Client, value: Any) -> None:
        """Non-positive, non-numeric, boolean or absurd timeouts are 400s naming timeout_seconds."""
        status, data = await post(client, "/api/call/timeout/sweep", {"timeout_seconds": value}, AS_ADMIN)
        assert status == 400 and data["field"] == "timeout_seconds"

    async def test_users_may_not_sweep(self, client: Client, world: World) -> None:
        """A participant without the admin claim gets 403 and nothing moves."""
        world.service.add("c1", age_s=120)
        status, _ = await post(client, "/api/call/timeout/sweep", {}, AS_ALICE)
        assert status == 403 and world.service.docs["c1"]["status"] == "pending"

    async def test_open_mode_may_sweep(self, open_client: Client, world: World) -> None:
        """MEMHARBOR_AUTH=none: the sweep runs as the seed's did."""
        world.service.add("c1", age_s=120)
        status, data = await post(open_client, "/api/call/timeout/sweep", {})
        assert status == 200 and data["updatedCount"] == 1

    async def test_no_authorization_is_401(self, client: Client) -> None:
        """Without a bearer token the sweep is refused with 401."""
        status, _ = await post(client, "/api/call/timeout/sweep", {})
        assert status == 401

    async def test_firestore_down_is_503(self, client: Client, world: World) -> None:
        """A Firestore failure during the scan is a 503."""
        world.service.failure = Unavailable("down")
        status, _ = await post(client, "/api/call/timeout/sweep", {}, AS_ADMIN)
        assert status == 503


# ---------------------------------------------------------------------------------------------- status


class TestStatus:
    """GET /api/call/status/{call_id}: the seed's view of a call."""

    async def test_seed_shape_with_defaults(self, client: Client, world: World) -> None:
        """Every seed key is present; review fields default to ''/[]/0/null; timestamps are ISO 8601."""
        world.service.add("c1", callerName="Jungwon", groupNameSnapshot="Care", receiverNameSnapshot="김영옥")
        response = await client.get("/api/call/status/c1", headers=AS_BOB)
        data = await response.json()
        assert response.status == 200
        assert set(data) == SEED_STATUS_KEYS
        assert data["caregiverUserId"] == ALICE and data["receiverId"] == BOB and data["groupId"] == "g1"
        assert data["giverNameSnapshot"] == "Jungwon"
        assert data["status"] == "pending" and data["channelName"] == CHANNEL
        assert data["createdAt"] == "2026-02-02T02:40:00.000000Z"
        assert data["answeredAt"] is None and data["endedAt"] is None and data["durationSec"] is None
        assert (data["humanSummary"], data["humanKeywords"], data["humanNotes"], data["aiSummary"]) == ("", [], "", "")
        assert data["reviewCount"] == 0 and data["lastReviewAt"] is None

    async def test_reviewed_call(self, client: Client, world: World) -> None:
        """Stored review fields, giverNameSnapshot and durationSec are reported as stored."""
        now = world.service.now()
        world.service.add(
            "c1",
            status="ended",
            callerName="Alice",
            giverNameSnapshot="Jungwon",
            answeredAt=now,
            endedAt=now + timedelta(seconds=10),
            durationSec=10,
            humanSummary="fine",
            humanKeywords=["tea"],
            reviewCount=2,
            lastReviewAt=now,
        )
        data = await (await client.get("/api/call/status/c1", headers=AS_ALICE)).json()
        assert data["giverNameSnapshot"] == "Jungwon"
        assert data["durationSec"] == 10 and data["humanSummary"] == "fine" and data["humanKeywords"] == ["tea"]
        assert data["reviewCount"] == 2 and data["lastReviewAt"] == data["answeredAt"]
        assert data["endedAt"] == "2026-02-02T02:40:10.000000Z"

    async def test_duration_is_derived_for_an_ended_call_without_one(self, client: Client, world: World) -> None:
        """An ended call the watcher has not yet given durationSec reports the stamps' difference."""
        now = world.service.now()
        world.service.add("c1", status="ended", answeredAt=now, endedAt=now + timedelta(seconds=42))
        data = await (await client.get("/api/call/status/c1", headers=AS_ALICE)).json()
        assert data["durationSec"] == 42

    async def test_stranger_is_403(self, client: Client, world: World) -> None:
        """Only participants read a call."""
        world.service.add("c1")
        response = await client.get("/api/call/status/c1", headers=AS_MALLORY)
        assert response.status == 403

    async def test_admin_may_read(self, client: Client, world: World) -> None:
        """An admin reads any call."""
        world.service.add("c1")
        response = await client.get("/api/call/status/c1", headers=AS_ADMIN)
        assert response.status == 200 and (await response.json())["callId"] == "c1"

    async def test_unknown_is_404(self, client: Client) -> None:
        """An unknown call id is a 404."""
        response = await client.get("/api/call/status/nope", headers=AS_ALICE)
        assert response.status == 404

    async def test_malformed_id_is_400(self, client: Client) -> None:
        """An id outside the id alphabet is a 400 naming call_id."""
        response = await client.get("/api/call/status/bad.id", headers=AS_ALICE)
        assert response.status == 400 and (await response.json())["field"] == "call_id"

    async def test_no_authorization_is_401(self, client: Client, world: World) -> None:
        """Reading without a bearer token is a 401."""
        world.service.add("c1")
        response = await client.get("/api/call/status/c1")
        assert response.status == 401


class TestStatusPathParameter:
    """GET /api/call/status/{call_id}: whatever aiohttp makes of the path is a 400 naming call_id, never a 500."""

    @pytest.mark.parametrize("escaped", ["%ED%A0%80", "%F0", "%F0%9F%98", "%FF", "%C0%AF", "a%00b"])
    async def test_escapes_of_invalid_utf8_are_400(self, client: Client, world: World, escaped: str) -> None:
        """Percent-escapes of invalid UTF-8 (a CESU surrogate, truncated sequences, NUL) name call_id."""
        world.service.add("c1")
        status, data = await raw_get(client, f"/api/call/status/{escaped}".encode(), AS_ALICE)
        assert status == 400 and data["field"] == "call_id"
        assert world.service.gets == 0

    @pytest.mark.parametrize("raw", [b"\xed\xa0\x80", b"\xff", b"c1\xf0"])
    async def test_raw_bytes_through_the_python_parser_are_400(
        self, python_parser: None, client: Client, world: World, raw: bytes
    ) -> None:
        """Raw non-UTF-8 bytes, which the Python parser turns into lone surrogates, name call_id."""
        world.service.add("c1")
        status, data = await raw_get(client, b"/api/call/status/" + raw, AS_ALICE)
        assert status == 400 and data["field"] == "call_id"
        assert world.service.gets == 0


# Raw bodies: a lone \uD800-\uDFFF escape is valid JSON text but no UTF-8 string (json.dumps would not write one).
SURROGATE_POSTS = [
    (
        "invite-group",
        "/api/call/invite",
        b'{"group_id": "\\ud800", "caller_id": "alice", "receiver_id": "bob"}',
        "group_id",
    ),
    (
        "invite-name",
        "/api/call/invite",
        b'{"group_id": "g1", "caller_id": "alice", "receiver_id": "bob", "caller_name": "Jung\\udc00"}',
        "caller_name",
    ),
    (
        "invite-snapshot",
        "/api/call/invite",
        b'{"group_id": "g1", "caller_id": "alice", "receiver_id": "bob", "giver_name_snapshot": ["\\ud800"]}',
        "giver_name_snapshot",
    ),
    ("answer-id", "/api/call/answer", b'{"call_id": "\\ud800", "action": "accept"}', "call_id"),
    ("answer-action", "/api/call/answer", b'{"call_id": "c1", "action": "\\ud800"}', "action"),
    ("cancel", "/api/call/cancel", b'{"call_id": "c\\ud8001"}', "call_id"),
    ("missed", "/api/call/missed", b'{"call_id": "\\udfff"}', "call_id"),
    ("end", "/api/call/end", b'{"call_id": "\\ud800"}', "call_id"),
    ("end-key", "/api/call/end", b'{"call_id": "c1", "\\ud800": true}', "body"),
    ("sweep", "/api/call/timeout/sweep", b'{"timeout_seconds": 5, "note": {"x": "\\ud800"}}', "note"),
]


class TestReservedIds:
    """Firestore's reserved `__name__` ids are bad input (400), not "Firestore is unavailable"."""

    @pytest.mark.parametrize(
        ("path", "body", "field"),
        [
            ("/api/call/answer", {"call_id": "__x__", "action": "accept"}, "call_id"),
            ("/api/call/end", {"call_id": "__name__"}, "call_id"),
            ("/api/call/invite", {"group_id": "__g__", "caller_id": ALICE, "receiver_id": BOB}, "group_id"),
            ("/api/call/invite", {"group_id": "g1", "caller_id": ALICE, "receiver_id": "__b__"}, "receiver_id"),
        ],
    )
    async def test_is_400_naming_the_field(
        self, client: Client, world: World, path: str, body: dict[str, Any], field: str
    ) -> None:
        """The route answers 400 naming the field and never asks the store."""
        response = await client.post(path, json=body, headers=AS_ALICE)
        data = await response.json()
        assert response.status == 400 and data["field"] == field, data
        assert world.service.gets == 0 and list(world.service.docs) == []

    async def test_status_path(self, client: Client, world: World) -> None:
        """GET /api/call/status/__x__ is a 400 about call_id."""
        response = await client.get("/api/call/status/__x__", headers=AS_ALICE)
        assert response.status == 400 and (await response.json())["field"] == "call_id"


class TestDurationOfMalformedCalls:
    """A stored call whose stamps are not timestamps never breaks the duration arithmetic."""

    @pytest.mark.parametrize(
        ("answered", "ended"),
        [("yesterday", datetime(2026, 1, 1, tzinfo=UTC)), (datetime(2026, 1, 1, tzinfo=UTC), 5), (None, None)],
    )
    def test_is_zero(self, answered: Any, ended: Any) -> None:
        """calls.duration_seconds answers 0 unless both stamps are datetimes."""
        assert calls.duration_seconds(answered, ended) == 0

    def test_real_stamps(self) -> None:
        """Two datetimes give the whole seconds between them."""
        start = datetime(2026, 1, 1, tzinfo=UTC)
        assert calls.duration_seconds(start, start + timedelta(seconds=61.4)) == 61


class TestLoneSurrogatesInCallBodies:
    """Every call POST route answers a lone surrogate escape in its body with a 400 naming the field."""

    @pytest.mark.parametrize(
        ("path", "raw", "field"), [case[1:] for case in SURROGATE_POSTS], ids=[case[0] for case in SURROGATE_POSTS]
    )
    async def test_is_400_and_nothing_changes(
        self, client: Client, world: World, path: str, raw: bytes, field: str
    ) -> None:
        """The answer is a 400 naming the field, and no call is created, read or moved."""
        world.service.add("c1", age_s=3600)
        response = await client.post(path, data=raw, headers={**AS_ADMIN, "Content-Type": "application/json"})
        data = await response.json()
        assert response.status == 400, data
        assert data["field"] == field and "surrogate" in data["error"]
        assert list(world.service.docs) == ["c1"] and world.service.docs["c1"]["status"] == "pending"
        assert world.service.gets == 0


class TestStatusOfMalformedCalls:
    """status_body: a call an admin wrote outside the contract still answers within the documented schema."""

    async def _status(self, client: Client, world: World, **fields: Any) -> dict[str, Any]:
        doc = world.service.add("c1", **fields)
        for key in [k for k, v in fields.items() if v is _ABSENT]:
            del doc[key]
        response = await client.get("/api/call/status/c1", headers=AS_ADMIN)
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
        (await ResponseShapes.served(client)).check(data, "/api/call/status/{call_id}", "get")
        return data

    async def test_wrong_types_become_null_and_are_named(self, client: Client, world: World) -> None:
        """status 5, a map groupId, createdAt 'yesterday' and a missing callerId are null and listed."""
        data = await self._status(
            client, world, status=5, groupId={"id": "g1"}, createdAt="yesterday", callerId=_ABSENT
        )
        assert data["status"] is None and data["groupId"] is None
        assert data["createdAt"] is None and data["caregiverUserId"] is None
        assert data["malformedFields"] == ["callerId", "createdAt", "groupId", "status"]
        assert data["receiverId"] == BOB and data["channelName"] == CHANNEL

    async def test_unknown_status_string_is_null(self, client: Client, world: World) -> None:
        """A status outside the state machine's values is null and named."""
        data = await self._status(client, world, status="ringing")
        assert data["status"] is None and data["malformedFields"] == ["status"]

    async def test_strings_are_not_passed_as_timestamps(self, client: Client, world: World) -> None:
        """Timestamps stored as ISO strings or numbers are null: only datetimes are reported."""
        data = await self._status(
            client,
            world,
            status="ended",
            answeredAt="2026-02-02T02:40:00Z",
            endedAt=1_770_000_000,
            lastReviewAt="soon",
        )
        assert data["answeredAt"] is None and data["endedAt"] is None and data["lastReviewAt"] is None
        assert data["malformedFields"] == ["answeredAt", "endedAt", "lastReviewAt"]

    @pytest.mark.parametrize("duration", [math.nan, math.inf, -math.inf, True, "10", [10]])
    async def test_duration_must_be_a_finite_number(self, client: Client, world: World, duration: Any) -> None:
        """A non-finite, boolean or non-numeric durationSec of an accepted call is null and named."""
        data = await self._status(client, world, status="accepted", durationSec=duration)
        assert data["durationSec"] is None and data["malformedFields"] == ["durationSec"]

    async def test_review_fields_keep_their_types(self, client: Client, world: World) -> None:
        """Non-string texts become '', non-string keywords are dropped, a non-integer count is 0; all named."""
        data = await self._status(
            client,
            world,
            humanSummary=7,
            humanKeywords=["tea", 3, None],
            humanNotes=["x"],
            aiSummary={"a": 1},
            reviewCount="2",
        )
        assert (data["humanSummary"], data["humanNotes"], data["aiSummary"]) == ("", "", "")
        assert data["humanKeywords"] == ["tea"] and data["reviewCount"] == 0
        assert data["malformedFields"] == ["aiSummary", "humanKeywords", "humanNotes", "humanSummary", "reviewCount"]

    async def test_names_fall_back_and_are_named(self, client: Client, world: World) -> None:
        """A non-string giverNameSnapshot falls back to callerName; non-string names are null; all named."""
        data = await self._status(
            client, world, giverNameSnapshot=5, callerName="Jungwon", groupNameSnapshot=True, channelName=["c"]
        )
        assert data["giverNameSnapshot"] == "Jungwon"
        assert data["groupNameSnapshot"] is None and data["channelName"] is None
        assert data["malformedFields"] == ["channelName", "giverNameSnapshot", "groupNameSnapshot"]

    async def test_call_id_is_the_document_id(self, client: Client, world: World) -> None:
        """A stored callId that is missing or names another call is replaced by the document id and named."""
        data = await self._status(client, world, callId="other")
        assert data["callId"] == "c1" and data["malformedFields"] == ["callId"]

    async def test_ended_call_with_unusable_stamps_is_not_a_500(self, client: Client, world: World) -> None:
        """An ended call without durationSec and with a string answeredAt reports the stamps it can use."""
        data = await self._status(client, world, status="ended", answeredAt="then", endedAt=world.service.now())
        assert data["durationSec"] == 0 and data["answeredAt"] is None
        assert data["malformedFields"] == ["answeredAt"]

    async def test_nulls_in_optional_fields_are_not_malformed(self, client: Client, world: World) -> None:
        """Null optional fields are merely unset: no malformedFields key at all."""
        data = await self._status(
            client, world, channelName=None, humanSummary=None, humanKeywords=None, durationSec=None, answeredAt=None
        )
        assert "malformedFields" not in data and data["humanKeywords"] == [] and data["humanSummary"] == ""

    async def test_year_one_timestamp_is_rfc3339(self, client: Client, world: World) -> None:
        """A timestamp before year 1000 keeps its four-digit year (strftime's %Y would drop the zeros)."""
        data = await self._status(client, world, createdAt=datetime(1, 1, 1, tzinfo=UTC))
        assert data["createdAt"] == "0001-01-01T00:00:00.000000Z"

    async def test_well_formed_call_conforms_without_the_field(self, client: Client, world: World) -> None:
        """A call written by the contract fits the schema and has no malformedFields."""
        now = world.service.now()
        data = await self._status(
            client,
            world,
            status="ended",
            answeredAt=now,
            endedAt=now + timedelta(seconds=3),
            durationSec=3,
            humanKeywords=["a"],
            reviewCount=1,
            lastReviewAt=now,
            callerName="J",
        )
        assert "malformedFields" not in data and data["durationSec"] == 3


_ABSENT = object()  # a field the test removes from the stored document


# ---------------------------------------------------------------------------------------------- adapter errors


class _Boom:
    """A stand-in Firestore client whose document operations raise `error` (or hang)."""

    def __init__(self, error: BaseException | None, hang: bool = False) -> None:
        self.error = error
        self.hang = hang

    def collection(self, _: str, /) -> _Boom:
        return self

    def document(self, _: str) -> _Boom:
        return self

    def get_all(self, _: Any, /) -> Any:
        raise AssertionError("not used here")

    def transaction(self) -> Any:
        raise AssertionError("not used here")

    async def _act(self, *_: Any, **__: Any) -> Any:
        if self.hang:
            await asyncio.sleep(10)
        assert self.error is not None
        raise self.error

    create = get = _act


class TestFirestoreCallRepositoryErrors:
    """FirestoreCallRepository turns client failures into Unavailable or a domain refusal."""

    @pytest.mark.parametrize("error", [gexc.ServiceUnavailable("down"), gexc.DeadlineExceeded("slow"), OSError()])
    async def test_unavailable(self, error: BaseException) -> None:
        """Transport and API errors become Unavailable (answered 503)."""
        repository = FirestoreCallRepository(lambda: _Boom(error))
        with pytest.raises(Unavailable):
            await repository.get("c1")

    async def test_timeout(self) -> None:
        """A Firestore call that does not answer in time becomes Unavailable."""
        repository = FirestoreCallRepository(lambda: _Boom(None, hang=True), timeout_s=0.05)
        with pytest.raises(Unavailable):
            await repository.get("c1")

    async def test_existing_id_is_a_conflict(self) -> None:
        """Creating over an existing call is a Conflict naming callId (answered 409), not an outage."""
        repository = FirestoreCallRepository(lambda: _Boom(gexc.AlreadyExists("exists")))
        doc = {"callId": "c1", "groupId": "g1", "callerId": ALICE, "receiverId": BOB, "status": "pending"}
        with pytest.raises(Conflict) as caught:
            await repository.create(doc)
        assert caught.value.field == "callId"

    async def test_invalid_document_is_refused_before_any_write(self) -> None:
        """The field checks run before the client is touched: InvalidInput (answered 400)."""
        repository = FirestoreCallRepository(lambda: _Boom(AssertionError("must not write")))
        with pytest.raises(InvalidInput) as caught:
            await repository.create({"callId": "c1", "groupId": "g1", "callerId": ALICE, "receiverId": ALICE})
        assert caught.value.field == "receiverId"

    async def test_no_call_ids_reads_nothing(self) -> None:
        """get_calls with no ids answers {} without touching the client."""
        assert await FirestoreCallRepository(lambda: _Boom(AssertionError("must not read"))).get_calls([]) == {}


# ---------------------------------------------------------------------------------------------- OpenAPI


class TestResponsesMatchOpenApi:
    """Each call route's 200 body has exactly the documented keys, with nulls only where documented."""

    async def test_invite_and_answer(self, client: Client, world: World) -> None:
        """invite (without a push result) and answer bodies fit their documented schemas."""
        shapes = await ResponseShapes.served(client)
        _, invited = await post(client, "/api/call/invite", INVITE, AS_ALICE)
        shapes.check(invited, "/api/call/invite", "post")
        _, answered = await post(client, "/api/call/answer", {"call_id": invited["callId"], "action": "accept"}, AS_BOB)
        shapes.check(answered, "/api/call/answer", "post")

    async def test_cancel_missed_end_sweep_status(self, client: Client, world: World) -> None:
        """cancel, missed, end, sweep and status bodies fit their documented schemas."""
        world.service.add("c1")
        world.service.add("c2")
        world.service.add("c3", status="accepted", answeredAt=world.service.now())
        shapes = await ResponseShapes.served(client)
        shapes.check(
            (await post(client, "/api/call/cancel", {"call_id": "c1"}, AS_ALICE))[1], "/api/call/cancel", "post"
        )
        shapes.check(
            (await post(client, "/api/call/missed", {"call_id": "c2"}, AS_ALICE))[1], "/api/call/missed", "post"
        )
        shapes.check((await post(client, "/api/call/end", {"call_id": "c3"}, AS_ALICE))[1], "/api/call/end", "post")
        sweep = (await post(client, "/api/call/timeout/sweep", {}, AS_ADMIN))[1]
        shapes.check(sweep, "/api/call/timeout/sweep", "post")
        data = await (await client.get("/api/call/status/c1", headers=AS_ALICE)).json()
        shapes.check(data, "/api/call/status/{call_id}", "get")


class TestFirestoreCallTransitions:
    """A REST transition commits only over the call as read: a race is decided again, never overwritten."""

    def store(self, status: str = "pending") -> FakeFirestore:
        """A store holding call c1 from alice to bob in `status`."""
        return FakeFirestore(docs={"calls/c1": {"status": status, "callerId": ALICE, "receiverId": BOB}})

    async def test_the_move_is_written_with_its_stamps(self) -> None:
        """A receiver's accept sets the status, stamps answeredAt and updatedAt, and returns the call as before."""
        db = self.store()
        before = await FirestoreCallRepository(lambda: db).transition("c1", calls.Status.ACCEPTED, calls.Actor.RECEIVER)
        assert before["status"] == "pending" and db.docs["calls/c1"]["status"] == "accepted"
        assert db.docs["calls/c1"]["answeredAt"] is firestore.SERVER_TIMESTAMP and db.commits == 1

    async def test_a_cancel_between_read_and_write_refuses_the_accept(self) -> None:
        """The caller cancelled after the shim read the call: the accept, decided again, is illegal and the
        cancel stands."""
        db = self.store()
        db.interleave.append(lambda d: d.write("calls/c1", {"status": "cancelled"}))
        with pytest.raises(calls.IllegalTransition):
            await FirestoreCallRepository(lambda: db).transition("c1", calls.Status.ACCEPTED, calls.Actor.RECEIVER)
        assert db.docs["calls/c1"]["status"] == "cancelled" and db.commits == 0

    async def test_an_unrelated_write_between_read_and_write_is_kept(self) -> None:
        """A write that leaves the move legal (a review field) is kept, and the move lands on top of it."""
        db = self.store("accepted")
        db.interleave.append(lambda d: d.write("calls/c1", {"note": "kept"}))
        await FirestoreCallRepository(lambda: db).transition("c1", calls.Status.ENDED, calls.Actor.CALLER)
        assert db.docs["calls/c1"]["status"] == "ended" and db.docs["calls/c1"]["note"] == "kept"

    async def test_unknown_call_is_not_found(self) -> None:
        """A transition of a call that does not exist is NotFound naming call_id, and writes nothing."""
        db = FakeFirestore()
        with pytest.raises(NotFound) as caught:
            await FirestoreCallRepository(lambda: db).transition("c1", calls.Status.ENDED, calls.Actor.CALLER)
        assert caught.value.field == "call_id" and db.docs == {}
