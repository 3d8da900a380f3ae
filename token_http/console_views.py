"""The admin console's JSON views, from stored documents: pure functions, shaped as token_http/openapi.py says.

Calls and server documents go through memharbor.timeline's summaries (the timeline route's shapes), so a
malformed admin write shows as null and is named in `malformedFields` instead of breaking the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from memharbor.repositories.console import CallWithServer
from memharbor.timeline import CallSummary, build_timeline, iso, to_json

# Heartbeat fields the workers view shows (memharbor/heartbeat.py writes them); `status` is free-form.
_HEARTBEAT_TEXT = ("instanceId", "kind", "host")
_HEARTBEAT_TIMES = ("startedAt", "beatAt", "expiresAt")
_PUSH_PROBLEMS = frozenset({"failed", "dead_token"})


def plain(value: Any, depth: int = 0) -> Any:
    """`value` as JSON: times as ISO 8601 strings, maps and lists walked (4 levels), anything else as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return iso(value)
    if depth >= 4:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    return str(value)


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def ringing_seconds(call: CallSummary, now: datetime) -> float | None:
    """How long the call rang: until it was answered or ended, or until `now` while still pending."""
    if call.created_at is None:
        return None
    if call.status == "pending":
        until: datetime | None = now
    else:
        until = call.answered_at or call.ended_at
    if until is None:
        return None
    return round(max(0.0, (until - call.created_at).total_seconds()), 1)


def call_rows(found: Iterable[CallWithServer], now: datetime) -> list[dict[str, Any]]:
    """One row per call: the timeline's call and server shapes, with how long it rang."""
    rows = []
    for call_id, call, server in found:
        timeline = build_timeline(call_id, call, server, [], [])
        shaped = to_json(timeline)
        rows.append(
            {
                "callId": call_id,
                "call": shaped["call"],
                "server": shaped["server"],
                "ringingSeconds": ringing_seconds(timeline.call, now),
            }
        )
    return rows


def problems(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Push errors, failed pushes per device and violations of the given call rows, newest calls first."""
    found: list[dict[str, Any]] = []
    for row in rows:
        call_id, call, server = row["callId"], row["call"], row["server"]
        if call["pushError"]:
            found.append(_problem(call_id, "push_error", call["pushError"], call["createdAt"]))
        for push in (server or {}).get("pushes", []):
            if push["result"] in _PUSH_PROBLEMS:
                detail = f"{push['device']} ({push['platform'] or '?'}): {push['result']} {push['error'] or ''}"
                found.append(_problem(call_id, "push_failed", detail.strip(), push["at"]))
        violation = call["violation"]
        if violation is not None:
            detail = f"{violation['reason']} (found {violation['attempted']}, left {violation['restored']})"
            found.append(_problem(call_id, "violation", detail, violation["at"]))
    return found


def _problem(call_id: str, kind: str, detail: str, at: str | None) -> dict[str, Any]:
    return {"callId": call_id, "kind": kind, "detail": detail, "at": at}


def worker_rows(heartbeats: Iterable[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The workers' heartbeats, with whether each is alive (its expiresAt still ahead), by kind and id."""
    rows = []
    for beat in heartbeats:
        expires = _utc(beat.get("expiresAt"))
        row: dict[str, Any] = {name: _text(beat.get(name)) for name in _HEARTBEAT_TEXT}
        row.update({name: _stamp(beat.get(name)) for name in _HEARTBEAT_TIMES})
        pid = beat.get("pid")
        row["pid"] = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        row["alive"] = expires is not None and expires > now
        status = beat.get("status")
        row["status"] = plain(status) if isinstance(status, Mapping) else {}
        rows.append(row)
    return sorted(rows, key=lambda r: (r["kind"] or "", r["instanceId"] or ""))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _stamp(value: Any) -> str | None:
    stamp = _utc(value)
    return None if stamp is None else iso(stamp)


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _spec(value: Any) -> dict[str, int | float | None] | None:
    if not isinstance(value, Mapping):
        return None
    return {name: _number(value.get(name)) for name in ("sampleRate", "channels", "bitDepth")}


def recording_row(sid: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """A recording session for the console: status, times, the file's format and where it is stored."""
    row: dict[str, Any] = {"sid": sid}
    for name in ("callId", "status", "filename", "storagePath", "format", "stopReason", "error"):
        row[name] = _text(doc.get(name))
    for name in ("createdAt", "recordedAt", "stoppedAt"):
        row[name] = _stamp(doc.get(name))
    row["duration"] = _number(doc.get("duration"))
    row["fileSize"] = _number(doc.get("fileSize"))
    row["spec"] = _spec(doc.get("spec"))
    return row
