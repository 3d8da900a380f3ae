"""The devices aggregate (`users/{uid}/devices/{deviceId}`) as the watcher uses it: read, prune, forget a token.

Apps write their device documents themselves under the rules; the server only reads them, deletes the
stale ones and removes a token APNs/FCM reported dead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from memharbor.devices import DEVICES, LEGACY_KEY
from memharbor.repositories.guarded import DEFAULT_TIMEOUT_S, Guard
from memharbor.repositories.paths import USERS

# A read for a push takes at most this many device documents (the cap keeps far fewer; pruning catches up).
MAX_DEVICES_READ = 100
# The periodic prune deletes at most this many stale devices per batch (Firestore's batch limit is 500).
PRUNE_BATCH = 400


class DeviceStore(Protocol):
    """A user's device documents."""

    async def read(self, uid: str) -> dict[str, dict[str, Any]]:
        """The user's device documents by id (at most MAX_DEVICES_READ)."""
        ...

    async def delete(self, uid: str, device_ids: Iterable[str]) -> None:
        """Delete these device documents (missing ones are no error)."""
        ...

    async def forget_token(self, uid: str, device_id: str, field: str, token: str) -> bool:
        """Delete `field` and set `pushTokenInvalidAt` if the device still holds `token`; True if it did.

        The implicit device LEGACY_KEY is the user document's own tokens.
        """
        ...

    async def delete_stale(self, before: datetime) -> int:
        """Delete every user's device documents refreshed before `before`; how many were deleted."""
        ...


class FirestoreDevices:
    """DeviceStore over an asyncio Firestore client; guarded (time bound, Unavailable)."""

    def __init__(self, client: Callable[[], firestore.AsyncClient], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._guard = Guard(client, timeout_s)

    async def read(self, uid: str) -> dict[str, dict[str, Any]]:
        async def scan(client: firestore.AsyncClient) -> dict[str, dict[str, Any]]:
            query = client.collection(USERS).document(uid).collection(DEVICES).limit(MAX_DEVICES_READ)
            return {snap.id: snap.to_dict() or {} async for snap in query.stream()}

        return await self._guard.run(scan)

    async def delete(self, uid: str, device_ids: Iterable[str]) -> None:
        ids = sorted(set(device_ids))
        if not ids:
            return

        async def remove(client: firestore.AsyncClient) -> None:
            batch = client.batch()
            for device_id in ids:
                batch.delete(client.collection(USERS).document(uid).collection(DEVICES).document(device_id))
            await batch.commit()

        await self._guard.run(remove)

    async def forget_token(self, uid: str, device_id: str, field: str, token: str) -> bool:
        async def forget(client: firestore.AsyncClient) -> bool:
            user = client.collection(USERS).document(uid)
            ref = user if device_id == LEGACY_KEY else user.collection(DEVICES).document(device_id)
            snap = await ref.get()
            # The app may have written a fresh token since the push: only the dead one is removed.
            if not snap.exists or (snap.to_dict() or {}).get(field) != token:
                return False
            guard = client.write_option(last_update_time=snap.update_time)
            update = {field: firestore.DELETE_FIELD, "pushTokenInvalidAt": firestore.SERVER_TIMESTAMP}
            try:
                await ref.update(update, option=guard)
            except (gexc.FailedPrecondition, gexc.NotFound):
                return False  # rewritten or deleted meanwhile: the new document is the app's word
            return True

        return await self._guard.run(forget)

    async def delete_stale(self, before: datetime) -> int:
        # A collection-group range on updatedAt: rules/firestore.indexes.json holds its single-field index.
        async def prune(client: firestore.AsyncClient) -> int:
            deleted = 0
            while True:
                query = (
                    client.collection_group(DEVICES)
                    .where(filter=FieldFilter("updatedAt", "<", before))
                    .limit(PRUNE_BATCH)
                )
                refs = [snap.reference async for snap in query.stream()]
                if refs:
                    batch = client.batch()
                    for ref in refs:
                        batch.delete(ref)
                    await batch.commit()
                deleted += len(refs)
                if len(refs) < PRUNE_BATCH:
                    return deleted

        return await self._guard.run(prune)
