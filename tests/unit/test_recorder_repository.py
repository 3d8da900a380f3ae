"""The recorder's recordings repository: its Firestore operations run through the shared Guard; its results."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore

from memharbor.errors import Unavailable
from memharbor.repositories.guarded import WRITE_ATTEMPTS
from memharbor.repositories.recording_sessions import (
    Claim,
    ClaimResult,
    FirestoreRecordingSessions,
    SegmentReport,
    _final_update,
    claim_decision,
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


NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=20)
CALL = {"status": "accepted", "channelName": "ch-1", "groupId": "g", "callerId": "a", "receiverId": "b"}


def claimed(doc: dict[str, Any], call: dict[str, Any] | None = CALL) -> tuple[ClaimResult, dict[str, Any] | None]:
    """Worker `me` claiming `doc` at NOW."""
    return claim_decision({"channel": "ch-1", "callId": "c1", **doc}, call, "me", 999999, NOW, LEASE)


class TestClaimDecision:
    """Which sessions a worker takes, and what it writes, as a pure function of the session, its call and now."""

    @pytest.mark.parametrize(
        ("doc", "call", "claim"),
        [
            ({"status": "requested"}, CALL, Claim.NEW),
            ({"status": "requested", "workerId": "other", "leaseUntil": NOW - timedelta(seconds=1)}, CALL, Claim.NEW),
            ({"status": "requested", "workerId": "other", "leaseUntil": LEASE}, CALL, Claim.BUSY),
            ({"status": "recording", "workerId": "other", "leaseUntil": LEASE}, CALL, Claim.BUSY),
            ({"status": "recording", "workerId": "other", "leaseUntil": NOW}, CALL, Claim.TAKEOVER),
            (
                {"status": "recording", "workerId": "other", "leaseUntil": NOW, "stopRequested": True},
                CALL,
                Claim.FAILED,
            ),
            ({"status": "stopping", "workerId": "other", "leaseUntil": NOW}, CALL, Claim.FAILED),
            ({"status": "requested", "stopRequested": True}, CALL, Claim.FAILED),
            ({"status": "requested"}, None, Claim.FAILED),
            ({"status": "requested"}, {**CALL, "status": "ended"}, Claim.FAILED),
            ({"status": "requested"}, {**CALL, "channelName": "ch-2"}, Claim.FAILED),
            ({"status": "requested", "channel": "bad channel!"}, CALL, Claim.FAILED),
            ({"status": "stopped"}, CALL, Claim.DONE),
            ({"status": "failed", "workerId": "other", "leaseUntil": NOW}, CALL, Claim.DONE),
        ],
    )
    def test_claim_by_state(self, doc: dict[str, Any], call: dict[str, Any] | None, claim: Claim) -> None:
        """Each session state, lease position and call state gives its claim; busy and done write nothing."""
        result, update = claimed(doc, call)
        assert result.claim == claim
        assert (update is None) == (claim in {Claim.BUSY, Claim.DONE})

    def test_new_claim_takes_the_lease_and_the_participants(self) -> None:
        """A new claim writes the holder, the lease, the bot's uid and the call's participants."""
        result, update = claimed({"status": "requested"})
        assert result == ClaimResult(Claim.NEW, channel="ch-1", call_id="c1")
        assert update == {
            "uid": 999999,
            "groupId": "g",
            "user1": "a",
            "user2": "b",
            "workerId": "me",
            "leaseUntil": LEASE,
        }

    def test_takeover_counts_and_names_the_previous_holder(self) -> None:
        """A takeover marks the session interrupted and records whom it was taken from."""
        _, update = claimed({"status": "recording", "workerId": "other", "leaseUntil": NOW})
        assert update is not None
        assert update["interrupted"] is True and update["previousWorkerId"] == "other" and update["workerId"] == "me"

    def test_a_lapsed_holder_asked_to_stop_keeps_its_name_on_the_failure(self) -> None:
        """A session asked to stop whose holder went silent fails under that holder, for its recovery to upgrade."""
        result, update = claimed({"status": "stopping", "workerId": "other", "leaseUntil": NOW})
        assert result.error is not None and "other" in result.error
        assert update is not None and update["workerId"] == "other" and update["status"] == "failed"


def holding(status: str = "recording") -> FakeFirestore:
    """A store with session s1 of call c1, held by `me`."""
    session_doc = {"status": status, "channel": "ch-1", "callId": "c1", "workerId": "me", "leaseUntil": NOW}
    return FakeFirestore(docs={"recordings/s1": session_doc, "calls/c1": dict(CALL)})


class TestGuardedWrites:
    """Writes hold no lock: each commits only over the session as read, and a lost race is decided again."""

    async def test_renewal_extends_the_lease(self) -> None:
        """The holder's renewal writes a later lease in one commit."""
        db = holding()
        assert await sessions(db).renew("s1") is True
        assert db.docs["recordings/s1"]["leaseUntil"] > NOW and db.commits == 1

    async def test_a_renewal_that_lost_a_takeover_race_gives_the_session_up(self) -> None:
        """Another worker took the session between the renewal's read and its commit: the renewal re-reads and
        reports the session lost, leaving the takeover as written."""
        db = holding()
        db.interleave.append(lambda d: d.write("recordings/s1", {"workerId": "other"}))
        assert await sessions(db).renew("s1") is False
        assert db.docs["recordings/s1"]["workerId"] == "other" and db.commits == 0

    async def test_a_renewal_racing_a_stop_request_keeps_both(self) -> None:
        """A stop request written during the renewal is kept, and the renewal, decided again, still lands."""
        db = holding()
        db.interleave.append(lambda d: d.write("recordings/s1", {"stopRequested": True}))
        assert await sessions(db).renew("s1") is True
        assert db.docs["recordings/s1"]["stopRequested"] is True and db.docs["recordings/s1"]["leaseUntil"] > NOW

    async def test_a_session_that_keeps_changing_is_unavailable(self) -> None:
        """Every attempt losing its race ends, after the bounded attempts, as Unavailable; nothing is written."""
        db = holding()
        db.interleave.extend(lambda d: d.write("recordings/s1", {"n": 1}) for _ in range(WRITE_ATTEMPTS))
        with pytest.raises(Unavailable, match="kept changing"):
            await sessions(db).renew("s1")
        assert db.commits == 0 and not db.interleave

    async def test_a_session_deleted_meanwhile_is_gone(self) -> None:
        """A session deleted between the read and the commit is not recreated: the claim reports it gone."""
        db = FakeFirestore(docs={"recordings/s1": {"status": "requested", "channel": "ch-1"}})
        db.interleave.append(lambda d: d.docs.pop("recordings/s1"))
        assert (await sessions(db).claim("s1")).claim == Claim.GONE
        assert "recordings/s1" not in db.docs

    async def test_the_result_links_the_call(self) -> None:
        """The holder's final segment stops the session and sets the call's recordingId in the same commit."""
        db = holding("stopping")
        assert await sessions(db).complete("s1", "me", report(), "c1") == "final"
        assert db.docs["recordings/s1"]["status"] == "stopped" and db.docs["calls/c1"]["recordingId"] == "s1"
        assert db.commits == 1

    async def test_a_call_deleted_before_the_commit_is_not_linked(self) -> None:
        """The call vanished between the read and the commit: the result is written again without the link."""
        db = holding("stopping")
        db.interleave.append(lambda d: d.docs.pop("calls/c1"))
        assert await sessions(db).complete("s1", "me", report(), "c1") == "final"
        assert db.docs["recordings/s1"]["status"] == "stopped" and "calls/c1" not in db.docs
