"""Security rules: users/{uid}/devices/{deviceId} (memharbor.devices) and the receiver's `answeredOn`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from memharbor import calls, devices
from memharbor.calls import Status
from tests.rules.rules_support import CALL_ID, CALLER, World

DEVICE_PATH = f"users/{CALLER}/devices/phone-1"
IPHONE: dict[str, Any] = {"platform": "ios", "voipToken": "voip-abc", "apnsToken": "apns-abc", "appVersion": "2.1.0"}
STAMP = ["updatedAt"]
INVALID_AT = datetime(2025, 1, 1, tzinfo=UTC)
RULES = re.sub(r"//[^\n]*", "", (Path(__file__).resolve().parents[2] / "rules" / "firestore.rules").read_text())
CALL_PATH = f"calls/{CALL_ID}"


class TestDeviceRulesSource:
    """The device field list in firestore.rules mirrors memharbor.devices."""

    def test_device_fields_mirror_the_module(self) -> None:
        """deviceFields() lists exactly devices.DEVICE_FIELDS."""
        match = re.search(r"function deviceFields\(\)\s*\{\s*return\s*\[([^\]]*)\];", RULES)
        assert match is not None
        assert set(re.findall(r"'([^']*)'", match.group(1))) == devices.DEVICE_FIELDS


class TestDevices:
    """Only the owner writes their devices, typed and bounded, stamped with the request time."""

    @pytest.mark.parametrize(
        "doc",
        [IPHONE, {"platform": "android", "fcmToken": "fcm:tok-1"}, {"platform": "ios", "voipToken": "v"}],
        ids=["iphone", "android", "voip-only"],
    )
    def test_owner_registers_a_device(self, world: World, doc: dict[str, Any]) -> None:
        """A well-formed device of either platform is accepted and reads back with a server updatedAt."""
        assert world.client("caller").create(DEVICE_PATH, doc, server_time=STAMP).ok
        stored = world.stored(DEVICE_PATH)
        assert stored is not None and isinstance(stored["updatedAt"], datetime)
        assert devices.device_errors(stored) == []

    @pytest.mark.parametrize(
        ("change", "why"),
        [
            ({"platform": "web"}, "unknown platform"),
            ({"platform": None}, "no platform"),
            ({"voipToken": "a/b"}, "token with a slash"),
            ({"fcmToken": "x" * 1001}, "token too long"),
            ({"apnsToken": 7}, "token not a string"),
            ({"appVersion": "9" * 65}, "appVersion too long"),
            ({"displayName": "Bob"}, "a user field, not a device field"),
            ({"pushTokenInvalidAt": INVALID_AT}, "the server's field"),
        ],
    )
    def test_malformed_device_denied(self, world: World, change: dict[str, Any], why: str) -> None:
        """Each malformed or foreign field is refused on create (and is what device_errors reports)."""
        doc = {**IPHONE, **change}
        assert world.client("caller").create(DEVICE_PATH, doc, server_time=STAMP).denied, why
        assert world.stored(DEVICE_PATH) is None
        assert devices.device_errors({**doc, "updatedAt": INVALID_AT}) or "pushTokenInvalidAt" in change

    def test_client_chosen_updated_at_denied(self, world: World) -> None:
        """updatedAt must be the request time: pruning trusts it, so an app cannot keep a device alive forever."""
        user = world.client("caller")
        assert user.create(DEVICE_PATH, {**IPHONE, "updatedAt": datetime(2999, 1, 1, tzinfo=UTC)}).denied
        assert user.create(DEVICE_PATH, IPHONE).denied
        assert user.create(DEVICE_PATH, IPHONE, server_time=STAMP).ok
        assert user.update(DEVICE_PATH, {"voipToken": "voip-2"}).denied
        assert user.update(DEVICE_PATH, {"voipToken": "voip-2"}, server_time=STAMP).ok

    def test_malformed_device_id_denied(self, world: World) -> None:
        """A device id outside calls.ID_PATTERN (a dot, or 129 characters) is refused."""
        for device_id in ("phone.1", "d" * 129):
            path = f"users/{CALLER}/devices/{device_id}"
            assert world.client("caller").create(path, IPHONE, server_time=STAMP).denied

    @pytest.mark.parametrize("principal", ["receiver", "stranger", "anonymous"])
    def test_others_neither_read_nor_write(self, world: World, principal: str) -> None:
        """Nobody but the owner reads, lists, writes or deletes a device."""
        world.seed(DEVICE_PATH, {**IPHONE, "updatedAt": INVALID_AT})
        other = world.client(principal)
        assert other.get(DEVICE_PATH).denied
        assert other.update(DEVICE_PATH, {"voipToken": "mine"}, server_time=STAMP).denied
        assert other.delete(DEVICE_PATH).denied
        assert world.stored(DEVICE_PATH) is not None

    def test_owner_keeps_server_field_and_may_delete(self, world: World) -> None:
        """The owner may refresh a device the server marked, not change the mark, and may delete the device."""
        world.seed(DEVICE_PATH, {**IPHONE, "updatedAt": INVALID_AT, "pushTokenInvalidAt": INVALID_AT})
        user = world.client("caller")
        assert user.update(DEVICE_PATH, {"voipToken": "voip-new"}, server_time=STAMP).ok
        assert user.update(DEVICE_PATH, {}, delete=["pushTokenInvalidAt"], server_time=STAMP).denied
        assert user.get(DEVICE_PATH).data["voipToken"] == "voip-new"
        assert user.delete(DEVICE_PATH).ok
        assert world.stored(DEVICE_PATH) is None


class TestAnsweredOn:
    """The receiver may name the answering device with accepted/declined; nobody else, nowhere else."""

    @pytest.mark.parametrize("target", [Status.ACCEPTED, Status.DECLINED])
    def test_receiver_answers_naming_the_device(self, world: World, target: Status) -> None:
        """accepted/declined with answeredOn is allowed to the receiver and stored."""
        world.seed_call()
        fields = {"status": target.value, calls.ANSWERED_ON: "phone-1"}
        assert world.client("receiver").update(CALL_PATH, fields, server_time=["answeredAt", "updatedAt"]).ok
        stored = world.stored(CALL_PATH)
        assert stored is not None and stored[calls.ANSWERED_ON] == "phone-1"

    @pytest.mark.parametrize(
        ("principal", "source", "target", "value"),
        [
            ("caller", Status.PENDING, Status.ACCEPTED, "phone-1"),
            ("receiver", Status.PENDING, Status.ACCEPTED, "a/b"),
            ("receiver", Status.PENDING, Status.ACCEPTED, 3),
            ("receiver", Status.ACCEPTED, Status.ENDED, "phone-1"),
            ("caller", Status.PENDING, Status.CANCELLED, "phone-1"),
        ],
    )
    def test_answered_on_elsewhere_denied(
        self, world: World, principal: str, source: Status, target: Status, value: Any
    ) -> None:
        """Not the receiver, not a device id, or not with an answer: refused."""
        world.seed_call(source)
        stamp = calls.find_transition(source.value, target.value)
        assert stamp is not None
        fields = {"status": target.value, calls.ANSWERED_ON: value}
        result = world.client(principal).update(CALL_PATH, fields, server_time=[stamp.stamp, "updatedAt"])
        assert result.denied
        stored = world.stored(CALL_PATH)
        assert stored is not None and stored["status"] == source.value
