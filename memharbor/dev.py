"""`memharbor dev`: the whole stack on this machine, emulators included; Ctrl-C stops everything.

It seeds a demo care group with two members and their devices, and (with firebase-tools installed) starts
the Auth emulator with their accounts and an admin's, so apps and the console (`/console`) can sign in.

The emulators listen where firebase.json says (as `firebase emulators:start` would), so apps and tools
configured for those ports find them; FIRESTORE_EMULATOR_HOST / FIREBASE_STORAGE_EMULATOR_HOST /
FIREBASE_AUTH_EMULATOR_HOST move them for one run. A port already in use stops start-up with one line
naming it and where it came from: falling back to another port would leave an app talking to whatever
holds the configured one.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memharbor import firebase_project, logs
from memharbor.auth_emulator import INSTALL_HINT, AuthEmulatorMissing, DemoAccount, auth_emulator, create_account
from memharbor.devtokens import emulator_id_token
from memharbor.emulators import EmulatorSet, ManagedProcess, port_in_use
from memharbor.firebase_project import FirebaseProject
from memharbor.groups import group_document
from memharbor.settings import (
    HttpSettings,
    SettingsError,
    StackSettings,
    child_environment,
    load,
    stack_settings,
)

# Dev-only Agora credentials: tokens signed with them are well-formed but Agora will reject them.
DEV_AGORA_APP_ID = "0" * 31 + "1"
DEV_AGORA_APP_CERT = "0" * 31 + "2"
DEV_DEFAULTS = {
    "FIREBASE_PROJECT_ID": "memharbor-local",
    "AGORA_APP_ID": DEV_AGORA_APP_ID,
    "AGORA_APP_CERT": DEV_AGORA_APP_CERT,
    "MEMHARBOR_HTTP_HOST": "127.0.0.1",
    "MEMHARBOR_LOG_FORMAT": "console",
    # Emulator mode from the start: the emulators' addresses are known only once they run.
    "FIREBASE_USE_EMULATOR": "1",
    # The recorder plays scripted participants (two tones) instead of joining Agora (MEMHARBOR_RECORDER_SIMULATION).
    "MEMHARBOR_RECORDER_SOURCE": "simulated",
}
log = logs.get_logger()

# The demo care group `memharbor dev` seeds: a caregiver who calls, an elderly relative who is rung.
DEMO_GROUP_ID = "demo-family"
DEMO_CAREGIVER = "demo-caregiver"
DEMO_ELDER = "demo-elder"
DEMO_ADMIN = "demo-admin"
DEMO_PASSWORD = "demo-password"
# Who can sign in to the Auth emulator (apps, the console): the two members and an admin for the console.
DEMO_ACCOUNTS = (
    DemoAccount(DEMO_CAREGIVER, "caregiver@demo.memharbor.test", DEMO_PASSWORD, "Alice (demo)"),
    DemoAccount(DEMO_ELDER, "elder@demo.memharbor.test", DEMO_PASSWORD, "Grandma (demo)"),
    DemoAccount(DEMO_ADMIN, "admin@demo.memharbor.test", DEMO_PASSWORD, "Support (demo)", admin=True),
)
# One device document each (contract v2), so the receiver rings as an app's device would.
DEMO_DEVICES = {
    DEMO_CAREGIVER: ("demo-caregiver-iphone", {"platform": "ios", "voipToken": "demo-caregiver-voip"}),
    DEMO_ELDER: ("demo-elder-android", {"platform": "android", "fcmToken": "demo-elder-fcm"}),
}


def demo_documents(now: datetime) -> dict[str, dict[str, Any]]:
    """The group, the users and their devices, by document path; devices are stamped `now` (fresh)."""
    documents: dict[str, dict[str, Any]] = {
        f"groups/{DEMO_GROUP_ID}": group_document([DEMO_CAREGIVER, DEMO_ELDER], name="Demo family"),
        f"users/{DEMO_CAREGIVER}": {"platform": "ios", "displayName": "Alice (demo)"},
        f"users/{DEMO_ELDER}": {"platform": "android", "displayName": "Grandma (demo)"},
    }
    for uid, (device_id, fields) in DEMO_DEVICES.items():
        documents[f"users/{uid}/devices/{device_id}"] = {**fields, "appVersion": "demo", "updatedAt": now}
    return documents


def _rest_value(value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        return {"arrayValue": {"values": [_rest_value(v) for v in value]}}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, datetime):
        return {"timestampValue": value.astimezone(UTC).isoformat().replace("+00:00", "Z")}
    return {"stringValue": str(value)}


def seed_demo(emulators: EmulatorSet) -> None:
    """Write the demo group, its two users and their devices to the Firestore emulator, as an admin would."""
    base = f"http://{emulators.firestore.address}/v1/projects/{emulators.project_id}/databases/(default)/documents"
    for path, fields in demo_documents(datetime.now(UTC)).items():
        body = json.dumps({"fields": {k: _rest_value(v) for k, v in fields.items()}}).encode()
        # `Bearer owner` is the emulator's admin: it writes past the rules, as the app's group management does.
        headers = {"Authorization": "Bearer owner", "Content-Type": "application/json"}
        request = urllib.request.Request(f"{base}/{path}", data=body, method="PATCH", headers=headers)
        # A cold emulator's first writes (rules compiled, JIT warming) take seconds on a busy machine.
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()


def dev_defaults(project: FirebaseProject) -> dict[str, str]:
    """The defaults under the environment and .env: DEV_DEFAULTS and the Auth emulator's address."""
    return {**DEV_DEFAULTS, "FIREBASE_AUTH_EMULATOR_HOST": project.auth.address}


def dev_settings(project: FirebaseProject | None = None) -> StackSettings:
    """Settings for the local stack: the environment and .env, over dev defaults."""
    return load(stack_settings, defaults=dev_defaults(project or firebase_project.load()))


class PortInUse(SettingsError):
    """A port the dev stack must listen on is taken; the message names it and where it was configured."""


@dataclass(frozen=True)
class DevPort:
    """One address the dev stack listens on, and the setting that chose it (for the error when it is taken)."""

    what: str
    host: str
    port: int
    setting: str
    source: str
    override: str


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def dev_ports(settings: StackSettings, project: FirebaseProject) -> list[DevPort]:
    """Where the emulators and token_http will listen: firebase.json's ports unless the environment moves them."""
    firebase, http = settings.http.firebase, settings.http
    ports = []
    for what, key, chosen, variable, emulator in (
        (
            "Firestore emulator",
            "emulators.firestore.port",
            firebase.firestore_emulator_host,
            "FIRESTORE_EMULATOR_HOST",
            project.firestore,
        ),
        (
            "Storage emulator",
            "emulators.storage.port",
            firebase.storage_emulator_host,
            "FIREBASE_STORAGE_EMULATOR_HOST",
            project.storage,
        ),
    ):
        if chosen is None:
            ports.append(DevPort(what, emulator.host, emulator.port, key, str(project.path), variable))
        else:
            ports.append(DevPort(what, *_split(chosen), variable, "the environment or .env", variable))
    auth = firebase.auth_emulator_host or project.auth.address
    if auth == project.auth.address:
        ports.append(
            DevPort(
                "Auth emulator",
                project.auth.host,
                project.auth.port,
                "emulators.auth.port",
                str(project.path),
                "FIREBASE_AUTH_EMULATOR_HOST",
            )
        )
    else:
        ports.append(
            DevPort(
                "Auth emulator",
                *_split(auth),
                "FIREBASE_AUTH_EMULATOR_HOST",
                "the environment or .env",
                "FIREBASE_AUTH_EMULATOR_HOST",
            )
        )
    ports.append(DevPort("token_http", http.host, http.port, "MEMHARBOR_HTTP_PORT", "settings", "MEMHARBOR_HTTP_PORT"))
    return ports


def check_ports(ports: list[DevPort]) -> None:
    """Raise PortInUse for the first port something already holds, before anything is started."""
    for port in ports:
        if port_in_use(port.host, port.port):
            raise PortInUse(
                port.setting,
                f"port {port.port} on {port.host} ({port.what}, from {port.source}) is already in use: "
                f"stop what listens there, or set {port.override} to a free one for this run",
            )


def _service_env(settings: StackSettings, emulators: EmulatorSet, project: FirebaseProject) -> dict[str, str]:
    http = settings.http
    agora = http.require_agora()
    return child_environment(
        {
            **emulators.env(),
            "AGORA_APP_ID": agora.app_id,
            "AGORA_APP_CERT": agora.app_certificate.value,
            "MEMHARBOR_HTTP_HOST": http.host,
            "MEMHARBOR_HTTP_PORT": str(http.port),
            "MEMHARBOR_AUTH": http.auth_mode,
            "MEMHARBOR_LOG_FORMAT": http.logging.format,
            "FIREBASE_AUTH_EMULATOR_HOST": _auth_address(settings, project),
            "MEMHARBOR_PUSH_SINK": str(_sink(settings)),
            "MEMHARBOR_RECORDER_SOURCE": settings.recorder.source,
            "RECORDINGS_DIR": str(settings.recorder.recordings_dir.resolve()),
        }
    )


def _auth_address(settings: StackSettings, project: FirebaseProject) -> str:
    return settings.http.firebase.auth_emulator_host or project.auth.address


def start_auth(settings: StackSettings, project: FirebaseProject) -> ManagedProcess | None:
    """Start the Auth emulator and create the demo accounts; None (with a warning) without firebase-tools."""
    host, port = _split(_auth_address(settings, project))
    project_id = settings.http.firebase.project_id
    try:
        process = auth_emulator(project_id, host, port)
    except AuthEmulatorMissing as exc:
        # The rest of the stack is useful without it (emulator-format tokens from `memharbor dev-token`).
        log.warning("dev.auth_emulator_missing", detail=str(exc))
        return None
    # Node starts in seconds, but a cold firebase-tools on a busy machine needs longer.
    process.start(timeout=90)
    for account in DEMO_ACCOUNTS:
        create_account(process.address, project_id, account)
    return process


def _sink(settings: StackSettings) -> Path:
    return settings.watcher.push_sink or Path("dev-pushes.jsonl").resolve()


def _curl(settings: HttpSettings) -> str:
    url = f"http://{settings.host}:{settings.port}/api/token"
    auth = ""
    if settings.auth_mode == "firebase":
        token = emulator_id_token(settings.firebase.project_id, "dev-admin", lifetime_s=7 * 86400, admin=True)
        auth = f" -H 'Authorization: Bearer {token}'"
    body = '{"channel": "group1_alice_bob", "uid": 12345, "role": "publisher"}'
    return f"curl -s -X POST {url}{auth} -H 'Content-Type: application/json' -d '{body}'"


def _invite_curl(settings: HttpSettings) -> str:
    url = f"http://{settings.host}:{settings.port}/api/call/invite"
    auth = ""
    if settings.auth_mode == "firebase":
        token = emulator_id_token(settings.firebase.project_id, DEMO_CAREGIVER, lifetime_s=7 * 86400)
        auth = f" -H 'Authorization: Bearer {token}'"
    body = json.dumps({"group_id": DEMO_GROUP_ID, "caller_id": DEMO_CAREGIVER, "receiver_id": DEMO_ELDER})
    return f"curl -s -X POST {url}{auth} -H 'Content-Type: application/json' -d '{body}'"


def _banner(
    settings: StackSettings, emulators: EmulatorSet, project: FirebaseProject, auth_process: ManagedProcess | None
) -> str:
    http, recorder = settings.http, settings.recorder
    metrics = metrics_ports(settings)
    auth = auth_process.address if auth_process is not None else "not started"
    rules = project.relative(project.firestore_rules)
    return "\n".join(
        [
            "",
            "memharbor dev is up (Ctrl-C stops everything)",
            f"  Firestore emulator  {emulators.firestore.address}  (rules: {rules})",
            f"  Storage emulator    {emulators.storage.address}  (bucket {emulators.bucket})",
            f"  Auth emulator       {auth}",
            f"  token_http          http://{http.host}:{http.port}  (auth: {http.auth_label})",
            f"  console             http://{http.host}:{http.port}/console",
            f"  watcher             pushes recorded in {_sink(settings)}{_metrics_note(metrics, 'watcher')}",
            f"  recorder            {recorder.source} audio, files in {recorder.recordings_dir.resolve()}"
            f"{_metrics_note(metrics, 'recorder')}",
            "",
            "Get a token (dev admin ID token, emulator format):",
            f"  {_curl(http)}",
            "",
            f"Demo care group {DEMO_GROUP_ID}: {DEMO_CAREGIVER} may call {DEMO_ELDER}. Place a call as the caregiver:",
            f"  {_invite_curl(http)}",
            "",
            *_account_lines(auth),
        ]
    )


def _metrics_note(metrics: dict[str, dict[str, str]], worker: str) -> str:
    port = metrics.get(worker, {}).get("MEMHARBOR_METRICS_PORT")
    return f"; metrics, /livez, /readyz on http://127.0.0.1:{port}" if port else ""


def _account_lines(auth: str) -> list[str]:
    if auth == "not started":
        return [f"No Auth emulator: apps cannot sign in. Install firebase-tools: {INSTALL_HINT}", ""]
    lines = [f"Sign in (apps, the console) with email and password {DEMO_PASSWORD}:"]
    lines += [f"  {a.email:<32} uid {a.uid}{'  (admin)' if a.admin else ''}" for a in DEMO_ACCOUNTS]
    return [*lines, "ID token for curl: memharbor dev-token UID [--admin]", ""]


class StopRequest:
    """Set by SIGINT or SIGTERM, as a plain attribute.

    Not a threading.Event: its set() takes a lock, and a second signal arriving while the first one's
    handler holds it (a Ctrl-C that reaches the process twice, say) deadlocked `memharbor dev` for good.
    """

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True


def metrics_ports(settings: StackSettings) -> dict[str, dict[str, str]]:
    """With MEMHARBOR_METRICS_PORT set, the watcher listens on it and the recorder on the next port:
    two workers of one host cannot share one port."""
    port = settings.watcher.worker.metrics_port
    if not port:
        return {}
    return {"watcher": {"MEMHARBOR_METRICS_PORT": str(port)}, "recorder": {"MEMHARBOR_METRICS_PORT": str(port + 1)}}


def _start_services(
    settings: StackSettings, emulators: EmulatorSet, project: FirebaseProject, services: list[ManagedProcess]
) -> None:
    """Start token_http (and wait until it serves), then the watcher and the recorder, appending each."""
    env = _service_env(settings, emulators, project)
    worker_env = metrics_ports(settings)
    for name, command, port, ready_path in (
        ("token_http", "http", settings.http.port, "/api/openapi.json"),
        ("watcher", "watcher", 0, None),
        ("recorder", "recorder", 0, None),
    ):
        host = settings.http.host if command == "http" else "127.0.0.1"
        argv = [sys.executable, "-m", "memharbor", command]
        own_env = {**env, **worker_env.get(command, {})}
        service = ManagedProcess(name, argv, host, port, ready_path=ready_path, env=own_env, inherit_output=True)
        services.append(service)
        service.start(timeout=30)


def _wait(stop: StopRequest, services: list[ManagedProcess]) -> int:
    """Until Ctrl-C or SIGTERM (0), or until a service exits on its own (1)."""
    while not stop.requested:
        time.sleep(0.5)
        for service in services:
            if service.process is None or service.process.poll() is not None:
                log.error("dev.service_exited", service=service.name)
                return 1
    return 0


def main(settings: StackSettings, project: FirebaseProject | None = None) -> int:
    """Start emulators and services, print where they listen, wait for Ctrl-C or SIGTERM."""
    project = project or firebase_project.load()
    ports = dev_ports(settings, project)
    check_ports(ports)
    log_settings = settings.http.logging
    logs.configure(log_settings.format, log_settings.level, log_settings.file)
    stop = StopRequest()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    firestore, storage = ports[0], ports[1]
    emulators = EmulatorSet.create(
        settings.http.firebase.project_id,
        rules=project.firestore_rules,
        firestore_port=firestore.port,
        storage_port=storage.port,
        host=firestore.host,
        storage_host=storage.host,
    )
    services: list[ManagedProcess] = []
    try:
        emulators.start()
        seed_demo(emulators)
        auth = start_auth(settings, project)
        if auth is not None:
            # Stopped last, after the services (the list is stopped in reverse) and before the emulators.
            services.append(auth)
        _start_services(settings, emulators, project, services)
        print(_banner(settings, emulators, project, auth), flush=True)
        return _wait(stop, services)
    finally:
        for service in reversed(services):
            service.stop(grace=10.0)
        emulators.stop()
        log.info("dev.stopped")
