"""Call writes made by the server (the watcher and the REST shim), each a Firestore transaction that
applies the state machine of `memharbor.calls` exactly as the security rules do for apps.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.async_transaction import AsyncTransaction

from memharbor import calls, groups
from memharbor.calls import Actor, CallError, Status
from memharbor.store import CALLS, GROUPS


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


async def create_call(client: firestore.AsyncClient, doc: dict[str, Any]) -> None:
    """Create a call document after the checks the rules make.

    CallError 400 names the first invalid field; 403 when caller and receiver are not both members of
    the group (the watcher checks again, so a member removed in between still never rings).
    """
    errors = calls.field_errors(doc)
    if errors:
        raise CallError(400, errors[0], field=errors[0].split(" ", 1)[0])
    group = await client.collection(GROUPS).document(doc["groupId"]).get()
    if not groups.are_members(group.to_dict() if group.exists else None, doc["callerId"], doc["receiverId"]):
        raise CallError(403, "caller and receiver must both be members of the group", field="groupId")
    await client.collection(CALLS).document(doc["callId"]).create(doc)


async def apply_transition(
    client: firestore.AsyncClient, call_id: str, target: Status, actor: Actor, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Move a call to `target` as `actor` in a transaction; returns the document as it was before.

    Raises CallError 404 (no such call), 409 (illegal from its current status) or 403 (not this actor's move).
    """
    ref = client.collection(CALLS).document(call_id)

    @firestore.async_transactional  # type: ignore[misc]
    async def run(transaction: AsyncTransaction) -> dict[str, Any]:
        snap = await ref.get(transaction=transaction)
        if not snap.exists:
            raise CallError(404, f"unknown call {call_id}", field="call_id")
        before: dict[str, Any] = snap.to_dict() or {}
        move = calls.check_transition(before, target.value, actor)
        update = {
            "status": target.value,
            move.stamp: firestore.SERVER_TIMESTAMP,
            "updatedAt": firestore.SERVER_TIMESTAMP,
            **(extra or {}),
        }
        transaction.update(ref, update)
        return before

    result: dict[str, Any] = await run(client.transaction())
    return result


async def get_call(client: firestore.AsyncClient, call_id: str) -> dict[str, Any] | None:
    """The call document, or None."""
    snap = await client.collection(CALLS).document(call_id).get()
    return snap.to_dict() if snap.exists else None
