"""Unit tests of the web console's server side: its views, admin routes, static files, demo seed and dev-token."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from memharbor import cli, dev
from memharbor.errors import Unavailable
from memharbor.repositories.console import StoredAudio
from tests.support.api_worlds import AS_ADMIN, AS_ALICE, TOKENS, make_settings
from tests.support.fake_console import FakeAudio, FakeConsole
from tests.support.http_fakes import FakeAuthenticator, FakeClock, FakeHealth, Unused
from tests.support.json_client import Client, get
from tests.support.openapi_shapes import ResponseShapes
from token_http import console_views
from token_http.app import create_app
from token_http.keys import Deps

NOW = datetime(2026, 2, 3, 12, 0, 0, tzinfo=UTC)


def call(status: str = "pending", **fields: Any) -> dict[str, Any]:
    """A call document as the watcher leaves it, created 10 s before NOW."""
    return {
        "callId": "c1",
        "groupId": "g1",
        "callerId": "alice",
        "receiverId": "bob",
        "status": status,
        "createdAt": NOW - timedelta(seconds=10),
        "updatedAt": NOW - timedelta(seconds=1),
        "channelName": "g1_abc_1",
        "pushSent": True,
        "pushPlatform": "android",
        **fields,
    }


def server_doc(result: str = "sent", error: str | None = None) -> dict[str, Any]:
    """callServer/{callId} with one incoming-call push record."""
    push = {"platform": "android", "result": result, "error": error, "at": NOW - timedelta(seconds=9)}
    return {"status": "pending", "pushes": {"pending": {"phone-1": push}}}


class TestViews:
    """The pure views: seconds ringing, problems, workers and recordings from stored documents."""

    def test_ringing_seconds_until_now_answer_or_end(self) -> None:
        """A pending call rings until now; an answered one until its answer; a missed one until its end."""
        rows = console_views.call_rows(
            [
                ("p", call(), None),
                ("a", call("accepted", answeredAt=NOW - timedelta(seconds=6)), None),
                ("m", call("missed", endedAt=NOW - timedelta(seconds=1)), None),
            ],
            NOW,
        )
        assert [r["ringingSeconds"] for r in rows] == [10.0, 4.0, 9.0]
        assert rows[0]["call"]["pushPlatform"] == "android" and rows[0]["server"] is None

    def test_problems_name_push_errors_failed_devices_and_violations(self) -> None:
        """A push error, a device's failed push and a violation each become one problem of their call."""
        violation = {"reason": "not_group_members", "attempted": "pending", "restored": None, "at": NOW}
        rows = console_views.call_rows(
            [
                ("e", call(pushSent=False, pushError="no_device_token"), None),
                ("f", call(), server_doc("dead_token", "fcm:404:UNREGISTERED")),
                ("v", call(violation=violation), server_doc()),
            ],
            NOW,
        )
        found = console_views.problems(rows)
        assert [(p["callId"], p["kind"]) for p in found] == [
            ("e", "push_error"),
            ("f", "push_failed"),
            ("v", "violation"),
        ]
        assert found[1]["detail"] == "phone-1 (android): dead_token fcm:404:UNREGISTERED"
        assert found[2]["detail"].startswith("not_group_members (found pending")

    def test_workers_alive_by_expiry_and_sorted(self) -> None:
        """A heartbeat whose expiresAt is ahead is alive; the rows are sorted by kind, times as ISO 8601."""
        beats = [
            {"kind": "watcher", "instanceId": "w1", "pid": 7, "expiresAt": NOW + timedelta(seconds=5), "status": {}},
            {"kind": "recorder", "instanceId": "r1", "pid": True, "expiresAt": NOW - timedelta(seconds=1)},
        ]
        rows = console_views.worker_rows(beats, NOW)
        assert [(r["kind"], r["alive"], r["pid"]) for r in rows] == [("recorder", False, None), ("watcher", True, 7)]
        assert rows[1]["expiresAt"] == "2026-02-03T12:00:05.000000Z"

    def test_recording_row_keeps_format_and_drops_junk(self) -> None:
        """A stopped session shows its format and spec; a malformed field reads as null."""
        doc = {
            "status": "stopped",
            "format": "wav",
            "spec": {"sampleRate": 16000, "channels": 1, "bitDepth": "16"},
            "duration": 2500,
            "fileSize": True,
            "createdAt": NOW,
        }
        row = console_views.recording_row("call-c1", doc)
        assert row["spec"] == {"sampleRate": 16000, "channels": 1, "bitDepth": None}
        assert (row["format"], row["duration"], row["fileSize"], row["createdAt"]) == (
            "wav",
            2500,
            None,
            "2026-02-03T12:00:00.000000Z",
        )

    def test_plain_turns_times_into_text(self) -> None:
        """Nested times become ISO strings and unknown objects their text."""
        assert console_views.plain({"a": [NOW, Path("x")], "b": 1}) == {
            "a": ["2026-02-03T12:00:00.000000Z", "x"],
            "b": 1,
        }


@pytest.fixture
def console() -> FakeConsole:
    return FakeConsole()


@pytest.fixture
def audio() -> FakeAudio:
    return FakeAudio()


@pytest.fixture
def health() -> FakeHealth:
    return FakeHealth()


@pytest.fixture
async def client(console: FakeConsole, audio: FakeAudio, health: FakeHealth) -> AsyncIterator[Client]:
    deps = Deps(
        authenticator=FakeAuthenticator(TOKENS),
        calls=Unused(),
        health=health,
        clock=FakeClock(NOW.timestamp()),
        console=console,
        audio=audio,
    )
    async with TestClient(TestServer(create_app(make_settings(), deps))) as test_client:
        yield test_client


class TestAdminRoutes:
    """The console's admin JSON routes over in-memory fakes, checked against the served OpenAPI document."""

    async def test_calls_newest_first_within_schema(self, client: Client, console: FakeConsole) -> None:
        """An admin gets the most recently updated calls first, each with its server document."""
        console.calls["old"] = call(updatedAt=NOW - timedelta(minutes=5))
        console.calls["new"] = call()
        console.servers["new"] = server_doc()
        status, body = await get(client, "/api/admin/calls?limit=5", AS_ADMIN)
        assert status == 200
        assert [row["callId"] for row in body["calls"]] == ["new", "old"]
        assert body["calls"][0]["server"]["pushes"][0]["device"] == "phone-1"
        assert console.limits == [5]
        (await ResponseShapes.served(client)).check(body, "/api/admin/calls", "GET")

    async def test_problems_within_schema(self, client: Client, console: FakeConsole) -> None:
        """A failed push is listed as a problem of its call."""
        console.calls["f"] = call(pushSent=False, pushError="fcm:timeout")
        status, body = await get(client, "/api/admin/problems", AS_ADMIN)
        assert status == 200 and body["scannedCalls"] == 1
        assert body["problems"] == [
            {"callId": "f", "kind": "push_error", "detail": "fcm:timeout", "at": "2026-02-03T11:59:50.000000Z"}
        ]
        (await ResponseShapes.served(client)).check(body, "/api/admin/problems", "GET")

    async def test_workers_within_schema(self, client: Client, health: FakeHealth) -> None:
        """Heartbeats are listed with whether they are alive."""
        health.beats = [{"kind": "watcher", "instanceId": "w1", "expiresAt": NOW + timedelta(seconds=3)}]
        status, body = await get(client, "/api/admin/workers", AS_ADMIN)
        assert status == 200 and [w["alive"] for w in body["workers"]] == [True]
        (await ResponseShapes.served(client)).check(body, "/api/admin/workers", "GET")

    async def test_recordings_and_audio(self, client: Client, console: FakeConsole, audio: FakeAudio) -> None:
        """A stopped session is listed with its format, and its file is served as audio/wav."""
        console.recordings["call-c1"] = {"status": "stopped", "format": "wav", "filename": "f.wav", "createdAt": NOW}
        audio.files["f.wav"] = b"RIFF....WAVE"
        status, body = await get(client, "/api/admin/recordings", AS_ADMIN)
        assert status == 200 and body["recordings"][0]["sid"] == "call-c1"
        (await ResponseShapes.served(client)).check(body, "/api/admin/recordings", "GET")
        response = await client.get("/api/admin/recordings/call-c1/audio", headers=AS_ADMIN)
        assert response.status == 200 and response.content_type == "audio/wav"
        assert await response.read() == b"RIFF....WAVE"

    async def test_audio_of_unfinished_or_unstored_session_is_404(
        self, client: Client, console: FakeConsole, audio: FakeAudio
    ) -> None:
        """No file while recording, none when it is not stored here, none for an unknown session."""
        console.recordings["rec"] = {"status": "recording", "filename": "r.wav"}
        console.recordings["gone"] = {"status": "stopped", "filename": "missing.wav"}
        for sid in ("rec", "gone", "nope"):
            status, body = await get(client, f"/api/admin/recordings/{sid}/audio", AS_ADMIN)
            assert (status, body["field"]) == (404, "sid"), sid

    async def test_users_are_refused_and_limits_checked(self, client: Client, console: FakeConsole) -> None:
        """A participant gets 403 from every console route; a limit out of range is 400 naming it."""
        for path in ("/api/admin/calls", "/api/admin/problems", "/api/admin/workers", "/api/admin/recordings"):
            status, _ = await get(client, path, AS_ALICE)
            assert status == 403, path
        status, body = await get(client, "/api/admin/calls?limit=101", AS_ADMIN)
        assert (status, body["field"]) == (400, "limit")
        assert console.limits == []

    async def test_firestore_down_is_503(self, client: Client, console: FakeConsole) -> None:
        """Unavailable from the reader is 503."""
        console.failure = Unavailable("down")
        status, _ = await get(client, "/api/admin/calls", AS_ADMIN)
        assert status == 503


class TestStaticFiles:
    """The console's files and configuration."""

    async def test_page_script_and_style_are_served(self, client: Client) -> None:
        """/console is the page, which loads the script and the style sheet served next to it."""
        page = await client.get("/console")
        assert page.status == 200 and page.content_type == "text/html"
        html = await page.text()
        assert 'src="/console/app.js"' in html and 'href="/console/style.css"' in html
        script = await client.get("/console/app.js")
        assert script.content_type == "text/javascript" and "signInWithPassword" in await script.text()
        status, body = await get(client, "/console/console_routes.py")
        assert (status, body["field"]) == (404, "name")

    async def test_config_outside_emulator_mode_has_no_demo(self, client: Client) -> None:
        """Without the Auth emulator the page gets no emulator addresses and no demo accounts."""
        status, body = await get(client, "/console/config.json")
        assert status == 200
        assert body == {"projectId": "demo-routes", "authEmulator": None, "firestoreEmulator": None, "demo": None}

    async def test_config_in_emulator_mode_names_the_demo(self) -> None:
        """In emulator mode the page learns the emulators and the accounts `memharbor dev` creates."""
        settings = make_settings(
            FIREBASE_USE_EMULATOR="1",
            FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099",
            FIRESTORE_EMULATOR_HOST="127.0.0.1:8080",
        )
        deps = Deps(authenticator=FakeAuthenticator(TOKENS), calls=Unused(), health=FakeHealth(), clock=FakeClock(0))
        async with TestClient(TestServer(create_app(settings, deps))) as test_client:
            status, body = await get(test_client, "/console/config.json")
            (await ResponseShapes.served(test_client)).check(body, "/console/{name}", "GET")
        assert status == 200
        assert (body["authEmulator"], body["firestoreEmulator"]) == ("http://127.0.0.1:9099", "http://127.0.0.1:8080")
        assert body["demo"]["caller"]["uid"] == dev.DEMO_CAREGIVER and body["demo"]["admin"]["uid"] == dev.DEMO_ADMIN


class TestStoredAudio:
    """StoredAudio without a bucket reads the recorder's local directory, and only plain file names there."""

    async def test_local_file_by_name_only(self, tmp_path: Path) -> None:
        """The file is read by its base name inside the directory; a path in the name cannot leave it."""
        (tmp_path / "a.wav").write_bytes(b"wav")
        files = StoredAudio(None, tmp_path)
        assert await files.read({"filename": "a.wav"}) == b"wav"
        assert await files.read({"filename": "../../a.wav"}) == b"wav"
        assert await files.read({"filename": "b.wav"}) is None
        assert await files.read({}) is None


class TestDemoSeed:
    """What `memharbor dev` seeds for the demo."""

    def test_each_member_has_a_fresh_device_and_no_legacy_token(self) -> None:
        """Both members get one device document stamped now; their user documents carry no tokens."""
        documents = dev.demo_documents(NOW)
        for uid in (dev.DEMO_CAREGIVER, dev.DEMO_ELDER):
            device_id, fields = dev.DEMO_DEVICES[uid]
            device = documents[f"users/{uid}/devices/{device_id}"]
            assert device["updatedAt"] == NOW and device["platform"] == fields["platform"]
            assert not {"voipToken", "fcmToken", "apnsToken"} & documents[f"users/{uid}"].keys()
        assert documents[f"groups/{dev.DEMO_GROUP_ID}"]["memberIds"] == [dev.DEMO_CAREGIVER, dev.DEMO_ELDER]
        assert [a.admin for a in dev.DEMO_ACCOUNTS] == [False, False, True]


def _payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


class TestDevToken:
    """`memharbor dev-token UID` prints an emulator-format ID token."""

    def test_admin_token_for_a_uid(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """The token names the uid, the dev project and, with --admin, the admin claim."""
        monkeypatch.setenv("MEMHARBOR_ENV_FILE", str(tmp_path / "absent.env"))
        monkeypatch.delenv("FIREBASE_PROJECT_ID", raising=False)
        monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
        out = io.StringIO()
        with redirect_stdout(out):
            assert cli.main(["dev-token", "demo-elder", "--admin", "--hours", "1"]) == 0
        payload = _payload(out.getvalue().strip())
        assert (payload["sub"], payload["aud"], payload["admin"]) == ("demo-elder", "memharbor-local", True)
        assert payload["exp"] - payload["iat"] == 3600

    def test_bad_uid_is_a_usage_error(self) -> None:
        """A uid with a slash is refused by the argument parser (exit status 2)."""
        with pytest.raises(SystemExit) as stopped:
            cli.main(["dev-token", "a/b"])
        assert stopped.value.code == 2
