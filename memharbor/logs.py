"""Logging: one structlog pipeline for our events and for stdlib loggers (aiohttp, google, grpc).

JSON lines in production, readable console lines in a terminal; an optional file sink always gets
JSON. A redaction processor runs on every event so no secret reaches a sink, whatever a caller binds.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

# Keys whose values are credentials; matched case-insensitively as whole keys or as suffixes.
_SECRET_KEYS = (
    "token",
    "authorization",
    "app_cert",
    "app_certificate",
    "certificate",
    "password",
    "secret",
    "private_key",
    "key_content",
    "service_account",
    "id_token",
    "access_token",
)
_ALLOWED_KEYS = {"voip_token_present", "fcm_token_present", "token_version", "push_token_invalid"}
REDACTED = "[redacted]"
_open_file: IO[str] | None = None


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return lowered not in _ALLOWED_KEYS and lowered.endswith(_SECRET_KEYS)


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of any credential-like key (e.g. `token`, `fcm_token`) with a fixed marker."""
    for key in event_dict:
        if _is_secret_key(key):
            event_dict[key] = REDACTED
    return event_dict


class _Sinks:
    """The logger structlog writes to: renders each event once per sink and writes whole lines."""

    _lock = threading.Lock()

    def __init__(self, stream: IO[str], console: bool, file: IO[str] | None) -> None:
        self._stream = stream
        self._file = file
        self._console = structlog.dev.ConsoleRenderer(colors=stream.isatty()) if console else None

    def _write(self, **event: Any) -> None:
        try:
            json_line = orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # e.g. an int beyond 64 bits: a log call must never raise into its caller
            json_line = json.dumps(event, default=str, ensure_ascii=False)
        line = str(self._console(None, "", dict(event))) if self._console is not None else json_line
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
            if self._file is not None:
                self._file.write(json_line + "\n")
                self._file.flush()

    msg = debug = info = warning = warn = error = critical = exception = fatal = log = _write


class _SinkFactory:
    def __init__(self, sinks: _Sinks) -> None:
        self._sinks = sinks

    def __call__(self, *args: Any) -> _Sinks:
        return self._sinks


class _ToStructlog(logging.Handler):
    """Routes stdlib records (aiohttp, google, grpc, urllib3) into the structlog pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            log.log(record.levelno, record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


def configure(fmt: str = "json", level: str = "info", file: Path | None = None, stream: IO[str] | None = None) -> None:
    """Set up structlog and route the stdlib root logger through it; safe to call again."""
    global _open_file
    if _open_file is not None:
        _open_file.close()  # a second configure() must not leak the previous sink's handle
        _open_file = None
    file_handle = None
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        file_handle = _open_file = file.open("a", encoding="utf-8")
    sinks = _Sinks(stream or sys.stderr, fmt == "console", file_handle)
    levelno = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            _as_kwargs,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=_SinkFactory(sinks),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(levelno)
    # aiohttp's own access logger would duplicate our canonical request line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    for noisy in ("google", "grpc", "urllib3", "asyncio"):
        library = logging.getLogger(noisy)
        library.setLevel(max(levelno, logging.WARNING))
        # Google's client libraries can install their own handler and stop propagation; take it back.
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True


def _as_kwargs(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    # Returning a dict makes structlog call the sink with the event as keyword arguments.
    return dict(event_dict)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """Return a structlog logger, optionally with bound context."""
    return structlog.get_logger(name, **initial) if name else structlog.get_logger(**initial)
