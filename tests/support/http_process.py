"""token_http as a child process on the emulators, and HTTP calls to it as emulator-authenticated users."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from memharbor.devtokens import emulator_id_token
from memharbor.emulators import EmulatorSet, ManagedProcess, free_port
from memharbor.settings import child_environment


class Api:
    """HTTP calls to one running token_http, as a given user (uid), an admin, or nobody."""

    def __init__(self, base: str, project_id: str) -> None:
        self.base = base
        self.project_id = project_id

    def token(self, uid: str, admin: bool = False) -> str:
        """An emulator-format Firebase ID token of `uid` (with the admin claim when asked)."""
        return emulator_id_token(self.project_id, uid, **({"admin": True} if admin else {}))

    def request(
        self, method: str, path: str, body: Any = None, uid: str | None = None, admin: bool = False
    ) -> tuple[int, Any]:
        """(status, decoded JSON body) of one request, authenticated as `uid` when given."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if uid is not None:
            headers["Authorization"] = f"Bearer {self.token(uid, admin)}"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read())

    def post(self, path: str, body: Any, uid: str | None = None, admin: bool = False) -> tuple[int, Any]:
        """POST `body` as JSON: (status, decoded JSON body)."""
        return self.request("POST", path, body, uid, admin)


def start_http(emulators: EmulatorSet, auth: str) -> Iterator[Api]:
    """Run `memharbor http` on the emulators with MEMHARBOR_AUTH=`auth` until the generator is closed."""
    port = free_port()
    env = child_environment(
        {
            **emulators.env(),
            "AGORA_APP_ID": "0123456789abcdef0123456789abcdef",
            "AGORA_APP_CERT": "fedcba9876543210fedcba9876543210",
            "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
            "MEMHARBOR_HTTP_HOST": "127.0.0.1",
            "MEMHARBOR_HTTP_PORT": str(port),
            "MEMHARBOR_AUTH": auth,
            "MEMHARBOR_LOG_FORMAT": "json",
            "MEMHARBOR_ENV_FILE": "/nonexistent/memharbor-test.env",
        }
    )
    process = ManagedProcess(
        "token_http", [sys.executable, "-m", "memharbor", "http"], "127.0.0.1", port, "/api/health", env
    )
    process.start(timeout=30)
    try:
        yield Api(f"http://127.0.0.1:{port}", emulators.project_id)
    finally:
        process.stop()
