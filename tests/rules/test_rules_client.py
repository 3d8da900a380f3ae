"""The REST test client itself: Firestore typed JSON encoding, and a round trip through the emulator."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.rules.rules_support import World
from tests.support.firestore_rest import decode_value, encode_value, parse_timestamp

MOMENT = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
VALUES: dict[str, Any] = {
    "none": None,
    "yes": True,
    "no": False,
    "int": -(2**62),
    "float": 1.5,
    "text": "h\u00e9llo \U0001f600",
    "list": [1, "two", None, {"k": False}],
    "empty_list": [],
    "map": {"inner": {"deeper": [3.25]}, "empty": {}},
    "when": MOMENT,
    "bytes": b"\x00\xff",
}


class TestFirestoreRestValues:
    """Python values survive encoding to Firestore typed JSON and back."""

    @pytest.mark.parametrize("name", sorted(VALUES))
    def test_round_trip_locally(self, name: str) -> None:
        """decode_value(encode_value(v)) == v for every supported type."""
        assert decode_value(encode_value(VALUES[name])) == VALUES[name]

    def test_bool_is_not_an_int(self) -> None:
        """True encodes as a boolean, not as the integer 1."""
        assert encode_value(True) == {"booleanValue": True}
        assert encode_value(1) == {"integerValue": "1"}

    def test_special_floats(self) -> None:
        """NaN and infinities use Firestore's string forms."""
        assert encode_value(float("inf")) == {"doubleValue": "Infinity"}
        assert math.isnan(decode_value(encode_value(float("nan"))))

    def test_naive_and_offset_datetimes(self) -> None:
        """A naive datetime is UTC; an offset one is converted to UTC; nanoseconds are truncated."""
        assert encode_value(datetime(2025, 1, 1)) == {"timestampValue": "2025-01-01T00:00:00.000000Z"}
        plus_two = datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
        assert encode_value(plus_two) == {"timestampValue": "2025-01-01T00:00:00.000000Z"}
        assert parse_timestamp("2025-01-01T00:00:00.123456789Z") == datetime(2025, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
        assert parse_timestamp("2025-01-01T02:00:00+02:00") == datetime(2025, 1, 1, tzinfo=UTC)

    def test_unsupported_type(self) -> None:
        """An object Firestore cannot store is refused with TypeError."""
        with pytest.raises(TypeError):
            encode_value(object())

    def test_round_trip_through_emulator(self, world: World) -> None:
        """A document written with every type reads back equal, and server_time sets the request time."""
        assert world.owner.create("misc/doc", VALUES, server_time=["stamped"]).ok
        stored = world.stored("misc/doc")
        assert stored is not None
        stamped = stored.pop("stamped")
        assert stored == VALUES
        assert abs(datetime.now(UTC) - stamped) < timedelta(minutes=5)

    def test_create_fails_on_existing_and_update_on_missing(self, world: World) -> None:
        """create requires absence and update requires existence, as the commit preconditions say."""
        assert world.owner.create("misc/doc", {"a": 1}).ok
        assert world.owner.create("misc/doc", {"a": 2}).status == 409
        assert world.owner.update("misc/missing", {"a": 1}).status == 404
        assert world.owner.update("misc/doc", {"b": 2}, delete=["a"]).ok
        assert world.stored("misc/doc") == {"b": 2}
