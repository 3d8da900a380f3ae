"""The recorder's recordings repository: its Firestore operations run through the shared Guard; its results."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore

from memharbor.errors import Unavailable
from memharbor.repositories.recording_sessions import (
    FirestoreRecordingSessions,
    SegmentReport,
    _final_update,
    completion,
)
from tests.support.fake_firestore import FakeFirestore


def sessions(db: FakeFirestore, timeout_s: float = 10.0) -> FirestoreRecordingSessions:
    """The repository of worker `me` over `db`."""
    return FirestoreRecordingSessions(lambda: db, "me", 20.0, 999999, timeout_s=timeout_s)


class TestRecordingSessionsGuard:
    """Outages and hangs come out of the repository as Unavailable, within its time bound."""

    async def test_outage_is_unavailable(self) -> None:
        """A Google API error from the client is raised as Unavailable naming it."""
        with pytest.raises(Unavailable, match="ServiceUnavailable"):
            await sessions(FakeFirestore(fail_with=gexc.ServiceUnavailable("down"))).in_progress()

    async def test_hang_is_unavailable_within_the_time_bound(self) -> None:
        """A read that never answers ends as Unavailable once `timeout_s` has passed."""
        async with asyncio.timeout(5):
            with pytest.raises(Unavailable, match="TimeoutError"):
                await sessions(FakeFirestore(hang=True), timeout_s=0.05).in_progress()

    async def test_sessions_are_read_with_their_ids(self) -> None:
        """The sweep's read returns (sid, document) pairs."""
        db = FakeFirestore(docs={"recordings/s1": {"status": "requested", "channel": "c"}})
        assert await sessions(db).in_progress() == [("s1", {"status": "requested", "channel": "c"})]


def report(interrupted: bool = False) -> SegmentReport:
    """A finished segment of worker `me`."""
    at = datetime(2026, 12, 2, 4, 36, tzinfo=UTC)
    return SegmentReport("f.wav", None, None, 5790, 185_324, at, "me", "requested", interrupted)


class TestFinalResult:
    """The result a holder writes decides `interrupted` from what was recorded (found by bench/soak.py)."""

    def test_a_lapsed_lease_with_the_whole_recording_delivered_is_not_interrupted(self) -> None:
        """A stall let the lease lapse and a sweep marked the session interrupted; its holder then delivered
        the whole recording as the only segment: the flag is removed."""
        doc = {"status": "failed", "workerId": "me", "interrupted": True}
        update = _final_update(doc, report(), report().as_entry())
        assert update["interrupted"] is firestore.DELETE_FIELD

    def test_a_crash_recovered_stays_interrupted(self) -> None:
        """A segment recovered after a crash lost its tail: the result says so."""
        assert _final_update({"status": "recording"}, report(True), report(True).as_entry())["interrupted"] is True

    def test_after_a_takeover_it_stays_interrupted(self) -> None:
        """A taken-over session lost the audio between its holders: the flag set at the takeover stays."""
        doc = {"status": "recording", "interrupted": True, "takeovers": 1}
        assert "interrupted" not in _final_update(doc, report(), report().as_entry())


class TestCompletion:
    """Delivering a segment: the holder's is the result, another a late segment, a repeated one nothing."""

    def test_the_holders_segment_is_the_result(self) -> None:
        """The session's holder delivers: the final update, with its segment listed."""
        outcome, update = completion({"status": "stopping", "workerId": "me"}, "me", report())
        assert outcome == "final" and update is not None and update["status"] == "stopped"

    def test_a_retried_final_delivery_changes_nothing(self) -> None:
        """The first delivery committed but its answer was lost: the retry neither writes nor marks interrupted."""
        first = report().as_entry()
        doc = {"status": "stopped", "workerId": "me", "filename": "f.wav", "segments": [first]}
        assert completion(doc, "me", report()) == ("final", None)

    def test_a_late_segment_of_another_worker_marks_the_loss(self) -> None:
        """A segment from a previous holder reaching a stopped session is added, and the session is interrupted."""
        doc = {"status": "stopped", "workerId": "other", "filename": "g.wav", "segments": []}
        outcome, update = completion(doc, "me", report())
        assert outcome == "segment" and update is not None and update["interrupted"] is True

    def test_a_retried_late_segment_changes_nothing(self) -> None:
        """A late segment already listed (its first delivery's answer lost) is not written again."""
        doc = {"status": "stopped", "workerId": "other", "filename": "g.wav", "segments": [report().as_entry()]}
        assert completion(doc, "me", report()) == ("segment", None)
