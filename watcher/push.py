"""The notifier port (incoming-call push, stop-ringing notice) and the local sink transport.

APNs and FCM transports implement the same `Notifier`; the sink appends one JSON line per push to a
file, which `memharbor dev` and the tests read.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

Platform = Literal["ios", "android"]
Kind = Literal["incoming_call", "call_ended"]


@dataclass(frozen=True)
class PushTarget:
    """Where a user's device can be reached."""

    uid: str
    platform: Platform
    token: str


@dataclass(frozen=True)
class PushResult:
    """What a send achieved; `token_invalid` means the push service reported the token dead."""

    sent: bool
    platform: str | None
    error: str | None = None
    token_invalid: bool = False


class Notifier(Protocol):
    """Sends pushes to devices."""

    async def send(self, target: PushTarget, kind: Kind, payload: Mapping[str, str], expires_at: float) -> PushResult:
        """Deliver one push; never raises for delivery failures (they are in the result)."""
        ...


def resolve_target(uid: str, user: Mapping[str, Any] | None) -> PushTarget | None:
    """The device to ring for `users/{uid}`: VoIP token on iOS, FCM token on Android, else None."""
    if not user:
        return None
    platform = user.get("platform")
    if platform == "ios" and isinstance(user.get("voipToken"), str) and user["voipToken"]:
        return PushTarget(uid, "ios", user["voipToken"])
    if platform == "android" and isinstance(user.get("fcmToken"), str) and user["fcmToken"]:
        return PushTarget(uid, "android", user["fcmToken"])
    return None


def incoming_call_payload(call: Mapping[str, Any]) -> dict[str, str]:
    """The seed's incoming-call payload; every value a string (FCM data messages require it)."""
    return {
        "type": "incoming_call",
        "callId": str(call.get("callId", "")),
        "channelName": str(call.get("channelName", "")),
        "callerName": str(call.get("callerName") or call.get("callerId", "")),
        "callerID": str(call.get("callerId", "")),
        "groupId": str(call.get("groupId", "")),
        "receiverId": str(call.get("receiverId", "")),
    }


def call_ended_payload(call: Mapping[str, Any]) -> dict[str, str]:
    """The stop-ringing notice: the device ends its incoming-call UI for this callId."""
    return {
        "type": "call_ended",
        "callId": str(call.get("callId", "")),
        "status": str(call.get("status", "")),
        "receiverId": str(call.get("receiverId", "")),
    }


class SinkNotifier:
    """Records pushes as JSON lines in a local file instead of sending them (dev and tests)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, line: bytes) -> None:
        # One O_APPEND write per line keeps lines whole with several watchers sharing the file.
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    async def send(self, target: PushTarget, kind: Kind, payload: Mapping[str, str], expires_at: float) -> PushResult:
        record = {
            "kind": kind,
            "platform": target.platform,
            "uid": target.uid,
            "payload": dict(payload),
            "expiresAt": expires_at,
            "sentAt": time.time(),
            "pid": os.getpid(),
        }
        await asyncio.to_thread(self._append, orjson.dumps(record) + b"\n")
        return PushResult(sent=True, platform=target.platform)


def read_sink(path: Path) -> list[dict[str, Any]]:
    """Every push recorded in a sink file (empty when there is none yet)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class UnconfiguredNotifier:
    """The transport when none is configured: every push fails with a clear reason on the call."""

    async def send(self, target: PushTarget, kind: Kind, payload: Mapping[str, str], expires_at: float) -> PushResult:
        return PushResult(sent=False, platform=target.platform, error="push_not_configured")
