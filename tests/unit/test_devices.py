"""The device model (memharbor/devices.py) and the push summary over devices (watcher/push.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from memharbor.devices import LEGACY_KEY, Device, device_errors, devices_of, prune_plan, stop_recipients
from memharbor.settings import SettingsError, watcher_settings
from watcher.push import PushResult, push_record, push_summary, resolve_targets

NOW = datetime(2026, 2, 1, tzinfo=UTC)
TTL = timedelta(days=60)


def doc(platform: str = "ios", days_old: float = 1, **tokens: str) -> dict[str, Any]:
    """A device document refreshed `days_old` days before NOW."""
    tokens = tokens or ({"voipToken": "v1", "apnsToken": "a1"} if platform == "ios" else {"fcmToken": "f1"})
    return {"platform": platform, **tokens, "updatedAt": NOW - timedelta(days=days_old)}


class TestDeviceErrors:
    """device_errors reports what the rules refuse."""

    @pytest.mark.parametrize(
        ("change", "fragment"),
        [
            ({"platform": "web"}, "platform"),
            ({"voipToken": "a/b"}, "voipToken"),
            ({"appVersion": "1" * 65}, "appVersion"),
            ({"updatedAt": "yesterday"}, "updatedAt"),
            ({"displayName": "x"}, "displayName"),
        ],
    )
    def test_each_problem_named(self, change: dict[str, Any], fragment: str) -> None:
        """Each malformed field is named in the errors."""
        errors = device_errors({**doc(), **change})
        assert any(fragment in error for error in errors), errors

    def test_valid_device_has_no_errors(self) -> None:
        """A well-formed iPhone document passes."""
        assert device_errors({**doc(), "appVersion": "2.0"}) == []


class TestDevicesOf:
    """Device documents first (by id), then the legacy tokens of users/{uid} unless a device holds them."""

    def test_documents_then_legacy(self) -> None:
        """Three devices and a legacy Android token make four devices, the legacy last."""
        docs = {"b": doc("ios"), "a": doc("android", fcmToken="f2"), "c": doc("ios", voipToken="v3")}
        found = devices_of({"platform": "android", "fcmToken": "legacy"}, docs)
        assert [d.key for d in found] == ["a", "b", "c", LEGACY_KEY]

    def test_legacy_token_also_in_a_device_rings_once(self) -> None:
        """An app writing both its user document and its device document is one device."""
        found = devices_of({"platform": "ios", "voipToken": "v1"}, {"phone": doc("ios")})
        assert [d.key for d in found] == ["phone"]

    @pytest.mark.parametrize(
        "bad", [{"platform": "web", "fcmToken": "f"}, {"platform": "ios", "voipToken": "a/b"}, {"platform": "ios"}]
    )
    def test_unusable_documents_skipped(self, bad: dict[str, Any]) -> None:
        """No platform, only malformed tokens or no token at all: not a device."""
        assert devices_of(None, {"x": bad}) == []


class TestPrunePlan:
    """Stale devices go, then the oldest beyond the cap."""

    def test_stale_and_excess_dropped(self) -> None:
        """With a cap of 2: the 61-day-old and the third freshest go, the two freshest stay."""
        docs = {"old": doc(days_old=61), "d1": doc(days_old=1), "d2": doc(days_old=2), "d3": doc(days_old=3)}
        plan = prune_plan(docs, NOW, TTL, 2)
        assert sorted(plan.keep) == ["d1", "d2"] and plan.drop == ("d3", "old")

    def test_missing_updated_at_is_stale(self) -> None:
        """Only an admin can write a device without updatedAt; it is pruned rather than kept forever."""
        plan = prune_plan({"x": {"platform": "ios", "voipToken": "v"}}, NOW, TTL, 10)
        assert plan.keep == {} and plan.drop == ("x",)


STOP_DEVICES = (
    Device("phone", "ios", {"apnsToken": "a"}),
    Device("tablet", "android", {"fcmToken": "f"}),
    Device(LEGACY_KEY, "ios", {"apnsToken": "b"}),
)


class TestStopRecipients:
    """Cancelled and missed stop every device; an answer stops all but the answering one."""

    @pytest.mark.parametrize(
        ("status", "answered_on", "expected"),
        [
            ("cancelled", None, ["phone", "tablet", LEGACY_KEY]),
            ("missed", "phone", ["phone", "tablet", LEGACY_KEY]),
            ("accepted", "phone", ["tablet", LEGACY_KEY]),
            ("declined", "tablet", ["phone", LEGACY_KEY]),
            ("accepted", None, ["phone", "tablet"]),
            ("accepted", 7, ["phone", "tablet"]),
        ],
    )
    def test_recipients(self, status: str, answered_on: Any, expected: list[str]) -> None:
        """Without a usable answeredOn the answering app is a v1 app: the legacy device."""
        assert [d.key for d in stop_recipients(STOP_DEVICES, status, answered_on)] == expected


class TestPushSummary:
    """pushSent / pushPlatform / pushError over every device's record."""

    def test_one_accepted_is_sent(self) -> None:
        """A dead first device and a live second one: sent, with the accepting device's platform."""
        records = [
            push_record(PushResult(False, "ios", "apns:410:Unregistered", token_invalid=True), "ios", NOW),
            push_record(PushResult(True, "android"), "android", NOW),
        ]
        assert records[0]["result"] == "dead_token"
        assert push_summary(records) == (True, "android", None)

    def test_none_accepted_reports_the_first(self) -> None:
        """Nothing accepted: the first device's platform and error."""
        records = [push_record(PushResult(False, "ios", "apns:500"), "ios", NOW)]
        assert push_summary(records) == (False, "ios", "apns:500")

    def test_no_device(self) -> None:
        """No device at all is no_device_token, with no platform."""
        assert push_summary([]) == (False, None, "no_device_token")

    def test_targets_per_kind(self) -> None:
        """An iPhone rings on its VoIP token and stops on its regular one; Android uses FCM for both."""
        found = devices_of(None, {"p": doc("ios"), "t": doc("android")})
        ring = resolve_targets("bob", found, "incoming_call")
        stop = resolve_targets("bob", found, "call_ended")
        assert [(t.device, t.token_field) for t in ring] == [("p", "voipToken"), ("t", "fcmToken")]
        assert [(t.device, t.token_field) for t in stop] == [("p", "apnsToken"), ("t", "fcmToken")]


class TestDeviceSettings:
    """MEMHARBOR_DEVICE_TTL_DAYS and MEMHARBOR_MAX_DEVICES_PER_USER."""

    def test_defaults(self) -> None:
        """60 days and 10 devices unless set."""
        settings = watcher_settings({"FIREBASE_PROJECT_ID": "demo-devices"})
        assert (settings.device_ttl_days, settings.max_devices_per_user) == (60.0, 10)

    def test_set(self) -> None:
        """Both are read from the environment."""
        values = {"FIREBASE_PROJECT_ID": "demo-devices", "MEMHARBOR_DEVICE_TTL_DAYS": "30"}
        settings = watcher_settings({**values, "MEMHARBOR_MAX_DEVICES_PER_USER": "3"})
        assert (settings.device_ttl_days, settings.max_devices_per_user) == (30.0, 3)

    @pytest.mark.parametrize(
        ("name", "value"), [("MEMHARBOR_DEVICE_TTL_DAYS", "0"), ("MEMHARBOR_MAX_DEVICES_PER_USER", "0")]
    )
    def test_out_of_range_refused(self, name: str, value: str) -> None:
        """A TTL under a day or a cap under one device stops start-up naming the variable."""
        with pytest.raises(SettingsError, match=name):
            watcher_settings({"FIREBASE_PROJECT_ID": "demo-devices", name: value})
