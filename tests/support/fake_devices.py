"""An in-memory DeviceStore (memharbor/repositories/devices.py) for the reactor's unit tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from memharbor.devices import LEGACY_KEY


class FakeDevices:
    """Device documents by uid and id (`users`: the implicit devices' tokens); records reads, deletions, forgets."""

    def __init__(
        self,
        devices: dict[str, dict[str, dict[str, Any]]] | None = None,
        users: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.devices = devices or {}
        self.users = users or {}
        self.reads: list[str] = []
        self.deleted: list[tuple[str, str]] = []
        self.forgotten: list[tuple[str, str, str]] = []

    async def read(self, uid: str) -> dict[str, dict[str, Any]]:
        self.reads.append(uid)
        return {key: dict(doc) for key, doc in self.devices.get(uid, {}).items()}

    async def delete(self, uid: str, device_ids: Iterable[str]) -> None:
        for device_id in device_ids:
            if self.devices.get(uid, {}).pop(device_id, None) is not None:
                self.deleted.append((uid, device_id))

    async def forget_token(self, uid: str, device_id: str, field: str, token: str) -> bool:
        doc = self.users.get(uid) if device_id == LEGACY_KEY else self.devices.get(uid, {}).get(device_id)
        if doc is None or doc.get(field) != token:
            return False
        del doc[field]
        self.forgotten.append((uid, device_id, field))
        return True
