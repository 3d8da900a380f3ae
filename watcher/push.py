"""The notifier port (incoming-call push, stop-ringing notice), the per-platform router and the local sink.

APNs (`watcher/apns.py`) and FCM (`watcher/fcm.py`) transports implement the same `Notifier`; the
`RoutingNotifier` hands each push to the transport of the receiver's platform. The sink appends one JSON
line per push to a file, which `memharbor dev` and the tests read.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson

from memharbor import calls
from memharbor.devices import LEGACY_KEY, Device

Platform = Literal["ios", "android"]
Kind = Literal["incoming_call", "call_ended"]
# Asked between retries: False once the push no longer matters (for an incoming call: it stopped ringing).
StillWanted = Callable[[], Awaitable[bool]]
# The transport that serves each platform, by the name /api/health reports it under.
TRANSPORT_OF: dict[str, str] = {"ios": "apns", "android": "fcm"}


@dataclass(frozen=True)
class PushTarget:
    """Where a user's device can be reached."""

    uid: str
    platform: Platform
    token: str
    # The field that holds `token` (the one removed when the service reports it dead).
    token_field: str = ""
    # Which device: its users/{uid}/devices id, or LEGACY_KEY for the tokens on users/{uid}.
    device: str = LEGACY_KEY

    @property
    def user_field(self) -> str:
        return self.token_field or ("voipToken" if self.platform == "ios" else "fcmToken")


@dataclass(frozen=True)
class PushResult:
    """What a send achieved; `token_invalid` means the push service reported the token dead."""

    sent: bool
    platform: str | None
    error: str | None = None
    token_invalid: bool = False


class Notifier(Protocol):
    """Sends pushes to devices."""

    async def send(
        self,
        target: PushTarget,
        kind: Kind,
        payload: Mapping[str, str],
        expires_at: float,
        still_wanted: StillWanted | None = None,
    ) -> PushResult:
        """Deliver one push; never raises for delivery failures (they are in the result).

        Transient failures are retried until `expires_at` (epoch seconds) and while `still_wanted()`
        (when given) is true.
        """
        ...


def resolve_target(uid: str, user: Mapping[str, Any] | None, kind: Kind = "incoming_call") -> PushTarget | None:
    """The device to reach for `users/{uid}`, else None.

    iOS: the PushKit `voipToken` for an incoming call; the regular APNs `apnsToken` for the stop-ringing
    notice (it is an alert push, and APNs refuses a VoIP token for the app's regular topic).
    Android: `fcmToken` for both.
    """
    if not user:
        return None
    platform = user.get("platform")
    if platform == "ios":
        field = "voipToken" if kind == "incoming_call" else "apnsToken"
    elif platform == "android":
        field = "fcmToken"
    else:
        return None
    token = user.get(field)
    # An admin-written token outside the pattern would become part of APNs' request path: never send it.
    if not isinstance(token, str) or not calls.PUSH_TOKEN_PATTERN.fullmatch(token):
        return None
    return PushTarget(uid, platform, token, field)


def resolve_targets(uid: str, devices: list[Device], kind: Kind) -> list[PushTarget]:
    """One target per device that has the token this kind of push needs, in the devices' order."""
    targets = []
    for device in devices:
        found = device.token_for(kind)
        if found is not None:
            field, token = found
            targets.append(PushTarget(uid, device.platform, token, field, device.key))  # type: ignore[arg-type]
    return targets


def push_record(result: PushResult, platform: str, at: Any) -> dict[str, Any]:
    """What the server keeps of one device's push (callServer/{callId}.pushes.{status}.{device})."""
    outcome = "sent" if result.sent else "dead_token" if result.token_invalid else "failed"
    return {"platform": platform, "result": outcome, "error": result.error, "at": at}


def push_summary(records: list[Mapping[str, Any]]) -> tuple[bool, str | None, str | None]:
    """The call's (pushSent, pushPlatform, pushError) from its devices' records, in device order.

    Sent when any device accepted the push (the platform of the first that did); otherwise the first
    device's platform and error, and `no_device_token` when there was no device to push to.
    """
    if not records:
        return False, None, "no_device_token"
    for record in records:
        if record.get("result") == "sent":
            return True, record.get("platform"), None
    return False, records[0].get("platform"), records[0].get("error")


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
        "callerName": str(call.get("callerName") or call.get("callerId", "")),
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

    async def send(
        self,
        target: PushTarget,
        kind: Kind,
        payload: Mapping[str, str],
        expires_at: float,
        still_wanted: StillWanted | None = None,
    ) -> PushResult:
        record = {
            "kind": kind,
            "platform": target.platform,
            "uid": target.uid,
            "device": target.device,
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


class Transport(Notifier, Protocol):
    """A real push service client: a Notifier that reports its status and holds connections."""

    def status(self) -> dict[str, Any]:
        """Counters and last error, for the heartbeat and /api/health."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class RoutingNotifier:
    """Sends each push through the transport of the receiver's platform.

    A platform without a configured transport gets `pushSent: false, pushError: "push_not_configured"`.
    """

    def __init__(self, transports: Mapping[str, Transport]) -> None:
        self._transports = dict(transports)

    async def send(
        self,
        target: PushTarget,
        kind: Kind,
        payload: Mapping[str, str],
        expires_at: float,
        still_wanted: StillWanted | None = None,
    ) -> PushResult:
        transport = self._transports.get(target.platform)
        if transport is None:
            return PushResult(sent=False, platform=target.platform, error="push_not_configured")
        return await transport.send(target, kind, payload, expires_at, still_wanted)

    def status(self) -> dict[str, Any]:
        """Each transport's status by name (`apns`, `fcm`), `configured: false` where there is none."""
        report: dict[str, Any] = {}
        for platform, name in TRANSPORT_OF.items():
            transport = self._transports.get(platform)
            report[name] = transport.status() if transport is not None else {"configured": False}
        return report

    async def close(self) -> None:
        for transport in self._transports.values():
            await transport.close()


def push_status(notifier: Notifier) -> dict[str, Any]:
    """What a notifier reports for the heartbeat: per-transport status, or the sink / nothing."""
    if isinstance(notifier, RoutingNotifier):
        return notifier.status()
    if isinstance(notifier, SinkNotifier):
        return {"sink": True}
    return {name: {"configured": False} for name in TRANSPORT_OF.values()}
