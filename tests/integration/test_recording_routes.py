"""The seed's /api/recording/* routes end to end: `memharbor http` on the Firestore emulator, real ID tokens,
and a stand-in recorder thread that plays the recorder's side of the `recordings/{sid}` contract.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from memharbor import calls
from memharbor.emulators import EmulatorSet
from memharbor.recording_requests import call_session_id
from tests.support.firestore_rest import FirestoreRest
from tests.support.groups import seed_group
from tests.support.http_process import Api
from tests.support.recorder_thread import StandInRecorder
from tests.support.waiting import wait_for

ALICE, BOB, MALLORY, OPS = "alice-uid-0000000000000000001", "bob-uid-00000000000000000002", "mallory-uid", "ops"
CHANNEL = "grp1_3f2a9c1b7d4e_1770000000000"
LEGACY = f"grp1_{ALICE}_{BOB}"  # 63 bytes: the longest a legacy channel of two real uids can be
START_WAIT_S = 10.0


# ---------------------------------------------------------------------------------------------- harness


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[FirestoreRest]:
    """The emptied Firestore emulator as the owner (bypassing the rules)."""
    client = FirestoreRest(clean_emulators.firestore.address, clean_emulators.project_id).as_owner()
    seed_group(client, "grp1", [ALICE, BOB])
    yield client
    client.close()


def seed_call(db: FirestoreRest, call_id: str = "call-1", status: str = "accepted", **extra: Any) -> None:
    """A call as the watcher leaves it: with its channel assigned."""
    now = datetime.now(UTC)
    doc = {
        "callId": call_id,
        "groupId": "grp1",
        "callerId": ALICE,
        "receiverId": BOB,
        "status": status,
        "channelName": CHANNEL,
        "createdAt": now,
        "updatedAt": now,
        **extra,
    }
    assert db.create(f"calls/{call_id}", doc).ok


def start(api: Api, channel: str, uid: str | None, admin: bool = False) -> tuple[int, Any]:
    return api.post("/api/recording/start", {"channel": channel}, uid, admin)


# ---------------------------------------------------------------------------------------------- start and stop


class TestCallRecording:
    """A participant records a live call through the routes; the recorder does the recording."""

    def test_start_then_stop(self, api: Api, db: FirestoreRest, recorder: StandInRecorder) -> None:
        """start writes the app's request and answers once recording; stop answers the uploaded result."""
        seed_call(db)
        status, started = start(api, CHANNEL, ALICE)
        assert status == 200, started
        assert set(started) == {"sid", "channel", "uid", "filename", "status"}
        assert started["status"] == "recording" and started["uid"] == 999999 and started["channel"] == CHANNEL
        assert started["filename"].startswith(CHANNEL + "_") and started["filename"].endswith(".wav")
        doc = db.get(f"recordings/{started['sid']}").data
        assert (doc["channel"], doc["callId"], doc["requestedBy"]) == (CHANNEL, "call-1", ALICE)
        assert isinstance(doc["createdAt"], datetime) and recorder.began == [started["sid"]]

        status, stopped = api.post("/api/recording/stop", {"sid": started["sid"]}, BOB)
        assert status == 200, stopped
        assert stopped == {
            "sid": started["sid"],
            "channel": CHANNEL,
            "groupId": "grp1",
            "user1": ALICE,
            "user2": BOB,
            "filename": started["filename"],
            "format": "wav",
            "duration": 1500,
            "firebase": {
                "url": f"http://storage.test/recordings/{started['filename']}",
                "firestoreId": started["sid"],
                "storagePath": f"recordings/{started['filename']}",
            },
            "status": "stopped",
        }
        final = db.get(f"recordings/{started['sid']}").data
        assert final["stopRequested"] is True and final["status"] == "stopped"
        assert db.get("calls/call-1").data["recordingId"] == started["sid"]

    def test_stop_by_channel(self, api: Api, db: FirestoreRest, recorder: StandInRecorder) -> None:
        """stop {channel} stops the session in progress on it."""
        seed_call(db)
        status, started = start(api, CHANNEL, BOB)
        assert status == 200
        status, stopped = api.post("/api/recording/stop", {"channel": CHANNEL}, ALICE)
        assert status == 200 and stopped["sid"] == started["sid"] and stopped["status"] == "stopped"
        assert api.post("/api/recording/stop", {"channel": CHANNEL}, ALICE)[0] == 404

    def test_second_start_joins_the_first(self, api: Api, db: FirestoreRest, recorder: StandInRecorder) -> None:
        """While a session records the channel, another start answers with it instead of a duplicate."""
        seed_call(db)
        first = start(api, CHANNEL, ALICE)[1]
        status, second = start(api, CHANNEL, BOB)
        assert status == 200 and second["sid"] == first["sid"]
        assert len(db.query("recordings").documents) == 1

    def test_simultaneous_starts_make_one_request(self, api: Api, db: FirestoreRest, recorder: StandInRecorder) -> None:
        """Both participants starting at the same moment (twice each) get one session, named after the call."""
        seed_call(db)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda uid: start(api, CHANNEL, uid), [ALICE, BOB, ALICE, BOB]))
        assert [status for status, _ in answers] == [200] * 4
        assert {body["sid"] for _, body in answers} == {call_session_id("call-1")}
        assert len(db.query("recordings").documents) == 1

    def test_not_yours_is_403(self, api: Api, db: FirestoreRest, recorder: StandInRecorder) -> None:
        """A stranger can neither start nor stop the call's recording; without a token it is 401."""
        seed_call(db)
        assert start(api, CHANNEL, MALLORY)[0] == 403
        assert start(api, CHANNEL, None)[0] == 401
        status, started = start(api, CHANNEL, ALICE)
        assert status == 200
        assert api.post("/api/recording/stop", {"sid": started["sid"]}, MALLORY)[0] == 403
        assert api.post("/api/recording/stop", {"channel": CHANNEL}, MALLORY)[0] == 403
        assert "stopRequested" not in db.get(f"recordings/{started['sid']}").data

    def test_finished_call_is_409_and_bad_channel_400(self, api: Api, db: FirestoreRest) -> None:
        """An ended call cannot be recorded; an invalid channel is a 400 naming it; nothing is written."""
        seed_call(db, status="ended")
        status, data = start(api, CHANNEL, ALICE)
        assert status == 409 and "ended" in data["error"]
        status, data = start(api, "no/slashes", ALICE)
        assert status == 400 and data["field"] == "channel"
        assert db.query("recordings").documents == []


class TestWithoutRecorder:
    """No recorder picks the request up in time."""

    def test_start_answers_503_and_the_request_stays_queued(self, api: Api, db: FirestoreRest, emulators: Any) -> None:
        """After 10 s start answers 503 with the sid; the queued request is exactly what an app may write
        (the same fields pass the rules as the caller), and a recorder arriving later still records it.
        """
        seed_call(db)
        began = time.monotonic()
        status, data = start(api, CHANNEL, ALICE)
        elapsed = time.monotonic() - began
        assert status == 503 and data["status"] == "requested" and data["sid"]
        assert START_WAIT_S - 0.1 <= elapsed < START_WAIT_S + 6
        assert "/api/recording/stop" in data["error"]
        doc = db.get(f"recordings/{data['sid']}").data
        assert set(doc) == calls.RECORDING_REQUEST_FIELDS and doc["status"] == "requested"
        app_fields = {k: v for k, v in doc.items() if k != "createdAt"}
        twin = db.as_user(ALICE).create("recordings/app-written-twin", app_fields, server_time=["createdAt"])
        assert twin.ok, twin
        assert (
            db.as_user(MALLORY)
            .create("recordings/stranger-twin", {**app_fields, "requestedBy": MALLORY}, server_time=["createdAt"])
            .denied
        )
        late = StandInRecorder(emulators)
        late.start()
        try:
            wait_for(lambda: db.get(f"recordings/{data['sid']}").data["status"] == "recording", what="late start")
            status, stopped = api.post("/api/recording/stop", {"sid": data["sid"]}, ALICE)
            assert status == 200 and stopped["status"] == "stopped"
        finally:
            late.close()


class TestLegacyChannel:
    """A seed-era channel `{groupId}_{user1}_{user2}` that belongs to no call."""

    def test_named_users_record_it(self, api: Api, db: FirestoreRest, recorder: StandInRecorder) -> None:
        """user1 starts, user2 stops; the session has no callId and the result names both."""
        status, started = start(api, LEGACY, ALICE)
        assert status == 200, started
        assert "callId" not in db.get(f"recordings/{started['sid']}").data
        assert start(api, LEGACY, MALLORY)[0] == 403
        status, stopped = api.post("/api/recording/stop", {"channel": LEGACY}, BOB)
        assert status == 200
        assert (stopped["groupId"], stopped["user1"], stopped["user2"]) == ("grp1", ALICE, BOB)

    def test_unparseable_channel_is_403_for_users_not_admins(
        self, api: Api, db: FirestoreRest, recorder: StandInRecorder
    ) -> None:
        """A channel that is no call's and names nobody is refused for users and allowed for admins."""
        assert start(api, "lobby", ALICE)[0] == 403
        status, data = start(api, "lobby", OPS, admin=True)
        assert status == 200 and db.get(f"recordings/{data['sid']}").data["requestedBy"] == OPS


# ---------------------------------------------------------------------------------------------- audio


def download(api: Api, sid: str, uid: str) -> tuple[int, str, bytes]:
    """(status, content type, raw body) of GET /api/recording/{sid}/audio as `uid` (Api.request reads JSON only)."""
    url = f"{api.base}/api/recording/{sid}/audio"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api.token(uid)}"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return int(response.status), response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.headers.get_content_type(), exc.read()


class TestAudio:
    """GET /api/recording/{sid}/audio serves a stopped session's file from the Storage emulator."""

    def test_participant_downloads_and_stranger_is_403(
        self, api: Api, db: FirestoreRest, clean_emulators: EmulatorSet
    ) -> None:
        """The receiver gets the uploaded bytes as audio/wav; a stranger gets 403 and none of them."""
        seed_call(db)
        wav = b"RIFF\x24\x01\x00\x00WAVE" + bytes(range(256))
        path = "recordings/audio-route-test.wav"
        gcs = storage.Client(project=clean_emulators.project_id, credentials=AnonymousCredentials())
        gcs.bucket(clean_emulators.bucket).blob(path).upload_from_string(wav, content_type="audio/wav")
        session = {
            "channel": CHANNEL,
            "callId": "call-1",
            "status": "stopped",
            "requestedBy": ALICE,
            "groupId": "grp1",
            "user1": ALICE,
            "user2": BOB,
            "filename": "audio-route-test.wav",
            "storagePath": path,
            "createdAt": datetime.now(UTC),
        }
        sid = call_session_id("call-1")
        assert db.create(f"recordings/{sid}", session).ok
        assert download(api, sid, BOB) == (200, "audio/wav", wav)
        status, content_type, body = download(api, sid, MALLORY)
        assert (status, content_type) == (403, "application/json") and wav not in body
        assert json.loads(body)["field"] == "sid"


# ---------------------------------------------------------------------------------------------- status and list


class TestStatusAndList:
    """GET /api/recording/status and /api/recording/list as different users."""

    def test_status_shows_own_sessions_in_progress(
        self, api: Api, db: FirestoreRest, recorder: StandInRecorder
    ) -> None:
        """Participants see the session, a stranger does not, an admin sees all; stopped ones drop out."""
        seed_call(db)
        _, started = start(api, CHANNEL, ALICE)
        _, other = start(api, "lobby", OPS, admin=True)
        status, mine = api.request("GET", "/api/recording/status", uid=BOB)
        assert status == 200 and [s["sid"] for s in mine["sessions"]] == [started["sid"]]
        assert mine["sessions"][0]["status"] == "recording" and mine["sessions"][0]["callId"] == "call-1"
        assert api.request("GET", "/api/recording/status", uid=MALLORY)[1]["sessions"] == []
        everyone = api.request("GET", "/api/recording/status", uid=OPS, admin=True)[1]
        assert {s["sid"] for s in everyone["sessions"]} == {started["sid"], other["sid"]}
        api.post("/api/recording/stop", {"sid": started["sid"]}, ALICE)
        assert api.request("GET", "/api/recording/status", uid=BOB)[1]["sessions"] == []

    def test_list_is_newest_first_and_own(self, api: Api, db: FirestoreRest, recorder: StandInRecorder) -> None:
        """Stored recordings come newest first, bounded by limit; a stranger's list is empty."""
        sids = []
        for channel in (LEGACY, CHANNEL):
            if channel == CHANNEL:
                seed_call(db)
            status, started = start(api, channel, ALICE)
            assert status == 200
            assert api.post("/api/recording/stop", {"sid": started["sid"]}, ALICE)[0] == 200
            sids.append(started["sid"])
        status, listed = api.request("GET", "/api/recording/list", uid=BOB)
        assert status == 200 and [r["sid"] for r in listed["recordings"]] == sids[::-1]
        assert listed["recordings"][0]["url"] and listed["recordings"][0]["duration"] == 1500
        assert api.request("GET", "/api/recording/list?limit=1", uid=ALICE)[1]["count"] == 1
        assert api.request("GET", "/api/recording/list", uid=MALLORY)[1] == {"recordings": [], "count": 0}
        assert api.request("GET", "/api/recording/list", uid=OPS, admin=True)[1]["count"] == 2
        assert api.request("GET", "/api/recording/list?limit=0", uid=ALICE)[0] == 400


class TestOpenMode:
    """MEMHARBOR_AUTH=none: the seed's behaviour, no ID tokens."""

    def test_unauthenticated_start_stop(self, open_api: Api, db: FirestoreRest, recorder: StandInRecorder) -> None:
        """Anyone starts and stops a recording of any valid channel."""
        status, started = open_api.post("/api/recording/start", {"channel": "groupA_u1_u2"})
        assert status == 200 and started["status"] == "recording"
        assert db.get(f"recordings/{started['sid']}").data["requestedBy"] == "anonymous"
        status, stopped = open_api.post("/api/recording/stop", {"channel": "groupA_u1_u2"})
        assert status == 200 and (stopped["user1"], stopped["user2"]) == ("u1", "u2")
