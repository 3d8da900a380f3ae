"""The Firebase Auth emulator (firebase-tools, Node) for `memharbor dev`: find it, start it, seed users.

Only the Auth emulator comes from firebase-tools; Firestore and Storage keep running from
memharbor/emulators.py. firebase-tools is installed project-locally (`make firebase-tools`:
`.cache/firebase-tools`), or found on PATH.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memharbor.emulators import REPO_ROOT, ManagedProcess, free_port
from memharbor.settings import child_environment

LOCAL_FIREBASE = REPO_ROOT / ".cache" / "firebase-tools" / "node_modules" / ".bin" / "firebase"
INSTALL_HINT = "make firebase-tools (npm install --prefix .cache/firebase-tools firebase-tools@15)"


class AuthEmulatorMissing(RuntimeError):
    """firebase-tools is not installed where `memharbor dev` looks for it."""


def find_firebase() -> Path:
    """The firebase CLI: the project-local install, else `firebase` on PATH."""
    if LOCAL_FIREBASE.exists():
        return LOCAL_FIREBASE
    on_path = shutil.which("firebase")
    if on_path:
        return Path(on_path)
    raise AuthEmulatorMissing(f"firebase-tools not found (looked at {LOCAL_FIREBASE} and PATH); run {INSTALL_HINT}")


def _config(host: str, port: int) -> dict[str, Any]:
    # A config of its own, not the repository's firebase.json: this run's port may be moved by
    # FIREBASE_AUTH_EMULATOR_HOST, and only the Auth emulator may start (Firestore runs from the jar).
    # The CLI's hub and logging servers would take fixed ports (4400, 4500): free ones let two stacks run.
    return {
        "emulators": {
            "singleProjectMode": True,
            "auth": {"host": host, "port": port},
            "hub": {"host": "127.0.0.1", "port": free_port()},
            "logging": {"host": "127.0.0.1", "port": free_port()},
            "ui": {"enabled": False},
        }
    }


def auth_emulator(project_id: str, host: str, port: int, firebase: Path | None = None) -> ManagedProcess:
    """Describe `firebase emulators:start --only auth` on host:port, in a fresh working directory."""
    workdir = Path(tempfile.mkdtemp(prefix="memharbor-auth-"))
    config = workdir / "firebase.json"
    config.write_text(json.dumps(_config(host, port)))
    argv = [
        str(firebase or find_firebase()),
        "emulators:start",
        "--only",
        "auth",
        "--project",
        project_id,
        "--config",
        str(config),
    ]
    # The CLI's update check would reach the network, which the machine may not have.
    env = child_environment({"NO_UPDATE_NOTIFIER": "1", "FIREBASE_CLI_DISABLE_UPDATE_CHECK": "true"})
    # Its address comes from the config above alone, never from an inherited variable.
    env.pop("FIREBASE_AUTH_EMULATOR_HOST", None)
    return ManagedProcess("auth", argv, host, port, ready_path="/", env=env, cwd=str(workdir))


@dataclass(frozen=True)
class DemoAccount:
    """A user the dev stack creates in the Auth emulator, who signs in with email and password."""

    uid: str
    email: str
    password: str
    display_name: str
    admin: bool = False


def _post(url: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    # `Bearer owner` is the emulators' admin credential: it may create users with chosen uids and claims.
    headers = {"Content-Type": "application/json", "Authorization": "Bearer owner"}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def create_account(address: str, project_id: str, account: DemoAccount) -> None:
    """Create `account` in the Auth emulator at `address` (an admin claim as a custom attribute)."""
    body = {
        "localId": account.uid,
        "email": account.email,
        "password": account.password,
        "displayName": account.display_name,
        "emailVerified": True,
    }
    base = f"http://{address}/identitytoolkit.googleapis.com/v1/projects/{project_id}"
    _post(f"{base}/accounts", body)
    if account.admin:
        # The emulator ignores claims given at creation; an update sets them, as Admin's set_custom_user_claims.
        _post(f"{base}/accounts:update", {"localId": account.uid, "customAttributes": json.dumps({"admin": True})})


def sign_in(address: str, email: str, password: str) -> dict[str, Any]:
    """Sign in with email and password as an app's SDK does; the emulator's answer (idToken, localId, ...)."""
    url = f"http://{address}/identitytoolkit.googleapis.com/v1/accounts:signInWithPassword?key=any"
    return _post(url, {"email": email, "password": password, "returnSecureToken": True})
