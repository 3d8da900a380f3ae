"""Unit tests for the seed's /api/recording/* routes over an in-memory RecordingService and a scripted recorder."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.api_core import exceptions as gexc
from google.cloud import firestore

from memharbor import calls
from memharbor.access import Principal
from memharbor.errors import Conflict, NotFound, Unavailable
from memharbor.recording_requests import (
    DEFAULT_RECORDER_UID,
    call_session_id,
    may_access,
    parse_legacy_channel,
)
from memharbor.repositories.recordings import FirestoreRecordingRepository, new_request
from tests.support.api_worlds import (
    ALICE,
    AS_ADMIN,
    AS_ALICE,
    AS_BOB,
    AS_CAROL,
    AS_MALLORY,
    BOB,
    CAROL,
    CHANNEL,
    MALLORY,
    NOW,
    RecordingWorld,
    make_settings,
)
from tests.support.fake_console import FakeAudio
from tests.support.json_client import Client, get, post
from tests.support.openapi_shapes import ResponseShapes
from tests.support.raw_http import raw_get
from token_http.app import create_app

pytestmark = pytest.mark.usefixtures("short_recording_waits")

NOW_DT = datetime.fromtimestamp(NOW, UTC)  # FakeClock's time
LEGACY = "g1_alice_bob"
START_KEYS = {"sid", "channel", "uid", "filename", "status"}
STOP_KEYS = {"sid", "channel", "groupId", "user1", "user2", "filename", "format", "duration", "firebase", "status"}

World = RecordingWorld


@pytest.fixture
def world() -> World:
    return World()


# ---------------------------------------------------------------------------------------------- start


class TestStart:
    """POST /api/recording/start creates a request as an app would and waits for the recorder to begin."""

    async def test_participant_starts_a_call_recording(self, client: Client, world: World) -> None:
        """The caller gets the seed's shape with a .wav filename; the request has exactly the request fields."""
        world.service.add_call()
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        assert status == 200
        assert set(data) == START_KEYS
        assert data["status"] == "recording" and data["channel"] == CHANNEL and data["uid"] == 999999
        assert data["filename"].startswith(CHANNEL + "_") and data["filename"].endswith(".wav")
        [(sid, request)] = world.service.created
        assert sid == data["sid"] == call_session_id("c1")  # the id the watcher would use for the call
        assert set(request) == calls.RECORDING_REQUEST_FIELDS
        assert request == {
            "channel": CHANNEL,
            "callId": "c1",
            "status": "requested",
            "requestedBy": ALICE,
            "createdAt": world.service.now(),
        }

    async def test_receiver_may_start(self, client: Client, world: World) -> None:
        """The receiver is a participant too; requestedBy names them."""
        world.service.add_call(status="pending")
        status, _ = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_BOB)
        assert status == 200
        assert world.service.created[0][1]["requestedBy"] == BOB

    async def test_waits_for_the_recorder(self, client: Client, world: World) -> None:
        """The route polls until the recorder moves the request to recording."""
        world.service.add_call()
        world.service.recorder.reads_before_acting = 5
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        assert status == 200 and data["status"] == "recording"
        assert world.service.reads[data["sid"]] == 6

    async def test_stranger_is_403(self, client: Client, world: World) -> None:
        """Someone outside the call on the channel gets 403 naming channel; nothing is requested."""
        world.service.add_call()
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_MALLORY)
        assert status == 403 and data["field"] == "channel"
        assert world.service.created == []

    @pytest.mark.parametrize("call_status", ["declined", "cancelled", "missed", "ended"])
    async def test_finished_call_is_409(self, client: Client, world: World, call_status: str) -> None:
        """A call that can no longer be joined cannot be recorded: 409 naming its status."""
        world.service.add_call(status=call_status)
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        assert status == 409 and call_status in data["error"]
        assert world.service.created == []

    @pytest.mark.parametrize(("who", "expected"), [(AS_ALICE, 200), (AS_BOB, 200), (AS_MALLORY, 403)])
    async def test_legacy_channel_names_its_users(
        self, client: Client, world: World, who: dict[str, str], expected: int
    ) -> None:
        """On {groupId}_{user1}_{user2} with no call, user1 and user2 may record (without callId); others not."""
        status, _ = await post(client, "/api/recording/start", {"channel": LEGACY}, who)
        assert status == expected
        if expected == 200:
            [(_, request)] = world.service.created
            assert "callId" not in request and request["channel"] == LEGACY
        else:
            assert world.service.created == []

    @pytest.mark.parametrize("channel", ["random-channel", "g1_alice_bob_extra", "g1__alice", "g1_alice_bob_17700"])
    async def test_channel_of_no_call_and_no_legacy_shape_is_403(
        self, client: Client, world: World, channel: str
    ) -> None:
        """A channel that is neither a call's nor parseable as {groupId}_{user1}_{user2} is refused for users."""
        status, data = await post(client, "/api/recording/start", {"channel": channel}, AS_ALICE)
        assert status == 403 and data["field"] == "channel"
        assert world.service.created == []

    async def test_admin_may_record_any_channel(self, client: Client, world: World) -> None:
        """An admin may record a channel that is no call's and names nobody."""
        status, data = await post(client, "/api/recording/start", {"channel": "ops-check"}, AS_ADMIN)
        assert status == 200 and data["channel"] == "ops-check"
        assert world.service.created[0][1]["requestedBy"] == "admin-1"

    async def test_open_mode_records_anything(self, open_client: Client, world: World) -> None:
        """MEMHARBOR_AUTH=none: no Authorization needed, as the seed."""
        status, data = await post(open_client, "/api/recording/start", {"channel": "any_old_thing_1"})
        assert status == 200 and data["status"] == "recording"
        assert world.service.created[0][1]["requestedBy"] == "anonymous"

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"channel": ""},
            {"channel": None},
            {"channel": 5},
            {"channel": "c" * 64},
            {"channel": "a/b"},
            {"channel": "é"},
            {"channel": ["g1"]},
        ],
    )
    async def test_bad_channel_is_400(self, client: Client, world: World, body: dict[str, Any]) -> None:
        """A missing, non-string, too long or non-Agora channel is a 400 naming channel."""
        status, data = await post(client, "/api/recording/start", body, AS_ADMIN)
        assert status == 400 and data["field"] == "channel"
        assert world.service.created == []

    async def test_bad_bodies(self, client: Client) -> None:
        """Invalid JSON is 400 naming body, a non-object 400, a wrong content type 415."""
        response = await client.post(
            "/api/recording/start", data=b"{oops", headers={**AS_ALICE, "Content-Type": "application/json"}
        )
        assert response.status == 400 and (await response.json())["field"] == "body"
        status, _ = await post(client, "/api/recording/start", ["g1"], AS_ALICE)
        assert status == 400
        response = await client.post("/api/recording/start", data=b"channel=x", headers=AS_ALICE)
        assert response.status == 415

    async def test_no_authorization_is_401(self, client: Client, world: World) -> None:
        """Without a bearer token nothing is requested."""
        world.service.add_call()
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL})
        assert status == 401 and data["field"] == "Authorization"
        assert world.service.created == []

    async def test_recorder_not_beginning_is_503_with_the_sid(self, client: Client, world: World) -> None:
        """After the wait, 503 names the sid and status and says how to follow up; the request stays queued."""
        world.service.add_call()
        world.service.recorder.begins = False
        started = time.monotonic()
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        assert status == 503
        assert time.monotonic() - started >= 0.3
        assert data["sid"] == world.service.created[0][0] and data["status"] == "requested"
        assert "/api/recording/stop" in data["error"] and "/api/recording/status" in data["error"]
        assert world.service.sessions[data["sid"]]["status"] == "requested"
        assert "stopRequested" not in world.service.sessions[data["sid"]]

    async def test_recorder_failure_is_503_with_its_reason(self, client: Client, world: World) -> None:
        """A request the recorder failed is a 503 carrying the sid, status failed and the reason."""
        world.service.add_call()
        world.service.recorder.fail_with = "agora_join_failed"
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        assert status == 503
        assert data["status"] == "failed" and data["reason"] == "agora_join_failed" and data["sid"]

    async def test_joins_a_recording_already_in_progress(self, client: Client, world: World) -> None:
        """With a session already recording the channel (e.g. the watcher's), start answers with it."""
        world.service.add_call()
        world.service.add_session("call-c1", "recording", requestedBy="server", uid=999999, filename="f.wav")
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_BOB)
        assert status == 200
        assert data == {"sid": "call-c1", "channel": CHANNEL, "uid": 999999, "filename": "f.wav", "status": "recording"}
        assert world.service.created == []

    async def test_a_stopping_session_is_not_joined(self, client: Client, world: World) -> None:
        """A session already asked to stop is not reused: a new request is made."""
        world.service.add_call()
        world.service.add_session("old", "recording", stopRequested=True)
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        assert status == 200 and data["sid"] != "old"
        assert len(world.service.created) == 1

    async def test_start_racing_another_joins_its_request(self, client: Client, world: World) -> None:
        """A request created after this start looked (the watcher's, another participant's) is joined, not doubled."""
        world.service.add_call()
        world.service.add_session("call-c1", "requested", requestedBy="server")
        world.service.unseen.add("call-c1")
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_BOB)
        assert status == 200 and data["sid"] == "call-c1"
        assert world.service.created == []
        assert list(world.service.sessions) == ["call-c1"]

    @pytest.mark.parametrize(
        ("first_status", "fields"), [("stopped", {}), ("recording", {"stopRequested": True, "filename": "f.wav"})]
    )
    async def test_a_call_recorded_before_gets_a_new_session(
        self, client: Client, world: World, first_status: str, fields: dict[str, Any]
    ) -> None:
        """When the call's first recording is over or stopping, a start asks for a second one under a new sid."""
        world.service.add_call()
        world.service.add_session("call-c1", first_status, **fields)
        world.service.unseen.add("call-c1")
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        assert status == 200
        [(sid, request)] = world.service.created
        assert sid == data["sid"] and uuid.UUID(sid).version == 4
        assert request["callId"] == "c1"

    async def test_legacy_channel_sessions_get_random_sids(self, client: Client, world: World) -> None:
        """A channel of no call has no call id to name its session after: a uuid4 it is."""
        status, data = await post(client, "/api/recording/start", {"channel": LEGACY}, AS_ALICE)
        assert status == 200 and uuid.UUID(data["sid"]).version == 4

    async def test_firestore_down_is_503(self, client: Client, world: World) -> None:
        """A Firestore failure while checking the channel is a 503, never a 500."""
        world.service.failure = Unavailable("down")
        status, data = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        assert status == 503 and "Firestore" in data["error"]

    async def test_unconfigured_service_is_503(self, world: World) -> None:
        """An app built without a recording service answers with 503."""
        app = create_app(make_settings(), world.deps(with_service=False))
        async with TestClient(TestServer(app)) as test_client:
            status, _ = await post(test_client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        assert status == 503


# ---------------------------------------------------------------------------------------------- stop


class TestStop:
    """POST /api/recording/stop sets stopRequested and waits for the recorder to finish."""

    async def test_stop_by_sid_has_the_seed_shape(self, client: Client, world: World) -> None:
        """The answer has the seed's keys, duration in ms and firebase {url, firestoreId, storagePath}."""
        world.service.add_call()
        world.service.add_session("s1", "recording", filename=f"{CHANNEL}_2026.wav")
        status, data = await post(client, "/api/recording/stop", {"sid": "s1"}, AS_BOB)
        assert status == 200
        assert set(data) == STOP_KEYS
        assert data == {
            "sid": "s1",
            "channel": CHANNEL,
            "groupId": "g1",
            "user1": ALICE,
            "user2": BOB,
            "filename": f"{CHANNEL}_2026.wav",
            "format": "wav",
            "duration": 120000,
            "firebase": {
                "url": f"http://storage.test/recordings/{CHANNEL}_2026.wav",
                "firestoreId": "s1",
                "storagePath": f"recordings/{CHANNEL}_2026.wav",
            },
            "status": "stopped",
        }
        assert world.service.stops == ["s1"]

    async def test_without_storage_firebase_is_null(self, client: Client, world: World) -> None:
        """A recording kept locally (no Storage) answers firebase: null, as the seed did."""
        world.service.add_call()
        world.service.add_session("s1", "recording", filename="f.wav")
        world.service.recorder.storage = False
        status, data = await post(client, "/api/recording/stop", {"sid": "s1"}, AS_ALICE)
        assert status == 200 and data["firebase"] is None and data["status"] == "stopped"

    async def test_stop_by_channel_stops_every_session_on_it(self, client: Client, world: World) -> None:
        """By channel, each in-progress session on it is asked to stop; the newest is reported."""
        world.service.add_call()
        world.service.add_session("older", "recording", age_s=30, filename="a.wav")
        world.service.add_session("newer", "recording", age_s=5, filename="b.wav")
        world.service.add_session("elsewhere", "recording", channel="g1_x_y", callId=None)
        status, data = await post(client, "/api/recording/stop", {"channel": CHANNEL}, AS_ALICE)
        assert status == 200 and data["sid"] == "newer" and data["filename"] == "b.wav"
        assert sorted(world.service.stops) == ["newer", "older"]
        assert world.service.sessions["elsewhere"]["status"] == "recording"

    async def test_stop_by_channel_reports_the_session_that_records(self, client: Client, world: World) -> None:
        """A newer request the recorder never began is asked to stop too, but the recording one is reported."""
        world.service.add_call()
        world.service.add_session("recording", "recording", age_s=30, filename="a.wav")
        world.service.add_session("queued", "requested", age_s=5)
        world.service.recorder.begins = False
        status, data = await post(client, "/api/recording/stop", {"channel": CHANNEL}, AS_ALICE)
        assert status == 200 and data["sid"] == "recording" and data["status"] == "stopped"
        assert sorted(world.service.stops) == ["queued", "recording"]
        assert world.service.sessions["queued"]["status"] == "requested"

    async def test_sid_wins_over_channel(self, client: Client, world: World) -> None:
        """With both sid and channel, only the session named by sid is stopped."""
        world.service.add_call()
        world.service.add_session("s1", "recording", filename="a.wav")
        world.service.add_session("s2", "recording", filename="b.wav")
        status, data = await post(client, "/api/recording/stop", {"sid": "s1", "channel": CHANNEL}, AS_ALICE)
        assert status == 200 and data["sid"] == "s1"
        assert world.service.stops == ["s1"]

    async def test_nothing_on_the_channel_is_404(self, client: Client, world: World) -> None:
        """A channel with no session in progress is a 404 naming channel."""
        world.service.add_call()
        world.service.add_session("done", "stopped")
        status, data = await post(client, "/api/recording/stop", {"channel": CHANNEL}, AS_ALICE)
        assert status == 404 and data["field"] == "channel"

    async def test_unknown_sid_is_404(self, client: Client) -> None:
        """An unknown sid is a 404 naming sid."""
        status, data = await post(client, "/api/recording/stop", {"sid": "nope"}, AS_ALICE)
        assert status == 404 and data["field"] == "sid"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({}, "sid"),
            ({"sid": ""}, "sid"),
            ({"sid": "a/b"}, "sid"),
            ({"sid": 5}, "sid"),
            ({"sid": "s" * 129}, "sid"),
            ({"channel": "a/b"}, "channel"),
            ({"channel": 7}, "channel"),
            ({"channel": "c" * 64}, "channel"),
        ],
    )
    async def test_bad_input_is_400(self, client: Client, body: dict[str, Any], field: str) -> None:
        """Neither sid nor channel, or a malformed one, is a 400 naming the field."""
        status, data = await post(client, "/api/recording/stop", body, AS_ALICE)
        assert status == 400 and data["field"] == field

    async def test_stranger_is_403_and_nothing_stops(self, client: Client, world: World) -> None:
        """A user outside the call may not stop its recording, by sid or by channel."""
        world.service.add_call()
        world.service.add_session("s1", "recording")
        assert (await post(client, "/api/recording/stop", {"sid": "s1"}, AS_MALLORY))[0] == 403
        assert (await post(client, "/api/recording/stop", {"channel": CHANNEL}, AS_MALLORY))[0] == 403
        assert world.service.stops == [] and "stopRequested" not in world.service.sessions["s1"]

    async def test_legacy_users_may_stop(self, client: Client, world: World) -> None:
        """user2 of a legacy channel stops its session; carol, whom it does not name, may not."""
        world.service.add_session("leg", "recording", channel=LEGACY, callId=None, filename="l.wav")
        assert (await post(client, "/api/recording/stop", {"sid": "leg"}, AS_CAROL))[0] == 403
        status, data = await post(client, "/api/recording/stop", {"channel": LEGACY}, AS_BOB)
        assert status == 200 and data["user1"] == ALICE and data["user2"] == BOB and data["groupId"] == "g1"

    async def test_user_named_as_user1_may_stop(self, client: Client, world: World) -> None:
        """A session whose user1 is the caller is theirs even when its channel names nobody; others' not."""
        world.service.add_session("x", "recording", channel="ops", callId=None, user1=CAROL, filename="x.wav")
        assert (await post(client, "/api/recording/stop", {"sid": "x"}, AS_BOB))[0] == 403
        status, data = await post(client, "/api/recording/stop", {"sid": "x"}, AS_CAROL)
        assert status == 200 and data["status"] == "stopped"

    async def test_already_stopped_answers_at_once(self, client: Client, world: World) -> None:
        """Stopping a finished session reports it without asking the recorder again."""
        world.service.add_call()
        world.service.add_session(
            "s1", "stopped", filename="f.wav", format="wav", duration=5000, url="u", storagePath="recordings/f.wav"
        )
        status, data = await post(client, "/api/recording/stop", {"sid": "s1"}, AS_ALICE)
        assert status == 200 and data["duration"] == 5000 and data["firebase"]["storagePath"] == "recordings/f.wav"
        assert world.service.stops == []

    async def test_recorder_not_finishing_is_503_with_the_sid(self, client: Client, world: World) -> None:
        """After the wait, 503 names the sid and status; the stop stays requested."""
        world.service.add_call()
        world.service.add_session("s1", "recording")
        world.service.recorder.finishes = False
        status, data = await post(client, "/api/recording/stop", {"sid": "s1"}, AS_ALICE)
        assert status == 503 and data["sid"] == "s1" and data["status"] == "recording"
        assert "call stop again" in data["error"]
        assert world.service.sessions["s1"]["stopRequested"] is True

    async def test_failed_recording_reports_failed(self, client: Client, world: World) -> None:
        """A session that ended failed is reported with status failed and its error."""
        world.service.add_call()
        world.service.add_session("s1", "failed", error="upload_failed")
        status, data = await post(client, "/api/recording/stop", {"sid": "s1"}, AS_ALICE)
        assert status == 200 and data["status"] == "failed" and data["error"] == "upload_failed"
        assert set(data) == STOP_KEYS | {"error"} and data["firebase"] is None

    async def test_admin_and_open_mode_may_stop_anything(
        self, client: Client, open_client: Client, world: World
    ) -> None:
        """An admin and the open mode stop sessions that are not theirs."""
        world.service.add_session("a", "recording", channel="ops", callId=None, filename="a.wav")
        world.service.add_session("b", "recording", channel="ops2", callId=None, filename="b.wav")
        assert (await post(client, "/api/recording/stop", {"sid": "a"}, AS_ADMIN))[0] == 200
        assert (await post(open_client, "/api/recording/stop", {"channel": "ops2"}))[0] == 200
        assert sorted(world.service.stops) == ["a", "b"]

    async def test_firestore_down_is_503(self, client: Client, world: World) -> None:
        """A Firestore failure is a 503."""
        world.service.failure = Unavailable("down")
        status, _ = await post(client, "/api/recording/stop", {"sid": "s1"}, AS_ALICE)
        assert status == 503

    async def test_no_authorization_is_401(self, client: Client, world: World) -> None:
        """Without a bearer token nothing stops."""
        world.service.add_session("s1", "recording")
        status, _ = await post(client, "/api/recording/stop", {"sid": "s1"})
        assert status == 401 and world.service.stops == []


# ---------------------------------------------------------------------------------------------- status, list


class TestStatus:
    """GET /api/recording/status lists sessions in progress that the caller may see."""

    def seed(self, world: World) -> None:
        world.service.add_call()
        world.service.add_call("c2", callerId=CAROL, receiverId="dave", channelName="g2_carol_dave_1")
        world.service.add_session("mine", "recording", age_s=1, uid=999999, filename="m.wav", recordedAt=NOW_DT)
        world.service.add_session("theirs", "requested", channel="g2_carol_dave_1", callId="c2", requestedBy=CAROL)
        world.service.add_session("legacy", "stopping", age_s=2, channel="g9_bob_zed", callId=None)
        world.service.add_session("finished", "stopped")

    async def test_user_sees_only_their_sessions(self, client: Client, world: World) -> None:
        """Bob sees his call's and his legacy channel's sessions, newest first, not others' or finished ones."""
        self.seed(world)
        status, data = await get(client, "/api/recording/status", AS_BOB)
        assert status == 200
        assert [s["sid"] for s in data["sessions"]] == ["mine", "legacy"] and data["count"] == 2
        mine = data["sessions"][0]
        assert mine == {
            "sid": "mine",
            "channel": CHANNEL,
            "callId": "c1",
            "uid": 999999,
            "filename": "m.wav",
            "status": "recording",
            "requestedBy": ALICE,
            "stopRequested": False,
            "createdAt": "2026-02-02T02:39:59.000000Z",
            "recordedAt": "2026-02-02T02:40:00.000000Z",
        }
        assert data["sessions"][1]["callId"] is None and data["sessions"][1]["uid"] == DEFAULT_RECORDER_UID

    async def test_admin_and_open_mode_see_all(self, client: Client, open_client: Client, world: World) -> None:
        """Admins and the open mode see every session in progress."""
        self.seed(world)
        for who, headers in ((client, AS_ADMIN), (open_client, {})):
            status, data = await get(who, "/api/recording/status", headers)
            assert status == 200 and {s["sid"] for s in data["sessions"]} == {"mine", "theirs", "legacy"}

    async def test_stranger_sees_nothing(self, client: Client, world: World) -> None:
        """Mallory takes part in nothing, so the list is empty."""
        self.seed(world)
        status, data = await get(client, "/api/recording/status", AS_MALLORY)
        assert status == 200 and data == {"sessions": [], "count": 0}

    async def test_errors(self, client: Client, world: World) -> None:
        """No token is 401; Firestore down is 503."""
        assert (await get(client, "/api/recording/status"))[0] == 401
        world.service.failure = Unavailable("down")
        assert (await get(client, "/api/recording/status", AS_ALICE))[0] == 503


class TestList:
    """GET /api/recording/list lists stored recordings, newest first, the caller's own unless admin."""

    def seed(self, world: World) -> None:
        for index, (user1, user2) in enumerate([(ALICE, BOB), (BOB, CAROL), (CAROL, "dave"), (ALICE, BOB)]):
            world.service.add_session(
                f"r{index}",
                "stopped",
                age_s=100 - index,
                user1=user1,
                user2=user2,
                groupId="g1",
                filename=f"r{index}.wav",
                url=f"u{index}",
                storagePath=f"recordings/r{index}.wav",
                duration=1000,
                fileSize=32044,
                format="wav",
                spec={"sampleRate": 16000, "channels": 1, "bitDepth": 16},
                recordedAt=NOW_DT,
                stoppedAt=NOW_DT,
            )
        world.service.add_session("live", "recording", user1=ALICE, user2=BOB)

    async def test_user_gets_their_own_newest_first(self, client: Client, world: World) -> None:
        """Bob gets the three naming him, newest first, with the seed's metadata."""
        self.seed(world)
        status, data = await get(client, "/api/recording/list", AS_BOB)
        assert status == 200
        assert [r["sid"] for r in data["recordings"]] == ["r3", "r1", "r0"] and data["count"] == 3
        first = data["recordings"][0]
        assert first["filename"] == "r3.wav" and first["url"] == "u3" and first["duration"] == 1000
        assert first["spec"] == {"sampleRate": 16000, "channels": 1, "bitDepth": 16} and first["interrupted"] is False
        assert world.service.stored_calls == [(50, BOB)]

    async def test_admin_gets_all_and_limit_applies(self, client: Client, world: World) -> None:
        """An admin lists everyone's recordings; limit bounds the answer."""
        self.seed(world)
        status, data = await get(client, "/api/recording/list?limit=2", AS_ADMIN)
        assert status == 200 and [r["sid"] for r in data["recordings"]] == ["r3", "r2"]
        assert world.service.stored_calls == [(2, None)]

    @pytest.mark.parametrize("limit", ["0", "201", "-1", "abc", "1.5", "²", "9" * 30])
    async def test_bad_limit_is_400(self, client: Client, limit: str) -> None:
        """A limit outside 1..200 or not an integer is a 400 naming limit."""
        status, data = await get(client, f"/api/recording/list?limit={limit}", AS_ALICE)
        assert status == 400 and data["field"] == "limit"

    async def test_errors(self, client: Client, world: World) -> None:
        """No token is 401; Firestore down is 503."""
        assert (await get(client, "/api/recording/list"))[0] == 401
        world.service.failure = Unavailable("down")
        assert (await get(client, "/api/recording/list", AS_ALICE))[0] == 503


class TestListAndStatusQueryParameters:
    """GET /api/recording/list and /status: whatever aiohttp makes of the query is a 400 naming it, or ignored."""

    @pytest.mark.parametrize("escaped", ["%ED%A0%80", "%F0", "%F0%9F%98", "%FF", "1%00", "%EF%BC%91"])
    async def test_escapes_in_limit_are_400(self, client: Client, world: World, escaped: str) -> None:
        """Percent-escapes of invalid UTF-8 (and a full-width digit) in limit are a 400 naming limit."""
        status, data = await raw_get(client, f"/api/recording/list?limit={escaped}".encode(), AS_ALICE)
        assert status == 400 and data["field"] == "limit"
        assert world.service.stored_calls == []

    @pytest.mark.parametrize("path", ["/api/recording/list", "/api/recording/status"])
    async def test_parameters_the_routes_do_not_read_are_ignored(self, client: Client, path: str) -> None:
        """channel and uid mean nothing to these routes: invalid UTF-8 in them changes nothing."""
        status, data = await raw_get(client, f"{path}?channel=%ED%A0%80&uid=%F0".encode(), AS_ALICE)
        assert status == 200 and data["count"] == 0

    @pytest.mark.usefixtures("python_parser")
    @pytest.mark.parametrize("raw", [b"\xed\xa0\x80", b"\xff", b"5\xf0"])
    async def test_raw_bytes_through_the_python_parser_are_400(self, client: Client, world: World, raw: bytes) -> None:
        """Raw non-UTF-8 bytes in limit, which the Python parser turns into lone surrogates, name limit."""
        status, data = await raw_get(client, b"/api/recording/list?limit=" + raw, AS_ALICE)
        assert status == 400 and data["field"] == "limit"
        assert world.service.stored_calls == []


# ---------------------------------------------------------------------------------------------- audio

WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "


@pytest.fixture
def audio() -> FakeAudio:
    return FakeAudio()


@pytest.fixture
async def audio_client(world: World, audio: FakeAudio) -> AsyncIterator[Client]:
    """The app on the world with a recording-file reader wired (the shared `client` has none)."""
    deps = dataclasses.replace(world.deps(), audio=audio)
    async with TestClient(TestServer(create_app(make_settings(), deps))) as test_client:
        yield test_client


class TestAudio:
    """GET /api/recording/{sid}/audio serves a stopped session's WAV file to the participants of its call."""

    def seed(self, world: World, audio: FakeAudio, status: str = "stopped") -> None:
        world.service.add_call()
        world.service.add_session(
            "s1", status, groupId="g1", user1=ALICE, user2=BOB, filename="s1.wav", storagePath="recordings/s1.wav"
        )
        audio.files["s1.wav"] = WAV

    @pytest.mark.parametrize("who", [AS_ALICE, AS_BOB], ids=["caller", "receiver"])
    async def test_participant_gets_the_file(
        self, audio_client: Client, world: World, audio: FakeAudio, who: dict[str, str]
    ) -> None:
        """The caller and the receiver get the bytes as audio/wav, cacheable only privately."""
        self.seed(world, audio)
        response = await audio_client.get("/api/recording/s1/audio", headers=who)
        assert response.status == 200 and response.content_type == "audio/wav"
        assert response.headers["Cache-Control"] == "private, max-age=3600"
        assert await response.read() == WAV

    @pytest.mark.parametrize("status", ["stopped", "recording"])
    async def test_group_member_outside_the_call_is_403(
        self, audio_client: Client, world: World, audio: FakeAudio, status: str
    ) -> None:
        """Carol, not in the call, gets 403 and no bytes, whether or not the recording is finished."""
        self.seed(world, audio, status)
        response = await audio_client.get("/api/recording/s1/audio", headers=AS_CAROL)
        body = await response.read()
        assert response.status == 403 and response.content_type == "application/json"
        assert (await response.json())["field"] == "sid" and WAV not in body

    async def test_unknown_sid_is_404(self, audio_client: Client, world: World, audio: FakeAudio) -> None:
        """A sid with no session is a 404 naming sid."""
        self.seed(world, audio)
        status, data = await get(audio_client, "/api/recording/nope/audio", AS_ALICE)
        assert (status, data["field"]) == (404, "sid") and "unknown recording session nope" in data["error"]

    async def test_session_still_recording_is_404(self, audio_client: Client, world: World, audio: FakeAudio) -> None:
        """A participant asking for a session that is still recording gets 404: there is no file yet."""
        self.seed(world, audio, "recording")
        status, data = await get(audio_client, "/api/recording/s1/audio", AS_ALICE)
        assert (status, data["field"]) == (404, "sid") and "no stored file yet" in data["error"]

    @pytest.mark.parametrize("sid", ["__s1__", "s" * 129, "a%0A"])
    async def test_invalid_sid_is_400(self, audio_client: Client, world: World, audio: FakeAudio, sid: str) -> None:
        """A sid that is no valid document id is a 400 naming sid, and no session is read."""
        self.seed(world, audio)
        status, data = await get(audio_client, f"/api/recording/{sid}/audio", AS_ALICE)
        assert (status, data["field"]) == (400, "sid")
        assert world.service.reads == {}

    async def test_no_audio_reader_is_503(self, client: Client, world: World, audio: FakeAudio) -> None:
        """An app built without a recording-file reader answers a participant's stopped session with 503."""
        self.seed(world, audio)
        status, data = await get(client, "/api/recording/s1/audio", AS_ALICE)
        assert status == 503 and "reading recording files is not configured" in data["error"]


# Raw bodies: a lone \uD800-\uDFFF escape is valid JSON text but no UTF-8 string (json.dumps would not write one).
SURROGATE_POSTS = [
    ("start-channel", "/api/recording/start", b'{"channel": "\\ud800"}', "channel"),
    ("start-extra", "/api/recording/start", b'{"channel": "g1_alice_bob", "x": ["\\udc00"]}', "x"),
    ("stop-sid", "/api/recording/stop", b'{"sid": "s\\ud800"}', "sid"),
    ("stop-channel", "/api/recording/stop", b'{"channel": "\\udfff"}', "channel"),
    ("stop-key", "/api/recording/stop", b'{"sid": "s1", "\\ud800": 1}', "body"),
]


class TestSidPattern:
    """A sid is matched in full: a trailing newline or a reserved id is a 400, not a lookup."""

    @pytest.mark.parametrize("sid", ["abc\n", "__x__"])
    async def test_is_400(self, client: Client, world: World, sid: str) -> None:
        """POST /api/recording/stop with such a sid answers 400 naming sid and stops nothing."""
        world.service.add_session("abc", "recording")
        response = await client.post("/api/recording/stop", json={"sid": sid}, headers=AS_ADMIN)
        data = await response.json()
        assert response.status == 400 and data["field"] == "sid", data
        assert world.service.stops == []


class TestLoneSurrogatesInRecordingBodies:
    """Both recording POST routes answer a lone surrogate escape in the body with a 400 naming the field."""

    @pytest.mark.parametrize(
        ("path", "raw", "field"), [case[1:] for case in SURROGATE_POSTS], ids=[case[0] for case in SURROGATE_POSTS]
    )
    async def test_is_400_and_nothing_is_requested(
        self, client: Client, world: World, path: str, raw: bytes, field: str
    ) -> None:
        """The answer is a 400 naming the field; no session is created or asked to stop."""
        world.service.add_session("s1", "recording")
        response = await client.post(path, data=raw, headers={**AS_ADMIN, "Content-Type": "application/json"})
        data = await response.json()
        assert response.status == 400, data
        assert data["field"] == field and "surrogate" in data["error"]
        assert world.service.created == [] and world.service.stops == []


# ---------------------------------------------------------------------------------------------- the model


class TestRecordingModel:
    """The pure rules of memharbor.recording_requests."""

    @pytest.mark.parametrize(
        ("channel", "expected"),
        [
            ("g1_alice_bob", ("g1", "alice", "bob")),
            ("group-1_u-1_u-2", ("group-1", "u-1", "u-2")),
            ("g1_alice_bob_1770000000000", None),
            ("g1_alice", None),
            ("g1__bob", None),
            ("g1_al ice_bob", None),
            ("g" * 37 + "_a_b", None),
        ],
    )
    def test_parse_legacy_channel(self, channel: str, expected: tuple[str, str, str] | None) -> None:
        """Exactly three id-shaped parts parse; anything else names nobody."""
        parsed = parse_legacy_channel(channel)
        assert (None if parsed is None else (parsed.group_id, parsed.user1, parsed.user2)) == expected

    def test_new_request_has_the_contract_fields(self) -> None:
        """A request has exactly the request fields with callId, and all but callId without."""
        with_call = new_request("ch", "server", "c1")
        assert set(with_call) == calls.RECORDING_REQUEST_FIELDS
        assert with_call["status"] == "requested" and with_call["createdAt"] is firestore.SERVER_TIMESTAMP
        assert set(new_request("g_a_b", "u")) == calls.RECORDING_REQUEST_FIELDS - {"callId"}
        assert call_session_id("c1") == "call-c1"

    def test_may_access(self) -> None:
        """user1/user2, call participants and legacy-named users may; strangers and dangling calls may not."""
        alice, mallory = Principal(uid=ALICE), Principal(uid=MALLORY)
        call = {"callerId": ALICE, "receiverId": BOB}
        assert may_access(alice, {"callId": "c1", "channel": "x"}, call)
        assert not may_access(mallory, {"callId": "c1", "channel": "x"}, call)
        assert not may_access(alice, {"callId": "c1", "channel": "g1_alice_bob"}, None)
        assert may_access(alice, {"channel": "g1_bob_alice"}, None)
        assert not may_access(mallory, {"channel": "g1_bob_alice"}, None)
        assert may_access(mallory, {"channel": "x", "user2": MALLORY}, None)
        assert may_access(Principal(uid="ops", admin=True), {"channel": "x"}, None)
        assert may_access(Principal.anyone(), {"channel": "x"}, None)


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

    create = get = update = _act


def _repository(error: BaseException | None, hang: bool = False) -> FirestoreRecordingRepository:
    return FirestoreRecordingRepository(lambda: _Boom(error, hang), timeout_s=0.05)


class TestFirestoreRecordingRepositoryErrors:
    """FirestoreRecordingRepository turns client failures into Unavailable or a domain refusal."""

    @pytest.mark.parametrize("error", [gexc.ServiceUnavailable("down"), gexc.DeadlineExceeded("slow"), OSError()])
    async def test_unavailable(self, error: BaseException) -> None:
        """Transport and API errors become Unavailable (answered 503)."""
        with pytest.raises(Unavailable):
            await _repository(error).get("s1")

    async def test_timeout(self) -> None:
        """A Firestore call that does not answer in time becomes Unavailable."""
        with pytest.raises(Unavailable):
            await _repository(None, hang=True).get("s1")

    async def test_existing_sid_is_a_conflict_and_missing_is_not_found(self) -> None:
        """Creating over an existing session is a Conflict; stopping a missing one is NotFound; both name sid."""
        with pytest.raises(Conflict) as exists:
            await _repository(gexc.AlreadyExists("exists")).create("s1", {})
        assert exists.value.field == "sid"
        with pytest.raises(NotFound) as missing:
            await _repository(gexc.NotFound("missing")).request_stop("s1")
        assert missing.value.field == "sid"


# ---------------------------------------------------------------------------------------------- OpenAPI


class TestResponsesMatchOpenApi:
    """Each recording route's bodies fit the documented schemas."""

    async def test_start_stop_and_their_503s(self, client: Client, world: World) -> None:
        """start, stop (stopped and failed) and the 503 bodies with a sid fit their schemas."""
        shapes = await ResponseShapes.served(client)
        world.service.add_call()
        _, started = await post(client, "/api/recording/start", {"channel": CHANNEL}, AS_ALICE)
        shapes.check(started, "/api/recording/start", "post")
        _, stopped = await post(client, "/api/recording/stop", {"sid": started["sid"]}, AS_ALICE)
        shapes.check(stopped, "/api/recording/stop", "post")
        world.service.add_session("f", "failed", error="x")
        _, failed = await post(client, "/api/recording/stop", {"sid": "f"}, AS_ALICE)
        shapes.check(failed, "/api/recording/stop", "post")
        world.service.recorder.begins = False
        status, late = await post(client, "/api/recording/start", {"channel": "g1_alice_bob"}, AS_ALICE)
        assert status == 503
        shapes.check(late, "/api/recording/start", "post", 503)

    async def test_status_and_list(self, client: Client, world: World) -> None:
        """status and list bodies (with items) fit their schemas."""
        TestList().seed(world)
        world.service.add_call()
        shapes = await ResponseShapes.served(client)
        shapes.check((await get(client, "/api/recording/status", AS_ADMIN))[1], "/api/recording/status", "get")
        shapes.check((await get(client, "/api/recording/list", AS_ADMIN))[1], "/api/recording/list", "get")
