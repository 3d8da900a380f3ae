"""Security rules: status changes by apps, generated from calls.Status and calls.TRANSITIONS."""

from __future__ import annotations

from typing import Any

import pytest

from memharbor import calls
from memharbor.calls import Status, Transition
from tests.rules.rules_support import (
    CALL_PATH,
    CLIENT_TIME,
    PRINCIPALS,
    STRANGER,
    TAMPERED,
    World,
    all_stamps,
    client_moves,
    move_id,
    permitted,
)

CELLS = [
    pytest.param(principal, source, target, id=f"{principal}:{source.value}->{target.value}")
    for principal in PRINCIPALS
    for source in Status
    for target in Status
]
MOVES = [pytest.param(move, principal, id=f"{principal}:{move_id(move)}") for move, principal in client_moves()]
# Fields that must not change along with a status move: every known field, and an unknown one, except
# the move's own fields (status, its stamp, updatedAt).
_ALL_FIELDS = calls.SERVER_FIELDS | calls.REVIEW_FIELDS | calls.CREATE_REQUIRED | calls.CREATE_OPTIONAL
EXTRAS = [
    pytest.param(move, principal, extra, id=f"{principal}:{move_id(move)}+{extra}")
    for move, principal in client_moves()
    for extra in sorted(_ALL_FIELDS | {"unknownField"} | {t.stamp for t in calls.TRANSITIONS})
    if extra not in move.fields
]


def move_call(world: World, principal: str, target: Status, stamps: list[str], **fields: Any) -> Any:
    """`principal` writes status = target, with `stamps` set to the request time, plus `fields`."""
    return world.client(principal).update(CALL_PATH, {"status": target.value, **fields}, server_time=stamps)


class TestTransitionMatrix:
    """Every principal x from-status x to-status cell, allowed exactly when a TRANSITIONS row permits it."""

    def test_matrix_covers_every_status_and_principal(self) -> None:
        """The generated matrix has a cell for each principal and each pair of statuses."""
        assert len(CELLS) == len(PRINCIPALS) * len(Status) ** 2
        assert sum(1 for p in PRINCIPALS for s in Status for t in Status if permitted(p, s, t)) == len(MOVES)

    @pytest.mark.parametrize(("principal", "source", "target"), CELLS)
    def test_cell(self, world: World, principal: str, source: Status, target: Status) -> None:
        """A status change with well-formed stamps is allowed iff the actor may make that move."""
        world.seed_call(source)
        move = permitted(principal, source, target)
        # A refused cell is tried with every stamp, so the refusal is not merely about the stamp's name.
        for stamp in [move.stamp] if move else all_stamps():
            result = move_call(world, principal, target, [stamp, "updatedAt"])
            if move:
                assert result.ok, result
            else:
                assert result.denied, (stamp, result)
        stored = world.stored(CALL_PATH)
        assert stored is not None
        assert stored["status"] == (target if move else source)


class TestTransitionWrites:
    """The shape of a permitted move: exactly status, its stamp and updatedAt, both at the request time."""

    @pytest.mark.parametrize(("move", "principal"), MOVES)
    def test_well_formed_move_stamps_request_time(self, world: World, move: Transition, principal: str) -> None:
        """A permitted move stores the request time in its stamp and in updatedAt."""
        world.seed_call(move.source)
        assert move_call(world, principal, move.target, [move.stamp, "updatedAt"]).ok
        stored = world.stored(CALL_PATH)
        assert stored is not None and stored[move.stamp] == stored["updatedAt"] > CLIENT_TIME

    @pytest.mark.parametrize(("move", "principal"), MOVES)
    def test_client_chosen_stamp_denied(self, world: World, move: Transition, principal: str) -> None:
        """The move's stamp must be the request time, not a client clock."""
        world.seed_call(move.source)
        assert move_call(world, principal, move.target, ["updatedAt"], **{move.stamp: CLIENT_TIME}).denied

    @pytest.mark.parametrize(("move", "principal"), MOVES)
    def test_client_chosen_updated_at_denied(self, world: World, move: Transition, principal: str) -> None:
        """updatedAt must be the request time, not a client clock."""
        world.seed_call(move.source)
        assert move_call(world, principal, move.target, [move.stamp], updatedAt=CLIENT_TIME).denied

    @pytest.mark.parametrize(("move", "principal"), MOVES)
    def test_missing_stamp_denied(self, world: World, move: Transition, principal: str) -> None:
        """A move without its stamp is refused."""
        world.seed_call(move.source)
        assert move_call(world, principal, move.target, ["updatedAt"]).denied

    @pytest.mark.parametrize(("move", "principal"), MOVES)
    def test_missing_updated_at_denied(self, world: World, move: Transition, principal: str) -> None:
        """A move without updatedAt is refused."""
        world.seed_call(move.source)
        assert move_call(world, principal, move.target, [move.stamp]).denied

    @pytest.mark.parametrize(("move", "principal"), MOVES)
    def test_other_stamp_denied(self, world: World, move: Transition, principal: str) -> None:
        """Another transition's stamp, instead of or besides the right one, is refused."""
        world.seed_call(move.source)
        for other in (s for s in all_stamps() if s != move.stamp):
            assert move_call(world, principal, move.target, [other, "updatedAt"]).denied
            assert move_call(world, principal, move.target, [move.stamp, other, "updatedAt"]).denied

    @pytest.mark.parametrize(("move", "principal", "extra"), EXTRAS)
    def test_extra_field_denied(self, world: World, move: Transition, principal: str, extra: str) -> None:
        """Any field besides status, the stamp and updatedAt makes the move fail."""
        world.seed_call(move.source)
        result = move_call(world, principal, move.target, [move.stamp, "updatedAt"], **{extra: TAMPERED})
        assert result.denied

    @pytest.mark.parametrize(("move", "principal"), MOVES)
    def test_removing_a_field_denied(self, world: World, move: Transition, principal: str) -> None:
        """A move that also deletes a stored field (here the server's channelName) is refused."""
        world.seed_call(move.source)
        result = world.client(principal).update(
            CALL_PATH, {"status": move.target.value}, server_time=[move.stamp, "updatedAt"], delete=["channelName"]
        )
        assert result.denied

    @pytest.mark.parametrize(("move", "principal"), MOVES)
    def test_participant_swap_denied(self, world: World, move: Transition, principal: str) -> None:
        """A participant may not hand their place in the call to someone else while moving it."""
        world.seed_call(move.source)
        field = "callerId" if principal == "caller" else "receiverId"
        result = move_call(world, principal, move.target, [move.stamp, "updatedAt"], **{field: STRANGER})
        assert result.denied
