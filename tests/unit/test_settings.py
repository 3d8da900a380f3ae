"""Unit tests for memharbor.settings and the CLI start-up path: env + .env, defaults, one-line errors, secrets."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from memharbor import cli, firebase
from memharbor.settings import (
    HttpSettings,
    RecorderSettings,
    Secret,
    SettingsError,
    StackSettings,
    WatcherSettings,
    http_settings,
    load,
    recorder_settings,
    stack_settings,
    watcher_settings,
)

APP_ID = "0123456789abcdef0123456789abcdef"
APP_CERT = "fedcba9876543210fedcba9876543210"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIGTAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBHkwdwIBAQQg\n-----END PRIVATE KEY-----\n"
SERVICE_ACCOUNT = '{"type": "service_account", "project_id": "demo-settings", "private_key": "pk-sentinel-71"}'
MINIMAL = {"FIREBASE_PROJECT_ID": "demo-settings"}
REPO = Path(__file__).resolve().parents[2]
Builder = Callable[[Mapping[str, str], bool], Any]
BUILDERS: dict[str, Builder] = {"http": http_settings, "watcher": watcher_settings, "recorder": recorder_settings}


def _with(**values: str) -> dict[str, str]:
    return {**MINIMAL, **values}


class TestSharedParts:
    """The parts every process reads the same way: Firebase, logging, worker identity."""

    @pytest.mark.parametrize("process", sorted(BUILDERS))
    def test_minimal_mapping_gives_documented_defaults(self, process: str) -> None:
        """Only the project id set: the Firebase and log parts take their documented defaults in every process."""
        settings = BUILDERS[process](MINIMAL, False)
        assert settings.firebase.project_id == "demo-settings"
        assert settings.firebase.use_emulator is False
        assert settings.firebase.storage_bucket is None
        assert settings.logging.format == "json"
        assert settings.logging.level == "info"
        assert settings.logging.file is None

    def test_console_is_the_default_log_format_on_a_terminal(self) -> None:
        """Without MEMHARBOR_LOG_FORMAT, a terminal on stderr gets console lines."""
        assert http_settings(MINIMAL, stderr_is_tty=True).logging.format == "console"

    def test_google_cloud_project_is_a_fallback_for_the_project_id(self) -> None:
        """GOOGLE_CLOUD_PROJECT names the project when FIREBASE_PROJECT_ID is absent."""
        assert http_settings({"GOOGLE_CLOUD_PROJECT": "demo-gcp"}).firebase.project_id == "demo-gcp"

    def test_seed_firebase_variable_names_are_read(self) -> None:
        """The seed's Firebase and emulator variable names configure the Firebase part."""
        fb = recorder_settings(
            {
                "FIREBASE_PROJECT_ID": "demo-seed",
                "FIREBASE_STORAGE_BUCKET": "demo-seed.appspot.com",
                "FIREBASE_USE_EMULATOR": "true",
                "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080",
                "FIREBASE_STORAGE_EMULATOR_HOST": "127.0.0.1:9199",
                "FIREBASE_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
            }
        ).firebase
        assert fb.storage_bucket == "demo-seed.appspot.com"
        assert fb.use_emulator is True
        assert fb.firestore_emulator_host == "127.0.0.1:8080"
        assert fb.storage_emulator_host == "127.0.0.1:9199"
        assert fb.service_account is not None and fb.service_account.value == SERVICE_ACCOUNT

    def test_an_emulator_host_turns_emulator_mode_on(self) -> None:
        """FIRESTORE_EMULATOR_HOST alone implies FIREBASE_USE_EMULATOR, and a URL form is accepted."""
        fb = watcher_settings(_with(FIRESTORE_EMULATOR_HOST="http://127.0.0.1:8080/")).firebase
        assert fb.use_emulator is True
        assert fb.firestore_emulator_host == "127.0.0.1:8080"

    def test_log_settings_are_parsed_and_normalised(self, tmp_path: Path) -> None:
        """MEMHARBOR_LOG_* values are trimmed, lower-cased and converted."""
        log = recorder_settings(
            _with(MEMHARBOR_LOG_FORMAT=" Console ", MEMHARBOR_LOG_LEVEL="DEBUG", MEMHARBOR_LOG_FILE=str(tmp_path / "x"))
        ).logging
        assert (log.format, log.level, log.file) == ("console", "debug", tmp_path / "x")

    @pytest.mark.parametrize("process", ["watcher", "recorder"])
    def test_worker_identity_is_read(self, process: str) -> None:
        """MEMHARBOR_INSTANCE_ID and MEMHARBOR_HEARTBEAT_S name and pace both workers."""
        worker = BUILDERS[process](_with(MEMHARBOR_INSTANCE_ID="w-1", MEMHARBOR_HEARTBEAT_S="2"), False).worker
        assert (worker.instance_id, worker.heartbeat_interval_s) == ("w-1", 2.0)

    @pytest.mark.parametrize("process", sorted(BUILDERS))
    def test_settings_are_frozen(self, process: str) -> None:
        """Settings are built once: assigning to a field of a process's settings or of a part raises."""
        settings = BUILDERS[process](MINIMAL, False)
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.firebase = None
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.firebase.project_id = "other"


class TestHttpSettings:
    """`memharbor http`'s settings."""

    def test_defaults(self) -> None:
        """Only the project id set: the server, auth and limits take their documented defaults."""
        settings = http_settings(MINIMAL)
        assert settings.agora is None
        assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 8001, 1)
        assert settings.auth_mode == "firebase"
        assert settings.rate_limit == "30/minute"
        assert settings.max_live_recordings_per_user == 3
        assert settings.apns is None and settings.fcm is None

    def test_memharbor_http_settings_are_parsed_and_normalised(self) -> None:
        """MEMHARBOR_HTTP_* and MEMHARBOR_AUTH are trimmed, lower-cased where they are choices and converted."""
        settings = http_settings(
            _with(
                MEMHARBOR_HTTP_HOST=" 127.0.0.1 ",
                MEMHARBOR_HTTP_PORT="9000",
                MEMHARBOR_HTTP_WORKERS="4",
                MEMHARBOR_AUTH="NONE",
            )
        )
        assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 9000, 4)
        assert settings.auth_mode == "none"

    def test_agora_credentials_are_read(self) -> None:
        """AGORA_APP_ID and AGORA_APP_CERT become the Agora part, the certificate kept as a Secret."""
        agora = http_settings(_with(AGORA_APP_ID=APP_ID, AGORA_APP_CERT=APP_CERT)).require_agora()
        assert agora.app_id == APP_ID
        assert agora.app_certificate.value == APP_CERT

    def test_push_configuration_is_read_for_health(self) -> None:
        """APNS_* and the FCM account are read so /api/health can say which transports are configured."""
        settings = http_settings(
            _with(
                APNS_TEAM_ID="T",
                APNS_KEY_ID="K",
                APNS_BUNDLE_ID="b",
                APNS_KEY_CONTENT=PEM_KEY,
                FCM_SERVICE_ACCOUNT_JSON=SERVICE_ACCOUNT,
            )
        )
        assert settings.apns is not None and settings.fcm is not None

    def test_require_agora_names_the_missing_variable(self) -> None:
        """Without Agora credentials, require_agora stops start-up naming AGORA_APP_ID."""
        with pytest.raises(SettingsError) as caught:
            http_settings(MINIMAL).require_agora()
        assert caught.value.name == "AGORA_APP_ID"
        assert "AGORA_APP_ID" in str(caught.value)

    def test_other_processes_variables_are_not_read(self) -> None:
        """A malformed watcher or recorder variable does not stop token_http."""
        settings = http_settings(_with(MEMHARBOR_RING_TIMEOUT_S="soon", MEMHARBOR_RECORDER_SOURCE="tape"))
        assert isinstance(settings, HttpSettings)


class TestWatcherSettings:
    """`memharbor watcher`'s settings."""

    def test_defaults(self) -> None:
        """Only the project id set: timeouts, sweeps and the feed window take their documented defaults."""
        settings = watcher_settings(MINIMAL)
        assert settings.ring_timeout_s == 60.0
        assert settings.sweep_interval_s == 15.0
        assert settings.listen_window == 5
        assert settings.record_calls is False
        assert settings.push_sink is None
        assert settings.worker.heartbeat_interval_s == 5.0
        assert settings.apns is None and settings.fcm is None

    def test_watcher_variables_are_read(self, tmp_path: Path) -> None:
        """MEMHARBOR_RING_TIMEOUT_S, _PUSH_SINK, _LISTEN_WINDOW, _SETTLE_S and _RECORD_CALLS configure the watcher."""
        settings = watcher_settings(
            _with(
                MEMHARBOR_RING_TIMEOUT_S="2.5",
                MEMHARBOR_PUSH_SINK=str(tmp_path / "p.jsonl"),
                MEMHARBOR_LISTEN_WINDOW="50",
                MEMHARBOR_SETTLE_S="2",
                MEMHARBOR_RECORD_CALLS="on",
            )
        )
        assert settings.settle_s == 2.0
        assert settings.ring_timeout_s == 2.5
        assert settings.push_sink == tmp_path / "p.jsonl"
        assert settings.listen_window == 50
        assert settings.record_calls is True

    def test_apns_and_fcm_variables_are_read(self) -> None:
        """APNS_* with an inline key and an FCM service account configure both push transports."""
        settings = watcher_settings(
            _with(
                APNS_TEAM_ID="TEAM123456",
                APNS_KEY_ID="KEY1234567",
                APNS_BUNDLE_ID="com.example.memharbor",
                APNS_KEY_CONTENT=PEM_KEY.replace("\n", "\\n"),
                APNS_USE_SANDBOX="yes",
                FCM_SERVICE_ACCOUNT_JSON=SERVICE_ACCOUNT,
                FCM_PROJECT_ID="demo-fcm",
            )
        )
        assert settings.apns is not None
        assert settings.apns.team_id == "TEAM123456"
        assert settings.apns.use_sandbox is True
        assert settings.apns.key.value == PEM_KEY
        assert settings.fcm is not None
        assert settings.fcm.project_id == "demo-fcm"
        assert settings.fcm.endpoint == "https://fcm.googleapis.com"

    def test_apns_key_is_read_from_the_file_it_names(self, tmp_path: Path) -> None:
        """APNS_KEY_PATH names a .p8 file whose content becomes the key."""
        key_file = tmp_path / "AuthKey.p8"
        key_file.write_text(PEM_KEY)
        settings = watcher_settings(
            _with(APNS_TEAM_ID="T", APNS_KEY_ID="K", APNS_BUNDLE_ID="b", APNS_KEY_PATH=str(key_file))
        )
        assert settings.apns is not None and settings.apns.key.value == PEM_KEY

    def test_fcm_falls_back_to_the_firebase_service_account(self) -> None:
        """Without an FCM account, FIREBASE_SERVICE_ACCOUNT signs for FCM in the Firebase project."""
        settings = watcher_settings(_with(FIREBASE_SERVICE_ACCOUNT=SERVICE_ACCOUNT))
        assert settings.fcm is not None
        assert settings.fcm.project_id == "demo-settings"
        assert settings.fcm.service_account_json.value == SERVICE_ACCOUNT

    def test_other_processes_variables_are_not_read(self) -> None:
        """Malformed HTTP, Agora or recorder variables do not stop the watcher."""
        settings = watcher_settings(_with(MEMHARBOR_HTTP_PORT="http", AGORA_APP_ID="short", MEMHARBOR_RECORDER_UID="0"))
        assert isinstance(settings, WatcherSettings)


class TestRecorderSettings:
    """`memharbor recorder`'s settings."""

    def test_defaults(self) -> None:
        """Only the project id set: the Agora source and the documented session limits."""
        settings = recorder_settings(MINIMAL)
        assert settings.source == "agora"
        assert settings.recordings_dir == Path("recordings")
        assert (settings.uid, settings.idle_s, settings.max_s, settings.max_sessions) == (999999, 30.0, 7200.0, 100)
        assert settings.agora is None

    def test_recorder_variables_are_read(self, tmp_path: Path) -> None:
        """RECORDINGS_DIR and MEMHARBOR_RECORDER_* / MEMHARBOR_RECORD_TRACKS configure the recorder."""
        settings = recorder_settings(
            _with(
                RECORDINGS_DIR=str(tmp_path / "rec"),
                MEMHARBOR_RECORDER_SOURCE="Simulated",
                MEMHARBOR_RECORDER_UID="42",
                MEMHARBOR_RECORDER_IDLE_S="1.5",
                MEMHARBOR_RECORD_TRACKS="1",
                MEMHARBOR_RECORDER_DRAIN_S="9",
            )
        )
        assert settings.recordings_dir == tmp_path / "rec"
        assert settings.source == "simulated"
        assert (settings.uid, settings.idle_s, settings.record_tracks, settings.drain_s) == (42, 1.5, True, 9.0)

    def test_other_processes_variables_are_not_read(self) -> None:
        """Malformed HTTP or watcher variables do not stop the recorder."""
        settings = recorder_settings(_with(MEMHARBOR_AUTH="basic", MEMHARBOR_LISTEN_WINDOW="1"))
        assert isinstance(settings, RecorderSettings)


class TestStackSettings:
    """`memharbor dev`'s settings: all three processes' from one mapping."""

    def test_each_process_reads_the_same_mapping(self) -> None:
        """The three parts agree on the shared variables and each holds its own."""
        settings = stack_settings(_with(MEMHARBOR_HTTP_PORT="9100", MEMHARBOR_RECORDER_SOURCE="simulated"))
        assert settings.http.firebase == settings.watcher.firebase == settings.recorder.firebase
        assert settings.http.port == 9100
        assert settings.recorder.source == "simulated"


BAD_SETTINGS = [
    ("FIREBASE_PROJECT_ID", {}),
    ("AGORA_APP_CERT", _with(AGORA_APP_ID=APP_ID)),
    ("AGORA_APP_ID", _with(AGORA_APP_CERT=APP_CERT)),
    ("AGORA_APP_ID", _with(AGORA_APP_ID="short", AGORA_APP_CERT=APP_CERT)),
    ("AGORA_APP_CERT", _with(AGORA_APP_ID=APP_ID, AGORA_APP_CERT="z" * 32)),
    ("MEMHARBOR_HTTP_PORT", _with(MEMHARBOR_HTTP_PORT="http")),
    ("MEMHARBOR_HTTP_PORT", _with(MEMHARBOR_HTTP_PORT="0")),
    ("MEMHARBOR_HTTP_PORT", _with(MEMHARBOR_HTTP_PORT="70000")),
    ("MEMHARBOR_HTTP_WORKERS", _with(MEMHARBOR_HTTP_WORKERS="0")),
    ("MEMHARBOR_AUTH", _with(MEMHARBOR_AUTH="basic")),
    ("MEMHARBOR_LOG_FORMAT", _with(MEMHARBOR_LOG_FORMAT="xml")),
    ("MEMHARBOR_LOG_LEVEL", _with(MEMHARBOR_LOG_LEVEL="verbose")),
    ("MEMHARBOR_RING_TIMEOUT_S", _with(MEMHARBOR_RING_TIMEOUT_S="soon")),
    ("MEMHARBOR_RING_TIMEOUT_S", _with(MEMHARBOR_RING_TIMEOUT_S="0")),
    ("FIREBASE_USE_EMULATOR", _with(FIREBASE_USE_EMULATOR="maybe")),
    ("FIRESTORE_EMULATOR_HOST", _with(FIRESTORE_EMULATOR_HOST="localhost")),
    ("FIRESTORE_EMULATOR_HOST", _with(FIRESTORE_EMULATOR_HOST="localhost:port")),
    ("FIREBASE_AUTH_EMULATOR_HOST", _with(FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:99999")),
    ("FIREBASE_AUTH_EMULATOR_HOST", _with(FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099")),
    ("STORAGE_EMULATOR_HOST", _with(STORAGE_EMULATOR_HOST="http://127.0.0.1:9199")),
    ("FIREBASE_STORAGE_EMULATOR_HOST", _with(FIREBASE_STORAGE_EMULATOR_HOST="127.0.0.1:9199")),
    ("FIRESTORE_EMULATOR_HOST", _with(FIREBASE_USE_EMULATOR="false", FIRESTORE_EMULATOR_HOST="127.0.0.1:8080")),
    ("APNS_KEY_ID", _with(APNS_TEAM_ID="T")),
    ("APNS_KEY_PATH", _with(APNS_TEAM_ID="T", APNS_KEY_ID="K", APNS_BUNDLE_ID="b")),
    ("APNS_KEY_CONTENT", _with(APNS_TEAM_ID="T", APNS_KEY_ID="K", APNS_BUNDLE_ID="b", APNS_KEY_CONTENT="nope")),
    ("APNS_KEY_PATH", _with(APNS_TEAM_ID="T", APNS_KEY_ID="K", APNS_BUNDLE_ID="b", APNS_KEY_PATH="/nonexistent.p8")),
    ("FIREBASE_SERVICE_ACCOUNT", _with(FIREBASE_SERVICE_ACCOUNT="/nonexistent/sa.json")),
    ("FIREBASE_SERVICE_ACCOUNT", _with(FIREBASE_SERVICE_ACCOUNT='{"private_key": "pk-sentinel-71"')),
    ("FCM_SERVICE_ACCOUNT_JSON", _with(FCM_SERVICE_ACCOUNT_JSON="{pk-sentinel-71")),
    ("FCM_SERVICE_ACCOUNT_PATH", _with(FCM_SERVICE_ACCOUNT_PATH="/nonexistent/fcm.json")),
]


class TestAuthLabel:
    """What /api/health and the start-up log call the way ID tokens are checked."""

    def test_emulator_mode_with_auth_emulator_is_labelled(self) -> None:
        """Emulator mode with the Auth emulator's address says unsigned tokens are accepted."""
        settings = http_settings(
            _with(FIRESTORE_EMULATOR_HOST="127.0.0.1:8080", FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099")
        )
        assert settings.auth_label == "firebase-emulator"

    def test_production_is_plain_firebase(self) -> None:
        """Outside emulator mode the label is the configured mode."""
        assert http_settings(MINIMAL).auth_label == "firebase"
        assert http_settings(_with(MEMHARBOR_AUTH="none")).auth_label == "none"


class TestSettingsErrors:
    """A missing or malformed setting raises SettingsError naming it in one line."""

    @pytest.mark.parametrize(
        ("name", "values"), BAD_SETTINGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_SETTINGS)]
    )
    def test_bad_setting_is_named_in_one_line(self, name: str, values: dict[str, str]) -> None:
        """The error carries the variable's name, mentions it in its message and fits on one line."""
        with pytest.raises(SettingsError) as caught:
            stack_settings(values)
        message = str(caught.value)
        assert caught.value.name == name
        assert name in message
        assert "\n" not in message

    @pytest.mark.parametrize(
        "values",
        [
            _with(AGORA_APP_ID=APP_ID, AGORA_APP_CERT=APP_CERT[:-1] + "g"),
            _with(AGORA_APP_ID=APP_ID, AGORA_APP_CERT=APP_CERT + "0"),
            _with(FIREBASE_SERVICE_ACCOUNT='{"private_key": "pk-sentinel-71"'),
            _with(FCM_SERVICE_ACCOUNT_JSON="{pk-sentinel-71"),
            _with(APNS_TEAM_ID="T", APNS_KEY_ID="K", APNS_BUNDLE_ID="b", APNS_KEY_CONTENT="pk-sentinel-71"),
        ],
        ids=["cert-not-hex", "cert-too-long", "service-account", "fcm-json", "apns-key"],
    )
    def test_error_never_contains_the_secret_value(self, values: dict[str, str]) -> None:
        """A malformed secret is named but its value is never echoed in the error."""
        with pytest.raises(SettingsError) as caught:
            stack_settings(values)
        message = str(caught.value)
        assert "pk-sentinel-71" not in message
        assert APP_CERT[:-1] not in message


SHARED_BAD_SETTINGS = [
    ("FIREBASE_PROJECT_ID", {}),
    ("FIREBASE_AUTH_EMULATOR_HOST", _with(FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099")),
    ("FIRESTORE_EMULATOR_HOST", _with(FIREBASE_USE_EMULATOR="false", FIRESTORE_EMULATOR_HOST="127.0.0.1:8080")),
    ("MEMHARBOR_LOG_LEVEL", _with(MEMHARBOR_LOG_LEVEL="verbose")),
]


class TestSharedSettingsErrors:
    """A bad shared variable stops every process, each reading it through the same part."""

    @pytest.mark.parametrize("process", sorted(BUILDERS))
    @pytest.mark.parametrize(
        ("name", "values"), SHARED_BAD_SETTINGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SHARED_BAD_SETTINGS)]
    )
    def test_every_process_names_it(self, process: str, name: str, values: dict[str, str]) -> None:
        """http, watcher and recorder each raise a SettingsError naming the variable."""
        with pytest.raises(SettingsError) as caught:
            BUILDERS[process](values, False)
        assert caught.value.name == name


class TestUseEmulators:
    """firebase.use_emulators: the one place that writes the emulator addresses where Google's libraries look."""

    VARIABLES = ("FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "FIREBASE_AUTH_EMULATOR_HOST")

    def _clear(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in self.VARIABLES:
            monkeypatch.delenv(name, raising=False)

    def test_emulator_mode_exports_the_configured_hosts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """In emulator mode each configured address is written; Storage's gets the scheme its client needs."""
        self._clear(monkeypatch)
        settings = recorder_settings(
            _with(
                FIRESTORE_EMULATOR_HOST="127.0.0.1:8080",
                FIREBASE_STORAGE_EMULATOR_HOST="127.0.0.1:9199",
                FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099",
            )
        )
        firebase.use_emulators(settings)
        assert os.environ["FIRESTORE_EMULATOR_HOST"] == "127.0.0.1:8080"
        assert os.environ["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9199"
        assert os.environ["FIREBASE_AUTH_EMULATOR_HOST"] == "127.0.0.1:9099"

    def test_production_writes_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Outside emulator mode no emulator variable appears in the environment."""
        self._clear(monkeypatch)
        firebase.use_emulators(http_settings(MINIMAL))
        assert [name for name in self.VARIABLES if name in os.environ] == []

    def test_making_clients_writes_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Making a Firestore client does not export the emulator addresses behind the caller's back."""
        self._clear(monkeypatch)
        settings = watcher_settings(_with(FIRESTORE_EMULATOR_HOST="127.0.0.1:8080"))
        firebase.firestore_async(settings).close()
        assert "FIRESTORE_EMULATOR_HOST" not in os.environ


class TestEnvironmentAccess:
    """Only memharbor.settings reads the process environment; only firebase.use_emulators writes it."""

    def test_no_other_module_touches_os_environ(self) -> None:
        """No service module but memharbor/settings.py and memharbor/firebase.py mentions os.environ."""
        packages = ("memharbor", "watcher", "token_http", "recorder")
        touching = sorted(
            str(path.relative_to(REPO))
            for package in packages
            for path in (REPO / package).rglob("*.py")
            if "os.environ" in path.read_text() or "getenv" in path.read_text()
        )
        assert touching == ["memharbor/firebase.py", "memharbor/settings.py"]


class TestSecret:
    """Secret values hide themselves from repr, str and formatting."""

    def test_secret_hides_its_value_everywhere(self) -> None:
        """repr, str and f-strings of a Secret never show the value, while .value still holds it."""
        secret = Secret(APP_CERT)
        assert secret.value == APP_CERT
        for rendered in (repr(secret), str(secret), f"{secret}", f"{secret!r}"):
            assert APP_CERT not in rendered

    def test_settings_repr_shows_no_secret(self, tmp_path: Path) -> None:
        """The repr of fully configured settings holds none of the certificate, keys or service account."""
        settings = stack_settings(
            _with(
                AGORA_APP_ID=APP_ID,
                AGORA_APP_CERT=APP_CERT,
                FIREBASE_SERVICE_ACCOUNT=SERVICE_ACCOUNT,
                APNS_TEAM_ID="T",
                APNS_KEY_ID="K",
                APNS_BUNDLE_ID="b",
                APNS_KEY_CONTENT=PEM_KEY,
            )
        )
        rendered = repr(settings)
        assert APP_ID in rendered
        assert APP_CERT not in rendered
        assert "pk-sentinel-71" not in rendered
        assert "BEGIN PRIVATE KEY" not in rendered


class TestLoad:
    """load(): the real environment over an optional .env file over defaults."""

    def test_env_file_values_are_used(self, tmp_path: Path) -> None:
        """A .env file supplies variables the environment does not set."""
        env_file = tmp_path / ".env"
        env_file.write_text(f"FIREBASE_PROJECT_ID=demo-dotenv\nAGORA_APP_ID={APP_ID}\nAGORA_APP_CERT={APP_CERT}\n")
        settings = load(http_settings, environ={}, env_file=env_file)
        assert settings.firebase.project_id == "demo-dotenv"
        assert settings.agora is not None and settings.agora.app_id == APP_ID

    def test_environment_wins_over_env_file(self, tmp_path: Path) -> None:
        """A variable set in the environment overrides the same one in .env."""
        env_file = tmp_path / ".env"
        env_file.write_text("FIREBASE_PROJECT_ID=demo-dotenv\nMEMHARBOR_HTTP_PORT=9001\n")
        settings = load(http_settings, environ={"MEMHARBOR_HTTP_PORT": "9002"}, env_file=env_file)
        assert settings.firebase.project_id == "demo-dotenv"
        assert settings.port == 9002

    def test_memharbor_env_file_names_the_file(self, tmp_path: Path) -> None:
        """MEMHARBOR_ENV_FILE points load() at another .env file."""
        env_file = tmp_path / "custom.env"
        env_file.write_text("FIREBASE_PROJECT_ID=demo-custom\n")
        assert (
            load(watcher_settings, environ={"MEMHARBOR_ENV_FILE": str(env_file)}).firebase.project_id == "demo-custom"
        )

    def test_defaults_sit_under_env_file_and_environment(self, tmp_path: Path) -> None:
        """Defaults apply only where neither .env nor the environment sets a value."""
        env_file = tmp_path / ".env"
        env_file.write_text("MEMHARBOR_HTTP_PORT=9003\n")
        settings = load(
            http_settings,
            environ={"MEMHARBOR_AUTH": "none"},
            env_file=env_file,
            defaults={"FIREBASE_PROJECT_ID": "demo-default", "MEMHARBOR_HTTP_PORT": "1", "MEMHARBOR_AUTH": "firebase"},
        )
        assert settings.firebase.project_id == "demo-default"
        assert settings.port == 9003
        assert settings.auth_mode == "none"

    def test_missing_env_file_is_fine(self, tmp_path: Path) -> None:
        """No .env file at the configured path is not an error."""
        settings = load(recorder_settings, environ=dict(MINIMAL), env_file=tmp_path / "absent.env")
        assert settings.firebase.project_id == "demo-settings"

    def test_malformed_value_in_env_file_is_named(self, tmp_path: Path) -> None:
        """A bad value coming from .env is reported with its variable name like any other."""
        env_file = tmp_path / ".env"
        env_file.write_text("FIREBASE_PROJECT_ID=demo-dotenv\nMEMHARBOR_HTTP_PORT=eighty\n")
        with pytest.raises(SettingsError) as caught:
            load(http_settings, environ={}, env_file=env_file)
        assert caught.value.name == "MEMHARBOR_HTTP_PORT"

    @pytest.mark.parametrize(
        ("build", "kind"),
        [
            (http_settings, HttpSettings),
            (watcher_settings, WatcherSettings),
            (recorder_settings, RecorderSettings),
            (stack_settings, StackSettings),
        ],
    )
    def test_load_returns_what_the_builder_makes(self, tmp_path: Path, build: Builder, kind: type) -> None:
        """load() hands the merged mapping to the builder it is given and returns that process's settings."""
        assert isinstance(load(build, environ=dict(MINIMAL), env_file=tmp_path / "none.env"), kind)


def _clear_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("AGORA_", "FIREBASE_", "FIRESTORE_", "STORAGE_", "GOOGLE_", "MEMHARBOR_", "APNS_", "FCM_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MEMHARBOR_ENV_FILE", str(tmp_path / "absent.env"))


class TestCli:
    """The memharbor command line: start-up errors as one line on stderr, exit status 2."""

    def test_recorder_without_agora_sdk_is_one_line_on_stderr(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`memharbor recorder` with the Agora source but no usable SDK names the setting and exits 2."""
        _clear_settings_env(monkeypatch, tmp_path)
        monkeypatch.setenv("FIREBASE_PROJECT_ID", "demo-x")
        monkeypatch.setenv("AGORA_APP_ID", "a" * 32)
        monkeypatch.setenv("AGORA_APP_CERT", "b" * 32)
        assert cli.main(["recorder"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("memharbor recorder: setting MEMHARBOR_RECORDER_SOURCE")
        assert captured.err.count("\n") == 1

    def test_unknown_command_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown subcommand makes argparse exit with status 2."""
        with pytest.raises(SystemExit) as caught:
            cli.main(["fly"])
        assert caught.value.code == 2
        assert "fly" in capsys.readouterr().err

    def test_missing_setting_is_one_line_on_stderr(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`memharbor http` without a project id prints one line naming FIREBASE_PROJECT_ID and exits 2."""
        _clear_settings_env(monkeypatch, tmp_path)
        assert cli.main(["http"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "FIREBASE_PROJECT_ID" in err

    def test_missing_agora_credentials_stop_http(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`memharbor http` without Agora credentials stops before serving, naming AGORA_APP_ID."""
        import structlog

        _clear_settings_env(monkeypatch, tmp_path)
        monkeypatch.setenv("FIREBASE_PROJECT_ID", "demo-cli")
        try:
            assert cli.main(["http"]) == 2
        finally:
            structlog.reset_defaults()
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0
        assert "AGORA_APP_ID" in err

    def test_real_process_stops_with_one_line_and_no_secret(self, tmp_path: Path) -> None:
        """A real `python -m memharbor http` with a malformed certificate exits 2 with one line, secret-free."""
        bad_cert = "deadbeef" * 3 + "not-hex!"
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "MEMHARBOR_ENV_FILE": str(tmp_path / "absent.env"),
            "FIREBASE_PROJECT_ID": "demo-cli",
            "AGORA_APP_ID": APP_ID,
            "AGORA_APP_CERT": bad_cert,
        }
        result = subprocess.run(
            [sys.executable, "-m", "memharbor", "http"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "AGORA_APP_CERT" in lines[0]
        assert bad_cert not in result.stderr + result.stdout
