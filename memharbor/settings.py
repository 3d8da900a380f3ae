"""Settings: per process, one frozen, typed object built once at start from the environment and `.env`.

Each process reads only what it needs: `http_settings`, `watcher_settings` and `recorder_settings` build
`HttpSettings`, `WatcherSettings` and `RecorderSettings` from shared parts (`FirebaseSettings`,
`LogSettings`, `WorkerSettings`, the Agora and push credentials); `memharbor dev` builds all three as
`StackSettings`, `memharbor inspect` only the Firebase and log parts (`InspectSettings`). A missing or
malformed value raises `SettingsError`, whose message names the variable and says what is expected; the
CLI prints it as one line and exits.

`load` is the one reader of the process environment (with `child_environment`, which copies it for a child
process). The one other code that touches `os.environ` is `memharbor.firebase`: `use_emulators` writes
the emulator addresses from these settings there, because Google's client libraries read them nowhere else,
and `use_metrics_directory` writes prometheus-client's PROMETHEUS_MULTIPROC_DIR for the same reason.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import limits
from dotenv import dotenv_values

AuthMode = Literal["firebase", "none"]
LogFormat = Literal["json", "console"]
RecorderSource = Literal["agora", "simulated"]
T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and says what is expected."""

    def __init__(self, name: str, expected: str) -> None:
        super().__init__(f"setting {name}: {expected}")
        self.name = name


@dataclass(frozen=True)
class Secret:
    """A value that must never reach a log line or an error: its repr hides it."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


# ------------------------------------------------------------------------------------------------ shared parts


@dataclass(frozen=True)
class FirebaseSettings:
    """The Firebase project, its credentials and, in emulator mode, where the emulators listen."""

    project_id: str
    storage_bucket: str | None
    use_emulator: bool
    firestore_emulator_host: str | None
    storage_emulator_host: str | None
    auth_emulator_host: str | None
    service_account: Secret | None


@dataclass(frozen=True)
class LogSettings:
    """Where log lines go and in which form (MEMHARBOR_LOG_FORMAT, MEMHARBOR_LOG_LEVEL, MEMHARBOR_LOG_FILE)."""

    format: LogFormat
    level: str
    file: Path | None


@dataclass(frozen=True)
class WorkerSettings:
    """What the watcher and the recorder share: how their instance is named and how often it beats."""

    # MEMHARBOR_INSTANCE_ID: the heartbeat document's id; None makes one from host and pid.
    instance_id: str | None
    # MEMHARBOR_HEARTBEAT_S
    heartbeat_interval_s: float
    # MEMHARBOR_METRICS_PORT: where /metrics, /livez and /readyz listen (memharbor/metrics_server.py); 0 = off.
    metrics_port: int = 0


@dataclass(frozen=True)
class AgoraSettings:
    """Agora project credentials used to mint RTC tokens."""

    app_id: str
    app_certificate: Secret


@dataclass(frozen=True)
class ApnsSettings:
    """Apple Push Notification service, token-based authentication with a .p8 key."""

    team_id: str
    key_id: str
    bundle_id: str
    key: Secret
    use_sandbox: bool
    # MEMHARBOR_APNS_PROXY (host:port): reach APNs through this HTTP CONNECT proxy (egress proxies, tests).
    proxy: str | None = None
    # MEMHARBOR_APNS_CA_FILE: PEM CA bundle to trust for APNs instead of the system's (tests, TLS inspection).
    ca_file: Path | None = None


@dataclass(frozen=True)
class FcmSettings:
    """Firebase Cloud Messaging HTTP v1: the project and the service account that signs for it."""

    project_id: str
    service_account_json: Secret
    endpoint: str
    token_uri: str | None


def _required_agora(agora: AgoraSettings | None) -> AgoraSettings:
    if agora is None:
        raise SettingsError("AGORA_APP_ID", "required (with AGORA_APP_CERT) to issue Agora tokens")
    return agora


# ------------------------------------------------------------------------------------------------ per process


@dataclass(frozen=True)
class HttpSettings:
    """`memharbor http` (token_http): the server, how requests are authenticated and limited, Agora."""

    firebase: FirebaseSettings
    logging: LogSettings
    agora: AgoraSettings | None
    # /api/health reports whether each push transport is configured; the watcher is what uses them.
    apns: ApnsSettings | None
    fcm: FcmSettings | None
    host: str
    port: int
    workers: int
    auth_mode: AuthMode
    # MEMHARBOR_RATE_LIMIT: work-creating REST requests one user may make (`limits` syntax), counted per process.
    rate_limit: str = "30/minute"
    # MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER: recording requests in progress one user may have asked for.
    max_live_recordings_per_user: int = 3
    # RECORDINGS_DIR: the console plays a recording from here when it is not in Storage (a dev stack's recorder).
    recordings_dir: Path = Path("recordings")

    @property
    def auth_label(self) -> str:
        """How ID tokens are checked, as /api/health and the start-up log report it.

        `firebase-emulator` means unsigned tokens are accepted: Firebase Admin does so whenever
        FIREBASE_AUTH_EMULATOR_HOST is set, which settings allow only in emulator mode.
        """
        if self.auth_mode == "firebase" and self.firebase.use_emulator and self.firebase.auth_emulator_host:
            return "firebase-emulator"
        return self.auth_mode

    def require_agora(self) -> AgoraSettings:
        """Return the Agora credentials, or stop start-up naming the missing variable."""
        return _required_agora(self.agora)


@dataclass(frozen=True)
class WatcherSettings:
    """`memharbor watcher`: the call feed, ring timeouts, sweeps, push transports and recording requests."""

    firebase: FirebaseSettings
    logging: LogSettings
    worker: WorkerSettings
    apns: ApnsSettings | None
    fcm: FcmSettings | None
    # MEMHARBOR_PUSH_SINK: pushes are appended to this file instead of being sent (local stack, tests).
    push_sink: Path | None
    ring_timeout_s: float
    sweep_interval_s: float
    # MEMHARBOR_LISTEN_WINDOW: how many of the most recently updated calls the watcher's feed holds.
    listen_window: int
    # MEMHARBOR_SETTLE_S: each sweep reads once more the calls stamped up to this long ago (late commits).
    settle_s: float = 10.0
    # MEMHARBOR_RECORD_CALLS: request a recording of every accepted call, not only record: true ones.
    record_calls: bool = False
    # MEMHARBOR_DEVICE_TTL_DAYS: a device document not refreshed for this long is deleted, never rung.
    device_ttl_days: float = 60.0
    # MEMHARBOR_MAX_DEVICES_PER_USER: devices kept per user, the most recently refreshed (oldest out).
    max_devices_per_user: int = 10


@dataclass(frozen=True)
class RecorderSettings:
    """`memharbor recorder`: where audio comes from, how sessions record, and where files go."""

    firebase: FirebaseSettings
    logging: LogSettings
    worker: WorkerSettings
    agora: AgoraSettings | None
    recordings_dir: Path
    source: RecorderSource = "agora"
    simulation: str | None = None  # a JSON script, or a path to one (MEMHARBOR_RECORDER_SIMULATION)
    uid: int = 999999
    idle_s: float = 30.0
    max_s: float = 7200.0
    record_tracks: bool = False  # MEMHARBOR_RECORD_TRACKS
    lease_s: float = 20.0
    sweep_s: float = 5.0
    max_sessions: int = 100
    token_ttl_s: int = 3600
    drain_s: float = 60.0
    header_s: float = 2.0

    def require_agora(self) -> AgoraSettings:
        """Return the Agora credentials, or stop start-up naming the missing variable."""
        return _required_agora(self.agora)


@dataclass(frozen=True)
class InspectSettings:
    """`memharbor inspect`: Firestore and logging only (it reads a call; it needs no Agora or push credentials)."""

    firebase: FirebaseSettings
    logging: LogSettings


@dataclass(frozen=True)
class StackSettings:
    """`memharbor dev`: every process's settings, read from one mapping, for the whole local stack."""

    http: HttpSettings
    watcher: WatcherSettings
    recorder: RecorderSettings


class _Env:
    """Typed reads of one environment mapping; every failure names the variable."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def text(self, name: str, default: str | None = None) -> str | None:
        raw = self._values.get(name)
        if raw is None or raw.strip() == "":
            return default
        return raw.strip()

    def flag(self, name: str, default: bool) -> bool:
        raw = self._values.get(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(name, "expected a boolean (1/0, true/false, yes/no, on/off)")

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(name, f"expected an integer between {lo} and {hi}") from None
        if not lo <= value <= hi:
            raise SettingsError(name, f"expected an integer between {lo} and {hi}")
        return value

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(name, f"expected a number of seconds between {lo} and {hi}") from None
        if not lo <= value <= hi:
            raise SettingsError(name, f"expected a number of seconds between {lo} and {hi}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = (self.text(name) or default).lower()
        if value not in choices:
            raise SettingsError(name, f"expected one of {', '.join(choices)}")
        return value

    def host_port(self, name: str) -> str | None:
        value = self.text(name)
        if value is None:
            return None
        value = value.split("://", 1)[-1].rstrip("/")
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(name, "expected host:port, for example 127.0.0.1:8080")
        return value


def _read_secret_file(name: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SettingsError(name, f"cannot read the file it names ({exc.strerror})") from None


def _readable_file(name: str, path: str | None) -> Path | None:
    if path is None:
        return None
    _read_secret_file(name, path)
    return Path(path)


def _json_object(name: str, text: str) -> str:
    # Checked at start-up so a malformed account stops it with one line; the value is never echoed.
    try:
        parsed = json.loads(text)
    except ValueError:
        raise SettingsError(name, "expected a service-account JSON object (or a path to a file holding one)") from None
    if not isinstance(parsed, dict):
        raise SettingsError(name, "expected a service-account JSON object (or a path to a file holding one)")
    return text


def _agora(env: _Env) -> AgoraSettings | None:
    app_id, cert = env.text("AGORA_APP_ID"), env.text("AGORA_APP_CERT")
    if app_id is None and cert is None:
        return None
    if app_id is None:
        raise SettingsError("AGORA_APP_ID", "required when AGORA_APP_CERT is set (32 hex characters)")
    if cert is None:
        raise SettingsError("AGORA_APP_CERT", "required when AGORA_APP_ID is set (32 hex characters)")
    for name, value in (("AGORA_APP_ID", app_id), ("AGORA_APP_CERT", cert)):
        if len(value) != 32 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise SettingsError(name, "expected 32 hex characters")
    return AgoraSettings(app_id=app_id, app_certificate=Secret(cert))


def _apns(env: _Env) -> ApnsSettings | None:
    names = ("APNS_TEAM_ID", "APNS_KEY_ID", "APNS_BUNDLE_ID")
    given = {n: env.text(n) for n in names}
    key_path, key_content = env.text("APNS_KEY_PATH"), env.text("APNS_KEY_CONTENT")
    if not any(given.values()) and key_path is None and key_content is None:
        return None
    for name, value in given.items():
        if value is None:
            raise SettingsError(name, "required when any APNS_* setting is given")
    if key_content is not None:
        key = key_content.replace("\\n", "\n")
    elif key_path is not None:
        key = _read_secret_file("APNS_KEY_PATH", key_path)
    else:
        raise SettingsError("APNS_KEY_PATH", "required (or APNS_KEY_CONTENT) when APNS_* is configured")
    if "BEGIN PRIVATE KEY" not in key:
        raise SettingsError("APNS_KEY_CONTENT" if key_content else "APNS_KEY_PATH", "expected a .p8 PEM key")
    return ApnsSettings(
        team_id=str(given["APNS_TEAM_ID"]),
        key_id=str(given["APNS_KEY_ID"]),
        bundle_id=str(given["APNS_BUNDLE_ID"]),
        key=Secret(key),
        use_sandbox=env.flag("APNS_USE_SANDBOX", False),
        proxy=env.host_port("MEMHARBOR_APNS_PROXY"),
        ca_file=_readable_file("MEMHARBOR_APNS_CA_FILE", env.text("MEMHARBOR_APNS_CA_FILE")),
    )


def _fcm(env: _Env, project_id: str, service_account: Secret | None) -> FcmSettings | None:
    path, content = env.text("FCM_SERVICE_ACCOUNT_PATH"), env.text("FCM_SERVICE_ACCOUNT_JSON")
    if content is not None:
        account: Secret | None = Secret(_json_object("FCM_SERVICE_ACCOUNT_JSON", content))
    elif path is not None:
        text = _read_secret_file("FCM_SERVICE_ACCOUNT_PATH", path)
        account = Secret(_json_object("FCM_SERVICE_ACCOUNT_PATH", text))
    else:
        account = service_account
    if account is None:
        return None
    return FcmSettings(
        project_id=env.text("FCM_PROJECT_ID", project_id) or project_id,
        service_account_json=account,
        endpoint=env.text("MEMHARBOR_FCM_ENDPOINT", "https://fcm.googleapis.com") or "",
        token_uri=env.text("MEMHARBOR_FCM_TOKEN_URI"),
    )


def _service_account(env: _Env) -> Secret | None:
    raw = env.text("FIREBASE_SERVICE_ACCOUNT")
    if raw is None:
        return None
    text = raw if raw.lstrip().startswith("{") else _read_secret_file("FIREBASE_SERVICE_ACCOUNT", raw)
    return Secret(_json_object("FIREBASE_SERVICE_ACCOUNT", text))


# Google's libraries read these from the process environment themselves, whatever our settings say:
# FIREBASE_AUTH_EMULATOR_HOST makes Firebase Admin accept unsigned, expired and forged ID tokens, the
# others send data to an emulator. Outside emulator mode any of them stops start-up.
EMULATOR_VARIABLES = (
    "FIREBASE_AUTH_EMULATOR_HOST",
    "FIRESTORE_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "FIREBASE_STORAGE_EMULATOR_HOST",
)


def _refuse_stray_emulators(env: _Env) -> None:
    for name in EMULATOR_VARIABLES:
        if env.text(name) is not None:
            raise SettingsError(
                name,
                "set outside emulator mode (FIREBASE_USE_EMULATOR is off): unset it, or it would make "
                "Google's libraries use an emulator (for the Auth emulator: accept unsigned ID tokens)",
            )


def _rate_limit(env: _Env) -> str:
    name = "MEMHARBOR_RATE_LIMIT"
    raw = env.text(name, "30/minute") or "30/minute"
    try:
        items = limits.parse_many(raw)
    except ValueError:
        items = []
    if len(items) != 1 or items[0].amount < 1:
        raise SettingsError(name, "expected one rate such as 30/minute or 100 per hour (at least 1 request)")
    return raw


def _firebase(env: _Env) -> FirebaseSettings:
    project_id = env.text("FIREBASE_PROJECT_ID") or env.text("GOOGLE_CLOUD_PROJECT")
    if project_id is None:
        raise SettingsError("FIREBASE_PROJECT_ID", "required (or GOOGLE_CLOUD_PROJECT): the Firebase project id")
    service_account = _service_account(env)
    firestore_host = env.host_port("FIRESTORE_EMULATOR_HOST")
    storage_host = env.host_port("FIREBASE_STORAGE_EMULATOR_HOST") or env.host_port("STORAGE_EMULATOR_HOST")
    use_emulator = env.flag("FIREBASE_USE_EMULATOR", firestore_host is not None)
    if not use_emulator:
        _refuse_stray_emulators(env)
    return FirebaseSettings(
        project_id=project_id,
        storage_bucket=env.text("FIREBASE_STORAGE_BUCKET"),
        use_emulator=use_emulator,
        firestore_emulator_host=firestore_host,
        storage_emulator_host=storage_host,
        auth_emulator_host=env.host_port("FIREBASE_AUTH_EMULATOR_HOST"),
        service_account=service_account,
    )


def _logging(env: _Env, stderr_is_tty: bool) -> LogSettings:
    log_file = env.text("MEMHARBOR_LOG_FILE")
    return LogSettings(
        format=env.choice(  # type: ignore[arg-type]
            "MEMHARBOR_LOG_FORMAT", ("json", "console"), "console" if stderr_is_tty else "json"
        ),
        level=env.choice("MEMHARBOR_LOG_LEVEL", ("debug", "info", "warning", "error"), "info"),
        file=Path(log_file) if log_file else None,
    )


def _worker(env: _Env) -> WorkerSettings:
    return WorkerSettings(
        instance_id=env.text("MEMHARBOR_INSTANCE_ID"),
        heartbeat_interval_s=env.number("MEMHARBOR_HEARTBEAT_S", 5.0, 0.2, 300.0),
        metrics_port=env.integer("MEMHARBOR_METRICS_PORT", 0, 0, 65535),
    )


def _recordings_dir(env: _Env) -> Path:
    return Path(env.text("RECORDINGS_DIR", "recordings") or "recordings")


def http_settings(values: Mapping[str, str], stderr_is_tty: bool = False) -> HttpSettings:
    """Build `memharbor http`'s settings from one mapping of variables (the environment merged over `.env`)."""
    env = _Env(values)
    firebase = _firebase(env)
    return HttpSettings(
        firebase=firebase,
        logging=_logging(env, stderr_is_tty),
        agora=_agora(env),
        apns=_apns(env),
        fcm=_fcm(env, firebase.project_id, firebase.service_account),
        host=env.text("MEMHARBOR_HTTP_HOST", "0.0.0.0") or "0.0.0.0",
        port=env.integer("MEMHARBOR_HTTP_PORT", 8001, 1, 65535),
        workers=env.integer("MEMHARBOR_HTTP_WORKERS", 1, 1, 64),
        auth_mode=env.choice("MEMHARBOR_AUTH", ("firebase", "none"), "firebase"),  # type: ignore[arg-type]
        rate_limit=_rate_limit(env),
        max_live_recordings_per_user=env.integer("MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER", 3, 1, 1000),
        recordings_dir=_recordings_dir(env),
    )


def watcher_settings(values: Mapping[str, str], stderr_is_tty: bool = False) -> WatcherSettings:
    """Build `memharbor watcher`'s settings from one mapping of variables."""
    env = _Env(values)
    firebase = _firebase(env)
    sink = env.text("MEMHARBOR_PUSH_SINK")
    return WatcherSettings(
        firebase=firebase,
        logging=_logging(env, stderr_is_tty),
        worker=_worker(env),
        apns=_apns(env),
        fcm=_fcm(env, firebase.project_id, firebase.service_account),
        push_sink=Path(sink) if sink else None,
        ring_timeout_s=env.number("MEMHARBOR_RING_TIMEOUT_S", 60.0, 0.5, 600.0),
        sweep_interval_s=env.number("MEMHARBOR_SWEEP_INTERVAL_S", 15.0, 0.5, 3600.0),
        listen_window=env.integer("MEMHARBOR_LISTEN_WINDOW", 5, 2, 1000),
        settle_s=env.number("MEMHARBOR_SETTLE_S", 10.0, 0.1, 3600.0),
        record_calls=env.flag("MEMHARBOR_RECORD_CALLS", False),
        device_ttl_days=env.number("MEMHARBOR_DEVICE_TTL_DAYS", 60.0, 1.0, 3650.0),
        max_devices_per_user=env.integer("MEMHARBOR_MAX_DEVICES_PER_USER", 10, 1, 100),
    )


def recorder_settings(values: Mapping[str, str], stderr_is_tty: bool = False) -> RecorderSettings:
    """Build `memharbor recorder`'s settings from one mapping of variables."""
    env = _Env(values)
    return RecorderSettings(
        firebase=_firebase(env),
        logging=_logging(env, stderr_is_tty),
        worker=_worker(env),
        agora=_agora(env),
        recordings_dir=_recordings_dir(env),
        source=env.choice("MEMHARBOR_RECORDER_SOURCE", ("agora", "simulated"), "agora"),  # type: ignore[arg-type]
        simulation=env.text("MEMHARBOR_RECORDER_SIMULATION"),
        uid=env.integer("MEMHARBOR_RECORDER_UID", 999999, 1, 2**32 - 1),
        idle_s=env.number("MEMHARBOR_RECORDER_IDLE_S", 30.0, 0.1, 86400.0),
        max_s=env.number("MEMHARBOR_RECORDER_MAX_S", 7200.0, 1.0, 86400.0),
        record_tracks=env.flag("MEMHARBOR_RECORD_TRACKS", False),
        lease_s=env.number("MEMHARBOR_RECORDER_LEASE_S", 20.0, 1.0, 600.0),
        sweep_s=env.number("MEMHARBOR_RECORDER_SWEEP_S", 5.0, 0.2, 600.0),
        max_sessions=env.integer("MEMHARBOR_RECORDER_MAX_SESSIONS", 100, 1, 10000),
        token_ttl_s=env.integer("MEMHARBOR_RECORDER_TOKEN_TTL_S", 3600, 60, 86400),
        drain_s=env.number("MEMHARBOR_RECORDER_DRAIN_S", 60.0, 1.0, 3600.0),
        header_s=env.number("MEMHARBOR_RECORDER_HEADER_S", 2.0, 0.1, 60.0),
    )


def inspect_settings(values: Mapping[str, str], stderr_is_tty: bool = False) -> InspectSettings:
    """Build `memharbor inspect`'s settings from one mapping of variables."""
    env = _Env(values)
    return InspectSettings(firebase=_firebase(env), logging=_logging(env, stderr_is_tty))


def stack_settings(values: Mapping[str, str], stderr_is_tty: bool = False) -> StackSettings:
    """Build every process's settings from one mapping (`memharbor dev` starts all three)."""
    return StackSettings(
        http=http_settings(values, stderr_is_tty),
        watcher=watcher_settings(values, stderr_is_tty),
        recorder=recorder_settings(values, stderr_is_tty),
    )


def load(
    build: Callable[[Mapping[str, str], bool], T],
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = None,
    defaults: Mapping[str, str] | None = None,
) -> T:
    """Build one process's settings once at start: `.env` (MEMHARBOR_ENV_FILE or ./.env) under the environment.

    `build` is `http_settings`, `watcher_settings`, `recorder_settings`, `inspect_settings` or
    `stack_settings`; `defaults` sit under both.
    """
    real = dict(os.environ if environ is None else environ)
    path = env_file or Path(real.get("MEMHARBOR_ENV_FILE", ".env"))
    merged: dict[str, str] = dict(defaults or {})
    if path.is_file():
        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(real)
    return build(merged, sys.stderr.isatty())


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process we start: ours, with `overrides` on top."""
    return {**os.environ, **overrides}
