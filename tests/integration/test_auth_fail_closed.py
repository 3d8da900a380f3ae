"""Authentication fails closed: real `memharbor` processes with production settings.

Firebase Admin accepts unsigned, expired and forged ID tokens whenever FIREBASE_AUTH_EMULATOR_HOST is in
the process environment, whatever our settings say; these tests start real processes the way an operator
would and check that no such process comes up, and that a production-mode token_http rejects an
emulator-format token without needing the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memharbor.devtokens import emulator_id_token
from memharbor.emulators import ManagedProcess, free_port
from memharbor.settings import EMULATOR_VARIABLES
from tests.support.push_keys import make_service_account

PROJECT = "prod-memharbor"
APP_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
APP_CERT = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def _production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A production environment: no emulator variable inherited from the test session, a service account."""
    account = make_service_account(PROJECT, "https://oauth2.googleapis.com/token")
    env = {k: v for k, v in os.environ.items() if k not in EMULATOR_VARIABLES and k != "FIREBASE_USE_EMULATOR"}
    env.update(
        {
            "FIREBASE_PROJECT_ID": PROJECT,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIREBASE_USE_EMULATOR": "false",
            "FIREBASE_SERVICE_ACCOUNT": account.json,
            "AGORA_APP_ID": APP_ID,
            "AGORA_APP_CERT": APP_CERT,
            "MEMHARBOR_LOG_FORMAT": "json",
            "MEMHARBOR_ENV_FILE": str(tmp_path / "absent.env"),
            "MEMHARBOR_RECORDER_SOURCE": "simulated",
            **extra,
        }
    )
    return env


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memharbor", command], env=env, capture_output=True, text=True, timeout=60
    )


class TestStrayEmulatorVariable:
    """Outside emulator mode, an emulator variable in the environment stops every process at start."""

    @pytest.mark.parametrize("name", EMULATOR_VARIABLES)
    def test_http_refuses_to_start(self, tmp_path: Path, name: str) -> None:
        """`memharbor http` exits 2 with one line naming the stray variable."""
        result = _run("http", _production_env(tmp_path, **{name: "127.0.0.1:9099"}))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"memharbor http: setting {name}: set outside emulator mode")

    @pytest.mark.parametrize("command", ["watcher", "recorder"])
    def test_workers_refuse_to_start(self, tmp_path: Path, command: str) -> None:
        """The watcher and the recorder refuse the Auth emulator variable the same way."""
        result = _run(command, _production_env(tmp_path, FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099"))
        assert result.returncode == 2
        assert "setting FIREBASE_AUTH_EMULATOR_HOST: set outside emulator mode" in result.stderr

    def test_explicitly_off_with_firestore_emulator_refuses(self, tmp_path: Path) -> None:
        """FIREBASE_USE_EMULATOR=false beside FIRESTORE_EMULATOR_HOST is a contradiction, not emulator mode."""
        env = _production_env(tmp_path, FIRESTORE_EMULATOR_HOST="127.0.0.1:8080")
        result = _run("http", env)
        assert result.returncode == 2
        assert "setting FIRESTORE_EMULATOR_HOST" in result.stderr


@pytest.fixture(scope="module")
def production_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """token_http in production mode (no emulator anywhere, so Firestore is unreachable here)."""
    tmp = tmp_path_factory.mktemp("prod_http")
    port = free_port()
    env = _production_env(tmp, MEMHARBOR_HTTP_HOST="127.0.0.1", MEMHARBOR_HTTP_PORT=str(port))
    process = ManagedProcess(
        "token_http", [sys.executable, "-m", "memharbor", "http"], "127.0.0.1", port, "/api/openapi.json", env=env
    )
    process.start(timeout=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def _post_token(base: str, token: str) -> tuple[int, Any]:
    body = json.dumps({"channel": "g1_anything", "uid": 7}).encode()
    request = urllib.request.Request(
        base + "/api/token",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as raw:
            return raw.status, json.loads(raw.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class TestProductionTokens:
    """A production-mode token_http rejects emulator-format ID tokens."""

    def test_unsigned_admin_token_is_401(self, production_http: str) -> None:
        """An `alg: none` token with a forged admin claim gets 401, not a token for any channel."""
        status, body = _post_token(production_http, emulator_id_token(PROJECT, "mallory", admin=True))
        assert status == 401
        assert body["field"] == "Authorization"

    def test_expired_unsigned_token_is_401(self, production_http: str) -> None:
        """An expired unsigned token is refused the same way."""
        status, _ = _post_token(production_http, emulator_id_token(PROJECT, "mallory", lifetime_s=-3600))
        assert status == 401

    def test_health_reports_production_auth(self, production_http: str) -> None:
        """/api/health says `firebase`, never the emulator's mode, in production."""
        try:
            with urllib.request.urlopen(production_http + "/api/health", timeout=30) as raw:
                body = json.loads(raw.read())
        except urllib.error.HTTPError as exc:  # Firestore is unreachable here: 503 with the same body
            body = json.loads(exc.read())
        assert body["auth"] == "firebase"
