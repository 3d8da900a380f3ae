"""Care groups: who may call whom.

`groups/{groupId}` is written by the app's own group management (or an admin) and only read here. Its
schema is assumed in exactly two places, this module's `are_members` and `areGroupMembers` in
`rules/firestore.rules`: to adapt the backend to another group schema, change those two (and
`tests/rules/test_rules_groups.py`, which keeps them in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The reason recorded in a call's `violation` when its caller and receiver are not members of its group.
NOT_GROUP_MEMBERS = "not_group_members"


def are_members(group: Mapping[str, Any] | None, *uids: str) -> bool:
    """True when the group document exists and every uid is in its `memberIds` list."""
    if group is None:
        return False
    members = group.get("memberIds")
    return isinstance(members, list) and all(isinstance(uid, str) and uid in members for uid in uids)


def group_document(member_ids: list[str], **fields: Any) -> dict[str, Any]:
    """A group document as the contract describes it (for `memharbor dev`, tests and benchmarks)."""
    return {"memberIds": list(member_ids), **fields}
