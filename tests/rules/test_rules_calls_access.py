"""Security rules: reading calls, deleting them, and the review fields participants write after `ended`."""

from __future__ import annotations

from typing import Any

import pytest

from memharbor import calls
from memharbor.calls import Status
from tests.rules.rules_support import (
    CALL_PATH,
    CALLER,
    CHANNEL,
    CLIENT_TIME,
    GROUP_ID,
    PRINCIPALS,
    RECEIVER,
    STRANGER,
    TAMPERED,
    World,
    actor_of,
)

PARTICIPANTS = [p for p in PRINCIPALS if actor_of(p) is not None]
OUTSIDERS = [p for p in PRINCIPALS if actor_of(p) is None]
EMOJI = "\U0001f600"


class TestCallReads:
    """Only participants read a call, and a query must be limited to the user's own calls."""

    @pytest.mark.parametrize("principal", PRINCIPALS)
    @pytest.mark.parametrize("status", list(Status), ids=str)
    def test_get(self, world: World, principal: str, status: Status) -> None:
        """The caller and the receiver may read the call in any status; nobody else may."""
        world.seed_call(status)
        result = world.client(principal).get(CALL_PATH)
        if principal in PARTICIPANTS:
            assert result.ok, result
            assert result.data["status"] == status
        else:
            assert result.denied, result

    @pytest.mark.parametrize("principal", PRINCIPALS)
    def test_get_missing_call(self, world: World, principal: str) -> None:
        """A call that does not exist reads as missing for any signed-in user (apps listen before the
        create lands), and is refused without sign-in."""
        result = world.client(principal).get("calls/no-such-call")
        if principal == "anonymous":
            assert result.denied, result
        else:
            assert result.status == 404, result

    @pytest.mark.parametrize(("principal", "field"), [("caller", "callerId"), ("receiver", "receiverId")])
    def test_query_own_calls_allowed(self, world: World, principal: str, field: str) -> None:
        """A participant may query the calls that name them, and gets exactly those."""
        world.seed_call(Status.ACCEPTED)
        world.seed_call(Status.PENDING, call_id="call-2", callerId=STRANGER, receiverId="someone-else")
        uid = CALLER if principal == "caller" else RECEIVER
        result = world.client(principal).query("calls", [(field, "==", uid)])
        assert result.ok, result
        assert [doc["callId"] for doc in result.documents] == ["call-1"]

    def test_query_own_calls_with_more_filters_allowed(self, world: World) -> None:
        """A query limited to the user may filter further (here on status)."""
        world.seed_call(Status.PENDING)
        result = world.client("receiver").query("calls", [("receiverId", "==", RECEIVER), ("status", "==", "pending")])
        assert result.ok, result
        assert len(result.documents) == 1

    def test_query_with_no_own_calls_allowed(self, world: World) -> None:
        """A stranger's query for their own calls is allowed and finds none of ours."""
        world.seed_call(Status.PENDING)
        result = world.client("stranger").query("calls", [("callerId", "==", STRANGER)])
        assert result.ok, result
        assert result.documents == []

    @pytest.mark.parametrize("principal", PRINCIPALS)
    def test_unconstrained_query_denied(self, world: World, principal: str) -> None:
        """A query over all calls is refused for everyone."""
        world.seed_call(Status.PENDING)
        assert world.client(principal).query("calls").denied
        assert world.client(principal).list("calls").denied

    @pytest.mark.parametrize(
        ("principal", "where"),
        [
            pytest.param("stranger", ("callerId", "==", CALLER), id="someone-elses-calls"),
            pytest.param("caller", ("receiverId", "==", RECEIVER), id="other-side-of-own-call"),
            pytest.param("caller", ("groupId", "==", GROUP_ID), id="by-group"),
            pytest.param("stranger", ("channelName", "==", CHANNEL), id="by-channel"),
            pytest.param("anonymous", ("callerId", "==", CALLER), id="anonymous"),
        ],
    )
    def test_query_not_limited_to_user_denied(self, world: World, principal: str, where: tuple[str, str, Any]) -> None:
        """A query not limited to the requesting user is refused, even when it would match their calls."""
        world.seed_call(Status.PENDING)
        assert world.client(principal).query("calls", [where]).denied


class TestCallDelete:
    """Nobody deletes a call."""

    @pytest.mark.parametrize("principal", PRINCIPALS)
    @pytest.mark.parametrize("status", list(Status), ids=str)
    def test_delete_denied(self, world: World, principal: str, status: Status) -> None:
        """A delete is refused for every principal in every status, and the call stays."""
        world.seed_call(status)
        assert world.client(principal).delete(CALL_PATH).denied
        assert world.stored(CALL_PATH) is not None


def review_update(world: World, principal: str, fields: dict[str, Any], **kwargs: Any) -> Any:
    """A review write as the contract asks for it: the fields, and updatedAt stamped with the request time."""
    kwargs.setdefault("server_time", ["updatedAt"])
    return world.client(principal).update(CALL_PATH, fields, **kwargs)


REVIEW_SAMPLES: dict[str, Any] = {
    "humanSummary": "Talked about the garden.",
    "humanKeywords": ["garden", "tomatoes"],
    "humanNotes": "Call again on Sunday.",
}
_SUMMARY = calls.MAX_SUMMARY_CHARS
_KW_N, _KW_CHARS = calls.MAX_KEYWORDS, calls.MAX_KEYWORD_CHARS
GOOD_REVIEWS = [
    pytest.param({"humanSummary": "s" * _SUMMARY}, id="summary-max"),
    pytest.param({"humanSummary": EMOJI * _SUMMARY}, id="summary-emoji-max"),
    pytest.param({"humanNotes": "n" * _SUMMARY}, id="notes-max"),
    pytest.param({"humanSummary": None, "humanNotes": None}, id="text-null"),
    pytest.param({"humanKeywords": ["k" * _KW_CHARS] * _KW_N}, id="keywords-max"),
    pytest.param({"humanKeywords": [EMOJI * _KW_CHARS] * _KW_N}, id="keywords-emoji-max"),
    pytest.param({"humanKeywords": ["", "line\nbreak", "\ud55c\uad6d\uc5b4"]}, id="keywords-odd-strings"),
    pytest.param({"humanKeywords": []}, id="keywords-empty"),
    pytest.param({"humanKeywords": None}, id="keywords-null"),
]
BAD_REVIEWS = [
    pytest.param({"humanSummary": "s" * (_SUMMARY + 1)}, id="summary-too-long"),
    pytest.param({"humanSummary": EMOJI * (_SUMMARY + 1)}, id="summary-emoji-too-long"),
    pytest.param({"humanNotes": "n" * (_SUMMARY + 1)}, id="notes-too-long"),
    pytest.param({"humanSummary": 42}, id="summary-int"),
    pytest.param({"humanNotes": ["a"]}, id="notes-list"),
    pytest.param({"humanKeywords": ["k"] * (_KW_N + 1)}, id="keywords-too-many"),
    pytest.param({"humanKeywords": ["k" * (_KW_CHARS + 1)]}, id="keyword-first-too-long"),
    pytest.param({"humanKeywords": ["k"] * (_KW_N - 1) + ["k" * (_KW_CHARS + 1)]}, id="keyword-last-too-long"),
    pytest.param({"humanKeywords": ["k", "k" * (_KW_CHARS + 1), "k"]}, id="keyword-middle-too-long"),
    pytest.param({"humanKeywords": [EMOJI * (_KW_CHARS + 1)]}, id="keyword-emoji-too-long"),
    pytest.param({"humanKeywords": [7]}, id="keyword-first-int"),
    pytest.param({"humanKeywords": ["k"] * (_KW_N - 1) + [None]}, id="keyword-last-null"),
    pytest.param({"humanKeywords": ["k", True, "k"]}, id="keyword-middle-bool"),
    pytest.param({"humanKeywords": [{"a": "b"}]}, id="keyword-map"),
    pytest.param({"humanKeywords": "garden"}, id="keywords-string"),
]


class TestCallReview:
    """After `ended`, participants write only humanSummary, humanKeywords and humanNotes."""

    @pytest.mark.parametrize("name", sorted(calls.REVIEW_FIELDS))
    @pytest.mark.parametrize("principal", PARTICIPANTS)
    def test_each_review_field_allowed(self, world: World, principal: str, name: str) -> None:
        """Either participant may write each review field of an ended call."""
        world.seed_call(Status.ENDED)
        result = review_update(world, principal, {name: REVIEW_SAMPLES[name]})
        assert result.ok, result
        stored = world.stored(CALL_PATH)
        assert stored is not None and stored[name] == REVIEW_SAMPLES[name]
        assert stored["status"] == Status.ENDED

    def test_samples_cover_review_fields(self) -> None:
        """Every review field of calls.REVIEW_FIELDS has a sample value here."""
        assert set(REVIEW_SAMPLES) == calls.REVIEW_FIELDS

    def test_all_review_fields_together_allowed(self, world: World) -> None:
        """All review fields may be written at once, and rewritten later."""
        world.seed_call(Status.ENDED)
        assert review_update(world, "caller", REVIEW_SAMPLES).ok
        assert review_update(world, "receiver", {"humanSummary": "Edited."}).ok
        stored = world.stored(CALL_PATH)
        assert stored is not None and stored["humanSummary"] == "Edited."

    def test_clearing_a_review_field_allowed(self, world: World) -> None:
        """A participant may remove a review field they wrote."""
        world.seed_call(Status.ENDED, humanNotes="old")
        assert review_update(world, "caller", {}, delete=["humanNotes"]).ok
        stored = world.stored(CALL_PATH)
        assert stored is not None and "humanNotes" not in stored

    @pytest.mark.parametrize("principal", OUTSIDERS)
    def test_outsiders_denied(self, world: World, principal: str) -> None:
        """Strangers and anonymous users may not write a review."""
        world.seed_call(Status.ENDED)
        assert review_update(world, principal, REVIEW_SAMPLES).denied

    @pytest.mark.parametrize("status", [s for s in Status if s != Status.ENDED], ids=str)
    @pytest.mark.parametrize("principal", PARTICIPANTS)
    def test_before_ended_denied(self, world: World, principal: str, status: Status) -> None:
        """Review fields may not be written while the call has not ended (or never connected)."""
        world.seed_call(status)
        for name, value in REVIEW_SAMPLES.items():
            assert review_update(world, principal, {name: value}).denied

    @pytest.mark.parametrize(
        "other",
        sorted(
            (calls.SERVER_FIELDS | calls.CREATE_REQUIRED | calls.CREATE_OPTIONAL | {"endedAt", "x"})
            - {"status", "updatedAt"}
        ),
    )
    def test_other_field_with_review_denied(self, world: World, other: str) -> None:
        """A review write that touches any other field is refused."""
        world.seed_call(Status.ENDED)
        assert review_update(world, "caller", {"humanSummary": "ok", other: TAMPERED}).denied

    @pytest.mark.parametrize("status", [s for s in Status if s != Status.ENDED], ids=str)
    def test_status_change_with_review_denied(self, world: World, status: Status) -> None:
        """A review write may not change the status of the ended call."""
        world.seed_call(Status.ENDED)
        result = review_update(world, "caller", {"humanSummary": "ok", "status": status.value})
        assert result.denied

    def test_review_without_updated_at_denied(self, world: World) -> None:
        """A review write that leaves updatedAt alone is refused: the watcher finds reviews by that stamp."""
        world.seed_call(Status.ENDED)
        assert review_update(world, "caller", {"humanSummary": "ok"}, server_time=[]).denied
        stored = world.stored(CALL_PATH)
        assert stored is not None and "humanSummary" not in stored

    def test_review_with_client_updated_at_denied(self, world: World) -> None:
        """updatedAt in a review write must be the request time, not a client clock value."""
        world.seed_call(Status.ENDED)
        assert review_update(world, "caller", {"humanSummary": "ok", "updatedAt": CLIENT_TIME}, server_time=[]).denied

    def test_review_stamps_updated_at(self, world: World) -> None:
        """An allowed review write moves updatedAt past endedAt (the request time)."""
        world.seed_call(Status.ENDED)
        assert review_update(world, "receiver", {"humanNotes": "Call again."}).ok
        stored = world.stored(CALL_PATH)
        assert stored is not None and stored["updatedAt"] > stored["endedAt"]

    @pytest.mark.parametrize("fields", GOOD_REVIEWS)
    def test_good_values_allowed(self, world: World, fields: dict[str, Any]) -> None:
        """Values calls.review_errors accepts, including the limits themselves, are allowed."""
        assert calls.review_errors(fields) == []
        world.seed_call(Status.ENDED)
        result = review_update(world, "receiver", fields)
        assert result.ok, result

    @pytest.mark.parametrize("fields", BAD_REVIEWS)
    def test_bad_values_denied(self, world: World, fields: dict[str, Any]) -> None:
        """Values calls.review_errors rejects are refused by the rules as well."""
        assert calls.review_errors(fields), "calls.review_errors accepts the value this case calls bad"
        world.seed_call(Status.ENDED)
        assert review_update(world, "receiver", fields).denied

    def test_nested_list_keyword_refused(self, world: World) -> None:
        """A list inside humanKeywords never reaches the rules: Firestore refuses arrays in arrays."""
        world.seed_call(Status.ENDED)
        result = review_update(world, "caller", {"humanKeywords": [["nested"]]})
        assert result.status == 400 and result.error_status == "INVALID_ARGUMENT", result
        stored = world.stored(CALL_PATH)
        assert stored is not None and "humanKeywords" not in stored

    def test_keyword_with_unit_separator_denied(self, world: World) -> None:
        """A keyword containing U+001F is refused (the rules use that character to check keyword lengths)."""
        world.seed_call(Status.ENDED)
        assert review_update(world, "caller", {"humanKeywords": ["a\x1fb"]}).denied
