"""Unit tests of the per-call timeline: stored events, tolerant reading, order, output, explanations, admin route."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.cloud import firestore

from memharbor.errors import InvalidInput, Unavailable
from memharbor.repositories.timeline import CALL_SERVER, EVENTS, add_events
from memharbor.timeline import (
    MAX_DETAIL_KEYS,
    MAX_TEXT,
    CallTimeline,
    Event,
    EventKind,
    build_timeline,
    event_fields,
    explain,
    parse_event,
    render_table,
    to_json,
)
from tests.support.api_worlds import AS_ADMIN, AS_ALICE, TOKENS, make_settings
from tests.support.fake_timeline import FakeTimeline
from tests.support.http_fakes import FakeAuthenticator, FakeClock, Unused
from tests.support.json_client import Client, get
from tests.support.openapi_shapes import ResponseShapes, json_schema
from token_http import openapi
from token_http.app import create_app
from token_http.auth import OpenAccess
from token_http.keys import Deps

T0 = datetime(2026, 2, 3, 12, 0, 0, tzinfo=UTC)
CALL_ID = "call-1"
TIMELINE_PATH = "/api/admin/calls/{call_id}/timeline"


def call_doc(status: str = "missed", **extra: Any) -> dict[str, Any]:
    """A call from alice to mom placed at T0."""
    return {
        "callId": CALL_ID,
        "groupId": "family",
        "callerId": "alice",
        "receiverId": "mom",
        "status": status,
        "createdAt": T0,
        "updatedAt": T0,
        "channelName": "family_alice_mom_1",
        **extra,
    }


def stored(kind: str, seconds: float, worker: str = "watcher-1", **detail: Any) -> dict[str, Any]:
    """An event document as the repository stores it, `seconds` after T0 by both clocks."""
    event = Event(EventKind(kind), detail, worker, T0.timestamp() + seconds)
    return {**event_fields(event), "at": T0 + timedelta(seconds=seconds)}


def timeline(
    events: list[dict[str, Any]] | None = None,
    call: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    recordings: list[tuple[str, dict[str, Any]]] | None = None,
) -> CallTimeline:
    """A timeline of CALL_ID from documents (events get ids e1, e2, ... in the given order)."""
    docs = [(f"e{i + 1}", doc) for i, doc in enumerate(events or [])]
    return build_timeline(CALL_ID, call or call_doc(), server, docs, recordings or [])


def seen(seconds: float = 0.1) -> dict[str, Any]:
    """The watcher's first sight of the call."""
    return stored("call.seen", seconds, status="pending")


def check_schema(body: Any) -> None:
    """Fail unless `body` fits the documented 200 answer of the timeline route (closed objects)."""
    document = openapi.document()
    schema = document["paths"][TIMELINE_PATH]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft4Validator(
        json_schema(document, schema), format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert errors == []


class TestEventFields:
    """event_fields: the stored form of an event, without its server timestamp."""

    def test_fields_of_an_event(self) -> None:
        """kind is the string value, worker and t as given, detail as given: no `at`."""
        event = Event(EventKind.PUSH_SENT, {"device": "d1", "latencyMs": 12, "ok": True}, "watcher-1", 1.5)
        assert event_fields(event) == {
            "kind": "push.sent",
            "worker": "watcher-1",
            "t": 1.5,
            "detail": {"device": "d1", "latencyMs": 12, "ok": True},
        }

    def test_none_dropped_long_text_cut_other_values_as_text(self) -> None:
        """None entries are left out, a long text is cut to MAX_TEXT, an object is stored as its text."""
        event = Event(EventKind.PUSH_FAILED, {"error": None, "reason": "x" * 2000, "obj": ValueError("bad")}, "w", 0)
        detail = event_fields(event)["detail"]
        assert "error" not in detail
        assert len(detail["reason"]) == MAX_TEXT
        assert detail["obj"] == "bad"

    def test_at_most_max_detail_keys(self) -> None:
        """A detail with more entries than MAX_DETAIL_KEYS keeps only the first ones."""
        event = Event(EventKind.CALL_SEEN, {f"k{i}": i for i in range(MAX_DETAIL_KEYS + 5)}, "w", 0)
        assert len(event_fields(event)["detail"]) == MAX_DETAIL_KEYS

    @pytest.mark.parametrize("kind", ["unknown", "push.exploded"])
    def test_kind_outside_the_set_refused(self, kind: str) -> None:
        """A kind that is not one of EventKind (or is `unknown`, for reading only) is a ValueError."""
        with pytest.raises(ValueError, match="not an event kind"):
            event_fields(Event(kind, {}, "w", 0))

    def test_every_kind_is_dotted_lowercase(self) -> None:
        """Kinds are lowercase `area.step` names, except `violation` and `unknown`, and they are distinct."""
        values = [k.value for k in EventKind]
        assert len(set(values)) == len(values)
        for value in values:
            assert value == value.lower()
            assert "." in value or value in {"violation", "unknown"}


class _Ref:
    """A document or collection path, as the stand-in client makes them."""

    def __init__(self, path: str, ids: list[int]) -> None:
        self.path, self._ids = path, ids

    def collection(self, name: str) -> _Ref:
        return _Ref(f"{self.path}/{name}", self._ids)

    def document(self, doc_id: str | None = None) -> _Ref:
        if doc_id is None:
            self._ids.append(len(self._ids) + 1)
            doc_id = f"auto{len(self._ids)}"
        return _Ref(f"{self.path}/{doc_id}", self._ids)


class _Client:
    """The collection paths of a Firestore client; nothing is read or written."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def collection(self, name: str, /) -> _Ref:
        return _Ref(name, self.ids)

    def get_all(self, references: Any, /) -> Any:
        raise AssertionError("not used")

    def transaction(self) -> Any:
        raise AssertionError("not used")


class _Batch:
    """Records the writes added to it."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []

    def set(self, reference: _Ref, document_data: dict[str, Any]) -> None:
        self.writes.append((reference.path, document_data))


class TestAddEvents:
    """add_events: one write per event in the caller's batch."""

    def test_one_new_document_per_event_with_server_time(self) -> None:
        """Each event is a new document under callServer/{id}/events, with its fields and at = server time."""
        batch = _Batch()
        events = [
            Event(EventKind.CALL_SEEN, {}, "w", 1.0),
            Event(EventKind.CHANNEL_ASSIGNED, {"channel": "c"}, "w", 1.0),
        ]
        add_events(batch, _Client(), CALL_ID, events)
        assert [path for path, _ in batch.writes] == [
            f"{CALL_SERVER}/{CALL_ID}/{EVENTS}/auto1",
            f"{CALL_SERVER}/{CALL_ID}/{EVENTS}/auto2",
        ]
        assert [doc["kind"] for _, doc in batch.writes] == ["call.seen", "channel.assigned"]
        assert all(doc["at"] is firestore.SERVER_TIMESTAMP for _, doc in batch.writes)

    def test_bad_event_adds_nothing(self) -> None:
        """An event of no known kind is refused before any write is added."""
        batch = _Batch()
        with pytest.raises(ValueError):
            add_events(batch, _Client(), CALL_ID, [Event(EventKind.CALL_SEEN, {}, "w", 1), Event("nope", {}, "w", 1)])
        assert batch.writes == []

    def test_call_id_with_a_slash_refused(self) -> None:
        """A call id that would address another document is InvalidInput."""
        with pytest.raises(InvalidInput):
            add_events(_Batch(), _Client(), "c1/events/x", [Event(EventKind.CALL_SEEN, {}, "w", 1)])


class TestParseEvent:
    """parse_event: stored documents, junk included, read back without failing."""

    def test_round_trip(self) -> None:
        """A stored event reads back with its kind, worker, t, detail and at, nothing malformed."""
        event = parse_event(stored("push.sent", 0.5, device="d1", latencyMs=80), "e1")
        assert (event.id, event.kind, event.worker, event.raw_kind, event.malformed) == (
            "e1",
            EventKind.PUSH_SENT,
            "watcher-1",
            None,
            (),
        )
        assert event.at == T0 + timedelta(seconds=0.5)
        assert event.t == pytest.approx(T0.timestamp() + 0.5)
        assert dict(event.detail) == {"device": "d1", "latencyMs": 80}

    def test_unknown_kind_kept_as_raw_kind(self) -> None:
        """A string kind outside the set (a newer worker's) is `unknown` with the stored kind, not malformed."""
        event = parse_event({**stored("call.seen", 0), "kind": "call.teleported"})
        assert event.kind is EventKind.UNKNOWN
        assert event.raw_kind == "call.teleported"
        assert event.malformed == ()

    def test_kind_of_wrong_type_is_malformed(self) -> None:
        """A kind that is no string is `unknown`, shown as its text and named malformed."""
        event = parse_event({**stored("call.seen", 0), "kind": 7})
        assert (event.kind, event.raw_kind, event.malformed) == (EventKind.UNKNOWN, "7", ("kind",))

    @pytest.mark.parametrize("doc", [None, 5, "text", ["a", "b"]])
    def test_document_that_is_no_map(self, doc: Any) -> None:
        """A document that is not a map is one unknown event naming `document` malformed."""
        event = parse_event(doc, "x")
        assert (event.id, event.kind, event.malformed) == ("x", EventKind.UNKNOWN, ("document",))
        assert event.at is None and event.t is None and event.worker is None

    def test_missing_and_mistyped_required_fields(self) -> None:
        """A missing at, a worker that is a number and a t that is text are None and named malformed."""
        event = parse_event({"kind": "call.seen", "worker": 3, "t": "soon"})
        assert (event.at, event.worker, event.t) == (None, None, None)
        assert event.malformed == ("at", "worker", "t")

    def test_detail_values(self) -> None:
        """Scalars stay; a timestamp becomes ISO text; lists, maps and NaN become text and are named malformed."""
        doc = {
            **stored("call.seen", 0),
            "detail": {
                "n": 1,
                "s": "x",
                "b": False,
                "ts": T0,
                "l": [1],
                "m": {"a": 1},
                "nan": float("nan"),
                "none": None,
            },
        }
        event = parse_event(doc)
        assert dict(event.detail) == {
            "b": False,
            "l": "[1]",
            "m": "{'a': 1}",
            "n": 1,
            "nan": "nan",
            "s": "x",
            "ts": "2026-02-03T12:00:00.000000Z",
        }
        assert event.malformed == ("detail.l", "detail.m", "detail.nan")

    def test_detail_that_is_no_map(self) -> None:
        """A detail that is not a map is shown as one `value` entry and named malformed."""
        event = parse_event({**stored("call.seen", 0), "detail": "oops"})
        assert dict(event.detail) == {"value": "oops"}
        assert event.malformed == ("detail",)

    def test_oversized_detail_is_bounded(self) -> None:
        """More than MAX_DETAIL_KEYS entries keep the first in key order; long texts are cut."""
        detail = {f"k{i:03d}": "y" * (MAX_TEXT * 3) for i in range(MAX_DETAIL_KEYS * 2)}
        event = parse_event({**stored("call.seen", 0), "detail": detail})
        assert len(event.detail) == MAX_DETAIL_KEYS
        assert min(event.detail) == "k000"
        assert all(len(str(v)) == MAX_TEXT for v in event.detail.values())
        assert event.malformed == ("detail",)

    def test_naive_timestamp_read_as_utc(self) -> None:
        """An `at` without a time zone is taken as UTC."""
        event = parse_event({**stored("call.seen", 0), "at": datetime(2026, 2, 3, 12, 0, 0)})
        assert event.at == T0


class TestBuildTimeline:
    """build_timeline: summaries of the stored documents, events in order."""

    def test_events_ordered_by_server_time_then_worker_clock(self) -> None:
        """Events sort by at; events of one commit (same at) by t; the stored order does not matter."""
        same_commit = T0 + timedelta(seconds=1)
        second = {**stored("push.sent", 0.9), "at": same_commit}
        first = {**stored("channel.assigned", 0.8), "at": same_commit}
        latest = stored("ring.timeout", 60)
        earliest = stored("call.seen", 0.1)
        result = timeline([latest, second, earliest, first])
        assert [e.kind.value for e in result.events] == ["call.seen", "channel.assigned", "push.sent", "ring.timeout"]

    def test_events_without_server_time_use_the_worker_clock_else_go_last(self) -> None:
        """An event with no at sorts by its t; one with neither comes after all others."""
        no_at = {**stored("push.sent", 5), "at": None}
        nothing = {"kind": "call.seen"}
        result = timeline([nothing, stored("ring.timeout", 60), no_at, stored("call.seen", 0.1)])
        assert [e.kind.value for e in result.events] == ["call.seen", "push.sent", "ring.timeout", "call.seen"]
        assert result.events[-1].malformed == ("at", "worker", "t")

    def test_call_summary(self) -> None:
        """The call's fields are read typed; absent optional fields are None and not malformed."""
        call = timeline(call=call_doc(pushSent=False, pushError="no_device_token")).call
        assert (call.status, call.caller_id, call.receiver_id, call.group_id) == ("missed", "alice", "mom", "family")
        assert (call.created_at, call.push_sent, call.push_error, call.answered_at) == (
            T0,
            False,
            "no_device_token",
            None,
        )
        assert call.malformed == ()

    def test_junk_call_summary(self) -> None:
        """An admin's junk call reads as None where it does not fit, each such field named."""
        junk = {"status": 5, "groupId": {"id": "g"}, "createdAt": "yesterday", "pushSent": "yes", "violation": "bad"}
        call = timeline(call=junk).call
        assert (call.status, call.group_id, call.created_at, call.push_sent) == (None, None, None, None)
        assert call.violation is not None and call.violation.reason == "bad"
        assert set(call.malformed) == {
            "status",
            "groupId",
            "callerId",
            "receiverId",
            "createdAt",
            "pushSent",
            "violation",
        }

    def test_server_summary_with_pushes_and_junk(self) -> None:
        """Records come by status in the state machine's order, then by device; non-map entries are malformed."""
        server = {
            "status": "pending",
            "effects": {
                "missed": {"state": "done", "by": "w2"},
                "pending": {"state": "done", "by": "w1", "doneAt": T0},
            },
            "pushes": {
                "pending": {
                    "phone": {"platform": "android", "result": "sent", "at": T0},
                    "ipad": {"platform": "ios", "result": "dead_token", "error": "BadDeviceToken"},
                    "junk": 3,
                },
                "missed": "x",
            },
        }
        summary = timeline(server=server).server
        assert summary is not None
        assert [(p.status, p.device, p.result) for p in summary.pushes] == [
            ("pending", "ipad", "dead_token"),
            ("pending", "phone", "sent"),
        ]
        assert [(e.status, e.by) for e in summary.effects] == [("pending", "w1"), ("missed", "w2")]
        assert summary.malformed == ("pushes.missed", "pushes.pending.junk")

    def test_recordings_sorted_by_creation(self) -> None:
        """Recordings come oldest first, those without createdAt last; junk sessions are still listed."""
        recordings = [
            ("b", {"callId": CALL_ID, "status": "stopped", "createdAt": T0 + timedelta(seconds=5), "duration": 1200}),
            ("a", {"callId": CALL_ID, "status": "requested", "createdAt": T0}),
            ("c", {"callId": CALL_ID, "status": 4}),
        ]
        result = timeline(recordings=recordings)
        assert [r.sid for r in result.recordings] == ["a", "b", "c"]
        assert result.recordings[1].duration_ms == 1200
        assert result.recordings[2].malformed == ("status",)


class TestRenderTable:
    """render_table: the timeline for people."""

    def test_shows_call_events_in_order_and_why(self) -> None:
        """The header names the call and its people; event rows come in order with offsets; Why closes it."""
        text = render_table(timeline([stored("ring.timeout", 60, lateMs=120), seen(0.2)]))
        lines = text.splitlines()
        assert lines[0].startswith(f"call      {CALL_ID}  status missed")
        assert "caller alice -> receiver mom" in text
        seen_line = next(i for i, line in enumerate(lines) if "call.seen" in line)
        timeout_line = next(i for i, line in enumerate(lines) if "ring.timeout" in line)
        assert seen_line < timeout_line
        assert "+0.200s" in lines[seen_line] and "status=pending" in lines[seen_line]
        assert "2026-02-03 12:01:00.000" in lines[timeout_line] and "lateMs=120" in lines[timeout_line]
        assert lines.index("Why") > timeout_line
        assert text.endswith("\n")

    def test_control_characters_are_escaped(self) -> None:
        """Stored text cannot move the terminal's cursor or split a row: control characters are shown escaped."""
        junk = {**seen(), "worker": "w\x1b[2J", "detail": {"reason": "a\nb"}}
        text = render_table(timeline([junk], call=call_doc(callerId="eve\r")))
        assert "\x1b" not in text and "\r" not in text
        assert "w\\x1b[2J" in text and "reason=a\\nb" in text and "eve\\r" in text

    def test_unknown_and_malformed_events_are_shown(self) -> None:
        """An unknown kind shows its stored kind; malformed fields are listed on its row."""
        text = render_table(timeline([{"kind": "mystery", "detail": {"x": [1]}}]))
        row = next(line for line in text.splitlines() if "unknown (mystery)" in line)
        assert "[malformed: at, worker, t, detail.x]" in row

    def test_no_events_no_server(self) -> None:
        """Without events and server document the table says so in words."""
        text = render_table(timeline())
        assert "Events    none recorded" in text
        assert "no callServer document" in text

    def test_push_records_and_recordings_sections(self) -> None:
        """Who did each status's work is named; push records and recordings get tables of their own."""
        server = {
            "status": "pending",
            "effects": {"pending": {"state": "done", "by": "w1"}},
            "pushes": {"pending": {"ipad": {"platform": "ios", "result": "dead_token"}}},
        }
        recordings = [("call-call-1", {"callId": CALL_ID, "status": "failed", "error": "join failed"})]
        text = render_table(timeline([seen()], server=server, recordings=recordings))
        assert "effects   pending done by w1" in text
        assert "pending  ipad    ios       dead_token" in text
        assert "call-call-1" in text and "join failed" in text

    def test_truncated_events_are_marked(self) -> None:
        """A timeline holding only the earliest events says so in the events title."""
        base = timeline([seen()])
        text = render_table(CallTimeline(**{**base.__dict__, "events_truncated": True}))
        assert "Events (1, the earliest only)" in text


class TestToJson:
    """to_json: the admin route's body, within its documented schema."""

    def test_documented_shape_of_a_full_timeline(self) -> None:
        """A timeline with events, server document and recordings fits the OpenAPI schema and is plain JSON."""
        server = {"status": "missed", "pushes": {"pending": {"d1": {"platform": "ios", "result": "sent", "at": T0}}}}
        recordings = [("r1", {"callId": CALL_ID, "status": "stopped", "createdAt": T0, "duration": 5000})]
        body = to_json(timeline([seen(), stored("push.sent", 0.3, device="d1")], server=server, recordings=recordings))
        check_schema(body)
        assert json.loads(json.dumps(body, allow_nan=False)) == body
        assert body["callId"] == CALL_ID
        assert [e["kind"] for e in body["events"]] == ["call.seen", "push.sent"]
        assert body["events"][0]["at"] == "2026-02-03T12:00:00.100000Z"
        assert body["explanation"] == explain(timeline([seen(), stored("push.sent", 0.3, device="d1")], server=server))

    def test_documented_shape_of_junk(self) -> None:
        """Junk everywhere (call, server document, events, recordings) still fits the schema."""
        call = {"status": 5, "createdAt": "yesterday", "violation": {"reason": 3, "attempted": 5}}
        server = {"status": [], "invalid": "yes", "pushes": {"pending": {"d": {"at": "x"}}}, "effects": 1}
        events = [{"kind": None, "at": 4, "t": float("inf"), "detail": {"x": {"y": 1}}}, {"kind": "call.seen"}]
        recordings = [("r", {"callId": CALL_ID, "duration": float("nan"), "interrupted": "no"})]
        body = to_json(timeline(events, call=call, server=server, recordings=recordings))
        check_schema(body)
        assert json.loads(json.dumps(body, allow_nan=False)) == body
        assert body["server"]["malformedFields"] == ["status", "invalid", "effects", "pushes.pending.d.at"]


class TestExplain:
    """explain: what the timeline shows about why the call did or did not ring."""

    def test_nothing_recorded_means_no_watcher(self) -> None:
        """No call.seen and no callServer document: no watcher saw the call."""
        assert "No watcher recorded seeing this call" in explain(timeline())[0]

    def test_server_document_without_events(self) -> None:
        """A callServer document but no call.seen: a watcher acted without recording events."""
        assert "recorded no call.seen event" in explain(timeline(server={"status": "pending"}))[0]

    def test_found_by_sweep_is_late(self) -> None:
        """A call found by the sweep is reported late, by the lateness the event recorded."""
        findings = explain(timeline([stored("call.found_by_sweep", 16, status="pending", lateMs=15800)]))
        assert any("backup sweep found it 16 s after" in f for f in findings)

    def test_found_by_sweep_without_lateness_uses_creation_time(self) -> None:
        """Without lateMs, the lateness is the time from the call's creation to the event."""
        findings = explain(timeline([stored("call.found_by_sweep", 4.0)]))
        assert any("found it 4.0 s after" in f for f in findings)

    def test_no_device_token(self) -> None:
        """push.skipped: the receiver had no device with a token, and the app must register one."""
        findings = explain(timeline([seen(), stored("push.skipped", 0.2, reason="no_device_token")]))
        assert any("receiver (mom) had no device with a push token" in f for f in findings)

    def test_push_not_configured(self) -> None:
        """push.skipped for a platform without a transport names the platform and the settings."""
        findings = explain(
            timeline([seen(), stored("push.skipped", 0.2, reason="push_not_configured", platform="ios")])
        )
        assert any("No push was sent to ios devices" in f and "APNS_*" in f for f in findings)
        assert not any("had no device" in f for f in findings)

    def test_failed_push_for_an_unconfigured_platform(self) -> None:
        """push.failed with push_not_configured (the watcher's answer without APNs/FCM) names the platform once."""
        events = [
            seen(),
            *[
                stored("push.failed", 0.2, device=d, platform="android", reason="push_not_configured")
                for d in ("a", "b")
            ],
        ]
        findings = explain(timeline(events))
        assert sum("No push was sent to android devices" in f for f in findings) == 1
        assert not any("the push failed" in f for f in findings)

    def test_unconfigured_platform_from_server_records(self) -> None:
        """A push record with error push_not_configured explains the same way."""
        record = {"platform": "ios", "result": "failed", "error": "push_not_configured"}
        findings = explain(timeline([seen()], server={"status": "pending", "pushes": {"pending": {"d1": record}}}))
        assert any("No push was sent to ios devices" in f for f in findings)

    @pytest.mark.parametrize(
        "detail",
        [
            {"result": "dead_token"},
            {"status": 410},
            {"reason": "BadDeviceToken"},
            {"reason": "Unregistered", "status": 410},
            {"reason": "UNREGISTERED", "status": 404},
        ],
    )
    def test_dead_token(self, detail: dict[str, Any]) -> None:
        """push.failed with a dead-token answer says the app must be opened to refresh its token."""
        failed = stored("push.failed", 0.3, device="ipad", platform="ios", **detail)
        findings = explain(timeline([seen(), failed]))
        assert any(f.startswith("Device ipad (ios): the push service reported its token dead") for f in findings)

    def test_other_failure_counts_attempts(self) -> None:
        """push.failed for another reason reports it with the number of attempts made."""
        attempts = [stored("push.failed", 0.2 + i, device="d1", platform="android", status=503) for i in range(3)]
        findings = explain(timeline([seen(), *attempts]))
        assert any("Device d1 (android): the push failed (503) after 3 attempt(s)." in f for f in findings)

    def test_failure_then_success_is_sent(self) -> None:
        """A device whose retry was accepted counts as sent, with no failure reported."""
        events = [seen(), stored("push.failed", 0.2, device="d1", status=503), stored("push.sent", 1.2, device="d1")]
        findings = explain(timeline(events))
        assert not any("failed" in f for f in findings)
        assert any("accepted the incoming-call push for 1 device(s): d1" in f for f in findings)

    def test_ring_timeout(self) -> None:
        """ring.timeout: nobody answered; the server moved the call to missed."""
        findings = explain(timeline([seen(), stored("push.sent", 0.3, device="d1"), stored("ring.timeout", 60)]))
        assert "Nobody answered within the ring time" in findings[-1]
        assert "2026-02-03 12:01:00.000" in findings[-1]

    def test_missed_without_ring_timeout(self) -> None:
        """A missed call with no ring.timeout event says the server did not time it out on record."""
        call = call_doc("missed", endedAt=T0 + timedelta(seconds=30))
        findings = explain(timeline([seen()], call=call))
        assert any("ended missed 30 s after it was placed, with no ring.timeout event" in f for f in findings)

    def test_cancelled_early(self) -> None:
        """A cancelled call reports how soon the caller hung up."""
        call = call_doc("cancelled", endedAt=T0 + timedelta(seconds=2.5))
        findings = explain(timeline([seen(), stored("push.sent", 0.3, device="d1")], call=call))
        assert findings[-1] == "The caller cancelled the call 2.5 s after placing it, before it was answered."

    def test_answered(self) -> None:
        """An ended call reports when it was answered."""
        call = call_doc("ended", answeredAt=T0 + timedelta(seconds=8), endedAt=T0 + timedelta(minutes=5))
        findings = explain(timeline([seen()], call=call))
        assert findings[-1] == "The call was answered 8.0 s after it was placed."

    def test_violation(self) -> None:
        """A violation (event or the call's map) says the call broke the contract and rang nobody."""
        by_event = explain(timeline([stored("violation", 0.1, reason="not_group_members")]))
        assert by_event[0].startswith("The call broke the data contract (not_group_members)")
        by_call = explain(timeline(call=call_doc(violation={"reason": "ended at once", "attempted": "ended"})))
        assert by_call[0].startswith("The call broke the data contract (ended at once)")

    def test_server_push_records_when_no_push_events(self) -> None:
        """Without push events, the server's records of the incoming call explain the pushes."""
        server = {
            "status": "pending",
            "pushes": {
                "pending": {"ipad": {"platform": "ios", "result": "dead_token", "error": "BadDeviceToken"}},
                "missed": {"ipad": {"platform": "ios", "result": "failed"}},
            },
        }
        findings = explain(timeline([seen()], server=server))
        assert any("Device ipad (ios): the push service reported its token dead" in f for f in findings)
        assert not any("the push failed" in f for f in findings)

    def test_call_push_error_when_nothing_else(self) -> None:
        """Without events or records, the call's pushError no_device_token still explains it."""
        call = call_doc(pushSent=False, pushError="no_device_token")
        findings = explain(timeline([seen()], call=call))
        assert any("had no device with a push token" in f for f in findings)

    def test_stop_ringing_failed_claim_lost_and_recording_failed(self) -> None:
        """Failed stop-ringing notices, lost claims and failed recordings are each reported."""
        events = [
            seen(),
            stored("claim.lost", 0.2, worker="watcher-2", status="pending"),
            stored("stop_ringing.failed", 9, device="d2", reason="TopicDisallowed"),
        ]
        recordings = [("call-call-1", {"callId": CALL_ID, "status": "failed", "error": "call ended"})]
        findings = explain(timeline(events, call=call_doc("cancelled"), recordings=recordings))
        assert "Watcher watcher-2 lost its claim on the pending work; another instance took it over." in findings
        assert any("stop-ringing notice to device d2 failed (TopicDisallowed)" in f for f in findings)
        assert "Recording call-call-1 failed: call ended." in findings


# ---------------------------------------------------------------------------------------------- the admin route


@pytest.fixture
def store() -> FakeTimeline:
    return FakeTimeline()


def deps(store: FakeTimeline | None, open_access: bool = False) -> Deps:
    """The app's dependencies for the admin route: only the authenticator and the timeline are used."""
    return Deps(
        authenticator=OpenAccess() if open_access else FakeAuthenticator(TOKENS),
        calls=Unused(),
        health=Unused(),
        clock=FakeClock(T0.timestamp()),
        timeline=store,
    )


@pytest.fixture
async def client(store: FakeTimeline) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(make_settings(), deps(store)))) as test_client:
        yield test_client


class TestAdminRoute:
    """GET /api/admin/calls/{call_id}/timeline over the in-memory timeline."""

    async def test_admin_gets_the_documented_timeline(self, client: Client, store: FakeTimeline) -> None:
        """An admin gets 200 with to_json of the call's timeline, within the served schema."""
        store.calls[CALL_ID] = call_doc()
        await store.append(CALL_ID, [Event(EventKind.CALL_SEEN, {"status": "pending"}, "w1", T0.timestamp())])
        status, body = await get(client, f"/api/admin/calls/{CALL_ID}/timeline", AS_ADMIN)
        assert status == 200
        assert body == json.loads(json.dumps(to_json(await store.read(CALL_ID))))
        (await ResponseShapes.served(client)).check(body, TIMELINE_PATH, "GET")

    async def test_participant_is_refused(self, client: Client, store: FakeTimeline) -> None:
        """A user who is no admin (even the caller) gets 403 and nothing is read."""
        store.calls[CALL_ID] = call_doc(callerId="alice")
        status, body = await get(client, f"/api/admin/calls/{CALL_ID}/timeline", AS_ALICE)
        assert (status, body) == (403, {"error": "only admins may read call timelines"})
        assert store.reads == []

    async def test_unauthenticated_is_401(self, client: Client) -> None:
        """Without an ID token the answer is 401."""
        status, _ = await get(client, f"/api/admin/calls/{CALL_ID}/timeline")
        assert status == 401

    async def test_missing_call_is_404(self, client: Client) -> None:
        """An unknown call id is 404 naming call_id."""
        status, body = await get(client, "/api/admin/calls/nope/timeline", AS_ADMIN)
        assert (status, body["field"]) == (404, "call_id")

    async def test_bad_call_id_is_400(self, client: Client, store: FakeTimeline) -> None:
        """A call id outside the id pattern is 400 before anything is read."""
        status, body = await get(client, "/api/admin/calls/__x__/timeline", AS_ADMIN)
        assert (status, body["field"]) == (400, "call_id")
        assert store.reads == []

    async def test_firestore_down_is_503(self, client: Client, store: FakeTimeline) -> None:
        """Unavailable from the reader is 503."""
        store.failure = Unavailable("down")
        status, _ = await get(client, f"/api/admin/calls/{CALL_ID}/timeline", AS_ADMIN)
        assert status == 503

    async def test_open_mode_is_trusted(self, store: FakeTimeline) -> None:
        """With MEMHARBOR_AUTH=none the route answers anyone, as the seed's admin routes did."""
        store.calls[CALL_ID] = call_doc()
        async with TestClient(TestServer(create_app(make_settings(), deps(store, open_access=True)))) as open_client:
            status, body = await get(open_client, f"/api/admin/calls/{CALL_ID}/timeline")
        assert (status, body["callId"]) == (200, CALL_ID)

    async def test_without_a_reader_is_503(self) -> None:
        """An app composed without a timeline reader answers 503."""
        async with TestClient(TestServer(create_app(make_settings(), deps(None)))) as bare:
            status, body = await get(bare, f"/api/admin/calls/{CALL_ID}/timeline", AS_ADMIN)
        assert (status, body["error"]) == (503, "the call timeline is not configured")


class TestSupportDoc:
    """docs/support.md shows what the code prints."""

    DOC = Path(__file__).resolve().parents[2] / "docs" / "support.md"

    @staticmethod
    def worked_example() -> CallTimeline:
        """The documents of the worked example: the mother's only iPhone has a dead token; the call rings out."""
        t0 = datetime(2026, 2, 3, 18, 4, 11, 520000, tzinfo=UTC)
        call_id, channel = "7c1e2b90-5d0a-4f3e-9a61-2b8f0c4d7e15", "kim-family_3f9a0c41d2b7_1770141851520"
        call = {
            "callId": call_id,
            "groupId": "kim-family",
            "callerId": "daughter-uid",
            "receiverId": "mom-uid",
            "status": "missed",
            "createdAt": t0,
            "endedAt": t0 + timedelta(seconds=60.31),
            "channelName": channel,
            "pushSent": False,
            "pushPlatform": "ios",
            "pushError": "BadDeviceToken",
            "ringDeadline": t0 + timedelta(seconds=60),
        }
        record = {
            "platform": "ios",
            "result": "dead_token",
            "error": "BadDeviceToken",
            "at": t0 + timedelta(seconds=0.6),
        }
        server = {
            "status": "missed",
            "effects": {
                "pending": {"state": "done", "by": "watcher-a"},
                "missed": {"state": "done", "by": "watcher-a"},
            },
            "pushes": {"pending": {"iphone-7Q2": record}, "missed": {}},
        }

        def at(seconds: float, kind: str, **detail: Any) -> dict[str, Any]:
            event = Event(EventKind(kind), detail, "watcher-a", t0.timestamp() + seconds)
            return {**event_fields(event), "at": t0 + timedelta(seconds=seconds)}

        failed = {"device": "iphone-7Q2", "platform": "ios", "result": "dead_token", "reason": "BadDeviceToken"}
        events = [
            at(0.09, "call.seen", status="pending"),
            at(0.091, "channel.assigned", channel=channel),
            at(0.6, "push.failed", **failed, status=400, latencyMs=212, attempt=1),
            at(60.3, "ring.timeout", lateMs=300),
            at(60.35, "call.seen", status="missed"),
        ]
        return build_timeline(call_id, call, server, [(str(i), e) for i, e in enumerate(events)], [])

    def test_worked_example_is_the_rendered_table(self) -> None:
        """The text block of the worked example is render_table's output for its documents."""
        text = self.DOC.read_text()
        block = text.split("```text\n", 1)[1].split("```", 1)[0]
        assert block == render_table(self.worked_example())

    def test_every_event_kind_is_documented(self) -> None:
        """Each kind a worker may write is named in the support guide."""
        text = self.DOC.read_text()
        assert [k.value for k in EventKind if f"`{k.value}`" not in text] == ["unknown"]
