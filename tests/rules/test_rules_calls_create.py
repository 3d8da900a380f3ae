"""Security rules: who may create a call document, and with what fields (calls.CREATE_* and field_errors)."""

from __future__ import annotations

from typing import Any

import pytest

from memharbor import calls
from memharbor.calls import Status
from memharbor.groups import group_document
from tests.rules.rules_support import (
    CALL_ID,
    CALL_PATH,
    CALLER,
    CLIENT_TIME,
    NAME_FIELDS,
    RECEIVER,
    TAMPERED,
    World,
    all_stamps,
    full_new_call,
    new_call,
)

STAMPS = ["createdAt", "updatedAt"]
EMOJI = "\U0001f600"  # one character, two UTF-16 code units


def create(world: World, fields: dict[str, Any], principal: str = "caller", call_id: str = CALL_ID) -> Any:
    return world.client(principal).create(f"calls/{call_id}", fields, server_time=STAMPS)


def seed_group_of(world: World, fields: dict[str, Any]) -> None:
    """Make the call's caller and receiver members of its group, so only the value under test decides."""
    group_id, members = fields.get("groupId"), [fields.get("callerId"), fields.get("receiverId")]
    if isinstance(group_id, str) and group_id and "/" not in group_id and all(isinstance(m, str) for m in members):
        world.seed(f"groups/{group_id}", group_document([str(m) for m in members]))


class TestCallCreate:
    """Who may create a call and which fields a new call may carry."""

    def test_minimal_call_allowed(self, world: World) -> None:
        """The caller may create a pending call with only the required fields."""
        assert create(world, new_call()).ok
        stored = world.stored(CALL_PATH)
        assert stored is not None and stored["status"] == Status.PENDING

    def test_full_call_allowed(self, world: World) -> None:
        """The caller may create a call carrying every optional field."""
        result = create(world, full_new_call())
        assert result.ok, result
        stored = world.stored(CALL_PATH)
        assert stored is not None and stored.keys() >= calls.CREATE_OPTIONAL

    def test_stamps_are_the_request_time(self, world: World) -> None:
        """A created call's createdAt and updatedAt are the same server time."""
        assert create(world, new_call()).ok
        stored = world.stored(CALL_PATH)
        assert stored is not None and stored["createdAt"] == stored["updatedAt"]
        assert stored["createdAt"] > CLIENT_TIME

    @pytest.mark.parametrize("principal", ["receiver", "stranger", "anonymous"])
    def test_only_the_caller_creates(self, world: World, principal: str) -> None:
        """Nobody but the user named as callerId may create the call."""
        assert create(world, new_call(), principal=principal).denied
        assert world.stored(CALL_PATH) is None

    def test_caller_must_be_the_user(self, world: World) -> None:
        """A user may not create a call in someone else's name, even naming themselves as receiver."""
        assert create(world, new_call(callerId=RECEIVER, receiverId=CALLER)).denied

    @pytest.mark.parametrize("status", [s for s in Status if s != Status.PENDING], ids=str)
    def test_status_must_be_pending(self, world: World, status: Status) -> None:
        """A new call starts in pending and nowhere else."""
        assert create(world, new_call(status=status.value)).denied

    def test_call_id_must_be_the_document_id(self, world: World) -> None:
        """The callId field must equal the document id."""
        assert create(world, new_call(callId="other-call")).denied

    def test_receiver_must_differ_from_caller(self, world: World) -> None:
        """Nobody calls themselves."""
        assert create(world, new_call(receiverId=CALLER)).denied

    @pytest.mark.parametrize("name", sorted(calls.SERVER_FIELDS))
    def test_server_fields_denied(self, world: World, name: str) -> None:
        """A client may not write any server-owned field when creating a call."""
        assert create(world, new_call(**{name: TAMPERED})).denied

    @pytest.mark.parametrize("name", sorted(calls.REVIEW_FIELDS))
    def test_review_fields_denied(self, world: World, name: str) -> None:
        """Review fields belong to ended calls, not to new ones."""
        assert create(world, new_call(**{name: "a review"})).denied

    @pytest.mark.parametrize("stamp", all_stamps())
    def test_transition_stamps_denied(self, world: World, stamp: str) -> None:
        """A new call carries no answer or end time, not even the request time."""
        result = world.client("caller").create(CALL_PATH, new_call(), server_time=[*STAMPS, stamp])
        assert result.denied

    def test_unknown_field_denied(self, world: World) -> None:
        """A field outside CREATE_REQUIRED and CREATE_OPTIONAL is refused."""
        assert create(world, new_call(favouriteColour="blue")).denied

    @pytest.mark.parametrize("name", sorted(calls.CREATE_REQUIRED - set(STAMPS)))
    def test_missing_required_field_denied(self, world: World, name: str) -> None:
        """Each required app-written field must be present."""
        fields = new_call()
        del fields[name]
        assert create(world, fields).denied

    @pytest.mark.parametrize("stamp", STAMPS)
    def test_missing_stamp_denied(self, world: World, stamp: str) -> None:
        """createdAt and updatedAt must both be written."""
        other = [s for s in STAMPS if s != stamp]
        assert world.client("caller").create(CALL_PATH, new_call(), server_time=other).denied

    @pytest.mark.parametrize("stamp", STAMPS)
    def test_client_chosen_stamp_denied(self, world: World, stamp: str) -> None:
        """A client-chosen createdAt or updatedAt is refused (so the two also differ)."""
        other = [s for s in STAMPS if s != stamp]
        fields = new_call(**{stamp: CLIENT_TIME})
        assert world.client("caller").create(CALL_PATH, fields, server_time=other).denied

    def test_both_stamps_client_chosen_denied(self, world: World) -> None:
        """Equal but client-chosen timestamps are refused too."""
        fields = new_call(createdAt=CLIENT_TIME, updatedAt=CLIENT_TIME)
        assert world.client("caller").create(CALL_PATH, fields).denied

    def test_existing_call_not_overwritten(self, world: World) -> None:
        """Writing a full call over an existing one is an update, which the rules refuse."""
        assert create(world, new_call()).ok
        result = world.client("caller").set(CALL_PATH, new_call(), server_time=STAMPS)
        assert result.denied


def _id_cases(field: str, limit: int) -> list[Any]:
    too_long = "x" * (limit + 1)
    return [
        pytest.param(field, "", id=f"{field}-empty"),
        pytest.param(field, "has space", id=f"{field}-space"),
        pytest.param(field, "dot.ted", id=f"{field}-dot"),
        pytest.param(field, "h\u00e9llo", id=f"{field}-accent"),
        pytest.param(field, too_long, id=f"{field}-{limit + 1}-chars"),
        pytest.param(field, 12345, id=f"{field}-int"),
    ]


BAD_VALUES = [
    *_id_cases("callerId", 128),
    *_id_cases("receiverId", 128),
    *_id_cases("groupId", 36),
    *[pytest.param(name, "n" * (calls.MAX_NAME_CHARS + 1), id=f"{name}-too-long") for name in NAME_FIELDS],
    *[pytest.param(name, EMOJI * (calls.MAX_NAME_CHARS + 1), id=f"{name}-emoji-too-long") for name in NAME_FIELDS],
    *[pytest.param(name, 7, id=f"{name}-int") for name in NAME_FIELDS],
    *[pytest.param(name, ["Alice"], id=f"{name}-list") for name in NAME_FIELDS],
    pytest.param("record", "true", id="record-string"),
    pytest.param("record", 1, id="record-int"),
    pytest.param("record", None, id="record-null"),
]

GOOD_VALUES = [
    pytest.param("callerId", "c" * 128, id="callerId-128-chars"),
    pytest.param("receiverId", "r" * 128, id="receiverId-128-chars"),
    pytest.param("receiverId", "Az09_-", id="receiverId-charset"),
    pytest.param("groupId", "g" * 36, id="groupId-36-chars"),
    *[pytest.param(name, "n" * calls.MAX_NAME_CHARS, id=f"{name}-max") for name in NAME_FIELDS],
    *[pytest.param(name, EMOJI * calls.MAX_NAME_CHARS, id=f"{name}-emoji-max") for name in NAME_FIELDS],
    *[pytest.param(name, "\uae40\ud560\uba38\ub2c8", id=f"{name}-hangul") for name in NAME_FIELDS],
    *[pytest.param(name, None, id=f"{name}-null") for name in NAME_FIELDS],
    pytest.param("record", False, id="record-false"),
]


class TestCallCreateValues:
    """The type and length checks of calls.field_errors, applied by the rules to new calls."""

    @pytest.mark.parametrize(("name", "value"), BAD_VALUES)
    def test_bad_value_denied(self, world: World, name: str, value: Any) -> None:
        """A value calls.field_errors rejects is refused by the rules as well."""
        fields = new_call(**{name: value})
        assert calls.field_errors(fields), "calls.field_errors accepts the value this case calls bad"
        seed_group_of(world, fields)
        principal = value if name == "callerId" and isinstance(value, str) and value else "caller"
        assert create(world, fields, principal=principal).denied

    @pytest.mark.parametrize(("name", "value"), GOOD_VALUES)
    def test_good_value_allowed(self, world: World, name: str, value: Any) -> None:
        """A value calls.field_errors accepts (including the limits themselves) is allowed."""
        fields = new_call(**{name: value})
        assert calls.field_errors(fields) == []
        seed_group_of(world, fields)
        principal = value if name == "callerId" else "caller"
        result = create(world, fields, principal=principal)
        assert result.ok, result

    @pytest.mark.parametrize(
        "call_id",
        [
            pytest.param("c" * 128, id="128-chars"),
            pytest.param("c" * 129, id="129-chars"),
            pytest.param("has space", id="space"),
            pytest.param("a.b", id="dot"),
            pytest.param("\u00fcber", id="umlaut"),
        ],
    )
    def test_call_id_pattern(self, world: World, call_id: str) -> None:
        """The document id (= callId) must match calls.ID_PATTERN."""
        fields = new_call(call_id)
        expected_ok = not calls.field_errors(fields)
        result = create(world, fields, call_id=call_id)
        assert result.ok if expected_ok else result.denied, result

    @pytest.mark.parametrize("name", ["callerId", "receiverId", "groupId"])
    def test_trailing_newline_id_denied(self, world: World, name: str) -> None:
        """An id with a trailing newline is refused (the rules' regular expressions match whole strings)."""
        value = "abc\n"
        principal = value if name == "callerId" else "caller"
        assert create(world, new_call(**{name: value}), principal=principal).denied
