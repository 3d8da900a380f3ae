"""The per-call timeline: what the server did about one call, as events, and how support reads it.

Workers describe each step they take on a call as an `Event` and store it under the server-only
`callServer/{callId}/events/{autoId}` (`memharbor.repositories.timeline`: `add_events` puts events into
the caller's own batch, `TimelineWriter.append` commits them alone). Support reads a call back as a
`CallTimeline` (`memharbor inspect CALL_ID`, `GET /api/admin/calls/{call_id}/timeline`), shown by
`render_table` or `to_json`, with `explain`'s answer to "why didn't it ring?".

No Firestore here. Stored documents may be junk (an admin script can write anything under the server
documents), so reading never fails: a value that does not fit is shown as text and its field is named in
`malformed`; a kind outside `EventKind` reads as `unknown` with the stored one kept in `raw_kind`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from memharbor import calls

T = TypeVar("T")
Scalar = str | int | float | bool

# Longest text kept of one stored value; more is cut (a detail is meant to be small).
MAX_TEXT = 500
# Detail entries kept per event, in key order; the rest are dropped and `detail` is named malformed.
MAX_DETAIL_KEYS = 32
# Push and effect records read from one server document (a receiver has at most a few devices).
MAX_RECORDS = 200


class EventKind(enum.StrEnum):
    """What happened. The usual `detail` keys of each kind are in its comment (camelCase, small scalars)."""

    CALL_SEEN = "call.seen"  # status; the watcher's change feed delivered the call in this status
    CALL_FOUND_BY_SWEEP = "call.found_by_sweep"  # status, lateMs; the backup sweep found what the feed missed
    CHANNEL_ASSIGNED = "channel.assigned"  # channel
    PUSH_SENT = "push.sent"  # device, platform, latencyMs, attempt; APNs/FCM accepted the incoming call
    PUSH_FAILED = "push.failed"  # device, platform, result (dead_token | failed), reason, status, latencyMs, attempt
    PUSH_SKIPPED = "push.skipped"  # reason: no_device_token | push_not_configured (platform)
    RING_TIMEOUT = "ring.timeout"  # lateMs; the server moved the unanswered call to missed
    STOP_RINGING_SENT = "stop_ringing.sent"  # device, platform, status (accepted, declined, cancelled, missed)
    STOP_RINGING_FAILED = "stop_ringing.failed"  # device, platform, status, result, reason
    RECORDING_REQUESTED = "recording.requested"  # sid
    RECORDING_CLAIMED = "recording.claimed"  # sid, takeover
    RECORDING_STARTED = "recording.started"  # sid
    RECORDING_STOPPED = "recording.stopped"  # sid, reason, durationMs
    RECORDING_UPLOADED = "recording.uploaded"  # sid, attempt, fileSize
    RECORDING_UPLOAD_FAILED = "recording.upload_failed"  # sid, attempt, reason
    VIOLATION = "violation"  # reason, attempted, restored
    CLAIM_LOST = "claim.lost"  # status, holder; another instance holds the work on the call
    UNKNOWN = "unknown"  # reading only: a stored kind outside this set


_WRITABLE = frozenset(k.value for k in EventKind if k is not EventKind.UNKNOWN)


@dataclass(frozen=True)
class Event:
    """One step a worker took on a call: `t` is the worker's wall clock (epoch seconds), ordering the
    events of one commit, which share their server timestamp."""

    kind: EventKind
    detail: Mapping[str, Scalar | None]
    worker: str
    t: float


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def event_fields(event: Event) -> dict[str, Any]:
    """The stored fields of an event, without `at` (the repository adds the server timestamp).

    A kind outside `EventKind` (or `unknown`) is a ValueError. Detail entries that are None are left out,
    long texts are cut and values of other types are stored as their text.
    """
    kind = str(event.kind)
    if kind not in _WRITABLE:
        raise ValueError(f"not an event kind: {kind!r}")
    detail: dict[str, Scalar] = {}
    for key, value in list(event.detail.items())[:MAX_DETAIL_KEYS]:
        if value is None:
            continue
        if isinstance(value, bool | int | float):
            detail[str(key)] = value
        else:
            detail[str(key)] = _cut(str(value))
    return {"kind": kind, "worker": _cut(str(event.worker)), "t": float(event.t), "detail": detail}


# ---------------------------------------------------------------------------------------------- reading


def iso(stamp: datetime) -> str:
    """A time as ISO 8601 in UTC with microseconds and `Z` (`2026-02-03T12:00:00.123456Z`)."""
    return stamp.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _shown(value: Any) -> str:
    """Any stored value as (cut) text, to show what a malformed field held."""
    return _cut(value if isinstance(value, str) else repr(value))


def _finite(value: Any) -> int | float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


class _Fields:
    """Typed reads of one stored map; a field that is present but does not fit (or required and absent) is noted."""

    def __init__(self, doc: Mapping[str, Any], prefix: str = "") -> None:
        self.doc = doc
        self.prefix = prefix
        self.malformed: list[str] = []

    def _noted(self, name: str, value: T | None, required: bool) -> T | None:
        if value is None and (required or self.doc.get(name) is not None):
            self.malformed.append(self.prefix + name)
        return value

    def text(self, name: str, required: bool = False) -> str | None:
        raw = self.doc.get(name)
        return self._noted(name, _cut(raw) if isinstance(raw, str) else None, required)

    def stamp(self, name: str, required: bool = False) -> datetime | None:
        return self._noted(name, _utc(self.doc.get(name)), required)

    def flag(self, name: str) -> bool | None:
        raw = self.doc.get(name)
        return self._noted(name, raw if isinstance(raw, bool) else None, False)

    def number(self, name: str, required: bool = False) -> int | float | None:
        return self._noted(name, _finite(self.doc.get(name)), required)

    def shown(self, name: str) -> str | None:
        """Whatever the field holds, as text (for values recorded as found, such as a violation's status)."""
        raw = self.doc.get(name)
        return None if raw is None else _shown(raw)


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored: `at` is the server's commit time; None where the document lacks a valid value."""

    id: str
    at: datetime | None
    kind: EventKind
    worker: str | None
    t: float | None
    detail: Mapping[str, Scalar]
    # The stored kind when it is not one of EventKind (then `kind` is unknown).
    raw_kind: str | None = None
    # Stored fields that did not fit (`detail.x` for one detail entry).
    malformed: tuple[str, ...] = ()

    @property
    def when(self) -> float | None:
        """Epoch seconds of the event: the server's time, else the worker's."""
        return self.at.timestamp() if self.at is not None else self.t


def _detail_value(value: Any) -> Scalar | None:
    """A stored detail value as a scalar, or None when it is none (a timestamp becomes its ISO text)."""
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, bool):
        return value
    number = _finite(value)
    if number is not None:
        return number
    stamp = _utc(value)
    return None if stamp is None else iso(stamp)


def _detail(raw: Any, malformed: list[str]) -> dict[str, Scalar]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        malformed.append("detail")
        return {"value": _shown(raw)}
    keys = sorted(raw, key=str)
    if len(keys) > MAX_DETAIL_KEYS:
        malformed.append("detail")
    detail: dict[str, Scalar] = {}
    for key in keys[:MAX_DETAIL_KEYS]:
        value, name = raw[key], _cut(str(key))
        if value is None:
            continue
        scalar = _detail_value(value)
        if scalar is None:
            scalar = _shown(value)
            malformed.append(f"detail.{name}")
        detail[name] = scalar
    return detail


def parse_event(doc: Any, event_id: str = "") -> RecordedEvent:
    """An event document as read back; never fails (a document that is not a map is one malformed event)."""
    if not isinstance(doc, Mapping):
        return RecordedEvent(event_id, None, EventKind.UNKNOWN, None, None, {}, _shown(doc), ("document",))
    fields = _Fields(doc)
    raw = doc.get("kind")
    kind = EventKind(raw) if isinstance(raw, str) and raw in _WRITABLE else EventKind.UNKNOWN
    if not isinstance(raw, str):
        fields.malformed.append("kind")
    at = fields.stamp("at", required=True)
    worker = fields.text("worker", required=True)
    t = fields.number("t", required=True)
    detail = _detail(doc.get("detail"), fields.malformed)
    return RecordedEvent(
        id=event_id,
        at=at,
        kind=kind,
        worker=worker,
        t=None if t is None else float(t),
        detail=detail,
        raw_kind=None if kind is not EventKind.UNKNOWN else _shown(raw),
        malformed=tuple(fields.malformed),
    )


# ---------------------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Violation:
    """The call's `violation` map: why the watcher refused the call, and the status it left it in."""

    reason: str | None
    attempted: str | None
    restored: str | None
    at: datetime | None


@dataclass(frozen=True)
class CallSummary:
    """What support needs of `calls/{callId}` (None: absent or malformed; `malformed` names the latter)."""

    status: str | None
    group_id: str | None
    caller_id: str | None
    receiver_id: str | None
    channel_name: str | None
    created_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None
    ring_deadline: datetime | None
    push_sent: bool | None
    push_platform: str | None
    push_error: str | None
    record: bool | None
    recording_id: str | None
    violation: Violation | None
    malformed: tuple[str, ...] = ()


_STATUS_ORDER = {status.value: rank for rank, status in enumerate(calls.Status)}


def _by_status(key: Any) -> tuple[int, str]:
    """Statuses in the state machine's order (pending first), anything else after them by name."""
    return _STATUS_ORDER.get(str(key), len(_STATUS_ORDER)), str(key)


def _entries(
    raw: Any, path: str, malformed: list[str], order: Callable[[Any], Any] = str
) -> list[tuple[str, Mapping[str, Any]]]:
    """The entries of a stored map whose values are maps, sorted by `order` of their keys (at most MAX_RECORDS);
    the others are named malformed."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        malformed.append(path)
        return []
    found = []
    for key in sorted(raw, key=order)[:MAX_RECORDS]:
        if isinstance(raw[key], Mapping):
            found.append((_cut(str(key)), raw[key]))
        else:
            malformed.append(f"{path}.{key}")
    return found


def _violation(raw: Any, malformed: list[str]) -> Violation | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        malformed.append("violation")
        return Violation(_shown(raw), None, None, None)
    fields = _Fields(raw, "violation.")
    found = Violation(fields.text("reason"), fields.shown("attempted"), fields.shown("restored"), fields.stamp("at"))
    malformed.extend(fields.malformed)
    return found


def summarize_call(doc: Mapping[str, Any]) -> CallSummary:
    """The call document as support sees it."""
    f = _Fields(doc)
    summary = CallSummary(
        status=f.text("status", required=True),
        group_id=f.text("groupId", required=True),
        caller_id=f.text("callerId", required=True),
        receiver_id=f.text("receiverId", required=True),
        channel_name=f.text("channelName"),
        created_at=f.stamp("createdAt", required=True),
        answered_at=f.stamp("answeredAt"),
        ended_at=f.stamp("endedAt"),
        ring_deadline=f.stamp("ringDeadline"),
        push_sent=f.flag("pushSent"),
        push_platform=f.text("pushPlatform"),
        push_error=f.text("pushError"),
        record=f.flag("record"),
        recording_id=f.text("recordingId"),
        violation=_violation(doc.get("violation"), f.malformed),
    )
    return replace(summary, malformed=tuple(f.malformed))


@dataclass(frozen=True)
class PushRecord:
    """One device's push for one status, as the watcher keeps it (`callServer.pushes.{status}.{device}`):
    `pending` is the incoming call, the other statuses the stop-ringing notice."""

    status: str
    device: str
    platform: str | None
    result: str | None  # sent | failed | dead_token
    error: str | None
    at: datetime | None


@dataclass(frozen=True)
class EffectRecord:
    """Who carried out (or holds) the side effects of one status (`callServer.effects.{status}`)."""

    status: str
    state: str | None  # claimed | done
    by: str | None
    lease_until: datetime | None
    done_at: datetime | None


@dataclass(frozen=True)
class ServerSummary:
    """What the watcher keeps in `callServer/{callId}`: the last legal status, effects and push records."""

    status: str | None
    invalid: bool
    effects: tuple[EffectRecord, ...]
    pushes: tuple[PushRecord, ...]
    malformed: tuple[str, ...] = ()


def _pushes(raw: Any, malformed: list[str]) -> tuple[PushRecord, ...]:
    records: list[PushRecord] = []
    for status, devices in _entries(raw, "pushes", malformed, _by_status):
        for device, stored in _entries(devices, f"pushes.{status}", malformed):
            f = _Fields(stored, f"pushes.{status}.{device}.")
            records.append(
                PushRecord(status, device, f.text("platform"), f.text("result"), f.text("error"), f.stamp("at"))
            )
            malformed.extend(f.malformed)
    return tuple(records[:MAX_RECORDS])


def _effects(raw: Any, malformed: list[str]) -> tuple[EffectRecord, ...]:
    records = []
    for status, stored in _entries(raw, "effects", malformed, _by_status):
        f = _Fields(stored, f"effects.{status}.")
        records.append(EffectRecord(status, f.text("state"), f.text("by"), f.stamp("leaseUntil"), f.stamp("doneAt")))
        malformed.extend(f.malformed)
    return tuple(records)


def summarize_server(doc: Mapping[str, Any]) -> ServerSummary:
    """The server document `callServer/{callId}` as support sees it."""
    f = _Fields(doc)
    status, invalid = f.text("status"), f.flag("invalid")
    effects, pushes = _effects(doc.get("effects"), f.malformed), _pushes(doc.get("pushes"), f.malformed)
    return ServerSummary(status, invalid is True, effects, pushes, tuple(f.malformed))


@dataclass(frozen=True)
class RecordingSummary:
    """One recording session of the call (`recordings/{sid}` whose callId is the call's)."""

    sid: str
    status: str | None
    requested_by: str | None
    created_at: datetime | None
    recorded_at: datetime | None
    stopped_at: datetime | None
    stop_reason: str | None
    duration_ms: int | float | None
    error: str | None
    worker_id: str | None
    interrupted: bool
    malformed: tuple[str, ...] = ()


def summarize_recording(sid: str, doc: Mapping[str, Any]) -> RecordingSummary:
    """A recording session as support sees it."""
    f = _Fields(doc)
    summary = RecordingSummary(
        sid=sid,
        status=f.text("status", required=True),
        requested_by=f.text("requestedBy"),
        created_at=f.stamp("createdAt"),
        recorded_at=f.stamp("recordedAt"),
        stopped_at=f.stamp("stoppedAt"),
        stop_reason=f.text("stopReason"),
        duration_ms=f.number("duration"),
        error=f.text("error"),
        worker_id=f.text("workerId"),
        interrupted=f.flag("interrupted") is True,
    )
    return replace(summary, malformed=tuple(f.malformed))


@dataclass(frozen=True)
class CallTimeline:
    """Everything the server recorded about one call: the call, its server document, events, recordings."""

    call_id: str
    call: CallSummary
    server: ServerSummary | None
    events: tuple[RecordedEvent, ...]
    recordings: tuple[RecordingSummary, ...]
    # More events were stored than one read takes: these are the earliest.
    events_truncated: bool = False


def _order(event: RecordedEvent) -> tuple[bool, float, float, str]:
    # By server time, then by the worker's clock (events of one commit share their server time); events
    # with neither come last.
    when = event.when
    return (when is None, when or 0.0, event.t or 0.0, event.id)


def build_timeline(
    call_id: str,
    call: Mapping[str, Any],
    server: Mapping[str, Any] | None,
    events: Iterable[tuple[str, Any]],
    recordings: Iterable[tuple[str, Any]],
    events_truncated: bool = False,
) -> CallTimeline:
    """The timeline from the stored documents: events as (id, document), recordings as (sid, document)."""
    parsed = sorted((parse_event(doc, event_id) for event_id, doc in events), key=_order)
    sessions = [summarize_recording(sid, doc if isinstance(doc, Mapping) else {}) for sid, doc in recordings]
    sessions.sort(key=lambda r: (r.created_at is None, r.created_at or datetime.min.replace(tzinfo=UTC), r.sid))
    return CallTimeline(
        call_id=call_id,
        call=summarize_call(call),
        server=None if server is None else summarize_server(server),
        events=tuple(parsed),
        recordings=tuple(sessions),
        events_truncated=events_truncated,
    )


# ---------------------------------------------------------------------------------------------- explain

# What APNs and FCM answer for a token that will never work again (watcher/apns.py, watcher/fcm.py).
DEAD_TOKEN_ANSWERS = frozenset({"dead_token", "410", "BadDeviceToken", "Unregistered", "UNREGISTERED", "ExpiredToken"})
_PUSH_KINDS = (EventKind.PUSH_SENT, EventKind.PUSH_FAILED, EventKind.PUSH_SKIPPED)


def _span(seconds: float) -> str:
    """A duration for a sentence: `0.4 s`, `12 s`, `3 min 5 s`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _since_created(timeline: CallTimeline, at: datetime | None) -> str | None:
    created = timeline.call.created_at
    if created is None or at is None:
        return None
    return _span(max(0.0, (at - created).total_seconds()))


def _of(timeline: CallTimeline, *kinds: EventKind) -> list[RecordedEvent]:
    return [e for e in timeline.events if e.kind in kinds]


_ANSWER_KEYS = ("result", "reason", "status", "error")
# The watcher's answer for a platform that has no push service configured (watcher/push.py).
NOT_CONFIGURED = "push_not_configured"


def _why(detail: Mapping[str, Scalar]) -> str:
    """The push service's answer in a detail, as `result / reason / status` (whatever of them is there)."""
    parts = [str(detail[key]) for key in _ANSWER_KEYS if key in detail]
    return " / ".join(dict.fromkeys(parts)) or "no reason recorded"


def is_dead_token(detail: Mapping[str, Scalar]) -> bool:
    """True when a failed push's detail says the token is dead (APNs 410 or BadDeviceToken, FCM UNREGISTERED)."""
    return any(str(detail.get(key)) in DEAD_TOKEN_ANSWERS for key in _ANSWER_KEYS)


@dataclass(frozen=True)
class _Push:
    """The last word on one device's incoming-call push, from events or the server's push records."""

    device: str
    platform: str
    outcome: str  # sent | dead | failed | unconfigured
    why: str
    attempts: int


def _outcome(event: RecordedEvent) -> str:
    if event.kind is EventKind.PUSH_SENT:
        return "sent"
    if NOT_CONFIGURED in {str(event.detail.get(key)) for key in _ANSWER_KEYS}:
        return "unconfigured"
    return "dead" if is_dead_token(event.detail) else "failed"


def _pushes_from_events(events: list[RecordedEvent]) -> list[_Push]:
    attempts: dict[str, int] = {}
    last: dict[str, _Push] = {}
    for event in events:
        device = str(event.detail.get("device", "?"))
        attempts[device] = attempts.get(device, 0) + 1
        platform = str(event.detail.get("platform", "?"))
        last[device] = _Push(device, platform, _outcome(event), _why(event.detail), attempts[device])
    return list(last.values())


def _pushes_from_records(records: Iterable[PushRecord]) -> list[_Push]:
    found = []
    for record in records:
        if record.status != "pending":
            continue  # the other statuses' records are stop-ringing notices
        outcome = {"sent": "sent", "dead_token": "dead"}.get(record.result or "", "failed")
        if record.error == NOT_CONFIGURED:
            outcome = "unconfigured"
        why = " / ".join(str(v) for v in (record.result, record.error) if v) or "no reason recorded"
        found.append(_Push(record.device, record.platform or "?", outcome, why, 1))
    return found


def _contract_findings(timeline: CallTimeline) -> list[str]:
    reasons = [str(e.detail.get("reason", "")) for e in _of(timeline, EventKind.VIOLATION)]
    if timeline.call.violation is not None:
        reasons.append(timeline.call.violation.reason or "")
    if not reasons:
        return []
    reason = next((r for r in reasons if r), "no reason recorded")
    return [f"The call broke the data contract ({reason}): the watcher recorded a violation and rang nobody."]


def _watcher_findings(timeline: CallTimeline) -> list[str]:
    found = []
    swept = _of(timeline, EventKind.CALL_FOUND_BY_SWEEP)
    if not swept and not _of(timeline, EventKind.CALL_SEEN):
        if timeline.server is None:
            found.append(
                "No watcher recorded seeing this call (no call.seen event and no callServer document): no watcher "
                "was running, or none could reach Firestore. Check GET /api/health and the watchers' logs."
            )
        else:
            found.append(
                "A watcher acted on this call but recorded no call.seen event: it runs a version without the "
                "timeline, or its events were not written."
            )
    for event in swept[:1]:
        late = event.detail.get("lateMs")
        after = _span(float(late) / 1000) if isinstance(late, int | float) else _since_created(timeline, event.at)
        found.append(
            f"The watcher's change feed missed the call; its backup sweep found it {after or 'later'} after it was "
            "created, so the server handled it late."
        )
    for event in _of(timeline, EventKind.CLAIM_LOST):
        status = event.detail.get("status", "?")
        found.append(
            f"Watcher {event.worker or '?'} lost its claim on the {status} work; another instance took it over."
        )
    return found


def _ring_pushes(timeline: CallTimeline) -> tuple[list[_Push], bool]:
    """The devices' pushes of the incoming call, and whether no device could be pushed at all."""
    events = _of(timeline, *_PUSH_KINDS)
    pushes = _pushes_from_events([e for e in events if e.kind is not EventKind.PUSH_SKIPPED])
    no_device = False
    for event in (e for e in events if e.kind is EventKind.PUSH_SKIPPED):
        if event.detail.get("reason") == NOT_CONFIGURED:
            platform = str(event.detail.get("platform", "?"))
            pushes.append(_Push("-", platform, "unconfigured", NOT_CONFIGURED, 1))
        else:
            no_device = True
    if not events:
        pushes = _pushes_from_records(timeline.server.pushes) if timeline.server is not None else []
        no_device = timeline.call.push_error == "no_device_token" and not pushes
    return pushes, no_device


def _push_findings(timeline: CallTimeline) -> list[str]:
    pushes, no_device = _ring_pushes(timeline)
    found = []
    if no_device:
        found.append(
            f"No push was sent: the receiver ({timeline.call.receiver_id or '?'}) had no device with a push token. "
            "The app must be opened and signed in on the phone, so it registers the device and its token."
        )
    unconfigured = sorted({p.platform for p in pushes if p.outcome == "unconfigured"})
    if unconfigured:
        found.append(
            f"No push was sent to {', '.join(unconfigured)} devices: the server has no push service configured "
            "for them (APNS_* for iOS, FCM_* for Android)."
        )
    for push in pushes:
        if push.outcome == "dead":
            found.append(
                f"Device {push.device} ({push.platform}): the push service reported its token dead ({push.why}) and "
                "the server removed it. The app on that phone must be opened to register a new token."
            )
        elif push.outcome == "failed":
            found.append(
                f"Device {push.device} ({push.platform}): the push failed ({push.why}) "
                f"after {push.attempts} attempt(s)."
            )
    sent = [f"{p.device} ({p.platform})" for p in pushes if p.outcome == "sent"]
    if sent:
        found.append(
            f"APNs/FCM accepted the incoming-call push for {len(sent)} device(s): {', '.join(sent)}. From there, "
            "delivery is up to Apple or Google and the phone's own settings."
        )
    return found


def _ending_findings(timeline: CallTimeline) -> list[str]:
    call, found = timeline.call, []
    for event in _of(timeline, EventKind.RING_TIMEOUT)[:1]:
        found.append(
            f"Nobody answered within the ring time: the server moved the call to missed at {_clock(event.at)}."
        )
    after = _since_created(timeline, call.answered_at or call.ended_at) or "?"
    if call.status == "missed" and not found:
        found.append(
            f"The call ended missed {after} after it was placed, with no ring.timeout event: the caller's app "
            "marked it missed, or the server's timeout predates the timeline."
        )
    elif call.status == "cancelled":
        found.append(f"The caller cancelled the call {after} after placing it, before it was answered.")
    elif call.status == "declined":
        found.append(f"The receiver declined the call {after} after it was placed.")
    elif call.status in ("accepted", "ended"):
        found.append(f"The call was answered {after} after it was placed.")
    for event in _of(timeline, EventKind.STOP_RINGING_FAILED):
        device = event.detail.get("device", "?")
        found.append(
            f"The stop-ringing notice to device {device} failed ({_why(event.detail)}): it may have kept ringing."
        )
    for recording in timeline.recordings:
        if recording.status == "failed":
            found.append(f"Recording {recording.sid} failed: {recording.error or 'no reason recorded'}.")
    return found


def explain(timeline: CallTimeline) -> list[str]:
    """Sentences on what the timeline shows about why the call did or did not ring (see docs/support.md)."""
    findings = [
        *_contract_findings(timeline),
        *_watcher_findings(timeline),
        *_push_findings(timeline),
        *_ending_findings(timeline),
    ]
    return findings or ["The timeline records no server step that explains a problem."]


# ---------------------------------------------------------------------------------------------- output


def _iso_or_none(stamp: datetime | None) -> str | None:
    return None if stamp is None else iso(stamp)


def _event_json(event: RecordedEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": _iso_or_none(event.at),
        "t": event.t,
        "kind": event.kind.value,
        "rawKind": event.raw_kind,
        "worker": event.worker,
        "detail": dict(event.detail),
        "malformedFields": list(event.malformed),
    }


def _call_json(call: CallSummary) -> dict[str, Any]:
    violation = call.violation
    return {
        "status": call.status,
        "groupId": call.group_id,
        "callerId": call.caller_id,
        "receiverId": call.receiver_id,
        "channelName": call.channel_name,
        "createdAt": _iso_or_none(call.created_at),
        "answeredAt": _iso_or_none(call.answered_at),
        "endedAt": _iso_or_none(call.ended_at),
        "ringDeadline": _iso_or_none(call.ring_deadline),
        "pushSent": call.push_sent,
        "pushPlatform": call.push_platform,
        "pushError": call.push_error,
        "record": call.record,
        "recordingId": call.recording_id,
        "violation": None
        if violation is None
        else {
            "reason": violation.reason,
            "attempted": violation.attempted,
            "restored": violation.restored,
            "at": _iso_or_none(violation.at),
        },
        "malformedFields": list(call.malformed),
    }


def _server_json(server: ServerSummary) -> dict[str, Any]:
    return {
        "status": server.status,
        "invalid": server.invalid,
        "effects": [
            {
                "status": e.status,
                "state": e.state,
                "by": e.by,
                "leaseUntil": _iso_or_none(e.lease_until),
                "doneAt": _iso_or_none(e.done_at),
            }
            for e in server.effects
        ],
        "pushes": [
            {
                "status": p.status,
                "device": p.device,
                "platform": p.platform,
                "result": p.result,
                "error": p.error,
                "at": _iso_or_none(p.at),
            }
            for p in server.pushes
        ],
        "malformedFields": list(server.malformed),
    }


def _recording_json(recording: RecordingSummary) -> dict[str, Any]:
    return {
        "sid": recording.sid,
        "status": recording.status,
        "requestedBy": recording.requested_by,
        "createdAt": _iso_or_none(recording.created_at),
        "recordedAt": _iso_or_none(recording.recorded_at),
        "stoppedAt": _iso_or_none(recording.stopped_at),
        "stopReason": recording.stop_reason,
        "duration": recording.duration_ms,
        "error": recording.error,
        "workerId": recording.worker_id,
        "interrupted": recording.interrupted,
        "malformedFields": list(recording.malformed),
    }


def to_json(timeline: CallTimeline) -> dict[str, Any]:
    """The timeline as a JSON-ready map (the admin route's body, `memharbor inspect --json`), with `explanation`."""
    return {
        "callId": timeline.call_id,
        "call": _call_json(timeline.call),
        "server": None if timeline.server is None else _server_json(timeline.server),
        "events": [_event_json(e) for e in timeline.events],
        "eventsTruncated": timeline.events_truncated,
        "recordings": [_recording_json(r) for r in timeline.recordings],
        "explanation": explain(timeline),
    }


def _printable(text: str) -> str:
    # Stored text reaches a terminal: control characters (escape sequences, newlines) are shown escaped.
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _clock(stamp: datetime | None) -> str:
    """A time for the table: `2026-02-03 12:00:00.123` (UTC), or `-`."""
    return "-" if stamp is None else iso(stamp)[:23].replace("T", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    cells = [list(headers), *[[_printable(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip() for row in cells]


def _offset(timeline: CallTimeline, event: RecordedEvent) -> str:
    created, when = timeline.call.created_at, event.when
    if created is None or when is None:
        return ""
    return f"{when - created.timestamp():+.3f}s"


def _event_clock(event: RecordedEvent) -> str:
    """The event's server time; without one, the worker's clock marked `~` (or `-`)."""
    if event.at is not None or event.t is None:
        return _clock(event.at)
    try:
        return "~" + _clock(datetime.fromtimestamp(event.t, UTC))
    except (OverflowError, OSError, ValueError):
        return "-"  # a stored t beyond the calendar


def _event_rows(timeline: CallTimeline) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for event in timeline.events:
        kind = event.kind.value if event.raw_kind is None else f"unknown ({event.raw_kind})"
        detail = " ".join(f"{k}={v}" for k, v in event.detail.items())
        if event.malformed:
            detail = f"{detail} [malformed: {', '.join(event.malformed)}]".strip()
        rows.append((_event_clock(event), _offset(timeline, event), event.worker or "?", kind, detail))
    return rows


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _header(timeline: CallTimeline) -> list[str]:
    call = timeline.call
    lines = [
        f"call      {timeline.call_id}  status {_or_dash(call.status)}",
        f"people    caller {_or_dash(call.caller_id)} -> receiver {_or_dash(call.receiver_id)}"
        f"  group {_or_dash(call.group_id)}",
        f"created   {_clock(call.created_at)}  answered {_clock(call.answered_at)}  ended {_clock(call.ended_at)}"
        f"  ring deadline {_clock(call.ring_deadline)}",
        f"channel   {_or_dash(call.channel_name)}",
        f"push      pushSent {_or_dash(call.push_sent)}  pushPlatform {_or_dash(call.push_platform)}"
        f"  pushError {_or_dash(call.push_error)}",
    ]
    if call.violation is not None:
        v = call.violation
        lines.append(f"violation {_or_dash(v.reason)} (found {_or_dash(v.attempted)}, left {_or_dash(v.restored)})")
    if call.malformed:
        lines.append(f"malformed {', '.join(call.malformed)}")
    return [_printable(line) for line in lines]


def _server_lines(server: ServerSummary | None) -> list[str]:
    if server is None:
        return ["server    no callServer document: no watcher has acted on this call"]
    lines = [
        f"server    last legal status {_or_dash(server.status)}" + ("  INVALID (ignored)" if server.invalid else "")
    ]
    if server.effects:
        # Who did each status's work: whose logs to read.
        done = [f"{e.status} {_or_dash(e.state)} by {_or_dash(e.by)}" for e in server.effects]
        lines.append(f"effects   {'; '.join(done)}")
    if server.malformed:
        lines.append(f"malformed {', '.join(server.malformed)}")
    if server.pushes:
        rows = [
            (p.status, p.device, _or_dash(p.platform), _or_dash(p.result), _or_dash(p.error), _clock(p.at))
            for p in server.pushes
        ]
        lines += ["", "Push records (callServer.pushes; pending = the incoming call, others = stop ringing)"]
        lines += _table(("STATUS", "DEVICE", "PLATFORM", "RESULT", "ERROR", "AT (UTC)"), rows)
    return [_printable(line) for line in lines]


def _recording_lines(recordings: tuple[RecordingSummary, ...]) -> list[str]:
    if not recordings:
        return []
    rows = [
        (
            r.sid,
            _or_dash(r.status),
            _or_dash(r.requested_by),
            _clock(r.created_at),
            _clock(r.stopped_at),
            "-" if r.duration_ms is None else f"{r.duration_ms / 1000:.1f}s",
            (r.error or r.stop_reason or "") + (" interrupted" if r.interrupted else ""),
        )
        for r in recordings
    ]
    return ["", "Recordings", *_table(("SID", "STATUS", "REQUESTED BY", "CREATED", "STOPPED", "LENGTH", "NOTE"), rows)]


def render_table(timeline: CallTimeline) -> str:
    """The timeline for people: the call, its events as a table, push records, recordings and `explain`."""
    lines = [*_header(timeline), *_server_lines(timeline.server), ""]
    if timeline.events:
        title = f"Events ({len(timeline.events)}{', the earliest only' if timeline.events_truncated else ''})"
        lines += [title, *_table(("AT (UTC)", "+SINCE CREATED", "WORKER", "EVENT", "DETAIL"), _event_rows(timeline))]
    else:
        lines.append("Events    none recorded")
    lines += _recording_lines(timeline.recordings)
    lines += ["", "Why", *(f"- {_printable(finding)}" for finding in explain(timeline))]
    return "\n".join(lines) + "\n"
