"""The receiver's devices: `users/{uid}/devices/{deviceId}` documents and the legacy tokens on `users/{uid}`.

One document per installed app, written by its owner under the rules (which mirror the tables here);
the watcher rings every device and prunes those not refreshed for a while. The single tokens on the user
document are one more, implicit device (`LEGACY_KEY`), so apps can migrate one release at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from memharbor import calls

DEVICES = "devices"  # the subcollection under users/{uid}
# What an app may keep in a device document (the rules' deviceFields()).
DEVICE_FIELDS = frozenset({"platform", "voipToken", "apnsToken", "fcmToken", "appVersion", "updatedAt"})
# Set by the server when APNs/FCM reported one of the device's tokens dead (the token is then deleted).
DEVICE_SERVER_FIELDS = frozenset({"pushTokenInvalidAt"})
TOKEN_FIELDS = ("voipToken", "apnsToken", "fcmToken")
MAX_APP_VERSION_CHARS = 64
# Device ids follow calls.ID_PATTERN; this key cannot be one ('~' is outside it), so never collides.
LEGACY_KEY = "~user"
DEFAULT_TTL_DAYS = 60
DEFAULT_MAX_PER_USER = 10


@dataclass(frozen=True)
class Device:
    """One device that can be pushed to; `key` is its document id, or LEGACY_KEY for users/{uid}'s tokens."""

    key: str
    platform: str
    tokens: Mapping[str, str]  # token field -> token, only the well-formed ones

    @property
    def legacy(self) -> bool:
        return self.key == LEGACY_KEY

    def token_for(self, kind: str) -> tuple[str, str] | None:
        """(field, token) for a push kind: iOS rings its PushKit token and stops with its regular one."""
        ios_field = "voipToken" if kind == "incoming_call" else "apnsToken"
        field = ios_field if self.platform == "ios" else "fcmToken"
        token = self.tokens.get(field)
        return (field, token) if token is not None else None


def device_errors(doc: Mapping[str, Any]) -> list[str]:
    """What the rules refuse in a device document an app writes, empty when valid."""
    errors = [f"{name} is not a device field" for name in sorted(set(doc) - DEVICE_FIELDS - DEVICE_SERVER_FIELDS)]
    if doc.get("platform") not in calls.USER_PLATFORMS:
        errors.append("platform must be one of " + ", ".join(sorted(calls.USER_PLATFORMS)))
    for name in TOKEN_FIELDS:
        value = doc.get(name)
        if value is not None and (not isinstance(value, str) or not calls.PUSH_TOKEN_PATTERN.fullmatch(value)):
            errors.append(f"{name} must be 1-1000 characters of A-Z a-z 0-9 _ : -")
    version = doc.get("appVersion")
    if version is not None and (not isinstance(version, str) or len(version) > MAX_APP_VERSION_CHARS):
        errors.append(f"appVersion must be a string of at most {MAX_APP_VERSION_CHARS} characters")
    if not isinstance(doc.get("updatedAt"), datetime):
        errors.append("updatedAt must be a timestamp")
    return errors


def _device(key: str, doc: Mapping[str, Any]) -> Device | None:
    platform = doc.get("platform")
    if platform not in calls.USER_PLATFORMS:
        return None
    # A token outside the pattern (only an admin can write one) would become part of APNs' request path.
    tokens = {
        name: value
        for name in TOKEN_FIELDS
        if isinstance(value := doc.get(name), str) and calls.PUSH_TOKEN_PATTERN.fullmatch(value)
    }
    return Device(key, str(platform), tokens) if tokens else None


def devices_of(user: Mapping[str, Any] | None, device_docs: Mapping[str, Mapping[str, Any]]) -> list[Device]:
    """Every device to push to: the device documents (as kept by `prune_plan`), then the legacy one.

    The legacy device is left out when a device document holds one of its tokens: an app that writes
    both during its migration must not ring twice.
    """
    devices = [d for key, doc in sorted(device_docs.items()) if (d := _device(key, doc)) is not None]
    legacy = _device(LEGACY_KEY, user or {})
    known = {token for device in devices for token in device.tokens.values()}
    if legacy is not None and not known & set(legacy.tokens.values()):
        devices.append(legacy)
    return devices


@dataclass(frozen=True)
class PrunePlan:
    """Which device documents to push to and which to delete (stale, or beyond the per-user cap)."""

    keep: dict[str, Mapping[str, Any]]
    drop: tuple[str, ...]


def prune_plan(
    device_docs: Mapping[str, Mapping[str, Any]], now: datetime, ttl: timedelta, max_devices: int
) -> PrunePlan:
    """Drop devices not refreshed within `ttl` (or without a valid `updatedAt`), then the oldest beyond
    `max_devices`: a reinstalled app leaves its old document behind, and nobody else removes it."""
    fresh: list[tuple[datetime, str]] = []
    drop: list[str] = []
    for key, doc in device_docs.items():
        updated = doc.get("updatedAt")
        if isinstance(updated, datetime) and updated >= now - ttl:
            fresh.append((updated, key))
        else:
            drop.append(key)
    fresh.sort(reverse=True)
    drop.extend(key for _, key in fresh[max_devices:])
    keep = {key: device_docs[key] for _, key in fresh[:max_devices]}
    return PrunePlan(keep, tuple(sorted(drop)))


def stop_recipients(devices: Iterable[Device], status: str, answered_on: Any) -> list[Device]:
    """Who gets the stop-ringing notice for a call that reached `status`.

    Cancelled and missed: every device. Accepted and declined: every device but the one that answered,
    which is `answeredOn` (v2 apps) or, without it, the legacy device (a v1 app answered: it has no id).
    """
    devices = list(devices)
    if status not in (calls.Status.ACCEPTED, calls.Status.DECLINED):
        return devices
    answering = answered_on if isinstance(answered_on, str) and answered_on else LEGACY_KEY
    return [device for device in devices if device.key != answering]
