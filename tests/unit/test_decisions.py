"""The watcher's decision core (watcher/decisions.py), table-driven, and its I/O shell over an in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from structlog.testing import capture_logs

from memharbor import calls
from memharbor.calls import Status
from memharbor.groups import NOT_GROUP_MEMBERS, group_document
from memharbor.repositories.paths import CALL_SERVER
from tests.support.fake_call_effects import FakeCallEffects
from tests.support.fake_call_feed import FakeCallSweeps, FakeCatchUp, FakeFeed
from tests.support.fake_devices import FakeDevices
from watcher.decisions import (
    Busy,
    Done,
    Gone,
    Invalid,
    ReactorConfig,
    Revert,
    Review,
    Run,
    Violation,
    decide,
    stop_owed,
)
from watcher.metrics import WatcherMetrics
from watcher.push import PushResult, PushTarget
from watcher.reactor import CallReactor, Claim, ClaimRace
from watcher.tracking import CallTracker
from watcher.worker import Watcher, WatcherConfig

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
CALL_ID = "call-1"
ME, OTHER = "watcher-me", "watcher-other"
CONFIG = ReactorConfig(ME, ring_timeout_s=60.0, lease_s=15.0)
IDENTITY = {"callId": CALL_ID, "groupId": "group1", "callerId": "alice", "receiverId": "bob"}
GROUP = group_document(["alice", "bob"])
DEADLINE = T0 + timedelta(seconds=60)
ABSENT = object()  # a field the document does not have


def app_call(status: Status = Status.PENDING, **extra: Any) -> dict[str, Any]:
    """A call as the apps' writes leave it in `status` (each status change 10 s after the last)."""
    doc: dict[str, Any] = {**IDENTITY, "status": status.value, "createdAt": T0, "updatedAt": T0, "callerName": "Al"}
    moment = T0
    for move in calls.path_to(status):
        moment += timedelta(seconds=10)
        doc[move.stamp] = doc["updatedAt"] = moment
    doc.update(extra)
    return {name: value for name, value in doc.items() if value is not ABSENT}


def edited(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`doc` with fields changed (ABSENT removes one), e.g. a status outside `Status`."""
    return {name: value for name, value in {**doc, **changes}.items() if value is not ABSENT}


def known_call(status: Status = Status.PENDING, **extra: Any) -> dict[str, Any]:
    """The call after the server set it up: channel, ring deadline and push result."""
    server_set = {"channelName": "group1_alice_bob_1", "ringDeadline": DEADLINE, "pushSent": True}
    return app_call(status, **{**server_set, "pushPlatform": "ios", "pushError": None, **extra})


def server_doc(status: str, effects: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """callServer/{id} after the watcher claimed `status` (with `effects` of that status, if any)."""
    doc: dict[str, Any] = {"callId": CALL_ID, "status": status, "identity": dict(IDENTITY), "effects": {}}
    if effects is not None:
        doc["effects"][status] = dict(effects)
    doc.update(extra)
    return doc


# ---- the status x claim state x time position table ------------------------------------------------

# Claim states of the call's current status, as of `now`: the server document's record of its effects.
CLAIM_STATES = ("none", "unclaimed", "ours", "theirs", "lapsed", "done", "invalid")
# Time positions: `now` relative to the ring deadline, and whether the ring timer fired.
TIMES = {
    "before": (T0 + timedelta(seconds=30), False),
    "before-timer": (T0 + timedelta(seconds=30), True),
    "after": (T0 + timedelta(seconds=90), False),
    "after-timer": (T0 + timedelta(seconds=90), True),
}
# What each claim state leads to when nothing times out.
OUTCOME: dict[str, type] = {
    "none": Run,  # first seen: validated, then its effects are claimed
    "unclaimed": Run,
    "ours": Run,  # this instance's own claim (a retry after a crash of our handler)
    "theirs": Busy,  # another instance's live lease
    "lapsed": Run,  # another instance's lease ran out: take its work over
    "done": Done,
    "invalid": Invalid,
}


def documents(status: Status, state: str, now: datetime) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The call and server document for one row of the table."""
    if state == "none":
        return app_call(status), None
    effects = {
        "unclaimed": None,
        "ours": {"state": "claimed", "by": ME, "leaseUntil": now + timedelta(seconds=10)},
        "theirs": {"state": "claimed", "by": OTHER, "leaseUntil": now + timedelta(seconds=10)},
        "lapsed": {"state": "claimed", "by": OTHER, "leaseUntil": now - timedelta(seconds=1)},
        "done": {"state": "done", "by": OTHER},
        "invalid": None,
    }[state]
    server = server_doc(status.value, effects, **({"invalid": True} if state == "invalid" else {}))
    return known_call(status), server


def times_out(status: Status, state: str, position: str) -> bool:
    """Only a known pending call whose timer fired after its deadline moves to missed."""
    return status == Status.PENDING and position == "after-timer" and state not in ("none", "invalid")


def expected_ring(status: Status, state: str) -> set[str]:
    """The set-up fields a claim writes: a first-seen live call has none of them yet."""
    if state != "none" or status not in calls.ACTIVE:
        return set()
    return {"channelName", "ringDeadline"} if status == Status.PENDING else {"channelName"}


class TestDecisionTable:
    """decide() over every status x claim state x time position."""

    @pytest.mark.parametrize("position", list(TIMES))
    @pytest.mark.parametrize("state", CLAIM_STATES)
    @pytest.mark.parametrize("status", list(Status), ids=str)
    def test_outcome(self, status: Status, state: str, position: str) -> None:
        """Each row decides as the claim-state table says, with the timeout and ring set-up in their place."""
        now, timer = TIMES[position]
        call, server = documents(status, state, now)
        decision = decide(CALL_ID, call, server, GROUP, now, CONFIG, time_out=timer)
        if times_out(status, state, position):
            assert decision == Run(Status.MISSED.value, now + timedelta(seconds=15), time_out=True)
            return
        assert type(decision) is OUTCOME[state]
        if isinstance(decision, Run):
            assert (decision.status, decision.time_out) == (status.value, False)
            assert decision.lease_until == now + timedelta(seconds=CONFIG.lease_s)
            assert set(decision.ring) == expected_ring(status, state)
            assert decision.identity == (IDENTITY if state == "none" else None)
            assert decision.review is None
        elif isinstance(decision, Busy | Done):
            assert decision.status == status.value
        elif isinstance(decision, Invalid):
            assert decision.violation is None  # recorded when the call was marked, never again

    def test_gone(self) -> None:
        """A call document that does not exist is gone, whatever the server document says."""
        assert decide(CALL_ID, None, server_doc("pending"), None, T0, CONFIG) == Gone()

    def test_inputs_are_not_changed(self) -> None:
        """decide() only reads: the documents are the same after a decision that writes a lot."""
        call = app_call(Status.PENDING)
        before = dict(call)
        decide(CALL_ID, call, None, GROUP, T0, CONFIG)
        assert call == before


class TestRingSetup:
    """The channel and ring deadline a first claim assigns."""

    def test_pending_gets_channel_and_deadline(self) -> None:
        """channelName comes from calls.channel_name over createdAt; ringDeadline is createdAt + ring timeout."""
        decision = decide(CALL_ID, app_call(), None, GROUP, T0, CONFIG)
        assert isinstance(decision, Run)
        epoch_ms = int(T0.timestamp() * 1000)
        assert decision.ring == {
            "channelName": calls.channel_name("group1", "alice", "bob", CALL_ID, epoch_ms),
            "ringDeadline": DEADLINE,
        }

    def test_known_call_missing_its_channel_gets_one(self) -> None:
        """A known live call whose channel is gone gets the same name again (the name is the call's own)."""
        call = known_call(Status.ACCEPTED, channelName=ABSENT)
        decision = decide(CALL_ID, call, server_doc("accepted"), None, T0, CONFIG)
        assert isinstance(decision, Run)
        epoch_ms = int(T0.timestamp() * 1000)
        assert decision.ring == {"channelName": calls.channel_name("group1", "alice", "bob", CALL_ID, epoch_ms)}

    def test_timer_before_deadline_does_not_time_out(self) -> None:
        """A timer that fires early (clock skew) leaves a ringing call pending."""
        server = server_doc("pending", {"state": "done", "by": ME})
        decision = decide(CALL_ID, known_call(), server, None, DEADLINE - timedelta(seconds=1), CONFIG, time_out=True)
        assert decision == Done("pending")


# ---- invariants on first sight ------------------------------------------------------------------------

NEW_CALL_VIOLATIONS = [
    pytest.param(app_call(callerId=ABSENT), "callerId must be", id="caller-missing"),
    pytest.param(app_call(callerId=42), "callerId must be", id="caller-int"),
    pytest.param(app_call(callId="other"), "callId must equal the document id", id="call-id-not-doc-id"),
    pytest.param(edited(app_call(), status="ringing"), "status must be one of", id="unknown-status"),
    pytest.param(app_call(createdAt="yesterday"), "createdAt must be a timestamp", id="created-string"),
    pytest.param(
        app_call(Status.ENDED, answeredAt=T0, endedAt=T0, updatedAt=T0),
        "answeredAt must be later than createdAt",
        id="created-as-ended",
    ),
    pytest.param(app_call(Status.ENDED, answeredAt=ABSENT), "answeredAt must be a timestamp", id="ended-unanswered"),
    pytest.param(
        app_call(Status.ENDED, endedAt=T0 + timedelta(seconds=5)),
        "endedAt must be no earlier than answeredAt",
        id="ended-before-answer",
    ),
    pytest.param(app_call(Status.ACCEPTED, answeredAt="now"), "answeredAt must be a timestamp", id="answered-string"),
    pytest.param(
        app_call(Status.MISSED, answeredAt=T0 + timedelta(seconds=5)),
        "answeredAt must be absent while missed",
        id="missed-answered",
    ),
    pytest.param(app_call(endedAt=T0), "endedAt must be absent while pending", id="pending-ended-stamp"),
    pytest.param(
        app_call(channelName="group1_alice_bob_1"),
        "server-owned fields set before the server saw the call: channelName",
        id="preset-channel",
    ),
    pytest.param(app_call(pushSent=True), "pushSent", id="preset-push-sent"),
    pytest.param(app_call(ringDeadline=T0 + timedelta(days=365)), "ringDeadline", id="deadline-a-year-away"),
    pytest.param(app_call(Status.ENDED, reviewCount=9), "reviewCount", id="preset-review-count"),
]


class TestFirstSight:
    """A call the watcher never acted on is judged by every invariant of its status."""

    @pytest.mark.parametrize(("call", "reason"), NEW_CALL_VIOLATIONS)
    def test_violation(self, call: dict[str, Any], reason: str) -> None:
        """The call is invalid, with a violation naming the broken invariant and nothing restored."""
        decision = decide(CALL_ID, call, None, GROUP, T0, CONFIG)
        assert isinstance(decision, Invalid) and decision.violation is not None
        assert reason in decision.violation.reason
        assert (decision.violation.attempted, decision.violation.restored) == (call.get("status"), None)
        assert decision.restore == {}

    @pytest.mark.parametrize("status", list(Status), ids=str)
    def test_valid_call_of_every_status_is_claimed(self, status: Status) -> None:
        """A call first seen in any status, with its path's stamps, is claimed (the watcher may have been down)."""
        decision = decide(CALL_ID, app_call(status), None, GROUP, T0, CONFIG)
        assert isinstance(decision, Run) and decision.status == status.value

    @pytest.mark.parametrize(
        ("updated_at", "reason"),
        [("2099", "updatedAt must be a timestamp"), (T0 + timedelta(minutes=2), "updatedAt lies in the future")],
    )
    def test_malformed_updated_at_is_replaced(self, updated_at: Any, reason: str) -> None:
        """An updatedAt that is no timestamp or lies past the tolerance is flagged and replaced with `now`."""
        decision = decide(CALL_ID, app_call(updatedAt=updated_at), None, GROUP, T0, CONFIG)
        assert isinstance(decision, Invalid) and decision.violation is not None
        assert reason in decision.violation.reason.split("; ")
        assert decision.restore == {"updatedAt": T0}

    def test_updated_at_within_tolerance_is_fine(self) -> None:
        """A stamp a little ahead of the watcher's clock (clock skew) is no violation."""
        decision = decide(CALL_ID, app_call(updatedAt=T0 + timedelta(seconds=59)), None, GROUP, T0, CONFIG)
        assert isinstance(decision, Run)

    @pytest.mark.parametrize(
        "group", [None, group_document(["alice"]), group_document(["alice", "mallory"]), {"memberIds": "alice bob"}]
    )
    def test_not_group_members(self, group: dict[str, Any] | None) -> None:
        """A valid call between people who are not both members of its group is invalid: not_group_members."""
        decision = decide(CALL_ID, app_call(), None, group, T0, CONFIG)
        assert decision == Invalid(Violation(NOT_GROUP_MEMBERS, "pending", None))


# ---- known calls: transitions proven by stamps, identity kept ----------------------------------------

KNOWN_JUDGEMENTS = [
    # (last legal status, the call as found, expected decision type, status restored, reason fragment)
    pytest.param("pending", known_call(Status.ENDED), Run, None, None, id="pending-to-ended-with-stamps"),
    pytest.param("pending", known_call(Status.MISSED), Run, None, None, id="pending-to-missed"),
    pytest.param(
        "pending",
        known_call(Status.ENDED, answeredAt=ABSENT),
        Revert,
        "pending",
        "answeredAt must be a timestamp",
        id="pending-to-ended-unanswered",
    ),
    pytest.param(
        "pending",
        known_call(Status.ACCEPTED, answeredAt=ABSENT),
        Revert,
        "pending",
        "not proven by its stamps",
        id="pending-to-accepted-unstamped",
    ),
    pytest.param(
        "accepted",
        known_call(Status.PENDING, answeredAt=T0 + timedelta(seconds=10)),
        Revert,
        "accepted",
        "illegal transition accepted -> pending",
        id="back-to-pending",
    ),
    pytest.param(
        "ended",
        known_call(Status.ACCEPTED, endedAt=T0 + timedelta(seconds=20)),
        Revert,
        "ended",
        "illegal transition ended -> accepted",
        id="ended-reopened",
    ),
    pytest.param("pending", edited(known_call(), status="ringing"), Revert, "pending", "illegal", id="unknown-status"),
    pytest.param("pending", edited(known_call(), status=ABSENT), Revert, "pending", "illegal", id="status-removed"),
    pytest.param(
        "pending",
        known_call(Status.ACCEPTED, callerId=ABSENT, answeredAt=ABSENT),
        Revert,
        "pending",
        "callerId changed",
        id="caller-removed-then-accepted",
    ),
    pytest.param(
        "pending",
        known_call(Status.ACCEPTED, callerId=ABSENT),
        Revert,
        "accepted",
        "callerId changed",
        id="caller-removed-legal-accept",
    ),
    pytest.param(
        "accepted",
        known_call(Status.ACCEPTED, callerId="mallory"),
        Revert,
        "accepted",
        "callerId changed",
        id="caller-swapped",
    ),
    pytest.param(
        "accepted",
        known_call(Status.ACCEPTED, answeredAt=ABSENT),
        Invalid,
        None,
        "answeredAt must be",
        id="stamp-deleted",
    ),
    pytest.param("accepted", known_call(Status.ACCEPTED, callerName=7), Invalid, None, "callerName", id="name-int"),
    pytest.param(
        "pending", known_call(updatedAt="soon"), Revert, "pending", "updatedAt must be a timestamp", id="updated-string"
    ),
    pytest.param(
        "pending",
        known_call(updatedAt=T0 + timedelta(days=365)),
        Revert,
        "pending",
        "updatedAt lies in the future",
        id="updated-a-year-ahead",
    ),
]


class TestKnownCalls:
    """A call the watcher acted on before: a change must be reachable and proven by stamps; identity is kept."""

    @pytest.mark.parametrize(("last", "call", "kind", "restored", "reason"), KNOWN_JUDGEMENTS)
    def test_judgement(
        self, last: str, call: dict[str, Any], kind: type, restored: str | None, reason: str | None
    ) -> None:
        """Legal changes are claimed; anything else is a violation, restored where possible."""
        server = server_doc(last, {"state": "done", "by": ME})
        decision = decide(CALL_ID, call, server, None, T0, CONFIG)
        assert type(decision) is kind, decision
        if isinstance(decision, Revert | Invalid):
            assert decision.violation is not None and reason is not None
            assert reason in decision.violation.reason
            assert decision.violation.attempted == call.get("status")
            assert decision.violation.restored == restored
        if isinstance(decision, Revert):
            assert decision.restore.get("status", call.get("status")) == restored
            # What the revert leaves satisfies every invariant, so it cannot be reverted again.
            after = {**call, **decision.restore}
            for name in decision.remove:
                after.pop(name)
            assert calls.invariant_errors(after, CALL_ID) == []

    def test_revert_removes_stamps_of_the_illegal_status(self) -> None:
        """Back to pending, the answeredAt and endedAt an unproven jump brought are removed."""
        call = known_call(Status.ENDED, answeredAt=T0 + timedelta(seconds=30))  # answered after it ended
        decision = decide(CALL_ID, call, server_doc("pending"), None, T0, CONFIG)
        assert isinstance(decision, Revert)
        assert decision.restore == {"status": "pending"} and decision.remove == ("answeredAt", "endedAt")

    def test_identity_restored_from_server_document(self) -> None:
        """A removed callerId is put back from the identity the first claim remembered."""
        call = known_call(Status.ACCEPTED, callerId=ABSENT)
        decision = decide(CALL_ID, call, server_doc("accepted"), None, T0, CONFIG)
        assert isinstance(decision, Revert) and decision.restore == {"callerId": "alice"}

    def test_identity_unknown_makes_call_invalid(self) -> None:
        """Without a remembered identity (an older server document), a removed callerId cannot be restored."""
        server = server_doc("pending")
        server.pop("identity")
        decision = decide(CALL_ID, known_call(Status.ACCEPTED, callerId=ABSENT), server, None, T0, CONFIG)
        assert isinstance(decision, Invalid) and decision.violation is not None
        assert "callerId must be" in decision.violation.reason

    def test_older_server_document_gets_identity(self) -> None:
        """A claim on a call whose server document has no identity remembers it."""
        server = server_doc("pending")
        server.pop("identity")
        decision = decide(CALL_ID, known_call(Status.ACCEPTED), server, None, T0, CONFIG)
        assert isinstance(decision, Run) and decision.identity == IDENTITY

    def test_server_document_without_status(self) -> None:
        """A server document that lost the last legal status leaves nothing to restore: invalid, no crash."""
        server = server_doc("pending")
        server.pop("status")
        decision = decide(CALL_ID, known_call(), server, None, T0, CONFIG)
        assert isinstance(decision, Invalid) and decision.violation is not None

    def test_reopened_ended_call_is_no_review(self) -> None:
        """Reverting an ended call marks the illegal write's updatedAt as seen, so it never counts as a review."""
        stamp = T0 + timedelta(minutes=5)
        call = known_call(Status.PENDING, answeredAt=T0 + timedelta(seconds=10), endedAt=T0 + timedelta(seconds=20))
        call["updatedAt"] = stamp
        decision = decide(CALL_ID, call, server_doc("ended", {"state": "done"}), None, stamp, CONFIG)
        assert isinstance(decision, Revert) and decision.reviews_seen == stamp

    def test_restamped_ended_call_is_no_review(self) -> None:
        """The updatedAt put back on an ended call is marked seen: the server's own stamp is not a review."""
        call = known_call(Status.ENDED, updatedAt="later")
        decision = decide(CALL_ID, call, server_doc("ended", {"state": "done"}), None, LATER, CONFIG)
        assert isinstance(decision, Revert)
        assert decision.restore == {"updatedAt": LATER} and decision.reviews_seen == LATER


# ---- reviews -----------------------------------------------------------------------------------------

ENDED_AT = T0 + timedelta(seconds=20)
REVIEWED_AT = T0 + timedelta(minutes=3)
LATER = T0 + timedelta(minutes=10)  # when the watcher handles the review


def reviewed(**extra: Any) -> dict[str, Any]:
    """An ended call a participant reviewed at REVIEWED_AT."""
    return known_call(Status.ENDED, humanSummary="Garden.", updatedAt=REVIEWED_AT, **extra)


REVIEW_CASES = [
    # (call, the ended effects' claim, reviews counted on the server, expected decision)
    pytest.param(known_call(Status.ENDED), {"state": "done"}, None, Done("ended"), id="no-review"),
    pytest.param(reviewed(), {"state": "done"}, None, Review(1, REVIEWED_AT), id="first-review"),
    pytest.param(reviewed(), {"state": "done"}, {"count": 2, "seen": ENDED_AT}, Review(3, REVIEWED_AT), id="third"),
    pytest.param(reviewed(), {"state": "done"}, {"count": 1, "seen": REVIEWED_AT}, Done("ended"), id="already-counted"),
    pytest.param(reviewed(), {"state": "done"}, {"count": True, "seen": "x"}, Review(1, REVIEWED_AT), id="garbled"),
    pytest.param(
        reviewed(),
        {"state": "claimed", "by": OTHER, "leaseUntil": LATER + timedelta(seconds=5)},
        None,
        Review(1, REVIEWED_AT),
        id="effects-busy-elsewhere",
    ),
    pytest.param(
        reviewed(),
        None,
        None,
        Run("ended", LATER + timedelta(seconds=15), review=Review(1, REVIEWED_AT)),
        id="with-the-ended-claim",
    ),
    pytest.param(
        reviewed(endedAt=REVIEWED_AT),
        {"state": "done"},
        None,
        Done("ended"),
        id="stamped-with-the-end",
    ),
]


class TestReviews:
    """A review write after `ended` (it stamps updatedAt) is counted once: reviewCount and lastReviewAt."""

    @pytest.mark.parametrize(("call", "effect", "reviews", "expected"), REVIEW_CASES)
    def test_review(
        self, call: dict[str, Any], effect: dict[str, Any] | None, reviews: dict[str, Any] | None, expected: Any
    ) -> None:
        """Each row counts the review, leaves a counted one alone, or claims the ended effects with it."""
        server = server_doc("ended", effect, **({"reviews": reviews} if reviews else {}))
        assert decide(CALL_ID, call, server, None, LATER, CONFIG) == expected

    def test_first_seen_reviewed_call(self) -> None:
        """A call first seen already reviewed (the watcher was down) counts the review with its ended claim."""
        call = app_call(Status.ENDED, humanNotes="Sunday.", updatedAt=REVIEWED_AT)
        decision = decide(CALL_ID, call, None, GROUP, LATER, CONFIG)
        assert isinstance(decision, Run) and decision.review == Review(1, REVIEWED_AT)


# ---- the I/O shell over an in-memory store -----------------------------------------------------------


class FakeNotifier:
    """A Notifier that records pushes and reports each delivered."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    async def send(
        self, target: PushTarget, kind: Any, payload: Mapping[str, str], expires_at: float, still_wanted: Any = None
    ) -> PushResult:
        self.sent.append((target.uid, kind, dict(payload)))
        return PushResult(True, target.platform)


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def time(self) -> float:
        return self.now.timestamp()

    def monotonic(self) -> float:
        return 0.0


def make_reactor(
    store: FakeCallEffects,
    notifier: FakeNotifier | None = None,
    devices: FakeDevices | None = None,
    metrics: WatcherMetrics | None = None,
    clock: FixedClock | None = None,
) -> CallReactor:
    """A reactor over the store whose ring timers go to a CallTracker nobody fires."""
    timers = CallTracker()
    return CallReactor(
        store,
        devices or FakeDevices(),
        notifier or FakeNotifier(),
        clock or FixedClock(store.now),
        CONFIG,
        schedule_timeout=timers.schedule_timeout,
        cancel_timeout=timers.cancel_timeout,
        metrics=metrics,
    )


def seeded_store(*churning: str, user: dict[str, Any] | None = None, now: datetime | None = None) -> FakeCallEffects:
    """A store holding the care group, bob's device and a new pending call per id in `churning` plus `steady`."""
    store = FakeCallEffects(now or T0 + timedelta(seconds=1), frozenset(f"calls/{c}" for c in churning))
    store.put("groups/group1", GROUP)
    store.put("users/bob", user if user is not None else {"platform": "android", "fcmToken": "fcm-bob"})
    for call_id in (*churning, "steady"):
        store.put(f"calls/{call_id}", app_call(callId=call_id))
    return store


def steady_server(status: str, effects: Mapping[str, Any]) -> dict[str, Any]:
    """The server document of the call `steady` after the watcher claimed `status`."""
    return server_doc(status, effects, callId="steady", identity={**IDENTITY, "callId": "steady"})


class TestReactorShell:
    """CallReactor reads, calls decide() and writes what it says, guarded by what it read."""

    async def test_new_call_is_set_up_and_rung(self) -> None:
        """A new pending call gets its channel, deadline and push result, and its server document the claim."""
        store = seeded_store()
        notifier = FakeNotifier()
        assert await make_reactor(store, notifier).handle("steady", "bob", group_hint="group1") is Claim.RUN
        call = store.docs["calls/steady"]
        assert call["channelName"] == calls.channel_name("group1", "alice", "bob", "steady", int(T0.timestamp() * 1000))
        assert (call["pushSent"], call["pushPlatform"], call["pushError"]) == (True, "android", None)
        assert [(uid, kind) for uid, kind, _ in notifier.sent] == [("bob", "incoming_call")]
        server = store.docs[f"{CALL_SERVER}/steady"]
        assert server["effects"]["pending"]["state"] == "done"
        assert server["identity"] == {**IDENTITY, "callId": "steady"}

    async def test_timer_run_of_a_call_rung_here_reads_nothing(self) -> None:
        """The ring timer's run of a call rung here decides from what its own writes left: no read at all."""
        store = seeded_store()
        clock = FixedClock(store.now)
        notifier = FakeNotifier()
        reactor = make_reactor(store, notifier, clock=clock)
        await reactor.handle("steady", "bob", group_hint="group1")
        assert store.round_trips == [["calls/steady", f"{CALL_SERVER}/steady", "users/bob", "groups/group1"]]
        store.now = clock.now = LATER  # past the ring deadline
        store.round_trips.clear()
        assert await reactor.handle("steady", time_out=True) is Claim.RUN
        assert store.docs["calls/steady"]["status"] == Status.MISSED
        assert store.docs[f"{CALL_SERVER}/steady"]["effects"]["missed"]["state"] == "done"
        assert [kind for _, kind, _ in notifier.sent] == ["incoming_call", "call_ended"]
        assert store.round_trips == []

    async def test_timer_run_of_a_call_rung_elsewhere_reads_the_receiver_with_the_call(self) -> None:
        """A call another replica rang (its devices unknown here) has its receiver read in the same round trip."""
        store = seeded_store()
        store.put("calls/steady", known_call(callId="steady"))
        store.put(f"{CALL_SERVER}/steady", steady_server("pending", {"state": "done"}))
        clock = FixedClock(store.now)
        reactor = make_reactor(store, clock=clock)
        assert await reactor.handle("steady", "bob") is Claim.DONE
        store.now = clock.now = LATER
        store.round_trips.clear()
        assert await reactor.handle("steady", time_out=True) is Claim.RUN
        assert store.round_trips == [["calls/steady", f"{CALL_SERVER}/steady", "users/bob"]]

    async def test_metrics_count_decisions_pushes_and_violations(self) -> None:
        """A rung call counts a run and a sent Android push; a call created as ended counts an invalid violation."""
        store = seeded_store()
        metrics = WatcherMetrics()
        reactor = make_reactor(store, metrics=metrics)
        await reactor.handle("steady", "bob", group_hint="group1")
        store.put("calls/broken", app_call(Status.ENDED, callId="broken", answeredAt=T0, endedAt=T0))
        assert await reactor.handle("broken") is Claim.INVALID
        sample = metrics.registry.get_sample_value
        assert sample("memharbor_watcher_decisions_total", {"outcome": "run"}) == 1
        assert sample("memharbor_watcher_decisions_total", {"outcome": "invalid"}) == 1
        pushed = {"kind": "incoming_call", "platform": "android", "result": "sent"}
        assert sample("memharbor_watcher_pushes_total", pushed) == 1
        assert sample("memharbor_watcher_violations_total", {"reason": "invalid"}) == 1

    async def test_no_usable_device_has_no_platform(self) -> None:
        """An iOS receiver with only a regular APNs token gets no incoming-call push: pushPlatform is null."""
        store = seeded_store(user={"platform": "ios", "apnsToken": "apns-bob"})
        await make_reactor(store).handle("steady")
        call = store.docs["calls/steady"]
        assert (call["pushSent"], call["pushPlatform"], call["pushError"]) == (False, None, "no_device_token")

    async def test_violation_is_written_and_logged(self) -> None:
        """A call created as ended gets a violation map and a warning naming the call and the reason."""
        store = seeded_store()
        store.put("calls/steady", app_call(Status.ENDED, callId="steady", answeredAt=T0, endedAt=T0))
        with capture_logs() as logs:
            assert await make_reactor(store).handle("steady") is Claim.INVALID
        violation = store.docs["calls/steady"]["violation"]
        assert set(violation) == {"reason", "attempted", "restored", "at"}
        assert "answeredAt must be later than createdAt" in violation["reason"]
        assert store.docs[f"{CALL_SERVER}/steady"]["invalid"] is True
        warnings = [e for e in logs if e["event"] == "call.violation"]
        assert [(e["log_level"], e["call_id"]) for e in warnings] == [("warning", "steady")]
        assert warnings[0]["reason"] == violation["reason"]

    async def test_review_counted_once(self) -> None:
        """A review write is counted on the call and the server document; handling it again changes nothing."""
        store = seeded_store(now=LATER)
        store.put("calls/steady", reviewed(callId="steady"))
        store.put(f"{CALL_SERVER}/steady", steady_server("ended", {"state": "done"}))
        reactor = make_reactor(store)
        assert await reactor.handle("steady") is Claim.REVIEWED
        assert await reactor.handle("steady") is Claim.DONE
        call = store.docs["calls/steady"]
        assert (call["reviewCount"], call["lastReviewAt"]) == (1, REVIEWED_AT)
        assert store.docs[f"{CALL_SERVER}/steady"]["reviews"] == {"count": 1, "seen": REVIEWED_AT}

    async def test_ended_call_stays_open_to_reviews(self) -> None:
        """After handling `ended`, neither known_done nor known_final hides the call's next change (a review)."""
        store = seeded_store()
        store.put("calls/steady", known_call(Status.ENDED, callId="steady"))
        store.put(f"{CALL_SERVER}/steady", steady_server("accepted", {"state": "done"}))
        reactor = make_reactor(store)
        assert await reactor.handle("steady") is Claim.RUN
        assert store.docs["calls/steady"]["durationSec"] == 10
        assert not reactor.known_done("steady", "ended") and not reactor.known_final("steady")

    async def test_ended_call_unchanged_since_is_known_final(self) -> None:
        """The echo of our own write (same `updatedAt`) is known; a review's newer stamp is not."""
        store = seeded_store()
        call = known_call(Status.ENDED, callId="steady")
        store.put("calls/steady", call)
        store.put(f"{CALL_SERVER}/steady", steady_server("accepted", {"state": "done"}))
        reactor = make_reactor(store)
        assert await reactor.handle("steady") is Claim.RUN
        assert reactor.known_final("steady", call["updatedAt"])
        assert not reactor.known_final("steady", call["updatedAt"] + timedelta(seconds=1))
        assert not reactor.known_final("steady", None)


class ScriptedNotifier(FakeNotifier):
    """A Notifier that reports the given tokens dead and every other push delivered."""

    def __init__(self, dead: frozenset[str] = frozenset(), slow: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.dead = dead
        self.slow = slow
        self.release = asyncio.Event()  # the slow tokens' pushes end when this is set
        self.targets: list[PushTarget] = []

    async def send(
        self, target: PushTarget, kind: Any, payload: Mapping[str, str], expires_at: float, still_wanted: Any = None
    ) -> PushResult:
        self.targets.append(target)
        if target.token in self.slow:
            await self.release.wait()
        if target.token in self.dead:
            return PushResult(False, target.platform, "apns:410:Unregistered", token_invalid=True)
        return await super().send(target, kind, payload, expires_at, still_wanted)


def three_devices(now: datetime) -> FakeDevices:
    """bob's two iPhones and an Android tablet, all refreshed a day before `now`."""
    fresh = now - timedelta(days=1)
    return FakeDevices(
        {
            "bob": {
                "phone": {"platform": "ios", "voipToken": "voip-p", "apnsToken": "apns-p", "updatedAt": fresh},
                "pad": {"platform": "ios", "voipToken": "voip-i", "apnsToken": "apns-i", "updatedAt": fresh},
                "tab": {"platform": "android", "fcmToken": "fcm-t", "updatedAt": fresh},
            }
        }
    )


class TestTimelineEvents:
    """Each server step on a call joins its timeline, in the write that records the step."""

    async def test_ring_records_seen_channel_and_each_device_push(self) -> None:
        """A rung call's timeline: seen pending, its channel, then one push.sent per device with its latency."""
        store = seeded_store(user={})
        await make_reactor(store, ScriptedNotifier(), three_devices(store.now)).handle("steady", "bob")
        kinds = store.kinds("steady")
        assert kinds[:2] == ["call.seen", "channel.assigned"] and sorted(kinds[2:]) == ["push.sent"] * 3
        pushes = store.events["steady"][2:]
        assert sorted(str(e.detail["device"]) for e in pushes) == ["pad", "phone", "tab"]
        assert all(e.worker == ME and isinstance(e.detail["latencyMs"], float) for e in pushes)
        assert store.events["steady"][1].detail["channel"] == store.docs["calls/steady"]["channelName"]

    async def test_dead_token_is_a_failed_push_with_its_result(self) -> None:
        """A device whose token is dead shows as push.failed with result dead_token."""
        store = seeded_store(user={})
        await make_reactor(store, ScriptedNotifier(frozenset({"voip-p"})), three_devices(store.now)).handle("steady")
        failed = [e for e in store.events["steady"] if e.kind.value == "push.failed"]
        assert [(e.detail["device"], e.detail["result"]) for e in failed] == [("phone", "dead_token")]

    async def test_no_device_is_a_skipped_push(self) -> None:
        """A receiver without any token: push.skipped with the reason, and no push event."""
        store = seeded_store(user={})
        await make_reactor(store, ScriptedNotifier(), FakeDevices()).handle("steady", "bob")
        assert store.kinds("steady") == ["call.seen", "channel.assigned", "push.skipped"]
        assert store.events["steady"][-1].detail["reason"] == "no_device_token"

    async def test_timeout_records_lateness_and_stop_ringing(self) -> None:
        """The ring timer's run: seen missed, ring.timeout with its lateness, stop_ringing.sent per device."""
        store = seeded_store(user={})
        clock = FixedClock(store.now)
        reactor = make_reactor(store, ScriptedNotifier(), three_devices(store.now), clock=clock)
        await reactor.handle("steady", "bob")
        store.events.clear()
        store.now = clock.now = LATER
        await reactor.handle("steady", time_out=True)
        kinds = store.kinds("steady")
        assert kinds[:2] == ["call.seen", "ring.timeout"] and sorted(kinds[2:]) == ["stop_ringing.sent"] * 3
        assert store.events["steady"][0].detail["status"] == "missed"
        deadline = store.docs["calls/steady"]["ringDeadline"]
        assert store.events["steady"][1].detail["lateMs"] == round((LATER - deadline).total_seconds() * 1000)

    async def test_violation_is_on_the_timeline(self) -> None:
        """A call created as ended is invalid: its timeline holds the violation and its reason."""
        store = seeded_store()
        store.put("calls/broken", app_call(Status.ENDED, callId="broken", answeredAt=T0, endedAt=T0))
        assert await make_reactor(store).handle("broken") is Claim.INVALID
        assert store.kinds("broken") == ["violation"]
        assert store.events["broken"][0].detail["reason"] == store.docs["calls/broken"]["violation"]["reason"]


class DeadlinePassingNotifier(ScriptedNotifier):
    """Delivers each push; the first one takes until `later` (past the ring deadline) on the clock."""

    def __init__(self, clock: FixedClock, later: datetime) -> None:
        super().__init__()
        self.clock = clock
        self.later = later

    async def send(
        self, target: PushTarget, kind: Any, payload: Mapping[str, str], expires_at: float, still_wanted: Any = None
    ) -> PushResult:
        self.clock.now = self.later
        await asyncio.sleep(0)  # the other devices' pushes start while this one is out
        return await super().send(target, kind, payload, expires_at, still_wanted)


class TestFanOut:
    """Every device of the receiver rings; answers stop the others; records are kept per device."""

    async def test_ring_reaches_every_device_and_records_each(self) -> None:
        """Three devices and the legacy token ring at once; each has a sent record; pushSent is true."""
        store = seeded_store()
        notifier = ScriptedNotifier()
        devices = three_devices(store.now)
        assert await make_reactor(store, notifier, devices).handle("steady", "bob", group_hint="group1") is Claim.RUN
        assert sorted((t.device, t.token) for t in notifier.targets) == [
            ("pad", "voip-i"),
            ("phone", "voip-p"),
            ("tab", "fcm-t"),
            ("~user", "fcm-bob"),
        ]
        records = store.docs[f"{CALL_SERVER}/steady"]["pushes"]["pending"]
        assert sorted(records) == ["pad", "phone", "tab", "~user"]
        assert {r["result"] for r in records.values()} == {"sent"}
        call = store.docs["calls/steady"]
        assert (call["pushSent"], call["pushPlatform"], call["pushError"]) == (True, "ios", None)
        assert devices.reads == ["bob"]

    async def test_no_device_rings_once_the_deadline_passed_during_the_fan_out(self) -> None:
        """A device reached only after the ring deadline passed (a frozen or slow watcher) is not pushed."""
        store = seeded_store(user={})
        clock = FixedClock(store.now)
        notifier = DeadlinePassingNotifier(clock, store.now + timedelta(seconds=CONFIG.ring_timeout_s + 1))
        await make_reactor(store, notifier, three_devices(store.now), clock=clock).handle("steady", "bob")
        records = store.docs[f"{CALL_SERVER}/steady"]["pushes"]["pending"]
        assert len(notifier.targets) == 1
        errors = sorted(str(r["error"]) for r in records.values())
        assert errors == ["None", "ring_deadline_passed", "ring_deadline_passed"]
        assert store.docs["calls/steady"]["pushSent"] is True

    async def test_dead_device_among_live_ones(self) -> None:
        """One iPhone's token is dead: it alone is recorded dead and loses the token; the call is still sent."""
        store = seeded_store(user={})
        devices = three_devices(store.now)
        await make_reactor(store, ScriptedNotifier(frozenset({"voip-p"})), devices).handle("steady", "bob")
        records = store.docs[f"{CALL_SERVER}/steady"]["pushes"]["pending"]
        assert {key: r["result"] for key, r in records.items()} == {"pad": "sent", "phone": "dead_token", "tab": "sent"}
        assert devices.forgotten == [("bob", "phone", "voipToken")]
        assert store.docs["calls/steady"]["pushSent"] is True

    async def test_slow_device_delays_neither_the_others_nor_push_sent(self) -> None:
        """While one iPad's push is still retrying, the others' records and pushSent are written."""
        store = seeded_store(user={})
        notifier = ScriptedNotifier(slow=frozenset({"voip-i"}))
        handling = asyncio.ensure_future(
            make_reactor(store, notifier, three_devices(store.now)).handle("steady", "bob")
        )
        for _ in range(100):
            await asyncio.sleep(0.02)
            if store.docs["calls/steady"].get("pushSent") is not None:
                break
        records = store.docs[f"{CALL_SERVER}/steady"]["pushes"]["pending"]
        assert sorted(records) == ["phone", "tab"] and store.docs["calls/steady"]["pushSent"] is True
        assert not handling.done()
        notifier.release.set()
        assert await handling is Claim.RUN
        assert sorted(store.docs[f"{CALL_SERVER}/steady"]["pushes"]["pending"]) == ["pad", "phone", "tab"]

    async def test_retried_ring_skips_devices_already_pushed(self) -> None:
        """A claimant died after pushing `phone`: the next one pushes only the other devices."""
        store = seeded_store(user={})
        lapsed = {"state": "claimed", "by": "dead-one", "leaseUntil": T0}
        record = {"platform": "ios", "result": "sent", "error": None, "at": T0}
        server = steady_server("pending", lapsed) | {"pushes": {"pending": {"phone": record}}}
        store.put(f"{CALL_SERVER}/steady", server)
        store.put("calls/steady", known_call(callId="steady") | {"pushSent": True})
        notifier = ScriptedNotifier()
        assert await make_reactor(store, notifier, three_devices(store.now)).handle("steady", "bob") is Claim.RUN
        assert sorted(t.device for t in notifier.targets) == ["pad", "tab"]
        assert sorted(store.docs[f"{CALL_SERVER}/steady"]["pushes"]["pending"]) == ["pad", "phone", "tab"]

    @pytest.mark.parametrize(
        ("status", "answered_on", "expected"),
        [
            (Status.ACCEPTED, "phone", [("pad", "apnsToken"), ("tab", "fcmToken")]),
            (Status.DECLINED, "tab", [("pad", "apnsToken"), ("phone", "apnsToken")]),
            (Status.CANCELLED, None, [("pad", "apnsToken"), ("phone", "apnsToken"), ("tab", "fcmToken")]),
        ],
    )
    async def test_stop_ringing_goes_to_the_other_devices(
        self, status: Status, answered_on: str | None, expected: list[tuple[str, str]]
    ) -> None:
        """An answer stops every device but the answering one (regular APNs token, never VoIP); a cancel all."""
        store = seeded_store(user={})
        extra = {"answeredOn": answered_on} if answered_on else {}
        store.put("calls/steady", known_call(status, callId="steady", **extra))
        store.put(f"{CALL_SERVER}/steady", steady_server("pending", {"state": "done"}))
        notifier = ScriptedNotifier()
        assert await make_reactor(store, notifier, three_devices(store.now)).handle("steady", "bob") is Claim.RUN
        assert sorted((t.device, t.token_field) for t in notifier.targets) == expected
        assert {kind for _, kind, _ in notifier.sent} == {"call_ended"}
        assert {payload["status"] for _, _, payload in notifier.sent} == {status.value}

    async def test_stop_ringing_goes_to_the_devices_that_rang(self) -> None:
        """A device registered after the ring never rang: the cancel notifies the ring's devices, not read again."""
        store = seeded_store(user={})
        devices = three_devices(store.now)
        notifier = ScriptedNotifier()
        reactor = make_reactor(store, notifier, devices)
        await reactor.handle("steady", "bob", group_hint="group1")
        devices.devices["bob"]["late"] = {"platform": "android", "fcmToken": "fcm-late", "updatedAt": store.now}
        notifier.targets.clear()
        store.apply("calls/steady", {"status": Status.CANCELLED.value, "endedAt": store.now, "updatedAt": store.now})
        assert await reactor.handle("steady", "bob") is Claim.RUN
        assert sorted(t.device for t in notifier.targets) == ["pad", "phone", "tab"]
        assert devices.reads == ["bob"]

    async def test_a_new_reactor_reads_the_devices_for_stop_ringing(self) -> None:
        """After a restart nothing is known of the ring: the receiver's devices are read for the cancel."""
        store = seeded_store(user={})
        devices = three_devices(store.now)
        await make_reactor(store, ScriptedNotifier(), devices).handle("steady", "bob", group_hint="group1")
        store.apply("calls/steady", {"status": Status.CANCELLED.value, "endedAt": store.now, "updatedAt": store.now})
        notifier = ScriptedNotifier()
        assert await make_reactor(store, notifier, devices).handle("steady", "bob") is Claim.RUN
        assert sorted(t.device for t in notifier.targets) == ["pad", "phone", "tab"]
        assert devices.reads == ["bob", "bob"]

    async def test_a_retried_stop_notice_keeps_its_claim(self) -> None:
        """Between retries of a stop-ringing notice the watcher extends that status's lease and keeps trying."""
        store = seeded_store(user={})
        store.put("calls/steady", known_call(Status.CANCELLED, callId="steady"))
        store.put(f"{CALL_SERVER}/steady", steady_server("pending", {"state": "done"}))
        asked: list[bool] = []

        class RetryingNotifier(FakeNotifier):
            async def send(
                self,
                target: PushTarget,
                kind: Any,
                payload: Mapping[str, str],
                expires_at: float,
                still_wanted: Any = None,
            ) -> PushResult:
                asked.append(await still_wanted())  # what the retry loop asks after a transient failure
                return await super().send(target, kind, payload, expires_at)

        later = store.now + timedelta(seconds=30)
        clock = FixedClock(later)
        assert (
            await make_reactor(store, RetryingNotifier(), three_devices(store.now), clock=clock).handle("steady", "bob")
            is Claim.RUN
        )
        assert asked == [True, True, True]  # the three devices' notices
        effect = store.docs[f"{CALL_SERVER}/steady"]["effects"]["cancelled"]
        assert effect["leaseUntil"] == later + timedelta(seconds=CONFIG.lease_s)
        assert effect["state"] == "done"

    async def test_stale_and_excess_devices_pruned_and_not_rung(self) -> None:
        """A device idle past the TTL is deleted after the ring and never rung."""
        store = seeded_store(user={})
        devices = three_devices(store.now)
        old = store.now - timedelta(days=61)
        devices.devices["bob"]["old"] = {"platform": "android", "fcmToken": "fcm-old", "updatedAt": old}
        notifier = ScriptedNotifier()
        await make_reactor(store, notifier, devices).handle("steady", "bob")
        assert "old" not in {t.device for t in notifier.targets}
        assert devices.deleted == [("bob", "old")]

    async def test_ended_reads_no_devices(self) -> None:
        """After `accepted` only `ended` follows, which pushes nothing: the devices are not read for it."""
        store = seeded_store(user={})
        store.put("calls/steady", known_call(Status.ACCEPTED, callId="steady"))
        store.put(f"{CALL_SERVER}/steady", steady_server("pending", {"state": "done"}))
        devices = three_devices(store.now)
        reactor = make_reactor(store, ScriptedNotifier(), devices)
        await reactor.handle("steady", "bob")
        store.put("calls/steady", known_call(Status.ENDED, callId="steady"))
        await reactor.handle("steady", "bob")
        assert devices.reads == ["bob"]
        assert store.docs["calls/steady"]["durationSec"] == 10


class MovedOnNotifier(FakeNotifier):
    """Delivers every push, but while the first is in flight the caller cancels and another replica claims
    `cancelled` (found by the soak: bench/soak.py)."""

    def __init__(self, store: FakeCallEffects) -> None:
        super().__init__()
        self.store = store

    async def send(
        self, target: PushTarget, kind: Any, payload: Mapping[str, str], expires_at: float, still_wanted: Any = None
    ) -> PushResult:
        if not self.sent:
            self.store.apply("calls/steady", {"status": Status.CANCELLED.value, "endedAt": self.store.now})
            lease = self.store.now + timedelta(seconds=15)
            claim = {"state": "claimed", "by": OTHER, "leaseUntil": lease}
            self.store.apply(f"{CALL_SERVER}/steady", {"effectOpen": True, "effects.`cancelled`": claim})
        return await super().send(target, kind, payload, expires_at, still_wanted)


class TestFinishingWrite:
    """The write that marks a status's effects done closes the claim only when no later claim is open."""

    async def test_a_later_status_claimed_meanwhile_stays_open(self) -> None:
        """The ring finishes after another replica claimed `cancelled`: effectOpen stays true, so the sweep
        still finds that claim should its holder die (closing it lost the stop-ringing notices)."""
        store = seeded_store()
        assert await make_reactor(store, MovedOnNotifier(store)).handle("steady", "bob") is Claim.RUN
        server = store.docs[f"{CALL_SERVER}/steady"]
        assert server["effects"]["pending"]["state"] == "done"
        assert server["effects"]["cancelled"]["state"] == "claimed"
        assert server["effectOpen"] is True

    async def test_nothing_written_meanwhile_closes_in_one_guarded_write(self) -> None:
        """Without a concurrent writer the finishing write closes the claim without reading again."""
        store = seeded_store()
        assert await make_reactor(store).handle("steady", "bob", group_hint="group1") is Claim.RUN
        assert store.docs[f"{CALL_SERVER}/steady"]["effectOpen"] is False
        assert len(store.round_trips) == 1

    async def test_a_concurrent_write_without_a_claim_still_closes(self) -> None:
        """A write to the server document that opens no claim (here the caller cancelled, nobody claimed
        yet) costs one more read, and the claim is closed."""
        store = seeded_store()

        class Cancelled(FakeNotifier):
            async def send(self, target: PushTarget, kind: Any, payload: Mapping[str, str], *args: Any) -> PushResult:
                store.apply("calls/steady", {"status": Status.CANCELLED.value})
                store.apply(f"{CALL_SERVER}/steady", {"note": "touched"})
                return await super().send(target, kind, payload, *args)

        assert await make_reactor(store, Cancelled()).handle("steady", "bob") is Claim.RUN
        assert store.docs[f"{CALL_SERVER}/steady"]["effectOpen"] is False
        assert store.docs[f"{CALL_SERVER}/steady"]["effects"]["pending"]["state"] == "done"


class TestTimeoutFromOwnWrites:
    """A ring timer commits from what the ring's own writes left, guarded by their versions; any write
    since (or a write it could not account for) makes it read, and the read decides."""

    async def rung(self) -> tuple[FakeCallEffects, CallReactor, FixedClock, FakeNotifier]:
        """A store and reactor after the reactor rang the call `steady`, its clock past the deadline."""
        store = seeded_store()
        clock = FixedClock(store.now)
        notifier = FakeNotifier()
        reactor = make_reactor(store, notifier, clock=clock)
        assert await reactor.handle("steady", "bob", group_hint="group1") is Claim.RUN
        store.now = clock.now = LATER
        store.round_trips.clear()
        return store, reactor, clock, notifier

    async def test_a_write_since_the_ring_is_read_and_kept(self) -> None:
        """An app wrote the call after the ring: the guarded timeout fails, one read, and the write stays."""
        store, reactor, _, _ = await self.rung()
        store.apply("calls/steady", {"callerName": "Alice K."})
        assert await reactor.handle("steady", time_out=True) is Claim.RUN
        call = store.docs["calls/steady"]
        assert (call["status"], call["callerName"]) == (Status.MISSED, "Alice K.")
        assert store.round_trips == [["calls/steady", f"{CALL_SERVER}/steady"]]

    async def test_an_unseen_cancel_is_not_overwritten(self) -> None:
        """The caller cancelled and the timer fires before the feed told us: the read finds the cancel, whose
        effects run instead of a timeout."""
        store, reactor, _, notifier = await self.rung()
        store.apply("calls/steady", {"status": Status.CANCELLED.value, "endedAt": T0 + timedelta(seconds=2)})
        assert await reactor.handle("steady", time_out=True) is Claim.RUN
        assert store.docs["calls/steady"]["status"] == Status.CANCELLED
        assert "missed" not in store.docs[f"{CALL_SERVER}/steady"]["effects"]
        assert store.docs[f"{CALL_SERVER}/steady"]["effects"]["cancelled"]["state"] == "done"
        assert [kind for _, kind, _ in notifier.sent] == ["incoming_call", "call_ended"]

    async def test_a_server_document_changed_since_is_read(self) -> None:
        """Another replica wrote the server document after the ring: the timeout reads before it decides."""
        store, reactor, _, _ = await self.rung()
        store.apply(f"{CALL_SERVER}/steady", {"note": "touched"})
        assert await reactor.handle("steady", time_out=True) is Claim.RUN
        assert store.docs["calls/steady"]["status"] == Status.MISSED
        assert store.docs[f"{CALL_SERVER}/steady"]["note"] == "touched"
        assert len(store.round_trips) == 1

    async def test_a_deleted_call_is_gone(self) -> None:
        """An admin deleted the call after the ring: the timeout's write finds no call, a read says Gone."""
        store, reactor, _, _ = await self.rung()
        del store.docs["calls/steady"]
        assert await reactor.handle("steady", time_out=True) is Claim.GONE
        assert "calls/steady" not in store.docs

    async def test_used_once(self) -> None:
        """What the ring left serves one timer run only: a second run reads (and finds the call missed)."""
        store, reactor, _, notifier = await self.rung()
        assert await reactor.handle("steady", time_out=True) is Claim.RUN
        assert await reactor.handle("steady", time_out=True) is Claim.DONE
        assert len(store.round_trips) == 1
        assert [kind for _, kind, _ in notifier.sent] == ["incoming_call", "call_ended"]

    async def test_a_ring_whose_finish_conflicted_is_read(self) -> None:
        """An app wrote the call during the ring's push: the finishing write reads again, and what it left
        is not known without a read, so the timer reads too."""
        store = seeded_store()

        class Renamed(FakeNotifier):
            async def send(self, target: PushTarget, kind: Any, payload: Mapping[str, str], *args: Any) -> PushResult:
                store.apply("calls/steady", {"callerName": "Alice K."})
                return await super().send(target, kind, payload, *args)

        clock = FixedClock(store.now)
        reactor = make_reactor(store, Renamed(), clock=clock)
        assert await reactor.handle("steady", "bob", group_hint="group1") is Claim.RUN
        assert store.docs["calls/steady"]["pushSent"] is True
        assert len(store.round_trips) == 2  # the claim's read, and the finishing write's after its Conflict
        store.now = clock.now = LATER
        store.round_trips.clear()
        assert await reactor.handle("steady", time_out=True) is Claim.RUN
        assert store.docs["calls/steady"]["status"] == Status.MISSED
        assert len(store.round_trips) == 1

    async def test_a_timer_run_after_another_handling_reads(self) -> None:
        """Any other run of the call (an event, the sweep) drops what the ring left: the timer then reads."""
        store, reactor, _, _ = await self.rung()
        assert await reactor.handle("steady", "bob") is Claim.DONE
        store.round_trips.clear()
        assert await reactor.handle("steady", time_out=True) is Claim.RUN
        assert len(store.round_trips) == 1


class TestStopOwed:
    """An ended call whose answered-elsewhere notices nobody sent, nor will, sends them with its own effects."""

    NOW = T0 + timedelta(minutes=5)
    RANG: ClassVar[dict[str, str]] = {"state": "done"}

    @pytest.mark.parametrize(
        ("effects", "owed"),
        [
            ({}, False),  # nobody rang: nothing rings
            ({"pending": RANG}, True),  # accepted never handled (watchers down or behind)
            ({"pending": RANG, "accepted": {"state": "done"}}, False),
            ({"pending": RANG, "accepted": {"state": "claimed", "leaseUntil": NOW + timedelta(seconds=5)}}, False),
            ({"pending": RANG, "accepted": {"state": "claimed", "leaseUntil": NOW - timedelta(seconds=5)}}, True),
            ({"pending": RANG, "accepted": {"state": "claimed"}}, True),  # a claim without a lease holds nothing
        ],
    )
    def test_table(self, effects: dict[str, Any], owed: bool) -> None:
        """Owed exactly when the ring went out and `accepted`'s effects are neither done nor held."""
        assert stop_owed({"effects": effects}, self.NOW) is owed

    def test_no_server_document(self) -> None:
        """A call the server never saw owes nothing."""
        assert stop_owed(None, self.NOW) is False

    def test_decided_with_the_ended_claim(self) -> None:
        """The ended claim carries the debt; an ended call whose accepted effects ran does not."""
        call = known_call(Status.ENDED)
        owing = {**server_doc("accepted"), "effects": {"pending": self.RANG}}
        decision = decide(CALL_ID, call, owing, None, self.NOW, CONFIG)
        assert isinstance(decision, Run) and (decision.status, decision.stop_owed) == ("ended", True)
        paid = {**server_doc("accepted"), "effects": {"pending": self.RANG, "accepted": {"state": "done"}}}
        decision = decide(CALL_ID, call, paid, None, self.NOW, CONFIG)
        assert isinstance(decision, Run) and decision.stop_owed is False

    async def rung_then_ended(
        self, accepted: Mapping[str, Any] | None, reached: tuple[str, ...] = ()
    ) -> tuple[FakeCallEffects, ScriptedNotifier]:
        """bob's three devices rang; the call was answered on the phone and ended before the reactor saw
        `accepted` (whose effects are `accepted` when given, with records of the devices `reached`); then
        the reactor handles it."""
        store = seeded_store(user={})
        notifier = ScriptedNotifier()
        reactor = make_reactor(store, notifier, three_devices(store.now))
        assert await reactor.handle("steady", "bob", group_hint="group1") is Claim.RUN
        answered, ended = T0 + timedelta(seconds=10), T0 + timedelta(seconds=40)
        moves = {"status": Status.ENDED.value, "answeredAt": answered, "endedAt": ended, "updatedAt": ended}
        store.apply("calls/steady", {**moves, "answeredOn": "phone"})
        record = {"platform": "ios", "result": "sent", "error": None, "at": T0}
        server = {f"pushes.`accepted`.`{device}`": record for device in reached}
        if accepted is not None:
            server["effects.`accepted`"] = dict(accepted)
        store.apply(f"{CALL_SERVER}/steady", server)
        notifier.targets.clear()
        notifier.sent.clear()
        assert await reactor.handle("steady", "bob") is Claim.RUN
        return store, notifier

    async def test_ended_sends_the_answered_elsewhere_notices(self) -> None:
        """The devices that rang, but the answering one, get `accepted`'s notice, recorded as `accepted`'s."""
        store, notifier = await self.rung_then_ended(None)
        assert sorted(t.device for t in notifier.targets) == ["pad", "tab"]
        assert {(kind, payload["status"]) for _, kind, payload in notifier.sent} == {("call_ended", "accepted")}
        server = store.docs[f"{CALL_SERVER}/steady"]
        assert sorted(server["pushes"]["accepted"]) == ["pad", "tab"]
        assert server["effects"]["ended"]["state"] == "done" and server["effectOpen"] is False
        assert store.docs["calls/steady"]["durationSec"] == 30
        stops = [e for e in store.events["steady"] if e.kind.value == "stop_ringing.sent"]
        assert sorted((str(e.detail["device"]), e.detail["status"]) for e in stops) == [
            ("pad", "accepted"),
            ("tab", "accepted"),
        ]

    async def test_a_dead_claimants_notices_are_not_sent_again(self) -> None:
        """`accepted`'s claimant notified the pad, then died: the ended claim notifies the tablet only."""
        lapsed = {"state": "claimed", "by": OTHER, "leaseUntil": T0}
        _, notifier = await self.rung_then_ended(lapsed, reached=("pad",))
        assert [t.device for t in notifier.targets] == ["tab"]

    async def test_handled_accepted_leaves_ended_silent(self) -> None:
        """`accepted` ran (its notices went out): ended pushes nothing more."""
        store, notifier = await self.rung_then_ended({"state": "done"})
        assert notifier.targets == []
        assert "accepted" not in store.docs[f"{CALL_SERVER}/steady"].get("pushes", {})

    async def test_a_live_accepted_claimant_is_left_to_it(self) -> None:
        """Another replica holds `accepted` and is still sending: ended does not send them as well."""
        live = {"state": "claimed", "by": OTHER, "leaseUntil": T0 + timedelta(hours=1)}
        _, notifier = await self.rung_then_ended(live)
        assert notifier.targets == []


class TestClaimRace:
    """A call that changes under every claim attempt raises ClaimRace; the worker logs it and carries on."""

    async def test_claim_race_raised(self) -> None:
        """Five reads, five failed guarded writes, then ClaimRace with a message (not a TypeError)."""
        store = seeded_store("busy")
        with pytest.raises(ClaimRace, match="call busy kept changing during 5 claim attempts"):
            await make_reactor(store).handle("busy")
        assert store.reads["calls/busy"] == 5
        assert f"{CALL_SERVER}/busy" not in store.docs and "channelName" not in store.docs["calls/busy"]

    async def test_worker_logs_and_carries_on(self) -> None:
        """The worker logs the race for that call and still handles the next one."""
        store = seeded_store("busy")
        notifier = FakeNotifier()
        watcher = Watcher(
            sweeps=FakeCallSweeps(),
            reactor=make_reactor(store, notifier),
            calls=CallTracker(),
            clock=FixedClock(store.now),
            config=WatcherConfig(sweep_interval_s=15.0),
            listen=FakeFeed,
            catch_up=FakeCatchUp(),
        )
        with capture_logs() as logs:
            watcher.submit("busy")
            watcher.submit("steady")
            for _ in range(200):
                await asyncio.sleep(0.01)
                if watcher.status()["inFlight"] == 0:
                    break
        failed = [e for e in logs if e["event"] == "call.handler_failed"]
        assert [e["call_id"] for e in failed] == ["busy"]
        assert [(uid, kind) for uid, kind, _ in notifier.sent] == [("bob", "incoming_call")]
        assert store.docs["calls/steady"]["pushSent"] is True
        assert watcher.status()["inFlight"] == 0
