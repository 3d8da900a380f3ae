"""The chaos soak's auditor: every call, push and recording of a finished run held against the contract.

Pure functions over what `bench/soak.py` collected after its settle period (the stored documents, what the
local APNs/FCM servers received, the uploaded WAVs, the fault windows and RSS samples); each invariant is
one small check returning its violations, so a violation names its call and what was seen.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from memharbor import calls
from memharbor.devices import Device, stop_recipients

FINAL = frozenset({"declined", "cancelled", "missed", "ended"})
FINAL_SLACK_S = 20.0  # a pending call leaves `pending` by createdAt + ring timeout + this
LATE_PUSH_SLACK_S = 0.5  # an incoming push reaching the push service after the deadline, beyond clock noise
RECORDING_TOLERANCE_S = 5.0  # a recording no fault touched begins this close to the answer, ends this close to the end
FAULT_EXCESS_S = 30.0  # the same bound when a fault overlapped the call (a late request, join or stop)
WAV_HEADER_TOLERANCE_MS = 20  # the document's `duration` against the uploaded file's own
RSS_WARMUP_S = 20.0  # samples before this (imports, first connections) are not a process's baseline
RSS_MIN_LIFE_S = 60.0  # incarnations shorter than this are not judged
RSS_BOUND_MB = 30.0
RSS_BOUND_PCT = 25.0
# Faults that cost a recorder its lease (the session is then taken over and marked interrupted).
LEASE_FAULTS = frozenset({"recorder_kill", "recorder_stop", "firestore_cut"})
GAP_S = 1.0  # uncovered time between segments, or before the call's end, that counts as audio lost
# Faults that leave the watchers unable to act on a change for a while: the handler of a status that
# failed (or was never run because no watcher saw the status) is not retried once the call moved on.
WATCHER_FAULTS = frozenset({"watcher_kill", "watcher_stop", "firestore_cut"})
PUSH_FAULTS = {"ios": frozenset({"apns_5xx", "apns_hang"}), "android": frozenset({"fcm_5xx", "fcm_hang"})}
RECOVERY_S = 10.0  # after a watcher fault ends: reconnects, restarts, the catch-up and the sweep
# A push's record is written when it lands, or with the status's finishing write (within 0.5 s for a slow
# device, or after the slowest one): a worker killed or frozen this soon after a delivery may not have
# recorded it, and its successor sends again (at least once: a lost stop notice leaves a phone ringing).
UNRECORDED_S = 2.0
CRASH_FAULTS = frozenset({"watcher_kill", "watcher_stop"})

INVARIANTS = (
    "call final",
    "left pending by deadline + slack",
    "one incoming push per device",
    "no incoming push after deadline",
    "stop-ringing as specified",
    "no claim or lease left",
    "durationSec consistent",
    "review counted",
    "recording stopped with WAV in Storage",
    "recording duration matches call",
    "interrupted only when audio lost",
    "RSS bounded",
)


@dataclass(frozen=True)
class Violation:
    """One broken invariant, with the call (or process) it concerns and what was seen."""

    invariant: str
    subject: str
    detail: str
    excused: bool = False  # explained by an injected fault (see `_impaired`); counted apart


@dataclass(frozen=True)
class PushSeen:
    """One request a push service accepted (200): for which call, token, kind and status, and when it arrived."""

    call_id: str
    token: str
    kind: str  # "incoming_call" or "call_ended"
    status: str | None
    arrived: float  # unix seconds
    hung: bool = False  # answered only after the client's request timeout (an injected hang): a retry may follow


@dataclass(frozen=True)
class FaultWindow:
    """One injected fault: kind, target and when it lasted (unix seconds)."""

    kind: str
    target: str
    start: float
    end: float


@dataclass(frozen=True)
class WavSeen:
    """What Storage holds at a recording's storagePath: its duration, or why it could not be played."""

    duration_ms: int | None
    error: str | None = None


@dataclass
class Evidence:
    """Everything the auditor reads."""

    ring_timeout_s: float
    calls: dict[str, dict[str, Any]]
    server: dict[str, dict[str, Any]]
    recordings: dict[str, dict[str, Any]]
    wavs: dict[str, WavSeen]
    pushes: list[PushSeen]
    devices: dict[str, list[Device]]  # receiver uid -> its devices as seeded
    token_owner: dict[str, tuple[str, str]]  # token -> (uid, device key)
    reviews: dict[str, int]  # call id -> review writes that succeeded
    record_requested: set[str]  # call ids created with record: true
    faults: list[FaultWindow]
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # "role pid" -> (t, kB)


def _ts(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _unix(value: Any) -> float | None:
    stamp = _ts(value)
    return stamp.astimezone(UTC).timestamp() if stamp is not None else None


def _deadline(ev: Evidence, call: Mapping[str, Any]) -> float | None:
    created = _unix(call.get("createdAt"))
    return None if created is None else created + ev.ring_timeout_s


def _deliveries(ev: Evidence, kind: str) -> dict[tuple[str, str], list[PushSeen]]:
    """Accepted pushes of `kind` by (call id, device key)."""
    found: dict[tuple[str, str], list[PushSeen]] = {}
    for push in ev.pushes:
        owner = ev.token_owner.get(push.token)
        if push.kind == kind and owner is not None:
            found.setdefault((push.call_id, owner[1]), []).append(push)
    return found


def _record(ev: Evidence, call_id: str, status: str, key: str) -> Mapping[str, Any]:
    """The watcher's record of its push for `status` to device `key` (empty when it made none)."""
    pushes = ev.server.get(call_id, {}).get("pushes", {})
    record = pushes.get(status, {}).get(key) if isinstance(pushes, Mapping) else None
    return record if isinstance(record, Mapping) else {}


def check_final(ev: Evidence) -> list[Violation]:
    """Every call reached a final status."""
    return [
        Violation("call final", cid, f"status {call.get('status')!r}")
        for cid, call in ev.calls.items()
        if call.get("status") not in FINAL
    ]


def check_left_pending(ev: Evidence) -> list[Violation]:
    """Each call left `pending` (answered, cancelled or missed) by its deadline + FINAL_SLACK_S."""
    found = []
    for cid, call in ev.calls.items():
        deadline = _deadline(ev, call)
        left = _unix(call.get("answeredAt")) or _unix(call.get("endedAt"))
        if deadline is None or left is None:
            found.append(Violation("left pending by deadline + slack", cid, "no createdAt or no answeredAt/endedAt"))
        elif left > deadline + FINAL_SLACK_S:
            late = Violation("left pending by deadline + slack", cid, f"{left - deadline:.1f}s after deadline")
            recovered = _recovered_by(ev, deadline - ev.ring_timeout_s, deadline)
            found.append(dataclasses.replace(late, excused=left <= max(deadline, recovered) + FINAL_SLACK_S))
    return found


def _impaired(ev: Evidence, start: float, end: float) -> bool:
    """True when a watcher fault (or its recovery) overlapped [start, end]."""
    return _recovered_by(ev, start, end) > 0


def _recovered_by(ev: Evidence, start: float, end: float) -> float:
    """When the watchers were back from the faults that overlapped [start, end]; 0 when none did."""
    ends = [
        f.end + RECOVERY_S
        for f in ev.faults
        if f.kind in WATCHER_FAULTS and f.start <= end and f.end + RECOVERY_S >= start
    ]
    return max(ends, default=0.0)


def _crashed_before_record(ev: Evidence, got: list[PushSeen]) -> bool:
    """True when a watcher was killed or frozen between the first of these deliveries and its record."""
    first = min((p.arrived for p in got), default=None)
    return first is not None and _overlaps(ev, first, first + UNRECORDED_S, CRASH_FAULTS)


def _accepted_too_late(ev: Evidence, cid: str, call: Mapping[str, Any]) -> bool:
    """No watcher handled `accepted` while the call lasted (never, or only after it ended), and a watcher
    fault overlapped the call: the recording request, an effect of `accepted`, could not be made in time."""
    effect = ev.server.get(cid, {}).get("effects", {}).get("accepted", {})
    done, ended = _unix(effect.get("doneAt")), _unix(call.get("endedAt"))
    if ended is None or (done is not None and done <= ended):
        return False
    return _impaired(ev, _unix(call.get("createdAt")) or 0.0, ended)


def _status_unhandled(ev: Evidence, cid: str, call: Mapping[str, Any], status: str) -> bool:
    """The watchers never finished the effects of `status` on this call while a watcher fault overlapped
    its life (a failed handler is not retried once the call moved on; a status nobody saw has none)."""
    effect = ev.server.get(cid, {}).get("effects", {}).get(status, {})
    span = _unix(call.get("createdAt")) or 0.0, _unix(call.get("endedAt")) or 0.0
    return effect.get("state") != "done" and _impaired(ev, *span)


def _rang_out(call: Mapping[str, Any]) -> bool:
    """True when the call rang until its timeout (missed, never answered): every device had its chance."""
    return call.get("status") == "missed" and call.get("answeredAt") is None


def check_incoming(ev: Evidence) -> list[Violation]:
    """At most one incoming push per device and call; exactly one unless the watcher recorded why not."""
    delivered = _deliveries(ev, "incoming_call")
    found = []
    for cid, call in ev.calls.items():
        for device in ev.devices.get(str(call.get("receiverId")), []):
            got = delivered.get((cid, device.key), [])
            record = _record(ev, cid, "pending", device.key)
            subject = f"{cid} {device.key}"
            if len([p for p in got if not p.hung]) > 1:
                excused = _crashed_before_record(ev, got)
                found.append(Violation("one incoming push per device", subject, f"{len(got)} delivered", excused))
            elif not got and record.get("result") == "sent":
                found.append(Violation("one incoming push per device", subject, "recorded sent, none delivered"))
            elif not got and not record and _rang_out(call):
                # Never attempted: only a watcher that could not act in time explains it.
                ring = (_deadline(ev, call) or 0.0) - ev.ring_timeout_s, _deadline(ev, call) or 0.0
                excused = _impaired(ev, *ring) or _overlaps(ev, *ring, PUSH_FAULTS[device.platform])
                found.append(Violation("one incoming push per device", subject, "rang out unrung, no record", excused))
    return found


def check_incoming_late(ev: Evidence) -> list[Violation]:
    """No incoming push reached a push service after the call's deadline."""
    found = []
    for push in ev.pushes:
        call = ev.calls.get(push.call_id)
        deadline = _deadline(ev, call) if call is not None and push.kind == "incoming_call" else None
        if deadline is not None and push.arrived > deadline + LATE_PUSH_SLACK_S:
            subject = f"{push.call_id} {push.token[:12]}"
            found.append(Violation("no incoming push after deadline", subject, f"{push.arrived - deadline:.2f}s late"))
    return found


def _stop_status(call: Mapping[str, Any]) -> str | None:
    """The status whose stop-ringing notice the call owes: `accepted` for an ended call, None for none."""
    status = call.get("status")
    if status == "ended":
        return "accepted"
    return status if status in ("accepted", "declined", "cancelled", "missed") else None


def _stop_violations(
    ev: Evidence,
    cid: str,
    key: str,
    wanted: bool,
    got: list[PushSeen],
    status: str,
    record: Mapping[str, Any],
    unhandled: bool,
) -> list[Violation]:
    subject = f"{cid} {key}"
    name = "stop-ringing as specified"
    if not wanted:
        return [Violation(name, subject, f"{len(got)} notice(s) to the answering device")] if got else []
    wrong = [p.status for p in got if p.status != status]
    if wrong:
        return [Violation(name, subject, f"status {wrong} for a {status} call")]
    if len([p for p in got if not p.hung]) > 1:
        return [Violation(name, subject, f"{len(got)} notices", _crashed_before_record(ev, got))]
    if not got and record.get("result") not in ("failed", "dead_token"):
        return [Violation(name, subject, f"no notice, record {dict(record) or 'absent'}", unhandled and not record)]
    return []


def check_stop_ringing(ev: Evidence) -> list[Violation]:
    """Cancelled/missed: every device gets one notice; accepted/declined: every device but the answering one."""
    delivered = _deliveries(ev, "call_ended")
    found = []
    for cid, call in ev.calls.items():
        status = _stop_status(call)
        devices = ev.devices.get(str(call.get("receiverId")), [])
        if status is None:
            continue
        wanted = {d.key for d in stop_recipients(devices, status, call.get(calls.ANSWERED_ON))}
        unhandled = _status_unhandled(ev, cid, call, status)
        for device in devices:
            got = delivered.get((cid, device.key), [])
            record = _record(ev, cid, status, device.key)
            found += _stop_violations(ev, cid, device.key, device.key in wanted, got, status, record, unhandled)
    return found


def check_claims(ev: Evidence) -> list[Violation]:
    """No call's server document holds an open claim, and no recording a lease or an unfinished status."""
    found = []
    for cid, server in ev.server.items():
        # A claim on an earlier status whose holder died may stay behind harmlessly (the call moved on and
        # effectOpen is false); the call's current status must have its effects done.
        status = ev.calls.get(cid, {}).get("status")
        effect = server.get("effects", {}).get(status, {})
        if server.get("effectOpen") or (effect and effect.get("state") != "done"):
            detail = f"effectOpen {server.get('effectOpen')}, {status} effect {effect.get('state')}"
            found.append(Violation("no claim or lease left", cid, detail))
    for sid, rec in ev.recordings.items():
        if rec.get("status") in ("requested", "recording", "stopping") or rec.get("leaseUntil") is not None:
            found.append(Violation("no claim or lease left", sid, f"status {rec.get('status')}, lease held"))
    return found


def check_duration(ev: Evidence) -> list[Violation]:
    """An ended call's durationSec is its answeredAt-to-endedAt in whole seconds; no other call has one."""
    found = []
    for cid, call in ev.calls.items():
        have = call.get("durationSec")
        if call.get("status") != "ended":
            if have is not None:
                found.append(Violation("durationSec consistent", cid, f"durationSec {have} on a {call.get('status')}"))
            continue
        want = calls.duration_seconds(call.get("answeredAt"), call.get("endedAt"))
        if have != want:
            found.append(Violation("durationSec consistent", cid, f"durationSec {have}, answered-to-ended {want}"))
    return found


def check_reviews(ev: Evidence) -> list[Violation]:
    """A call reviewed once has reviewCount 1 and lastReviewAt equal to its updatedAt."""
    found = []
    for cid, writes in ev.reviews.items():
        call = ev.calls.get(cid, {})
        if call.get("reviewCount") != writes or call.get("lastReviewAt") != call.get("updatedAt"):
            detail = f"{writes} write(s), reviewCount {call.get('reviewCount')}"
            found.append(Violation("review counted", cid, detail))
    return found


def _recorded_calls(ev: Evidence) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Calls that asked for a recording and were answered (the server requests it on accept)."""
    for cid in sorted(ev.record_requested):
        call = ev.calls.get(cid, {})
        if call.get("answeredAt") is not None and call.get("status") == "ended":
            yield cid, call


def _wav_problem(ev: Evidence, rec: Mapping[str, Any]) -> str | None:
    if rec.get("status") != "stopped":
        return f"status {rec.get('status')!r} ({rec.get('error')})"
    wav = ev.wavs.get(str(rec.get("storagePath")))
    if wav is None or wav.duration_ms is None:
        return f"no playable WAV at {rec.get('storagePath')}: {wav.error if wav else 'not fetched'}"
    if abs(wav.duration_ms - int(rec.get("duration") or 0)) > WAV_HEADER_TOLERANCE_MS:
        return f"document duration {rec.get('duration')} ms, file {wav.duration_ms} ms"
    return None


def check_recordings_stored(ev: Evidence) -> list[Violation]:
    """Every answered call with record: true has its recording `stopped`, with a playable WAV in Storage."""
    found = []
    for cid, call in _recorded_calls(ev):
        rec = ev.recordings.get(f"call-{cid}")
        problem = "no recordings document" if rec is None else _wav_problem(ev, rec)
        if problem is not None:
            # The server requests the recording as an effect of `accepted`: lost with that status's effects;
            # a request no recorder could claim before the call ended fails ("not active").
            answered, ended = _talk(call) or (0.0, 0.0)
            # A claim in flight when the call ends counts: allow the recorder its reaction time.
            reach = (answered, ended + RECORDING_TOLERANCE_S)
            unclaimed = rec is not None and rec.get("status") == "failed" and _overlaps(ev, *reach, LEASE_FAULTS)
            excused = unclaimed or (rec is None and _accepted_too_late(ev, cid, call))
            found.append(Violation("recording stopped with WAV in Storage", cid, problem, excused))
    return found


def _overlaps(ev: Evidence, start: float, end: float, kinds: frozenset[str] | None = None) -> bool:
    return any(f.start <= end and f.end >= start for f in ev.faults if kinds is None or f.kind in kinds)


def _talk(call: Mapping[str, Any]) -> tuple[float, float] | None:
    answered, ended = _unix(call.get("answeredAt")), _unix(call.get("endedAt"))
    return None if answered is None or ended is None else (answered, ended)


def _pieces(rec: Mapping[str, Any]) -> list[tuple[float, float]]:
    """The recorded spans (unix start, end) of a session's segments, in order of start."""
    entries = rec.get("segments") or [rec]
    spans = []
    for entry in entries:
        start = _unix(entry.get("recordedAt"))
        if start is not None:
            spans.append((start, start + int(entry.get("duration") or 0) / 1000))
    return sorted(spans)


def _gaps(spans: list[tuple[float, float]]) -> float:
    """The longest stretch between consecutive segments that no segment covers (seconds)."""
    longest, covered = 0.0, spans[0][1] if spans else 0.0
    for start, end in spans[1:]:
        longest = max(longest, start - covered)
        covered = max(covered, end)
    return longest


def _coverage_problem(ev: Evidence, call: Mapping[str, Any], rec: Mapping[str, Any]) -> str | None:
    talk, spans = _talk(call), _pieces(rec)
    if talk is None or not spans:
        return "no talk time or no recorded segment"
    late_by_fault = _overlaps(ev, talk[0] - RECOVERY_S, talk[1] + 5)
    slack = FAULT_EXCESS_S if late_by_fault else RECORDING_TOLERANCE_S
    began, ended = spans[0][0] - talk[0], max(end for _, end in spans) - talk[1]
    if not rec.get("interrupted") and (_gaps(spans) > GAP_S or ended < -GAP_S):
        return f"audio lost (gap {_gaps(spans):.1f}s, ends {ended:+.1f}s after the call) but not interrupted"
    if began > slack or ended > slack:
        return f"began {began:+.1f}s after the answer, ended {ended:+.1f}s after the call (limit {slack:g}s)"
    return None


def check_recording_duration(ev: Evidence) -> list[Violation]:
    """A recording begins within RECORDING_TOLERANCE_S of the answer and ends within it of the call's end
    (FAULT_EXCESS_S when a fault overlapped the call); without `interrupted` it has no gap and does not end
    before the call."""
    found = []
    for cid, call in _recorded_calls(ev):
        rec = ev.recordings.get(f"call-{cid}", {})
        problem = _coverage_problem(ev, call, rec) if rec.get("status") == "stopped" else None
        if problem is not None:
            found.append(Violation("recording duration matches call", cid, problem))
    return found


def check_interrupted(ev: Evidence) -> list[Violation]:
    """`interrupted: true` only on a recording that lost its recorder's lease: a recorder crash or freeze,
    or a Firestore cut (a recorder that cannot renew its lease is taken over)."""
    found = []
    for cid, call in _recorded_calls(ev):
        rec, talk = ev.recordings.get(f"call-{cid}", {}), _talk(call)
        if rec.get("interrupted") and talk is not None and not _overlaps(ev, talk[0], talk[1] + 5, LEASE_FAULTS):
            found.append(Violation("interrupted only when audio lost", cid, "interrupted without a recorder fault"))
    return found


def rss_growth(samples: list[tuple[float, int]]) -> tuple[float, float] | None:
    """(growth in MB, growth in %) from the median of the first quarter to the last, after the warm-up;
    None for an incarnation too short to judge."""
    if not samples:
        return None
    start = samples[0][0]
    steady = [(t, kb) for t, kb in samples if t - start >= RSS_WARMUP_S]
    if not steady or steady[-1][0] - start < RSS_MIN_LIFE_S or len(steady) < 8:
        return None
    quarter = max(2, len(steady) // 4)
    first = statistics.median(kb for _, kb in steady[:quarter])
    last = statistics.median(kb for _, kb in steady[-quarter:])
    return (last - first) / 1024, 100.0 * (last - first) / first


def check_rss(ev: Evidence) -> list[Violation]:
    """No long-lived process grew by more than RSS_BOUND_MB and RSS_BOUND_PCT both."""
    found = []
    for name, samples in sorted(ev.rss.items()):
        growth = rss_growth(samples)
        if growth is not None and growth[0] > RSS_BOUND_MB and growth[1] > RSS_BOUND_PCT:
            found.append(Violation("RSS bounded", name, f"+{growth[0]:.1f} MB (+{growth[1]:.0f} %)"))
    return found


CHECKS: tuple[Callable[[Evidence], list[Violation]], ...] = (
    check_final,
    check_left_pending,
    check_incoming,
    check_incoming_late,
    check_stop_ringing,
    check_claims,
    check_duration,
    check_reviews,
    check_recordings_stored,
    check_recording_duration,
    check_interrupted,
    check_rss,
)


def audit(ev: Evidence) -> tuple[Counter[str], Counter[str], list[Violation]]:
    """Every check's findings: violations by invariant (each invariant present, 0 when clean), the findings
    an injected fault explains by invariant, and every finding."""
    findings = [v for check in CHECKS for v in check(ev)]
    counts: Counter[str] = Counter(dict.fromkeys(INVARIANTS, 0))
    counts.update(v.invariant for v in findings if not v.excused)
    excused: Counter[str] = Counter(v.invariant for v in findings if v.excused)
    return counts, excused, findings
