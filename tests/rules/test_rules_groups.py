"""Security rules: only members of one care group may call each other, and groups are read-only to apps.

`areGroupMembers` in the rules and `memharbor.groups.are_members` are the two copies of the membership
test; the table below runs both on the same group documents, so a change to one alone fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from memharbor.groups import are_members, group_document
from tests.rules.rules_support import CALL_ID, CALLER, GROUP_ID, RECEIVER, STRANGER, World, new_call

GROUP_PATH = f"groups/{GROUP_ID}"
STAMPS = ["createdAt", "updatedAt"]

# Group documents, and whether caller and receiver count as members of them.
GROUPS = [
    pytest.param(group_document([CALLER, RECEIVER]), True, id="both-members"),
    pytest.param(group_document([RECEIVER, "other", CALLER], name="Kim family"), True, id="among-others"),
    pytest.param(group_document([CALLER]), False, id="receiver-not-member"),
    pytest.param(group_document([RECEIVER]), False, id="caller-not-member"),
    pytest.param(group_document([]), False, id="empty"),
    pytest.param({"members": [CALLER, RECEIVER]}, False, id="other-schema"),
    pytest.param({"memberIds": {CALLER: True, RECEIVER: True}}, False, id="memberIds-map"),
    pytest.param({"memberIds": f"{CALLER},{RECEIVER}"}, False, id="memberIds-string"),
    pytest.param(None, False, id="no-group"),
]


def place_call(world: World, principal: str = "caller", **overrides: Any) -> Any:
    return world.client(principal).create(f"calls/{CALL_ID}", new_call(**overrides), server_time=STAMPS)


class TestMembershipOnCreate:
    """A call is created only between members of its group, by rules and Python alike."""

    @pytest.mark.parametrize(("group", "members"), GROUPS)
    def test_rules_and_python_agree(self, world: World, group: dict[str, Any] | None, members: bool) -> None:
        """The rules allow the call exactly when memharbor.groups.are_members says both are members."""
        world.owner.delete(GROUP_PATH)
        if group is not None:
            world.seed(GROUP_PATH, group)
        assert are_members(group, CALLER, RECEIVER) is members
        result = place_call(world)
        assert result.ok if members else result.denied, result

    def test_stranger_cannot_ring_a_member(self, world: World) -> None:
        """A signed-in stranger naming a real group and its member is refused."""
        result = place_call(world, "stranger", callerId=STRANGER)
        assert result.denied
        assert world.stored(f"calls/{CALL_ID}") is None

    def test_member_of_another_group_cannot_borrow_this_one(self, world: World) -> None:
        """Membership is per group: being in some group does not let you ring members of another."""
        world.seed("groups/mallory-group", group_document([STRANGER, "accomplice"]))
        result = place_call(world, "stranger", callerId=STRANGER, groupId="mallory-group")
        assert result.denied


class TestGroupAccess:
    """Members read their group; nobody writes groups through the rules."""

    @pytest.mark.parametrize("principal", ["caller", "receiver"])
    def test_member_reads(self, world: World, principal: str) -> None:
        """A member may read the group document."""
        result = world.client(principal).get(GROUP_PATH)
        assert result.ok, result
        assert result.data["memberIds"] == [CALLER, RECEIVER]

    @pytest.mark.parametrize("principal", ["stranger", "anonymous"])
    def test_outsider_cannot_read(self, world: World, principal: str) -> None:
        """A non-member cannot read who is in the group."""
        assert world.client(principal).get(GROUP_PATH).denied

    @pytest.mark.parametrize("principal", ["caller", "stranger"])
    def test_nobody_writes(self, world: World, principal: str) -> None:
        """No app user may create, change, delete or list groups, members included."""
        client = world.client(principal)
        uid = CALLER if principal == "caller" else STRANGER
        assert client.create("groups/new-group", group_document([uid, RECEIVER])).denied
        assert client.update(GROUP_PATH, {"memberIds": [CALLER, RECEIVER, STRANGER]}).denied
        assert client.delete(GROUP_PATH).denied
        assert client.list("groups").denied
        assert world.stored(GROUP_PATH) == group_document([CALLER, RECEIVER])
