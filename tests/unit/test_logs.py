"""Unit tests for memharbor.logs: JSON and console lines, the file sink, stdlib routing and secret redaction."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from memharbor import logs

ID_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.sentinel-id-token"
APP_CERT = "fedcba9876543210fedcba9876543210"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Every test may reconfigure logging; put structlog and the stdlib root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access_level = logging.getLogger("aiohttp.access").level
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(access_level)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse every non-empty line as one JSON object (fails if any line is not JSON)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class TestRedactSecrets:
    """The redaction processor that runs on every event."""

    @pytest.mark.parametrize(
        "key",
        [
            "token",
            "id_token",
            "access_token",
            "fcm_token",
            "voip_token",
            "agora_token",
            "authorization",
            "Authorization",
            "app_cert",
            "app_certificate",
            "AGORA_APP_CERT",
            "password",
            "client_secret",
            "private_key",
            "apns_key_content",
            "service_account",
        ],
    )
    def test_credential_keys_are_redacted(self, key: str) -> None:
        """A credential-like key keeps its name but its value becomes the redaction marker."""
        event = logs.redact_secrets(None, "info", {"event": "x", key: "s3cr3t"})
        assert event[key] == logs.REDACTED

    @pytest.mark.parametrize("key", ["channel", "uid", "status", "voip_token_present", "token_version", "event"])
    def test_ordinary_keys_are_kept(self, key: str) -> None:
        """Keys that are not credentials (and explicitly allowed flags) keep their values."""
        event = logs.redact_secrets(None, "info", {key: "visible"})
        assert event[key] == "visible"


class TestConfigure:
    """configure(): sinks, formats, levels and routing of stdlib loggers."""

    def test_json_format_writes_one_json_object_per_event(self) -> None:
        """In JSON mode each event is one line with event, level, timestamp and the bound fields."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        logs.get_logger().info("call.created", call_id="c1", count=2)
        [line] = json_lines(stream.getvalue())
        assert line["event"] == "call.created"
        assert line["level"] == "info"
        assert line["call_id"] == "c1" and line["count"] == 2
        assert "T" in line["timestamp"]

    def test_console_format_is_readable_not_json(self) -> None:
        """In console mode the line names the event and its fields but is not a JSON document."""
        stream = io.StringIO()
        logs.configure("console", "info", stream=stream)
        logs.get_logger().info("call.created", call_id="c1")
        text = stream.getvalue()
        assert "call.created" in text and "call_id" in text and "c1" in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text.splitlines()[0])

    def test_file_sink_always_gets_json(self, tmp_path: Path) -> None:
        """With a file sink, the file gets JSON lines even when the stream gets console lines."""
        stream = io.StringIO()
        log_file = tmp_path / "nested" / "memharbor.log"
        logs.configure("console", "info", file=log_file, stream=stream)
        logs.get_logger().info("http.listening", port=8001)
        logs.get_logger().warning("auth.disabled")
        lines = json_lines(log_file.read_text())
        assert [line["event"] for line in lines] == ["http.listening", "auth.disabled"]
        assert lines[0]["port"] == 8001
        assert "http.listening" in stream.getvalue()

    def test_stdlib_loggers_are_routed_through_structlog(self) -> None:
        """A stdlib logger's record becomes a JSON line with its logger name, level and formatted message."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        logging.getLogger("aiohttp.server").warning("bad request from %s", "127.0.0.1")
        [line] = json_lines(stream.getvalue())
        assert line["event"] == "bad request from 127.0.0.1"
        assert line["logger"] == "aiohttp.server"
        assert line["level"] == "warning"

    def test_stdlib_exceptions_keep_their_traceback(self) -> None:
        """A stdlib logger.exception carries the traceback text in the JSON line."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("some.lib").exception("failed")
        [line] = json_lines(stream.getvalue())
        assert line["event"] == "failed"
        assert "RuntimeError: boom" in line["exception"]

    def test_level_filters_structlog_and_stdlib(self) -> None:
        """Below the configured level nothing is written, from structlog or from stdlib loggers."""
        stream = io.StringIO()
        logs.configure("json", "warning", stream=stream)
        logs.get_logger().info("quiet")
        logging.getLogger("some.lib").info("quiet too")
        logs.get_logger().error("loud")
        assert [line["event"] for line in json_lines(stream.getvalue())] == ["loud"]

    def test_aiohttp_access_logger_is_silenced(self) -> None:
        """aiohttp's own access lines are dropped so only our canonical request line remains."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        logging.getLogger("aiohttp.access").info('127.0.0.1 "GET / HTTP/1.1" 200')
        assert stream.getvalue() == ""

    def test_configure_twice_does_not_duplicate_lines(self) -> None:
        """Reconfiguring replaces the stdlib handler, so each record is written exactly once."""
        first, second = io.StringIO(), io.StringIO()
        logs.configure("json", "info", stream=first)
        logs.configure("json", "info", stream=second)
        logging.getLogger("some.lib").warning("once")
        assert first.getvalue() == ""
        assert len(json_lines(second.getvalue())) == 1

    def test_context_variables_are_merged(self) -> None:
        """Values bound with structlog.contextvars (the request id) appear on every line."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        with structlog.contextvars.bound_contextvars(request_id="req-42"):
            logs.get_logger().info("inside")
            logging.getLogger("some.lib").warning("stdlib inside")
        logs.get_logger().info("outside")
        lines = json_lines(stream.getvalue())
        assert [line.get("request_id") for line in lines] == ["req-42", "req-42", None]

    def test_unusual_values_never_break_a_log_call(self) -> None:
        """Values JSON cannot hold natively (big ints, non-string keys, bytes, objects) are still written."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        logs.get_logger().info("odd", big=2**70, mapping={1: "a"}, raw=b"\x00", path=Path("/tmp/x"))
        [line] = json_lines(stream.getvalue())
        assert line["event"] == "odd"
        assert str(line["big"]) == str(2**70)


class TestNoSecretsInSinks:
    """Whatever a caller binds, credentials never reach the stream or the file."""

    def test_bound_credentials_are_redacted_in_stream_and_file(self, tmp_path: Path) -> None:
        """An ID token, an app certificate and an Agora token passed as fields are absent from both sinks."""
        stream = io.StringIO()
        log_file = tmp_path / "memharbor.log"
        logs.configure("json", "info", file=log_file, stream=stream)
        log = logs.get_logger().bind(id_token=ID_TOKEN)
        log.info("token.issued", token="006sentinel-agora-token", app_certificate=APP_CERT, channel="g_a_b")
        log.info("auth.header", authorization=f"Bearer {ID_TOKEN}")
        for text in (stream.getvalue(), log_file.read_text()):
            assert ID_TOKEN not in text
            assert APP_CERT not in text
            assert "sentinel-agora-token" not in text
            assert "g_a_b" in text
            assert logs.REDACTED in text

    def test_console_sink_redacts_too(self) -> None:
        """The console renderer sees the event only after redaction."""
        stream = io.StringIO()
        logs.configure("console", "info", stream=stream)
        logs.get_logger().info("auth", id_token=ID_TOKEN)
        assert ID_TOKEN not in stream.getvalue()
        assert "auth" in stream.getvalue()

    def test_stdlib_extra_fields_are_not_a_way_around_redaction(self) -> None:
        """A stdlib record goes through the same processor chain, so its line is JSON with the redaction applied."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        structlog.contextvars.bind_contextvars(access_token=ID_TOKEN)
        try:
            logging.getLogger("google.auth").warning("refreshing credentials")
        finally:
            structlog.contextvars.unbind_contextvars("access_token")
        [line] = json_lines(stream.getvalue())
        assert line["access_token"] == logs.REDACTED
        assert ID_TOKEN not in stream.getvalue()


class TestBufferedLines:
    """configure(flush_interval_s=...): info lines wait in memory, warnings and flush() write them."""

    def test_info_lines_wait_until_flush(self) -> None:
        """With a long interval an info line is not written until logs.flush()."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream, flush_interval_s=3600)
        logs.get_logger().info("http.request", status=200)
        assert stream.getvalue() == ""
        logs.flush()
        assert [line["event"] for line in json_lines(stream.getvalue())] == ["http.request"]

    def test_a_warning_writes_everything_at_once_in_order(self, tmp_path: Path) -> None:
        """A warning is written immediately, after the info lines buffered before it, on every sink."""
        stream = io.StringIO()
        log_file = tmp_path / "api.log"
        logs.configure("json", "info", file=log_file, stream=stream, flush_interval_s=3600)
        logs.get_logger().info("first")
        logs.get_logger().warning("second")
        expected = ["first", "second"]
        assert [line["event"] for line in json_lines(stream.getvalue())] == expected
        assert [line["event"] for line in json_lines(log_file.read_text())] == expected

    def test_the_flusher_thread_writes_within_the_interval(self) -> None:
        """Without any flush() call, buffered lines appear after about one interval."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream, flush_interval_s=0.05)
        logs.get_logger().info("http.request")
        deadline = time.monotonic() + 5
        while stream.getvalue() == "" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [line["event"] for line in json_lines(stream.getvalue())] == ["http.request"]

    def test_a_lone_surrogate_does_not_stop_the_file_sink(self, tmp_path: Path) -> None:
        """A value with a lone surrogate (a raw request path, say) is written escaped, and later lines still are."""
        log_file = tmp_path / "api.log"
        logs.configure("json", "info", file=log_file, stream=io.StringIO(), flush_interval_s=0.05)
        logs.get_logger().info("http.request", path="/api/call/status/\udcff")
        logs.get_logger().info("after")
        deadline = time.monotonic() + 5
        while "after" not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        lines = json_lines(log_file.read_text())
        assert [line["event"] for line in lines] == ["http.request", "after"]
        assert lines[0]["path"] == "/api/call/status/\udcff"

    def test_reconfiguring_flushes_the_previous_sinks(self) -> None:
        """Lines buffered for the old stream are written there before the new configuration applies."""
        first, second = io.StringIO(), io.StringIO()
        logs.configure("json", "info", stream=first, flush_interval_s=3600)
        logs.get_logger().info("old")
        logs.configure("json", "info", stream=second)
        logs.get_logger().info("new")
        assert [line["event"] for line in json_lines(first.getvalue())] == ["old"]
        assert [line["event"] for line in json_lines(second.getvalue())] == ["new"]


class TestUtcStamper:
    """The timestamp processor."""

    def test_iso_utc_with_microseconds_and_current(self) -> None:
        """The stamp is ISO 8601 UTC with six fraction digits and a Z, within a second of now."""
        stamp = logs._UtcStamper()(None, "info", {})["timestamp"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - parsed).total_seconds()) < 1

    def test_stamps_do_not_go_backwards_across_seconds(self) -> None:
        """Consecutive stamps over more than a second stay ordered (the cached prefix is refreshed)."""
        stamper = logs._UtcStamper()
        stamps = []
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            stamps.append(stamper(None, "info", {})["timestamp"])
            time.sleep(0.05)
        assert stamps == sorted(stamps) and stamps[0][:19] != stamps[-1][:19]


ACCESS = {
    "method": "POST",
    "path": "/api/token",
    "status": 200,
    "duration_ms": 1.25,
    "client": "127.0.0.1",
    "request_id": "0123456789abcdef0123456789abcdef",
}


def log_access(**changes: Any) -> None:
    """Write one access line through the fast path, with ACCESS's fields unless changed."""
    fields = {**ACCESS, **changes}
    logs.access_line(
        fields["method"],
        fields["path"],
        fields["status"],
        fields["duration_ms"],
        fields["client"],
        fields["request_id"],
    )


class TestAccessLine:
    """logs.access_line(): the per-request line written without the processor chain."""

    def test_same_line_as_the_pipeline(self) -> None:
        """The fast line has the keys, order, values and timestamp format of the same event logged through structlog."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        token = logs.REQUEST_ID.set(ACCESS["request_id"])
        try:
            fields = {key: value for key, value in ACCESS.items() if key != "request_id"}
            logs.get_logger().info("http.request", **fields)
        finally:
            logs.REQUEST_ID.reset(token)
        log_access()
        piped, fast = json_lines(stream.getvalue())
        assert list(fast) == list(piped)
        assert {k: v for k, v in fast.items() if k != "timestamp"} == {
            k: v for k, v in piped.items() if k != "timestamp"
        }
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", fast["timestamp"])
        assert fast["timestamp"] >= piped["timestamp"]

    def test_no_field_is_one_redaction_would_hide(self) -> None:
        """Redaction would leave the line as it is: no key is credential-like, so skipping it hides nothing."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        log_access()
        [line] = json_lines(stream.getvalue())
        assert line["request_id"] == ACCESS["request_id"]
        assert dict(logs.redact_secrets(None, "info", dict(line))) == line

    def test_buffered_then_written_to_stream_and_file(self, tmp_path: Path) -> None:
        """With a flush interval the line waits in memory, then reaches the stream and the file like info lines."""
        stream = io.StringIO()
        log_file = tmp_path / "api.log"
        logs.configure("json", "info", file=log_file, stream=stream, flush_interval_s=3600)
        log_access()
        assert stream.getvalue() == ""
        logs.get_logger().warning("after")
        for text in (stream.getvalue(), log_file.read_text()):
            assert [line["event"] for line in json_lines(text)] == ["http.request", "after"]

    def test_follows_reconfiguration(self) -> None:
        """After configure() runs again, access lines go to the new sink, not the old one."""
        first, second = io.StringIO(), io.StringIO()
        logs.configure("json", "info", stream=first)
        log_access(path="/one")
        logs.configure("json", "info", stream=second)
        log_access(path="/two")
        assert [line["path"] for line in json_lines(first.getvalue())] == ["/one"]
        assert [line["path"] for line in json_lines(second.getvalue())] == ["/two"]

    def test_console_format_takes_the_pipeline(self) -> None:
        """In console mode the access line is a readable console line with the request id, not JSON."""
        stream = io.StringIO()
        logs.configure("console", "info", stream=stream)
        log_access()
        text = stream.getvalue()
        assert "http.request" in text and ACCESS["request_id"] in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text.splitlines()[0])

    def test_level_above_info_drops_it(self) -> None:
        """At level warning no access line is written."""
        stream = io.StringIO()
        logs.configure("json", "warning", stream=stream)
        log_access()
        assert stream.getvalue() == ""

    def test_reset_structlog_is_respected(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Once structlog is reset to its defaults the line no longer goes to the sinks configure() set up."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        structlog.reset_defaults()
        log_access()
        assert stream.getvalue() == ""
        assert ACCESS["request_id"] in capsys.readouterr().out

    def test_a_lone_surrogate_in_the_path_is_escaped(self) -> None:
        """A path holding a lone surrogate still makes one valid JSON line with the path escaped."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        log_access(path="/api/call/status/\udcff")
        [line] = json_lines(stream.getvalue())
        assert line["path"] == "/api/call/status/\udcff"
        assert stream.getvalue().isascii()


class TestRequestIdContext:
    """logs.REQUEST_ID: the request being served, on every line logged meanwhile."""

    def test_added_while_set_and_gone_after_reset(self) -> None:
        """Lines logged while the variable is set carry its request id, stdlib ones too; later lines do not."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        token = logs.REQUEST_ID.set("req-7")
        try:
            logs.get_logger().info("inside")
            logging.getLogger("some.lib").warning("stdlib inside")
        finally:
            logs.REQUEST_ID.reset(token)
        logs.get_logger().info("outside")
        assert [line.get("request_id") for line in json_lines(stream.getvalue())] == ["req-7", "req-7", None]

    def test_an_explicit_request_id_wins(self) -> None:
        """A request_id passed with the event is kept rather than replaced by the current one."""
        stream = io.StringIO()
        logs.configure("json", "info", stream=stream)
        token = logs.REQUEST_ID.set("current")
        try:
            logs.get_logger().info("other", request_id="given")
        finally:
            logs.REQUEST_ID.reset(token)
        [line] = json_lines(stream.getvalue())
        assert line["request_id"] == "given"
