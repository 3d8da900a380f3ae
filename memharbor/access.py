"""Who may do what: the authenticated principal and the rule for issuing Agora tokens."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# A token is only useful while a call can still be joined.
TOKEN_STATUSES = frozenset({"pending", "accepted"})


@dataclass(frozen=True)
class Principal:
    """The caller of an API: a Firebase user, an admin, or anyone (MEMHARBOR_AUTH=none)."""

    uid: str | None
    admin: bool = False
    open_access: bool = False

    @classmethod
    def anyone(cls) -> Principal:
        """The principal of the seed's unauthenticated mode: trusted like an admin."""
        return cls(uid=None, admin=False, open_access=True)

    @property
    def unrestricted(self) -> bool:
        return self.admin or self.open_access


def is_participant(uid: str | None, call: Mapping[str, Any]) -> bool:
    """True when `uid` is the caller or the receiver of `call`."""
    return uid is not None and uid in (call.get("callerId"), call.get("receiverId"))


def may_get_token(principal: Principal, calls_on_channel: Iterable[Mapping[str, Any]]) -> bool:
    """A user gets a token only for a channel of a live call they take part in; admins for any."""
    if principal.unrestricted:
        return True
    return any(
        is_participant(principal.uid, call) and call.get("status") in TOKEN_STATUSES for call in calls_on_channel
    )
