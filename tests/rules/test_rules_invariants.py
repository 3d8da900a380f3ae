"""The watcher's invariants (memharbor.calls.invariant_errors) hold for every call apps can make under the rules.

The watcher flags any call that breaks them as a violation, so a document the rules allow and the
invariants refuse would make an honest app's call fail: these tests walk every status through the rules.
"""

from __future__ import annotations

import pytest

from memharbor import calls
from memharbor.calls import Actor, Status
from tests.rules.rules_support import CALL_ID, CALL_PATH, World, full_new_call

_PRINCIPAL = {Actor.CALLER: "caller", Actor.RECEIVER: "receiver"}


def make_through_rules(world: World, status: Status) -> dict[str, object]:
    """Create the call as its caller and move it to `status` along its path, each write through the rules."""
    created = world.client("caller").create(CALL_PATH, full_new_call(), server_time=["createdAt", "updatedAt"])
    assert created.ok, created
    for move in calls.path_to(status):
        principal = next(_PRINCIPAL[a] for a in sorted(move.actors) if a in _PRINCIPAL)
        result = world.client(principal).update(
            CALL_PATH, {"status": move.target.value}, server_time=[move.stamp, "updatedAt"]
        )
        assert result.ok, (move, result)
    stored = world.stored(CALL_PATH)
    assert stored is not None
    return stored


class TestInvariantsUnderRules:
    """Calls made by apps within the rules satisfy the invariants the watcher judges them by."""

    @pytest.mark.parametrize("status", list(Status), ids=str)
    def test_every_status_reached_by_apps_is_valid(self, world: World, status: Status) -> None:
        """The call an app's writes leave in each status breaks no invariant and holds no server field."""
        doc = make_through_rules(world, status)
        assert doc["status"] == status
        assert calls.invariant_errors(doc, CALL_ID) == []
        assert calls.server_fields_in(doc) == []

    def test_reviewed_call_is_valid(self, world: World) -> None:
        """An ended call after a participant's review write still satisfies the invariants of `ended`."""
        make_through_rules(world, Status.ENDED)
        result = world.client("receiver").update(CALL_PATH, {"humanSummary": "Fine."}, server_time=["updatedAt"])
        assert result.ok, result
        doc = world.stored(CALL_PATH)
        assert doc is not None and calls.invariant_errors(doc, CALL_ID) == []
        assert doc["updatedAt"] > doc["endedAt"]
