"""token_http as a real process (`python -m memharbor http`) against the Firestore emulator."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.cloud import firestore

from memharbor.access import Principal
from memharbor.devtokens import emulator_id_token
from memharbor.emulators import EmulatorSet, ManagedProcess, free_port
from memharbor.repositories.calls import FirestoreCallRepository
from memharbor.repositories.client import LazyClient
from memharbor.repositories.workers import FirestoreWorkers
from memharbor.settings import http_settings
from tests.support.agora_tokens import (
    PUBLISHER_PRIVILEGES,
    SUBSCRIBER_PRIVILEGES,
    decode_006,
    decode_007,
    verify_006,
    verify_007,
)
from tests.support.http_fakes import FakeAuthenticator, SteppedClock
from tests.support.json_client import get
from token_http import health
from token_http.app import create_app
from token_http.keys import Deps

APP_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
APP_CERT = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
CALLER, RECEIVER, STRANGER = "caller-uid-1", "receiver-uid-2", "stranger-uid-3"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any
    elapsed: float


@dataclass
class Service:
    """A running token_http process: where it listens and where it logs."""

    process: ManagedProcess
    log_file: Path
    project_id: str

    @property
    def base(self) -> str:
        return f"http://{self.process.address}"

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        all_headers = dict(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, data=data, headers=all_headers, method=method)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=15) as raw:
                status, got, payload = raw.status, dict(raw.headers), raw.read()
        except urllib.error.HTTPError as exc:
            status, got, payload = exc.code, dict(exc.headers), exc.read()
        return Response(status, got, json.loads(payload) if payload else None, time.monotonic() - started)

    def id_token(self, uid: str, **claims: Any) -> str:
        return emulator_id_token(self.project_id, uid, **claims)


def _service_env(emulators: EmulatorSet, port: int, log_file: Path, **overrides: str) -> dict[str, str]:
    return {
        **os.environ,
        **emulators.env(),
        "AGORA_APP_ID": APP_ID,
        "AGORA_APP_CERT": APP_CERT,
        "MEMHARBOR_HTTP_HOST": "127.0.0.1",
        "MEMHARBOR_HTTP_PORT": str(port),
        "MEMHARBOR_AUTH": "firebase",
        "MEMHARBOR_LOG_FORMAT": "json",
        "MEMHARBOR_LOG_FILE": str(log_file),
        "MEMHARBOR_ENV_FILE": str(log_file.parent / "absent.env"),
        "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
        **overrides,
    }


def _start(emulators: EmulatorSet, directory: Path, **overrides: str) -> Iterator[Service]:
    port = free_port()
    log_file = directory / "token_http.log"
    process = ManagedProcess(
        "token_http",
        [sys.executable, "-m", "memharbor", "http"],
        "127.0.0.1",
        port,
        ready_path="/api/openapi.json",
        env=_service_env(emulators, port, log_file, **overrides),
    )
    process.start(timeout=60)
    try:
        yield Service(process, log_file, emulators.project_id)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def service(emulators: EmulatorSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One token_http process for the module, on a free port, logging JSON to a file."""
    yield from _start(emulators, tmp_path_factory.mktemp("token_http"))


@pytest.fixture(scope="module")
def db(emulators: EmulatorSet) -> Iterator[firestore.Client]:
    """An admin Firestore client on the emulator (bypasses the security rules)."""
    client = firestore.Client(project=emulators.project_id)
    yield client
    client.close()


@pytest.fixture
def clean(clean_emulators: EmulatorSet, service: Service) -> Service:
    """The service, with Firestore emptied before the test."""
    return service


def seed_call(db: firestore.Client, status: str, caller: str = CALLER, receiver: str = RECEIVER) -> str:
    """Write a call document as the watcher would leave it; return its channel name."""
    call_id = uuid.uuid4().hex[:12]
    channel = f"g1_{call_id}"
    db.collection("calls").document(call_id).set(
        {
            "callId": call_id,
            "groupId": "g1",
            "callerId": caller,
            "receiverId": receiver,
            "status": status,
            "channelName": channel,
            "createdAt": firestore.SERVER_TIMESTAMP,
            "updatedAt": firestore.SERVER_TIMESTAMP,
        }
    )
    return channel


class TestTokenAuth:
    """POST /api/token with real emulator ID tokens and call documents in Firestore."""

    def test_without_authorization_is_401(self, clean: Service) -> None:
        """No Authorization header gives a JSON 401 naming the header."""
        response = clean.request("POST", "/api/token", {"channel": "c1", "uid": 1})
        assert response.status == 401
        assert response.body["field"] == "Authorization"

    def test_invalid_id_token_is_401(self, clean: Service) -> None:
        """A malformed token and a token for another project are both 401."""
        assert clean.request("POST", "/api/token", {"channel": "c1", "uid": 1}, token="not.a.jwt").status == 401
        foreign = emulator_id_token("some-other-project", CALLER)
        assert clean.request("POST", "/api/token", {"channel": "c1", "uid": 1}, token=foreign).status == 401

    def test_caller_of_pending_call_gets_a_valid_006_token(self, clean: Service, db: firestore.Client) -> None:
        """The caller of a pending call gets a 006 token for its channel and uid, signed with the certificate."""
        channel = seed_call(db, "pending")
        before = int(time.time())
        response = clean.request(
            "POST",
            "/api/token",
            {"channel": channel, "uid": 4242, "role": "publisher", "expire": 900},
            token=clean.id_token(CALLER),
        )
        assert response.status == 200, response.body
        assert response.body["expire_in"] == 900
        assert before + 900 <= response.body["expire_at"] <= int(time.time()) + 900
        token = decode_006(response.body["token"])
        assert token.app_id == APP_ID
        assert verify_006(token, app_certificate=APP_CERT, channel=channel, uid="4242")
        assert set(token.privileges) == PUBLISHER_PRIVILEGES
        assert set(token.privileges.values()) == {response.body["expire_at"]}

    def test_receiver_of_accepted_call_gets_a_007_token_as_themself(self, clean: Service, db: firestore.Client) -> None:
        """The receiver of an accepted call gets an AccessToken2 for their own uid as user_account."""
        channel = seed_call(db, "accepted")
        response = clean.request(
            "POST",
            "/api/token",
            {"channel": channel, "user_account": RECEIVER, "version": "007"},
            token=clean.id_token(RECEIVER),
        )
        assert response.status == 200, response.body
        token = decode_007(response.body["token"])
        assert verify_007(token, app_certificate=APP_CERT)
        assert token.rtc.channel == channel and token.rtc.uid == RECEIVER
        assert set(token.rtc.privileges) == SUBSCRIBER_PRIVILEGES
        assert set(token.rtc.privileges.values()) == {86400}

    def test_stranger_gets_403(self, clean: Service, db: firestore.Client) -> None:
        """A signed-in user who is not in the call gets 403."""
        channel = seed_call(db, "accepted")
        response = clean.request("POST", "/api/token", {"channel": channel, "uid": 1}, token=clean.id_token(STRANGER))
        assert response.status == 403
        assert response.body["field"] == "channel"

    @pytest.mark.parametrize("status", ["ended", "declined", "missed", "cancelled"])
    def test_finished_call_gets_403(self, clean: Service, db: firestore.Client, status: str) -> None:
        """A participant of a finished call gets no token for its channel."""
        channel = seed_call(db, status)
        response = clean.request("POST", "/api/token", {"channel": channel, "uid": 1}, token=clean.id_token(CALLER))
        assert response.status == 403

    def test_unknown_channel_gets_403(self, clean: Service) -> None:
        """A channel no call uses gives 403."""
        response = clean.request(
            "POST", "/api/token", {"channel": "g1_nothing", "uid": 1}, token=clean.id_token(CALLER)
        )
        assert response.status == 403

    def test_user_account_of_someone_else_gets_403(self, clean: Service, db: firestore.Client) -> None:
        """A participant asking for the other participant's account gets 403 naming user_account."""
        channel = seed_call(db, "pending")
        response = clean.request(
            "POST", "/api/token", {"channel": channel, "user_account": RECEIVER}, token=clean.id_token(CALLER)
        )
        assert response.status == 403
        assert response.body["field"] == "user_account"

    def test_admin_claim_gets_any_token(self, clean: Service) -> None:
        """A user with the custom claim admin: true gets a token with no call in Firestore."""
        response = clean.request(
            "POST", "/api/token", {"channel": "any_channel", "uid": 77}, token=clean.id_token("ops", admin=True)
        )
        assert response.status == 200
        assert verify_006(decode_006(response.body["token"]), app_certificate=APP_CERT, channel="any_channel", uid="77")

    def test_bad_input_is_4xx_not_500(self, clean: Service) -> None:
        """Invalid JSON, wrong content type and an oversize body are 400, 415 and 413 from the real server."""
        admin = clean.id_token("ops", admin=True)
        assert clean.request("POST", "/api/token", b"{nope", token=admin).status == 400
        assert (
            clean.request("POST", "/api/token", b"{}", token=admin, headers={"Content-Type": "text/plain"}).status
            == 415
        )
        assert clean.request("POST", "/api/token", b"x" * (65 * 1024), token=admin).status == 413
        response = clean.request("POST", "/api/token", {"channel": "c1", "uid": 0}, token=admin)
        assert response.status == 400 and response.body["field"] == "uid"


class TestHealth:
    """GET /api/health against the running emulator."""

    def test_health_is_200_with_firestore_up(self, clean: Service) -> None:
        """With the emulator up, health is 200 and reports Firestore reachable."""
        response = clean.request("GET", "/api/health")
        assert response.status == 200
        assert response.body["firestore"]["ok"] is True
        assert response.body["status"] in ("ok", "degraded")
        assert response.body["auth"] == "firebase-emulator"  # FIREBASE_AUTH_EMULATOR_HOST: unsigned tokens pass

    async def test_live_watcher_heartbeat_makes_it_ok(self, clean_emulators: EmulatorSet, db: firestore.Client) -> None:
        """A fresh watcher heartbeat in `workers` is counted once the cached check lapses; admins see its id.

        In process, over the same Firestore adapter `memharbor http` uses, with a clock the test moves
        past the cache's lifetime instead of sleeping through it.
        """
        clock = SteppedClock()
        firestore_client = LazyClient(lambda: firestore.AsyncClient(project=clean_emulators.project_id))
        auth = FakeAuthenticator({"tok-ops": Principal(uid="ops", admin=True)})
        deps = Deps(
            authenticator=auth,
            calls=FirestoreCallRepository(firestore_client),
            health=FirestoreWorkers(firestore_client),
            clock=clock,
        )
        settings = http_settings(
            {"FIREBASE_PROJECT_ID": clean_emulators.project_id, "AGORA_APP_ID": APP_ID, "AGORA_APP_CERT": APP_CERT}
        )
        try:
            async with TestClient(TestServer(create_app(settings, deps))) as client:
                _, before = await get(client, "/api/health", {"Authorization": "Bearer tok-ops"})
                assert before["workers"]["watcher"]["instances"] == []
                db.collection("workers").document("watcher-it").set(
                    {
                        "kind": "watcher",
                        "instanceId": "watcher-it",
                        "expiresAt": datetime.now(UTC) + timedelta(minutes=5),
                    }
                )
                _, cached = await get(client, "/api/health", {"Authorization": "Bearer tok-ops"})
                assert cached["workers"]["watcher"]["instances"] == []  # still the cached check
                clock.advance(health.CACHE_TTL_S + 0.1)
                _, body = await get(client, "/api/health", {"Authorization": "Bearer tok-ops"})
                assert body["workers"]["watcher"]["instances"] == ["watcher-it"]
                assert body["status"] == "ok"
                assert (await get(client, "/api/health"))[1]["workers"]["watcher"] == {"alive": 1}
        finally:
            await firestore_client.aclose()


class TestLazyClient:
    """The asyncio Firestore client token_http's repositories share, against the emulator."""

    async def test_aclose_shuts_the_grpc_channel(self, clean_emulators: EmulatorSet) -> None:
        """aclose shuts the gRPC channel the reads used (client.close() leaves it open); later use makes another."""
        client = LazyClient(lambda: firestore.AsyncClient(project=clean_emulators.project_id))
        workers = FirestoreWorkers(client)
        await workers.ping()
        first = client()
        channel = first._firestore_api_internal.transport.grpc_channel
        assert channel.get_state() is not grpc.ChannelConnectivity.SHUTDOWN
        await client.aclose()
        try:
            assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
            await workers.ping()
            assert client() is not first
        finally:
            await client.aclose()

    async def test_aclose_of_an_unused_client_makes_none(self) -> None:
        """A lazy client never asked for closes without making one."""
        made: list[firestore.AsyncClient] = []

        def make() -> firestore.AsyncClient:
            made.append(firestore.AsyncClient(project="never-made"))
            return made[-1]

        await LazyClient(make).aclose()
        assert made == []


class TestLogFile:
    """MEMHARBOR_LOG_FILE gets one JSON access line per request and no secret."""

    def test_access_line_and_no_secrets(self, clean: Service, db: firestore.Client) -> None:
        """The file has the request's access line (with its request id) and never the certificate or tokens."""
        channel = seed_call(db, "accepted")
        id_token = clean.id_token(CALLER)
        request_id = f"it-{uuid.uuid4().hex[:16]}"
        response = clean.request(
            "POST", "/api/token", {"channel": channel, "uid": 99}, token=id_token, headers={"X-Request-ID": request_id}
        )
        assert response.status == 200
        assert response.headers["X-Request-ID"] == request_id
        issued = response.body["token"]
        rejected = clean.request("POST", "/api/token", {"channel": channel, "uid": 99}, token=id_token + "x")
        assert rejected.status == 401
        deadline = time.monotonic() + 5
        lines: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            lines = [json.loads(line) for line in clean.log_file.read_text().splitlines() if line.strip()]
            if any(line.get("request_id") == request_id for line in lines):
                break
            time.sleep(0.1)
        access = [
            line for line in lines if line.get("event") == "http.request" and line.get("request_id") == request_id
        ]
        assert len(access) == 1
        line = access[0]
        assert (line["method"], line["path"], line["status"]) == ("POST", "/api/token", 200)
        assert line["client"] == "127.0.0.1"
        assert isinstance(line["duration_ms"], int | float)
        text = clean.log_file.read_text()
        assert "http.listening" in text
        assert APP_CERT not in text
        assert id_token not in text
        assert id_token.split(".")[1] not in text
        assert issued not in text


@pytest.fixture(scope="module")
def service_without_firestore(emulators: EmulatorSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A token_http process whose FIRESTORE_EMULATOR_HOST points at a closed port."""
    closed = f"127.0.0.1:{free_port()}"
    yield from _start(emulators, tmp_path_factory.mktemp("token_http_down"), FIRESTORE_EMULATOR_HOST=closed)


class TestFirestoreDown:
    """The service with an unreachable Firestore answers quickly with 503."""

    def test_health_is_503_within_3_seconds(self, service_without_firestore: Service) -> None:
        """/api/health answers 503 with firestore.ok false in about the check timeout."""
        response = service_without_firestore.request("GET", "/api/health")
        assert response.status == 503
        assert response.body["firestore"]["ok"] is False
        assert response.body["status"] == "degraded"
        assert response.elapsed < 3.5  # the 2 s check timeout plus slack for a loaded machine

    def test_token_for_a_user_is_503_not_a_hang(self, service_without_firestore: Service) -> None:
        """A user's token request, which needs the call lookup, is a bounded 503 instead of hanging."""
        svc = service_without_firestore
        response = svc.request("POST", "/api/token", {"channel": "c1", "uid": 1}, token=svc.id_token(CALLER))
        assert response.status == 503
        assert response.elapsed < 8.0

    def test_admin_token_needs_no_firestore(self, service_without_firestore: Service) -> None:
        """An admin's token needs no lookup, so it is still issued while Firestore is down."""
        svc = service_without_firestore
        response = svc.request("POST", "/api/token", {"channel": "c1", "uid": 1}, token=svc.id_token("ops", admin=True))
        assert response.status == 200
