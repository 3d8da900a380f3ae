"""The soak's auditor (bench/soak_audit.py): what it counts as a violation, and what a fault excuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bench.soak_audit import (
    Evidence,
    FaultWindow,
    PushSeen,
    check_recordings_stored,
    check_reviews,
    check_stop_ringing,
)
from memharbor.devices import Device

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
CALLED_AT = T0.timestamp()


def evidence(pushes: list[PushSeen], faults: list[FaultWindow], **call: Any) -> Evidence:
    """One cancelled call to a receiver with one Android device, token "tok"."""
    fields = {"status": "cancelled", "receiverId": "r1", "createdAt": T0, "endedAt": T0 + timedelta(seconds=3)}
    return Evidence(
        ring_timeout_s=4.0,
        calls={"c1": {**fields, **call}},
        server={"c1": {"effects": {"cancelled": {"state": "done"}}}},
        recordings={},
        wavs={},
        pushes=pushes,
        devices={"r1": [Device("dev-0", "android", {"fcmToken": "tok"})]},
        token_owner={"tok": ("r1", "dev-0")},
        reviews={},
        record_requested=set(),
        faults=faults,
    )


def notice(at: float) -> PushSeen:
    return PushSeen("c1", "tok", "call_ended", "cancelled", CALLED_AT + at)


class TestStopRinging:
    """One stop notice per device, unless a watcher died between a notice and its record."""

    def test_one_notice_is_clean(self) -> None:
        """A single delivered notice is no finding."""
        assert check_stop_ringing(evidence([notice(3.1)], [])) == []

    def test_a_second_notice_without_a_fault_is_a_violation(self) -> None:
        """Two notices with no fault near them are counted."""
        [finding] = check_stop_ringing(evidence([notice(3.1), notice(3.6)], []))
        assert finding.invariant == "stop-ringing as specified" and not finding.excused

    def test_a_kill_right_after_the_first_notice_excuses_the_second(self) -> None:
        """A watcher killed before it could record its notice explains the takeover's second one."""
        kill = FaultWindow("watcher_kill", "watcher-1", CALLED_AT + 3.5, CALLED_AT + 7.0)
        [finding] = check_stop_ringing(evidence([notice(3.1), notice(19.0)], [kill]))
        assert finding.excused

    def test_a_kill_long_after_the_first_notice_excuses_nothing(self) -> None:
        """A kill seconds after the notice was recorded does not explain a second notice."""
        kill = FaultWindow("watcher_kill", "watcher-1", CALLED_AT + 8.0, CALLED_AT + 12.0)
        [finding] = check_stop_ringing(evidence([notice(3.1), notice(19.0)], [kill]))
        assert not finding.excused

    def test_a_push_outage_excuses_no_duplicate(self) -> None:
        """An FCM 5xx window is not a crash: two delivered notices stay a violation."""
        outage = FaultWindow("fcm_5xx", "", CALLED_AT + 3.0, CALLED_AT + 9.0)
        [finding] = check_stop_ringing(evidence([notice(3.1), notice(3.9)], [outage]))
        assert not finding.excused


class TestReviews:
    """A review write is counted once: reviewCount matches and lastReviewAt is the call's updatedAt."""

    def test_a_counted_review_is_clean(self) -> None:
        """reviewCount 1 and lastReviewAt equal to updatedAt is no finding."""
        later = T0 + timedelta(seconds=9)
        ev = evidence([], [], status="ended", reviewCount=1, lastReviewAt=later, updatedAt=later)
        ev.reviews = {"c1": 1}
        assert check_reviews(ev) == []

    def test_an_uncounted_review_is_a_violation(self) -> None:
        """A review write with no reviewCount is counted, whatever faults ran."""
        kill = FaultWindow("watcher_kill", "watcher-1", CALLED_AT, CALLED_AT + 60)
        ev = evidence([], [kill], status="ended", updatedAt=T0 + timedelta(seconds=9))
        ev.reviews = {"c1": 1}
        [finding] = check_reviews(ev)
        assert finding.invariant == "review counted" and "reviewCount None" in finding.detail


def recorded(accepted_done_s: float | None) -> Evidence:
    """An ended call with record: true, answered at +2 s and ended at +8 s, that got no recording."""
    call = {"status": "ended", "answeredAt": T0 + timedelta(seconds=2), "endedAt": T0 + timedelta(seconds=8)}
    ev = evidence([], [], **call)
    ev.record_requested = {"c1"}
    effect = {} if accepted_done_s is None else {"state": "done", "doneAt": T0 + timedelta(seconds=accepted_done_s)}
    ev.server["c1"]["effects"]["accepted"] = effect
    return ev


class TestRecordingRequests:
    """A recorded call without a recording is a violation unless no watcher could handle `accepted` in time."""

    def test_accepted_handled_in_time_without_a_recording_is_a_violation(self) -> None:
        """`accepted` was handled during the call: a missing recording is the server's fault."""
        ev = recorded(accepted_done_s=3)
        ev.faults = [FaultWindow("firestore_cut", "", CALLED_AT + 1, CALLED_AT + 6)]
        [finding] = check_recordings_stored(ev)
        assert finding.detail == "no recordings document" and not finding.excused

    def test_accepted_handled_after_the_end_during_a_cut_is_excused(self) -> None:
        """`accepted` reached a watcher only after the call ended, while a cut overlapped the call."""
        ev = recorded(accepted_done_s=11)
        ev.faults = [FaultWindow("firestore_cut", "", CALLED_AT + 1, CALLED_AT + 6)]
        [finding] = check_recordings_stored(ev)
        assert finding.excused

    def test_accepted_handled_late_without_a_fault_is_a_violation(self) -> None:
        """A watcher merely slow to see `accepted` (no fault) is not excused."""
        [finding] = check_recordings_stored(recorded(accepted_done_s=11))
        assert not finding.excused
