"""RawBatch's writes are the client library's, message for message; its ids look like the library's."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers

from memharbor.repositories.raw_writes import RawBatch, new_document_id, set_write, update_write

NAME = "projects/p/databases/(default)/documents/callServer/c1"
AT = datetime(2026, 12, 2, 9, 30, 15, 123456, tzinfo=UTC)
NANOS = DatetimeWithNanoseconds(2026, 12, 2, 9, 30, 15, nanosecond=123456789, tzinfo=UTC)

UPDATES: list[dict[str, Any]] = [
    {"status": "pending", "pushSent": True, "attempts": 3, "ratio": 0.5, "gone": None},
    {"ringDeadline": AT, "leaseUntil": NANOS, "naive": datetime(2026, 1, 1, 12, 0)},
    {"offset": datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=9)))},
    {"claims.pending.worker": "w1", "claims.pending.leaseUntil": AT, "claims.ended.worker": "w2"},
    {"pushes.`ios:abc-1`": {"ok": True, "at": AT}, "pushes.`android:x y`.attempt": 2},
    {"updatedAt": firestore.SERVER_TIMESTAMP, "error": firestore.DELETE_FIELD, "status": "missed"},
    {"lastAt": firestore.SERVER_TIMESTAMP},
    {"only": firestore.DELETE_FIELD},
    {"nested": {"a": [1, "two", {"three": 3.0}], "b": {}, "c": []}, "list": [AT, None, False]},
    {"count": firestore.Increment(1), "name": "x"},
    {"segments": firestore.ArrayUnion([{"f": "a.wav"}]), "interrupted": True},
    {"map": {"at": firestore.SERVER_TIMESTAMP, "x": 1}},
    {"bytes": b"\x00\x01", "ünïcode": "ok", "with space": 1, "`quoted.part`": 2},
    {"a.b": 1, "`a`.c": 2, "`a.b`": 3},
]

SETS: list[dict[str, Any]] = [
    {"kind": "push.sent", "device": "ios:abc", "attempt": 1, "at": firestore.SERVER_TIMESTAMP},
    {"kind": "claim", "detail": {"status": "pending", "worker": "w1"}, "at": firestore.SERVER_TIMESTAMP},
    {},
    {"with space": firestore.SERVER_TIMESTAMP, "nested": {"at": firestore.SERVER_TIMESTAMP}},
    {"list": [], "map": {}, "none": None},
]


def wire(message: Any) -> bytes:
    """A message's deterministic serialization: two equal writes give the same bytes."""
    return bytes(message.SerializeToString(deterministic=True))


class TestUpdates:
    """An update is the library's Write, with and without a precondition on the update time."""

    @pytest.mark.parametrize("fields", UPDATES)
    @pytest.mark.parametrize("version", [None, AT, NANOS])
    def test_same_write_as_the_library(self, fields: dict[str, Any], version: datetime | None) -> None:
        """The fields, mask, transforms and precondition match `pbs_for_update` exactly."""
        option = _helpers.LastUpdateOption(version) if version is not None else None
        expected = _helpers.pbs_for_update(NAME, dict(fields), option)[0]._pb
        assert wire(update_write(NAME, fields, version)) == wire(expected)

    @pytest.mark.parametrize(
        "fields", [{}, {"a": 1, "a.b": 2}, {"b.c": 1, "b": {}}, {"list": [firestore.SERVER_TIMESTAMP]}]
    )
    def test_refused_as_the_library_refuses(self, fields: dict[str, Any]) -> None:
        """An empty update, conflicting paths or a sentinel in an array raise as the library does."""
        with pytest.raises((ValueError, TypeError)) as library:
            _helpers.pbs_for_update(NAME, dict(fields), None)
        with pytest.raises(type(library.value)):
            update_write(NAME, fields)


class TestSets:
    """A set (no merge) and a create are the library's Writes."""

    @pytest.mark.parametrize("fields", SETS)
    def test_set_is_the_librarys(self, fields: dict[str, Any]) -> None:
        """A whole-document write matches `pbs_for_set_no_merge`."""
        assert wire(set_write(NAME, fields)) == wire(_helpers.pbs_for_set_no_merge(NAME, dict(fields))[0]._pb)

    @pytest.mark.parametrize("fields", SETS)
    def test_create_is_the_librarys(self, fields: dict[str, Any]) -> None:
        """A create matches `pbs_for_create`: the same write that must not find the document."""
        expected = _helpers.pbs_for_create(NAME, dict(fields))[0]._pb
        assert wire(set_write(NAME, fields, must_not_exist=True)) == wire(expected)

    def test_a_delete_in_a_set_is_refused(self) -> None:
        """DELETE_FIELD has no meaning in a whole-document write: ValueError, as from the library."""
        with pytest.raises(ValueError, match="DELETE_FIELD"):
            set_write(NAME, {"x": firestore.DELETE_FIELD})


class TestRawBatch:
    """The batch names documents as the library does and keeps its writes in order."""

    def test_writes_follow_the_calls(self) -> None:
        """Each call adds one write, named by the client's database and the reference's path."""
        client = firestore.AsyncClient(project="p", credentials=AnonymousCredentials())
        batch = RawBatch(client)
        batch.update(client.collection("calls").document("c1"), {"status": "missed"}, AT)
        batch.create(client.collection("callServer").document("c1"), {"status": "missed"})
        batch.set(client.collection("callServer").document("c1").collection("events").document("e1"), {"k": 1})
        names = [write.update.name for write in batch._writes]
        assert names == [
            "projects/p/databases/(default)/documents/calls/c1",
            "projects/p/databases/(default)/documents/callServer/c1",
            "projects/p/databases/(default)/documents/callServer/c1/events/e1",
        ]
        assert batch._writes[1].current_document.exists is False and len(batch) == 3


class TestDocumentIds:
    """Automatic ids have the library's shape and do not repeat."""

    def test_shape_and_uniqueness(self) -> None:
        """20 characters of [A-Za-z0-9], ten thousand of them all different."""
        ids = [new_document_id() for _ in range(10_000)]
        assert all(re.fullmatch(r"[A-Za-z0-9]{20}", i) for i in ids)
        assert len(set(ids)) == len(ids)

    def test_every_character_is_used(self) -> None:
        """The mapping from random bytes reaches the whole alphabet (no character is left out)."""
        assert len(set("".join(new_document_id() for _ in range(2_000)))) == 62
