"""Logging: one structlog pipeline for our events and for stdlib loggers (aiohttp, google, grpc).

JSON lines in production, readable console lines in a terminal; an optional file sink always gets
JSON. A busy server may buffer info lines for a fraction of a second (`flush_interval_s`); warnings and
errors are always written at once. The HTTP access line, one per request, has a fast path
(`access_line`) that renders its fixed fields to the same JSON without the processor chain.

What redaction guarantees, and no more: on every event through the pipeline, the value of each
top-level key whose name ends with a credential word (`token`, `authorization`, `secret`,
`private_key`, ... see `_SECRET_KEYS`; case-insensitive, a few `*_present`-style keys excepted) is
replaced by `[redacted]`. Values are not inspected: a secret inside the event text, under another key,
in a nested structure, an exception message or a library's log message reaches the sinks as it is.
So credentials are logged only under such keys, or as `memharbor.settings.Secret`, whose repr hides them.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
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
# The request being served: set by the HTTP middleware, added to every line logged while it runs. A
# variable of our own costs an eighth of structlog's bind_contextvars/reset_contextvars on each request.
REQUEST_ID: ContextVar[str | None] = ContextVar("memharbor_request_id", default=None)


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    # Cached: the same few dozen keys are checked on every line.
    lowered = key.lower()
    return lowered not in _ALLOWED_KEYS and lowered.endswith(_SECRET_KEYS)


def add_request_id(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add the current request's id (see `REQUEST_ID`) unless the event already names one."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of each top-level credential-named key (e.g. `token`, `fcm_token`) with a fixed marker.

    Only key names are checked; values under other keys are left as they are.
    """
    for key in event_dict:
        if _is_secret_key(key):
            event_dict[key] = REDACTED
    return event_dict


class _UtcStamper:
    """`timestamp` in ISO 8601 UTC with microseconds, like structlog's TimeStamper at a third of its cost.

    Only the fraction changes within a second, so the date and time part is formatted once per second.
    """

    def __init__(self) -> None:
        # The cached second's start in microseconds and its text up to the fraction's dot: one tuple,
        # replaced whole, so a thread never pairs one second with another second's text.
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict["timestamp"] = self.now()
        return event_dict

    def now(self) -> str:
        """The present time, formatted."""
        now_us = time.time_ns() // 1000
        start_us, prefix = self._cached
        fraction = now_us - start_us
        if not 0 <= fraction < 1_000_000:
            second = now_us // 1_000_000
            start_us, prefix = second * 1_000_000, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._cached = (start_us, prefix)
            fraction = now_us - start_us
        return "%s%06dZ" % (prefix, fraction)  # noqa: UP031 - cheaper than an f-string's format spec


class _Sinks:
    """The logger structlog writes to: renders each event once per sink and writes whole lines.

    With a flush interval, lines below warning wait in memory and a daemon thread writes them in one
    call per sink per interval: two write syscalls per HTTP request were a tenth of the server's CPU.
    """

    def __init__(self, stream: IO[str], console: bool, file: IO[str] | None, flush_interval_s: float = 0.0) -> None:
        self._stream = stream
        self._file = file
        self._console = structlog.dev.ConsoleRenderer(colors=stream.isatty()) if console else None
        self._lock = threading.Lock()
        self._stream_lines: list[str] = []
        # Only console mode gives the file other lines than the stream's; else it gets the stream's text.
        self._file_lines: list[str] | None = [] if file is not None and console else None
        self._interval = flush_interval_s
        self._closed = threading.Event()
        if flush_interval_s > 0:
            self.start_flusher()

    def _write(self, event: dict[str, Any]) -> None:
        json_line = _json_line(event) if self._console is None or self._file is not None else ""
        line = str(self._console(None, "", dict(event))) if self._console is not None else json_line
        with self._lock:
            self._stream_lines.append(line + "\n")
            if self._file_lines is not None:
                self._file_lines.append(json_line + "\n")
            if self._interval <= 0 or event.get("level") not in ("debug", "info"):
                self._flush_locked()

    msg = debug = info = warning = warn = error = critical = exception = fatal = log = _write

    def write_info_json(self, line: str) -> None:
        """Queue an info line already rendered as JSON (newline included); for JSON streams only."""
        with self._lock:
            self._stream_lines.append(line)
            if self._interval <= 0:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self._stream_lines:
            text = "".join(self._stream_lines)
            self._stream_lines.clear()
            self._stream.write(text)
            self._stream.flush()
            if self._file is not None and self._file_lines is None:
                self._file.write(text)
                self._file.flush()
        if self._file is not None and self._file_lines:
            self._file.write("".join(self._file_lines))
            self._file_lines.clear()
            self._file.flush()

    def flush(self) -> None:
        """Write every buffered line now."""
        with self._lock:
            self._flush_locked()

    def start_flusher(self) -> None:
        """Start the thread that writes buffered lines every interval."""
        threading.Thread(target=self._flush_loop, name="log-flusher", daemon=True).start()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held ours at fork time), a new flusher."""
        self._lock = threading.Lock()
        if self._interval > 0:
            self.start_flusher()

    def _flush_loop(self) -> None:
        while not self._closed.wait(self._interval):
            try:
                self.flush()
            except (OSError, ValueError):  # the sink was closed under us; the next configure() replaces it
                return

    def close(self) -> None:
        """Flush and stop the flusher; the sinks' files are closed by their owner."""
        self._closed.set()
        self.flush()


def _json_line(event: dict[str, Any]) -> str:
    try:
        return orjson.dumps(event, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        # An int beyond 64 bits, or a lone surrogate (from a request path, say): a log call must never
        # raise, and ASCII escapes keep the line writable to a UTF-8 file (else the flusher would die).
        return json.dumps(event, default=str, ensure_ascii=True)


_active: _Sinks | None = None
# The sinks access_line() may write to directly: None when the stream wants console lines or the level
# drops info lines, and then the access line takes the pipeline like any other event.
_access_sinks: _Sinks | None = None
# One stamper for the pipeline and the access line, so both format time the same way.
_stamp = _UtcStamper()


def flush() -> None:
    """Write any buffered log lines (call before os._exit, e.g. at the end of a forked worker)."""
    if _active is not None:
        _active.flush()


def _after_fork_in_child() -> None:
    if _active is not None:
        _active.after_fork()


atexit.register(flush)
os.register_at_fork(before=flush, after_in_child=_after_fork_in_child)


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


def configure(
    fmt: str = "json",
    level: str = "info",
    file: Path | None = None,
    stream: IO[str] | None = None,
    flush_interval_s: float = 0.0,
) -> None:
    """Set up structlog and route the stdlib root logger through it; safe to call again.

    With `flush_interval_s` > 0, debug and info lines are written at most that late (see `_Sinks`).
    """
    global _open_file, _active, _access_sinks
    _access_sinks = None
    if _active is not None:
        _active.close()
        _active = None
    if _open_file is not None:
        _open_file.close()  # a second configure() must not leak the previous sink's handle
        _open_file = None
    file_handle = None
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        file_handle = _open_file = file.open("a", encoding="utf-8")
    sinks = _active = _Sinks(stream or sys.stderr, fmt == "console", file_handle, flush_interval_s)
    levelno = logging.getLevelNamesMapping()[level.upper()]
    if fmt != "console" and levelno <= logging.INFO:
        _access_sinks = sinks
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request_id,
            structlog.processors.add_log_level,
            _stamp,
            redact_secrets,
            structlog.processors.format_exc_info,
            _as_argument,
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


def _as_argument(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    # An (args, kwargs) pair makes structlog call the sink with the event dict itself (built afresh for
    # each call by structlog) instead of unpacking it into keyword arguments and packing it again.
    return (event_dict,), {}


def access_line(method: str, path: str, status: int, duration_ms: float, client: str | None, request_id: str) -> None:
    """Log the `http.request` info line: the JSON the pipeline makes of it, at a third of the cost.

    The fields are fixed and none is a credential (a test holds the redaction to that), so the processor
    chain has nothing to add but the level and the timestamp; console output and levels above info
    take the pipeline.
    """
    sinks = _access_sinks
    if sinks is None or not structlog.is_configured():
        # Console lines, info dropped, or structlog reset since configure() (tests do): as any other event.
        structlog.get_logger().info(
            "http.request",
            method=method,
            path=path,
            status=status,
            duration_ms=duration_ms,
            client=client,
            request_id=request_id,
        )
        return
    # Keys in the order the pipeline writes them: the call's fields, the event, the context, then
    # the level and timestamp processors.
    event = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "client": client,
        "event": "http.request",
        "request_id": request_id,
        "level": "info",
        "timestamp": _stamp.now(),
    }
    try:
        line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE).decode()
    except TypeError:  # a lone surrogate in the path: the pipeline's escaped fallback
        line = _json_line(event) + "\n"
    sinks.write_info_json(line)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """Return a structlog logger, optionally with bound context."""
    return structlog.get_logger(name, **initial) if name else structlog.get_logger(**initial)
