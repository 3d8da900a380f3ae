"""Security rules: recordings/{sid}, requested, read and stopped by the participants of a call."""

from __future__ import annotations

from typing import Any

import pytest

from memharbor import calls
from memharbor.calls import Status
from tests.rules.rules_support import (
    CALL_ID,
    CALLER,
    CLIENT_TIME,
    PRINCIPALS,
    RECEIVER,
    STRANGER,
    TAMPERED,
    World,
    actor_of,
    recording_request,
    stored_recording,
)

REC_PATH = "recordings/rec-1"
LEGACY_PATH = "recordings/legacy-1"
PARTICIPANTS = [p for p in PRINCIPALS if actor_of(p) is not None]
OUTSIDERS = [p for p in PRINCIPALS if actor_of(p) is None]
UIDS = {"caller": CALLER, "receiver": RECEIVER}
STOP = calls.RECORDING_STOP_FIELD


def request_recording(world: World, principal: str, fields: dict[str, Any], stamp: bool = True) -> Any:
    return world.client(principal).create(REC_PATH, fields, server_time=["createdAt"] if stamp else [])


def legacy_recording(**extra: Any) -> dict[str, Any]:
    """A recording of a legacy channel: no callId, the two users named by the server."""
    return {"channel": "g1_u1_u2", "status": "stopped", "user1": CALLER, "user2": RECEIVER} | extra


class TestRecordingCreate:
    """A participant requests a recording of their live call, with the request fields only."""

    @pytest.mark.parametrize("status", sorted(calls.ACTIVE), ids=str)
    @pytest.mark.parametrize("principal", PARTICIPANTS)
    def test_participant_requests(self, world: World, principal: str, status: Status) -> None:
        """Caller and receiver may request a recording while the call is pending or accepted."""
        world.seed_call(status)
        result = request_recording(world, principal, recording_request(UIDS[principal]))
        assert result.ok, result
        stored = world.stored(REC_PATH)
        assert stored is not None and stored["status"] == "requested" and stored["requestedBy"] == UIDS[principal]

    @pytest.mark.parametrize("status", sorted(set(Status) - calls.ACTIVE), ids=str)
    def test_finished_call_denied(self, world: World, status: Status) -> None:
        """A call that can no longer be joined cannot be recorded."""
        world.seed_call(status)
        assert request_recording(world, "caller", recording_request()).denied

    @pytest.mark.parametrize("principal", OUTSIDERS)
    def test_outsiders_denied(self, world: World, principal: str) -> None:
        """A stranger (naming themselves) or an anonymous user may not request a recording."""
        world.seed_call(Status.ACCEPTED)
        assert request_recording(world, principal, recording_request(STRANGER)).denied

    def test_requested_by_someone_else_denied(self, world: World) -> None:
        """requestedBy must be the requesting user."""
        world.seed_call(Status.ACCEPTED)
        assert request_recording(world, "caller", recording_request(RECEIVER)).denied

    def test_channel_must_be_the_calls(self, world: World) -> None:
        """The channel must be the one the server assigned to the call."""
        world.seed_call(Status.ACCEPTED)
        assert request_recording(world, "caller", recording_request(channel="someone_elses_channel")).denied

    def test_call_without_channel_denied(self, world: World) -> None:
        """Before the server has assigned a channel there is nothing to record."""
        world.seed_call(Status.PENDING)
        world.owner.update("calls/call-1", {}, delete=["channelName"])
        assert request_recording(world, "caller", recording_request()).denied

    @pytest.mark.parametrize("status", ["recording", "stopping", "stopped", "failed", ""])
    def test_status_must_be_requested(self, world: World, status: str) -> None:
        """A client only ever creates a request, never a session in a later state."""
        world.seed_call(Status.ACCEPTED)
        assert request_recording(world, "caller", recording_request(status=status)).denied

    def test_client_chosen_created_at_denied(self, world: World) -> None:
        """createdAt must be the request time."""
        world.seed_call(Status.ACCEPTED)
        fields = recording_request(createdAt=CLIENT_TIME)
        assert request_recording(world, "caller", fields, stamp=False).denied

    @pytest.mark.parametrize("name", sorted(calls.RECORDING_REQUEST_FIELDS))
    def test_missing_field_denied(self, world: World, name: str) -> None:
        """Every request field is required (so clients cannot create legacy, call-less sessions)."""
        world.seed_call(Status.ACCEPTED)
        fields = recording_request()
        fields.pop(name, None)
        assert request_recording(world, "caller", fields, stamp=name != "createdAt").denied

    @pytest.mark.parametrize("name", sorted(calls.RECORDING_SERVER_FIELDS | {STOP, "unknownField"}))
    def test_extra_field_denied(self, world: World, name: str) -> None:
        """Server-owned fields, stopRequested and unknown fields are refused in a request."""
        world.seed_call(Status.ACCEPTED)
        assert request_recording(world, "caller", recording_request(**{name: TAMPERED})).denied

    @pytest.mark.parametrize("call_id", ["no-such-call", "a b", "../users/alice-uid", "", 7])
    def test_unknown_or_malformed_call_denied(self, world: World, call_id: Any) -> None:
        """The named call must exist and its id must match calls.ID_PATTERN."""
        world.seed_call(Status.ACCEPTED)
        assert request_recording(world, "caller", recording_request(callId=call_id)).denied

    def test_call_session_id_must_name_its_call(self, world: World) -> None:
        """`call-{id}` is reserved for that call: a participant of another call cannot squat it."""
        world.seed_call(Status.ACCEPTED)
        world.seed_call(Status.ACCEPTED, call_id="victim-call", callerId="x-uid", receiverId="y-uid")
        caller = world.client("caller")
        squat = caller.create("recordings/call-victim-call", recording_request(), server_time=["createdAt"])
        assert squat.denied
        assert world.stored("recordings/call-victim-call") is None
        own = caller.create(f"recordings/call-{CALL_ID}", recording_request(), server_time=["createdAt"])
        assert own.ok, own

    def test_existing_session_not_overwritten(self, world: World) -> None:
        """A participant cannot reset a running session by writing a new request over it."""
        world.seed_call(Status.ACCEPTED)
        world.seed(REC_PATH, stored_recording())
        result = world.client("caller").set(REC_PATH, recording_request(), server_time=["createdAt"])
        assert result.denied


class TestRecordingRead:
    """Participants of the call, or the users of a legacy recording, read a recording."""

    @pytest.mark.parametrize("principal", PRINCIPALS)
    def test_get_call_recording(self, world: World, principal: str) -> None:
        """The call's participants may read its recording; nobody else may."""
        world.seed_call(Status.ENDED)
        world.seed(REC_PATH, stored_recording(status="stopped"))
        result = world.client(principal).get(REC_PATH)
        if principal in PARTICIPANTS:
            assert result.ok and result.data["status"] == "stopped", result
        else:
            assert result.denied, result

    @pytest.mark.parametrize("principal", PRINCIPALS)
    def test_get_legacy_recording(self, world: World, principal: str) -> None:
        """user1 and user2 of a call-less recording may read it; nobody else may."""
        world.seed(LEGACY_PATH, legacy_recording())
        result = world.client(principal).get(LEGACY_PATH)
        assert result.ok if principal in PARTICIPANTS else result.denied, result

    def test_recording_of_missing_call_denied(self, world: World) -> None:
        """A recording naming a call that does not exist is readable by nobody but the server."""
        world.seed(REC_PATH, stored_recording(call_id="gone"))
        assert world.client("caller").get(REC_PATH).denied

    @pytest.mark.parametrize("principal", PARTICIPANTS)
    def test_query_by_call_allowed(self, world: World, principal: str) -> None:
        """A participant may query the recordings of their call."""
        world.seed_call(Status.ACCEPTED)
        world.seed(REC_PATH, stored_recording())
        result = world.client(principal).query("recordings", [("callId", "==", "call-1")])
        assert result.ok, result
        assert len(result.documents) == 1

    def test_query_by_call_stranger_denied(self, world: World) -> None:
        """A stranger may not query the recordings of someone else's call."""
        world.seed_call(Status.ACCEPTED)
        world.seed(REC_PATH, stored_recording())
        assert world.client("stranger").query("recordings", [("callId", "==", "call-1")]).denied

    @pytest.mark.parametrize(("principal", "field"), [("caller", "user1"), ("receiver", "user2")])
    def test_query_legacy_by_user_allowed(self, world: World, principal: str, field: str) -> None:
        """A user may query the legacy recordings that name them."""
        world.seed(LEGACY_PATH, legacy_recording())
        result = world.client(principal).query("recordings", [(field, "==", UIDS[principal])])
        assert result.ok, result
        assert len(result.documents) == 1

    @pytest.mark.parametrize("principal", PRINCIPALS)
    def test_unconstrained_query_denied(self, world: World, principal: str) -> None:
        """Nobody may list all recordings."""
        world.seed(LEGACY_PATH, legacy_recording())
        assert world.client(principal).query("recordings").denied
        assert world.client(principal).query("recordings", [("status", "==", "stopped")]).denied


class TestRecordingUpdate:
    """A participant may only ask the recorder to stop; nobody deletes a recording."""

    @pytest.mark.parametrize("principal", PARTICIPANTS)
    def test_stop_request_allowed(self, world: World, principal: str) -> None:
        """Either participant may set stopRequested to true."""
        world.seed_call(Status.ACCEPTED)
        world.seed(REC_PATH, stored_recording())
        assert world.client(principal).update(REC_PATH, {STOP: True}).ok
        stored = world.stored(REC_PATH)
        assert stored is not None and stored[STOP] is True

    @pytest.mark.parametrize("principal", PARTICIPANTS)
    def test_legacy_stop_request_allowed(self, world: World, principal: str) -> None:
        """user1 and user2 of a legacy recording may ask it to stop."""
        world.seed(LEGACY_PATH, legacy_recording(status="recording"))
        assert world.client(principal).update(LEGACY_PATH, {STOP: True}).ok

    @pytest.mark.parametrize("principal", OUTSIDERS)
    def test_outsiders_denied(self, world: World, principal: str) -> None:
        """Strangers and anonymous users may not stop a recording."""
        world.seed_call(Status.ACCEPTED)
        world.seed(REC_PATH, stored_recording())
        world.seed(LEGACY_PATH, legacy_recording(status="recording"))
        assert world.client(principal).update(REC_PATH, {STOP: True}).denied
        assert world.client(principal).update(LEGACY_PATH, {STOP: True}).denied

    @pytest.mark.parametrize("value", [False, None, "true", 1])
    def test_stop_value_must_be_true(self, world: World, value: Any) -> None:
        """stopRequested may only be set to true."""
        world.seed_call(Status.ACCEPTED)
        world.seed(REC_PATH, stored_recording())
        assert world.client("caller").update(REC_PATH, {STOP: value}).denied

    def test_stop_request_cannot_be_withdrawn(self, world: World) -> None:
        """Removing a stop request is refused."""
        world.seed_call(Status.ACCEPTED)
        world.seed(REC_PATH, stored_recording(**{STOP: True}))
        assert world.client("caller").update(REC_PATH, {}, delete=[STOP]).denied

    @pytest.mark.parametrize("name", sorted(calls.RECORDING_SERVER_FIELDS | calls.RECORDING_REQUEST_FIELDS | {"x"}))
    def test_other_field_denied(self, world: World, name: str) -> None:
        """Any other field, alone or beside stopRequested, is refused."""
        world.seed_call(Status.ACCEPTED)
        world.seed(REC_PATH, stored_recording())
        assert world.client("caller").update(REC_PATH, {name: TAMPERED}).denied
        assert world.client("caller").update(REC_PATH, {STOP: True, name: TAMPERED}).denied

    @pytest.mark.parametrize("principal", PRINCIPALS)
    def test_delete_denied(self, world: World, principal: str) -> None:
        """Nobody deletes a recording, call-based or legacy."""
        world.seed_call(Status.ENDED)
        world.seed(REC_PATH, stored_recording())
        world.seed(LEGACY_PATH, legacy_recording())
        assert world.client(principal).delete(REC_PATH).denied
        assert world.client(principal).delete(LEGACY_PATH).denied
        assert world.stored(REC_PATH) is not None and world.stored(LEGACY_PATH) is not None
