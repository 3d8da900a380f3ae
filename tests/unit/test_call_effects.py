"""What a write leaves (memharbor/repositories/call_effects.py `after`): field paths, sentinels, versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from memharbor.repositories.call_effects import DELETE, SERVER_TIME, CallRead, Written, after, applied, field_parts

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
STAMP = T0 + timedelta(seconds=3)


class TestFieldParts:
    """field_parts splits a field path into names, keeping dots inside backticks."""

    @pytest.mark.parametrize(
        ("path", "parts"),
        [
            ("status", ["status"]),
            ("effects.`pending`.state", ["effects", "pending", "state"]),
            ("pushes.`missed`.`ios.voip:d1`", ["pushes", "missed", "ios.voip:d1"]),
            ("a.b.c", ["a", "b", "c"]),
        ],
    )
    def test_paths(self, path: str, parts: list[str]) -> None:
        """Each path gives its names in order, unquoted."""
        assert field_parts(path) == parts


class TestApplied:
    """applied writes fields over a copy of a document as Firestore's update does."""

    def test_nested_paths_create_maps_and_keep_siblings(self) -> None:
        """`a.b` sets one key of the map `a`, creating it when absent, and leaves the other keys."""
        doc = {"effects": {"pending": {"state": "claimed", "by": "w1"}}}
        out = applied(doc, {"effects.`pending`.state": "done", "pushes.`pending`.`d.1`": {"result": "sent"}}, None)
        assert out == {
            "effects": {"pending": {"state": "done", "by": "w1"}},
            "pushes": {"pending": {"d.1": {"result": "sent"}}},
        }

    def test_the_original_is_untouched(self) -> None:
        """The result shares no map with the document it came from."""
        doc = {"effects": {"pending": {"state": "claimed"}}}
        applied(doc, {"effects.`pending`.state": "done"}, None)
        assert doc == {"effects": {"pending": {"state": "claimed"}}}

    def test_sentinels(self) -> None:
        """SERVER_TIME becomes the write's server time, also inside maps; DELETE removes the field."""
        out = applied({"a": 1, "b": 2}, {"a": DELETE, "at": SERVER_TIME, "m": {"t": SERVER_TIME}}, STAMP)
        assert out == {"b": 2, "at": STAMP, "m": {"t": STAMP}}

    def test_a_path_through_a_scalar_replaces_it_with_a_map(self) -> None:
        """Writing `a.b` where `a` holds a string leaves `a` a map, as Firestore does."""
        assert applied({"a": "x"}, {"a.b": 1}, None) == {"a": {"b": 1}}

    def test_plain_names_are_not_split(self) -> None:
        """With paths off (a create's nested document) a key is one name, dots and all."""
        assert applied({}, {"a.b": 1}, None, paths=False) == {"a.b": 1}


class TestAfter:
    """after tells the documents and versions a write left, or None when it cannot."""

    READ = CallRead(
        "c1",
        {"status": "pending", "createdAt": T0},
        None,
        users={"bob": {"platform": "ios"}},
        versions=("call-v1", None),
    )

    def test_a_claim_that_creates_the_server_document(self) -> None:
        """The call gets its fields, the server document is created from nested paths, versions move on."""
        written = Written("call-v2", "server-v1", STAMP)
        state = after(
            self.READ, {"channelName": "ch"}, {"status": "pending", "effects.`pending`": {"state": "claimed"}}, written
        )
        assert state is not None
        assert state.call == {"status": "pending", "createdAt": T0, "channelName": "ch"}
        assert state.server == {"status": "pending", "effects": {"pending": {"state": "claimed"}}}
        assert state.versions == ("call-v2", "server-v1")
        assert (state.users, state.groups) == ({}, {})

    def test_an_unwritten_document_keeps_its_version(self) -> None:
        """A write of the server document alone leaves the call and its version as read."""
        read = CallRead("c1", {"status": "pending"}, {"effectOpen": True}, versions=("call-v1", "server-v1"))
        state = after(
            read, {}, {"effectOpen": False, "effects.`pending`.doneAt": SERVER_TIME}, Written(None, "server-v2", STAMP)
        )
        assert state is not None
        assert state.call == {"status": "pending"}
        assert state.server == {"effectOpen": False, "effects": {"pending": {"doneAt": STAMP}}}
        assert state.versions == ("call-v1", "server-v2")

    def test_a_server_time_not_returned_is_untold(self) -> None:
        """A SERVER_TIME field whose value the write did not return cannot be told."""
        assert after(self.READ, {"updatedAt": SERVER_TIME}, {}, Written("call-v2", None, None)) is None

    def test_a_missing_call_is_untold(self) -> None:
        """Fields written to a call the read did not find (the write would have failed) cannot be told."""
        read = CallRead("c1", None, None)
        assert after(read, {"status": "missed"}, {}, Written("v", None, STAMP)) is None

    def test_an_escaped_path_is_untold(self) -> None:
        """A path with a backslash escape is not followed: None rather than a guess."""
        assert after(self.READ, {"`a\\`b`": 1}, {}, Written("call-v2", None, None)) is None
