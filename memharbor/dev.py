"""`memharbor dev`: the whole stack on this machine, emulators included; Ctrl-C stops everything."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from memharbor import logs
from memharbor.devtokens import emulator_id_token
from memharbor.emulators import EmulatorSet, ManagedProcess
from memharbor.settings import Settings, child_environment, load

# Dev-only Agora credentials: tokens signed with them are well-formed but Agora will reject them.
DEV_AGORA_APP_ID = "0" * 31 + "1"
DEV_AGORA_APP_CERT = "0" * 31 + "2"
DEV_DEFAULTS = {
    "FIREBASE_PROJECT_ID": "memharbor-local",
    "AGORA_APP_ID": DEV_AGORA_APP_ID,
    "AGORA_APP_CERT": DEV_AGORA_APP_CERT,
    "MEMHARBOR_HTTP_HOST": "127.0.0.1",
    "MEMHARBOR_LOG_FORMAT": "console",
    # Only the Auth emulator's address matters: ID tokens are then checked in emulator format.
    "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
    # The recorder plays scripted participants (two tones) instead of joining Agora (MEMHARBOR_RECORDER_SIMULATION).
    "MEMHARBOR_RECORDER_SOURCE": "simulated",
}
log = logs.get_logger()


def dev_settings() -> Settings:
    """Settings for the local stack: the environment and .env, over dev defaults."""
    return load(defaults=DEV_DEFAULTS)


def _service_env(settings: Settings, emulators: EmulatorSet) -> dict[str, str]:
    agora = settings.require_agora()
    return child_environment(
        {
            **emulators.env(),
            "AGORA_APP_ID": agora.app_id,
            "AGORA_APP_CERT": agora.app_certificate.value,
            "MEMHARBOR_HTTP_HOST": settings.http_host,
            "MEMHARBOR_HTTP_PORT": str(settings.http_port),
            "MEMHARBOR_AUTH": settings.auth_mode,
            "MEMHARBOR_LOG_FORMAT": settings.log_format,
            "FIREBASE_AUTH_EMULATOR_HOST": settings.auth_emulator_host or DEV_DEFAULTS["FIREBASE_AUTH_EMULATOR_HOST"],
            "MEMHARBOR_PUSH_SINK": str(_sink(settings)),
            "MEMHARBOR_RECORDER_SOURCE": settings.recorder.source,
            "RECORDINGS_DIR": str(settings.recordings_dir.resolve()),
        }
    )


def _sink(settings: Settings) -> Path:
    return settings.push_sink or Path("dev-pushes.jsonl").resolve()


def _curl(settings: Settings) -> str:
    url = f"http://{settings.http_host}:{settings.http_port}/api/token"
    auth = ""
    if settings.auth_mode == "firebase":
        token = emulator_id_token(settings.project_id, "dev-admin", lifetime_s=7 * 86400, admin=True)
        auth = f" -H 'Authorization: Bearer {token}'"
    body = '{"channel": "group1_alice_bob", "uid": 12345, "role": "publisher"}'
    return f"curl -s -X POST {url}{auth} -H 'Content-Type: application/json' -d '{body}'"


def _banner(settings: Settings, emulators: EmulatorSet) -> str:
    return "\n".join(
        [
            "",
            "memharbor dev is up (Ctrl-C stops everything)",
            f"  Firestore emulator  {emulators.firestore.address}  (rules: rules/firestore.rules)",
            f"  Storage emulator    {emulators.storage.address}  (bucket {emulators.bucket})",
            f"  token_http          http://{settings.http_host}:{settings.http_port}  (auth: {settings.auth_mode})",
            f"  watcher             pushes recorded in {_sink(settings)}",
            f"  recorder            {settings.recorder.source} audio, files in {settings.recordings_dir.resolve()}",
            "",
            "Get a token (dev admin ID token, emulator format):",
            f"  {_curl(settings)}",
            "",
        ]
    )


def main(settings: Settings) -> int:
    """Start emulators and services, print where they listen, wait for Ctrl-C or SIGTERM."""
    logs.configure(settings.log_format, settings.log_level, settings.log_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    emulators = EmulatorSet.create(settings.project_id)
    services: list[ManagedProcess] = []
    try:
        emulators.start()
        http = ManagedProcess(
            "token_http",
            [sys.executable, "-m", "memharbor", "http"],
            settings.http_host,
            settings.http_port,
            ready_path="/api/openapi.json",
            env=_service_env(settings, emulators),
            inherit_output=True,
        )
        services.append(http)
        http.start(timeout=30)
        watcher = ManagedProcess(
            "watcher",
            [sys.executable, "-m", "memharbor", "watcher"],
            "127.0.0.1",
            0,
            ready_path=None,
            env=_service_env(settings, emulators),
            inherit_output=True,
        )
        services.append(watcher)
        watcher.start()
        recorder = ManagedProcess(
            "recorder",
            [sys.executable, "-m", "memharbor", "recorder"],
            "127.0.0.1",
            0,
            ready_path=None,
            env=_service_env(settings, emulators),
            inherit_output=True,
        )
        services.append(recorder)
        recorder.start()
        print(_banner(settings, emulators), flush=True)
        while not stop.wait(0.5):
            for service in services:
                if service.process is None or service.process.poll() is not None:
                    log.error("dev.service_exited", service=service.name)
                    return 1
        return 0
    finally:
        for service in reversed(services):
            service.stop(grace=10.0)
        emulators.stop()
        log.info("dev.stopped")
