"""The whole stack: token_http and the watcher as real processes on the emulators."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor.devtokens import emulator_id_token
from memharbor.emulators import EmulatorSet, ManagedProcess, free_port
from memharbor.settings import child_environment
from tests.support.firestore_rest import FirestoreRest
from tests.support.groups import seed_group
from tests.support.waiting import wait_for
from tests.support.watchers import WatcherProcess

AGORA = {"AGORA_APP_ID": "a" * 32, "AGORA_APP_CERT": "b" * 32}


class Stack:
    """token_http and one watcher, both subprocesses, and ways to talk to them."""

    def __init__(self, emulators: EmulatorSet, tmp: Path) -> None:
        self.emulators = emulators
        self.port = free_port()
        env = {
            **emulators.env(),
            **AGORA,
            "MEMHARBOR_HTTP_HOST": "127.0.0.1",
            "MEMHARBOR_HTTP_PORT": str(self.port),
            "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
            "MEMHARBOR_LOG_FILE": str(tmp / "http.log"),
        }
        self.http = ManagedProcess(
            "token_http",
            [sys.executable, "-m", "memharbor", "http"],
            "127.0.0.1",
            self.port,
            ready_path="/api/openapi.json",
            env=child_environment(env),
        )
        self.watcher = WatcherProcess(emulators, tmp / "pushes.jsonl", tmp, MEMHARBOR_RING_TIMEOUT_S="30")

    def request(
        self, method: str, path: str, body: Any = None, uid: str | None = None, admin: bool = False
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if uid is not None:
            claims = {"admin": True} if admin else {}
            headers["Authorization"] = "Bearer " + emulator_id_token(self.emulators.project_id, uid, **claims)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def stack(emulators: EmulatorSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The running stack, shared by this module's tests."""
    running = Stack(emulators, tmp_path_factory.mktemp("stack"))
    running.http.start(timeout=60)
    db = firestore.Client(project=emulators.project_id)
    running.watcher.start(db)
    yield running
    running.watcher.stop()
    running.http.stop()
    db.close()


@pytest.fixture
def db(stack: Stack) -> Iterator[firestore.Client]:
    """An admin client; documents are not wiped here since the watcher's heartbeat must survive."""
    client = firestore.Client(project=stack.emulators.project_id)
    yield client
    client.close()


def _shape(doc: dict[str, Any]) -> dict[str, str]:
    return {key: type(value).__name__ for key, value in doc.items()}


def _settled(db: firestore.Client, call_id: str, field: str) -> dict[str, Any] | None:
    doc = db.collection("calls").document(call_id).get().to_dict() or {}
    return doc if doc.get(field) is not None else None


class TestRestAndAppPaths:
    """The seed's REST routes leave the same documents as plain Firestore writes from an app."""

    def test_same_documents_through_a_whole_call(self, stack: Stack, db: firestore.Client) -> None:
        """Invite/answer/end over REST and the same moves as app writes produce documents of one shape."""
        caller, receiver = f"alice{uuid.uuid4().hex[:6]}", f"bob{uuid.uuid4().hex[:6]}"
        seed_group(db, "group1", [caller, receiver])
        db.collection("users").document(receiver).set({"platform": "android", "fcmToken": "fcm-1"})
        status, invited = stack.request(
            "POST",
            "/api/call/invite",
            {"group_id": "group1", "caller_id": caller, "receiver_id": receiver, "caller_name": "Alice"},
            uid=caller,
        )
        assert status == 200, invited
        assert invited["pushSent"] is True and invited["pushPlatform"] == "android"
        assert invited["channelName"].startswith("group1_")
        rest_id = invited["callId"]

        app_id = uuid.uuid4().hex
        rest = FirestoreRest(stack.emulators.firestore.address, stack.emulators.project_id)
        fields = {
            "callId": app_id,
            "groupId": "group1",
            "callerId": caller,
            "receiverId": receiver,
            "status": "pending",
            "callerName": "Alice",
        }
        assert rest.as_user(caller).create(f"calls/{app_id}", fields, server_time=["createdAt", "updatedAt"]).ok
        app_doc = wait_for(lambda: _settled(db, app_id, "pushSent"), what="app call pushed")
        rest_doc = wait_for(lambda: _settled(db, rest_id, "pushSent"), what="rest call pushed")
        assert _shape(app_doc) == _shape(rest_doc)

        assert (
            stack.request("POST", "/api/call/answer", {"call_id": rest_id, "action": "accept"}, uid=receiver)[0] == 200
        )
        assert (
            rest.as_user(receiver)
            .update(f"calls/{app_id}", {"status": "accepted"}, server_time=["answeredAt", "updatedAt"])
            .ok
        )
        time.sleep(1.0)
        status, ended = stack.request("POST", "/api/call/end", {"call_id": rest_id}, uid=caller)
        assert status == 200 and ended["status"] == "ended" and ended["durationSeconds"] >= 1
        assert (
            rest.as_user(caller).update(f"calls/{app_id}", {"status": "ended"}, server_time=["endedAt", "updatedAt"]).ok
        )
        app_doc = wait_for(lambda: _settled(db, app_id, "durationSec"), what="app call duration")
        rest_doc = wait_for(lambda: _settled(db, rest_id, "durationSec"), what="rest call duration")
        assert _shape(app_doc) == _shape(rest_doc)
        assert rest_doc["durationSec"] == ended["durationSeconds"]
        rest.close()

    def test_token_only_for_a_live_call(self, stack: Stack, db: firestore.Client) -> None:
        """A participant gets a token for the watcher-assigned channel while the call rings, not after."""
        caller, receiver = f"alice{uuid.uuid4().hex[:6]}", f"bob{uuid.uuid4().hex[:6]}"
        seed_group(db, "group1", [caller, receiver])
        _, invited = stack.request(
            "POST", "/api/call/invite", {"group_id": "group1", "caller_id": caller, "receiver_id": receiver}, uid=caller
        )
        channel = invited["channelName"]
        body = {"channel": channel, "uid": 4242, "role": "publisher"}
        assert stack.request("POST", "/api/token", body, uid=receiver)[0] == 200
        assert stack.request("POST", "/api/token", body, uid="mallory")[0] == 403
        assert stack.request("POST", "/api/call/cancel", {"call_id": invited["callId"]}, uid=caller)[0] == 200
        assert stack.request("POST", "/api/token", body, uid=receiver)[0] == 403

    def test_stranger_cannot_invite_a_member(self, stack: Stack, db: firestore.Client) -> None:
        """A signed-in non-member naming a group and one of its members gets 403, and no call exists."""
        receiver = f"bob{uuid.uuid4().hex[:6]}"
        seed_group(db, "group1", ["alice", receiver])
        body = {"group_id": "group1", "caller_id": "mallory", "receiver_id": receiver, "caller_name": "Grandson"}
        status, answer = stack.request("POST", "/api/call/invite", body, uid="mallory")
        assert status == 403 and answer["field"] == "group_id"
        calls_to_receiver = db.collection("calls").where(filter=FieldFilter("receiverId", "==", receiver)).get()
        assert list(calls_to_receiver) == []


class TestHealth:
    """Health reflects the running watcher."""

    def test_reports_live_watcher(self, stack: Stack) -> None:
        """With the watcher heartbeating, /api/health is 200 ok and lists its instance (to an admin)."""
        status, body = wait_for(
            lambda: (r := stack.request("GET", "/api/health", uid="ops", admin=True))[1].get("status") == "ok" and r,
            what="health ok",
        )
        assert status == 200
        assert stack.watcher.instance_id in body["workers"]["watcher"]["instances"]
        assert body["firestore"]["ok"] is True


class TestDevPorts:
    """`memharbor dev` refuses to start on a port that is already taken, before starting anything."""

    def test_busy_emulator_port_stops_dev_with_one_line(self, tmp_path: Path) -> None:
        """With the Firestore emulator's port held, dev exits 2 naming the port and how to move it."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FIREBASE_", "FIRESTORE_", "STORAGE_", "GOOGLE_CLOUD_", "MEMHARBOR_", "AGORA_"))
        }
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            busy = holder.getsockname()[1]
            env.update(
                FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{busy}",
                FIREBASE_STORAGE_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
                MEMHARBOR_HTTP_PORT=str(free_port()),
                MEMHARBOR_ENV_FILE=str(tmp_path / "absent.env"),
            )
            result = subprocess.run(
                [sys.executable, "-m", "memharbor", "dev"],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                check=False,
            )
        stderr = result.stderr.decode(errors="replace").strip()
        assert result.returncode == 2, stderr
        assert stderr.count("\n") == 0 and "Traceback" not in stderr
        assert stderr.startswith("memharbor dev: setting FIRESTORE_EMULATOR_HOST:")
        assert f"port {busy} on 127.0.0.1" in stderr and "already in use" in stderr
        assert b"memharbor dev is up" not in result.stdout
