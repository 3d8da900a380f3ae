"""The REST shim's port to stored calls, and its Firestore adapter.

The port is deliberately small: create a call document, read one, move one through the state machine
(`memharbor.calls`) in a transaction, and list the pending calls created before a cutoff. Who may do
what is decided by the caller of the port (token_http/call_routes.py); the state machine itself is
checked inside the transaction, by `memharbor.callstore`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor import callstore
from memharbor.calls import Actor, CallError, Status
from memharbor.store import CALLS

T = TypeVar("T")

# Pending calls time out within a minute or so, so there are never many; the sweep reads at most this.
MAX_PENDING_SCAN = 2000


class StoreUnavailable(Exception):
    """Firestore did not answer (down, timed out, or too contended to commit)."""


class CallService(Protocol):
    """Stored calls, as the REST shim uses them."""

    async def create(self, doc: dict[str, Any]) -> None:
        """Create a call document (as made by `callstore.new_call_document`); CallError 400 if invalid."""
        ...

    async def get(self, call_id: str) -> dict[str, Any] | None:
        """The call document, or None."""
        ...

    async def transition(self, call_id: str, target: Status, actor: Actor) -> dict[str, Any]:
        """Move the call to `target` as `actor` in a transaction; returns the document as it was before.

        CallError 404 (unknown), 409 (illegal from its status) or 403 (not this actor's move).
        """
        ...

    async def stale_pending(self, created_before: datetime) -> list[str]:
        """Ids of the pending calls created before `created_before` (an aware datetime)."""
        ...


class FirestoreCallService:
    """CallService over an asyncio Firestore client, made on first use (it binds to the running loop)."""

    def __init__(self, client: Callable[[], firestore.AsyncClient], timeout_s: float = 10.0) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def _run(self, make: Callable[[firestore.AsyncClient], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await make(self._client())
        except CallError:
            raise
        except gexc.AlreadyExists:
            raise CallError(409, "a call with this id already exists", field="callId") from None
        except (gexc.GoogleAPIError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        except ValueError as exc:
            # A transaction that could not commit in its attempts (contention) ends as a ValueError.
            if isinstance(exc.__cause__, gexc.GoogleAPIError):
                raise StoreUnavailable("transaction not committed") from exc
            raise

    async def create(self, doc: dict[str, Any]) -> None:
        await self._run(lambda client: callstore.create_call(client, doc))

    async def get(self, call_id: str) -> dict[str, Any] | None:
        return await self._run(lambda client: callstore.get_call(client, call_id))

    async def transition(self, call_id: str, target: Status, actor: Actor) -> dict[str, Any]:
        return await self._run(lambda client: callstore.apply_transition(client, call_id, target, actor))

    async def stale_pending(self, created_before: datetime) -> list[str]:
        async def scan(client: firestore.AsyncClient) -> list[str]:
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

        return await self._run(scan)
