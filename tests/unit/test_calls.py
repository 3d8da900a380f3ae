"""memharbor.calls: channel names, and the per-status invariants the watcher judges calls by."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from memharbor import agora, calls
from memharbor.calls import Status

MS = 1_770_000_000_000
FIREBASE_UID_A = "a" * 28  # Firebase uids are 28 characters
FIREBASE_UID_B = "b" * 28
T0 = datetime(2026, 2, 4, 5, 49, 23, tzinfo=UTC)


def digest(caller: str, receiver: str, call_id: str) -> str:
    return hashlib.sha256(f"{caller}/{receiver}/{call_id}".encode()).hexdigest()[:12]


class TestChannelName:
    """calls.channel_name: the seed's form with the call's digest, or the compact form; one name per call."""

    def test_seed_form_with_digest(self) -> None:
        """Short ids keep the seed's `{groupId}_{callerId}_{receiverId}_{epochMillis}` prefix, then the digest."""
        name = calls.channel_name("group1", "user123", "user456", "call-1", MS)
        assert name == f"group1_user123_user456_{MS}_{digest('user123', 'user456', 'call-1')}"

    @pytest.mark.parametrize(
        ("caller", "receiver"), [("alice", "bob"), (FIREBASE_UID_A, FIREBASE_UID_B)], ids=["seed", "compact"]
    )
    def test_calls_in_the_same_millisecond_differ(self, caller: str, receiver: str) -> None:
        """Two calls between the same users created in the same millisecond get different channels."""
        first = calls.channel_name("group1", caller, receiver, "call-1", MS)
        second = calls.channel_name("group1", caller, receiver, "call-2", MS)
        assert first != second

    def test_same_call_same_name(self) -> None:
        """The name depends on the call only, so assigning it again (a lost channelName) gives the same one."""
        assert calls.channel_name("g", "a", "b", "c", MS) == calls.channel_name("g", "a", "b", "c", MS)

    def test_compact_form_for_long_ids(self) -> None:
        """Real (28-character) uids take the compact `{groupId}_{digest}_{epochMillis}`."""
        name = calls.channel_name("group1", FIREBASE_UID_A, FIREBASE_UID_B, "call-1", MS)
        assert name == f"group1_{digest(FIREBASE_UID_A, FIREBASE_UID_B, 'call-1')}_{MS}"

    @pytest.mark.parametrize(
        ("group", "caller", "receiver", "call_id"),
        [
            ("g", "a", "b", "c"),
            ("group1", "alice", "bob", "x" * 128),
            ("g" * 36, "a" * 128, "b" * 128, "c" * 128),
            ("g-_1", "user_1", "user-2", "call_id-3"),
        ],
    )
    def test_always_a_valid_agora_channel(self, group: str, caller: str, receiver: str, call_id: str) -> None:
        """Whatever the ids (within their patterns), the name satisfies Agora's rule and starts with `{groupId}_`."""
        name = calls.channel_name(group, caller, receiver, call_id, MS)
        assert agora.channel_name_error(name) is None
        assert name.startswith(f"{group}_") and len(name.encode()) <= 63


def stamped(status: Status, **extra: Any) -> dict[str, Any]:
    """A call in `status` with its path's stamps a minute apart."""
    doc: dict[str, Any] = {
        "callId": "c1",
        "groupId": "g1",
        "callerId": "alice",
        "receiverId": "bob",
        "status": status.value,
        "createdAt": T0,
        "updatedAt": T0,
    }
    for step, move in enumerate(calls.path_to(status), start=1):
        doc[move.stamp] = doc["updatedAt"] = T0 + timedelta(minutes=step)
    return doc | extra


class TestInvariants:
    """calls.STATUS_STAMPS, stamp_errors and invariant_errors."""

    def test_stamps_follow_the_transitions(self) -> None:
        """Each status's stamps are its source's plus the stamp of the move into it."""
        for move in calls.TRANSITIONS:
            assert calls.STATUS_STAMPS[move.target] == (*calls.STATUS_STAMPS[move.source], move.stamp)
        assert calls.STATUS_STAMPS[Status.PENDING] == ()
        assert calls.STATUS_STAMPS[Status.ENDED] == ("answeredAt", "endedAt")

    @pytest.mark.parametrize("status", list(Status), ids=str)
    def test_well_formed_call_of_each_status(self, status: Status) -> None:
        """A call with its path's stamps in order breaks no invariant."""
        assert calls.invariant_errors(stamped(status), "c1") == []

    @pytest.mark.parametrize(
        ("doc", "error"),
        [
            pytest.param(stamped(Status.ENDED, answeredAt=T0, endedAt=T0), "answeredAt must be later than createdAt"),
            pytest.param(stamped(Status.DECLINED, answeredAt=T0), "answeredAt must be later than createdAt"),
            pytest.param(
                stamped(Status.CANCELLED, endedAt=T0 - timedelta(seconds=1)), "endedAt must be later than createdAt"
            ),
            pytest.param(
                stamped(Status.ENDED, answeredAt=T0 + timedelta(minutes=3)),
                "endedAt must be no earlier than answeredAt",
            ),
            pytest.param(stamped(Status.ENDED, endedAt=None), "endedAt must be a timestamp while ended"),
            pytest.param(stamped(Status.ACCEPTED, endedAt=T0), "endedAt must be absent while accepted"),
            pytest.param(stamped(Status.PENDING, answeredAt=T0), "answeredAt must be absent while pending"),
            pytest.param(stamped(Status.PENDING, updatedAt="now"), "updatedAt must be a timestamp"),
            pytest.param(stamped(Status.PENDING, callId="c2"), "callId must equal the document id"),
        ],
    )
    def test_broken_invariant(self, doc: dict[str, Any], error: str) -> None:
        """Each broken invariant is named."""
        assert error in calls.invariant_errors(doc, "c1")

    def test_equal_answer_and_end_allowed(self) -> None:
        """answeredAt may equal endedAt (answeredAt <= endedAt), unlike the create and the first stamp."""
        doc = stamped(Status.ENDED, endedAt=T0 + timedelta(minutes=1))
        assert calls.stamp_errors(doc) == []

    def test_server_fields_in(self) -> None:
        """server_fields_in names the server-owned fields a document holds, sorted."""
        doc = stamped(Status.PENDING, pushSent=True, channelName="x", humanSummary="s")
        assert calls.server_fields_in(doc) == ["channelName", "pushSent"]
        assert calls.server_fields_in(stamped(Status.PENDING)) == []
