"""The calls aggregate (`calls/{callId}`): its port and its Firestore adapter.

Creates apply the checks the security rules make for apps; transitions apply the state machine of
`memharbor.calls` to the call as read and commit only if it is unchanged since (`guarded.optimistic`:
no transaction, so a shim killed mid-request never leaves the call locked against the apps). Who may do
what is decided by the caller of the port
(token_http/call_routes.py, token_http/token_route.py, token_http/recording_routes.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor import calls, groups
from memharbor.calls import Actor, Status
from memharbor.errors import Conflict, Forbidden, InvalidInput, NotFound
from memharbor.repositories.guarded import (
    DEFAULT_TIMEOUT_S,
    Decided,
    FirestoreClient,
    Guard,
    Refusals,
    WritingClient,
    optimistic,
)
from memharbor.repositories.paths import CALLS, GROUPS

# Pending calls time out within a minute or so, so there are never many; the sweep reads at most this.
MAX_PENDING_SCAN = 2000
# Calls that share a channel name (there should be one); the lookup reads at most this.
MAX_CALLS_ON_CHANNEL = 20


def new_call_id() -> str:
    """A fresh call id (a UUID, as the seed used)."""
    return str(uuid.uuid4())


def new_call_document(
    call_id: str, group_id: str, caller_id: str, receiver_id: str, optional: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The document an app writes to place a call (timestamps are server timestamps)."""
    doc: dict[str, Any] = {
        "callId": call_id,
        "groupId": group_id,
        "callerId": caller_id,
        "receiverId": receiver_id,
        "status": Status.PENDING.value,
        "createdAt": firestore.SERVER_TIMESTAMP,
        "updatedAt": firestore.SERVER_TIMESTAMP,
    }
    doc.update({k: v for k, v in (optional or {}).items() if k in calls.CREATE_OPTIONAL and v is not None})
    return doc


class CallReader(Protocol):
    """Looks calls up: by the Agora channel they use, or by id."""

    async def calls_on_channel(self, channel: str) -> list[dict[str, Any]]:
        """The call documents whose channelName is `channel`."""
        ...

    async def get_calls(self, call_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The call documents of these ids that exist, by id."""
        ...


class CallRepository(CallReader, Protocol):
    """Stored calls: created, read and moved through the state machine."""

    async def create(self, doc: dict[str, Any]) -> None:
        """Create a call document (as made by `new_call_document`).

        InvalidInput names the first invalid document field; Forbidden when caller and receiver are not
        both members of the group; Conflict when the id is taken.
        """
        ...

    async def get(self, call_id: str) -> dict[str, Any] | None:
        """The call document, or None."""
        ...

    async def transition(self, call_id: str, target: Status, actor: Actor) -> dict[str, Any]:
        """Move the call to `target` as `actor` if it is unchanged since read; returns the document as it was before.

        NotFound (unknown), IllegalTransition (from its status) or Forbidden (not this actor's move).
        """
        ...

    async def stale_pending(self, created_before: datetime) -> list[str]:
        """Ids of the pending calls created before `created_before` (an aware datetime)."""
        ...


class FirestoreCallRepository:
    """CallRepository over an asyncio Firestore client; every operation is guarded (time bound, Unavailable)."""

    def __init__(self, client: Callable[[], WritingClient], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        refusals: Refusals = {
            gexc.AlreadyExists: lambda: Conflict("a call with this id already exists", field="callId")
        }
        self._guard = Guard(client, timeout_s, refusals)

    async def create(self, doc: dict[str, Any]) -> None:
        # The field checks run before the client is touched: an invalid call costs no round trip.
        errors = calls.field_errors(doc)
        if errors:
            raise InvalidInput(errors[0], field=errors[0].split(" ", 1)[0])

        async def write(client: FirestoreClient) -> None:
            group = await client.collection(GROUPS).document(doc["groupId"]).get()
            # The watcher checks again, so a member removed in between still never rings.
            if not groups.are_members(group.to_dict() if group.exists else None, doc["callerId"], doc["receiverId"]):
                raise Forbidden("caller and receiver must both be members of the group", field="groupId")
            await client.collection(CALLS).document(doc["callId"]).create(doc)

        await self._guard.run(write)

    async def get(self, call_id: str) -> dict[str, Any] | None:
        async def read(client: FirestoreClient) -> dict[str, Any] | None:
            snap = await client.collection(CALLS).document(call_id).get()
            return snap.to_dict() if snap.exists else None

        return await self._guard.run(read)

    async def transition(self, call_id: str, target: Status, actor: Actor) -> dict[str, Any]:
        async def decide(db: WritingClient, before: dict[str, Any] | None) -> Decided[dict[str, Any]]:
            if before is None:
                raise NotFound(f"unknown call {call_id}", field="call_id")
            step = calls.check_transition(before, target.value, actor)
            update = {
                "status": target.value,
                step.stamp: firestore.SERVER_TIMESTAMP,
                "updatedAt": firestore.SERVER_TIMESTAMP,
            }
            return Decided(before, update)

        async def move(db: WritingClient) -> dict[str, Any]:
            return await optimistic(db, db.collection(CALLS).document(call_id), decide, f"calls/{call_id}")

        return await self._guard.run(move)

    async def stale_pending(self, created_before: datetime) -> list[str]:
        async def scan(client: FirestoreClient) -> list[str]:
            # Equality on status alone needs no composite index; the age is checked here.
            query = (
                client.collection(CALLS)
                .where(filter=FieldFilter("status", "==", Status.PENDING.value))
                .limit(MAX_PENDING_SCAN)
            )
            ids = []
            async for snap in query.stream():
                created = (snap.to_dict() or {}).get("createdAt")
                if isinstance(created, datetime) and created < created_before:
                    ids.append(snap.id)
            return ids

        return await self._guard.run(scan)

    async def calls_on_channel(self, channel: str) -> list[dict[str, Any]]:
        async def scan(client: FirestoreClient) -> list[dict[str, Any]]:
            query = (
                client.collection(CALLS)
                .where(filter=FieldFilter("channelName", "==", channel))
                .limit(MAX_CALLS_ON_CHANNEL)
            )
            return [snap.to_dict() or {} async for snap in query.stream()]

        return await self._guard.run(scan)

    async def get_calls(self, call_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = sorted(set(call_ids))
        if not ids:
            return {}

        async def read(client: FirestoreClient) -> dict[str, dict[str, Any]]:
            refs = [client.collection(CALLS).document(call_id) for call_id in ids]
            return {snap.id: snap.to_dict() or {} async for snap in client.get_all(refs) if snap.exists}

        return await self._guard.run(read)
