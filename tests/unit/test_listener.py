"""The watcher's listener helpers, without a server."""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, timedelta

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.document import DocumentSnapshot

from watcher.listener import by_stamp_then_name, change_feed_query


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> firestore.Client:
    """A client that never connects (no request is made in these tests)."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
    return firestore.Client(project="unit")


def _snapshot(client: firestore.Client, call_id: str, updated_at: object = None) -> DocumentSnapshot:
    ref = client.collection("calls").document(call_id)
    stamp = updated_at if updated_at is not None else datetime(2026, 1, 1, tzinfo=UTC)
    return DocumentSnapshot(ref, {"status": "pending", "updatedAt": stamp}, True, None, None, None)


class TestByStampThenName:
    """The fast comparator agrees with the client library's own for the feed query."""

    def test_same_order_as_the_library(self, client: firestore.Client) -> None:
        """Sorting by our comparator and by the library's query comparator gives the same order."""
        rng = random.Random(7)
        alphabet = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
        base = datetime(2026, 11, 28, tzinfo=UTC)
        docs = [
            # Few distinct stamps, so many ties fall through to the document name.
            _snapshot(
                client,
                "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))),
                base + timedelta(milliseconds=rng.randint(0, 20)),
            )
            for _ in range(300)
        ]
        library = client.collection("calls").order_by("updatedAt", direction=firestore.Query.DESCENDING)
        expected = sorted(docs, key=functools.cmp_to_key(library._comparator))
        ours = sorted(docs, key=functools.cmp_to_key(by_stamp_then_name))
        assert [d.id for d in ours] == [d.id for d in expected]

    def test_equal_documents_compare_equal(self, client: firestore.Client) -> None:
        """A document compares equal to itself; with equal stamps the names decide."""
        a, b = _snapshot(client, "a"), _snapshot(client, "b")
        assert by_stamp_then_name(a, a) == 0
        assert by_stamp_then_name(a, b) == -1 and by_stamp_then_name(b, a) == 1

    def test_stamp_decides_before_name(self, client: firestore.Client) -> None:
        """Different `updatedAt` stamps order the calls whatever their names."""
        old = _snapshot(client, "z", datetime(2026, 1, 1, tzinfo=UTC))
        new = _snapshot(client, "a", datetime(2026, 1, 2, tzinfo=UTC))
        assert by_stamp_then_name(old, new) == -1 and by_stamp_then_name(new, old) == 1

    def test_malformed_stamp_does_not_raise(self, client: firestore.Client) -> None:
        """An admin-written `updatedAt` of another type still gets a fixed order instead of a TypeError."""
        good, odd = _snapshot(client, "a"), _snapshot(client, "b", "yesterday")
        assert by_stamp_then_name(good, odd) == -by_stamp_then_name(odd, good) != 0

    def test_query_uses_it(self, client: firestore.Client) -> None:
        """The feed query carries the fast comparator, orders by updatedAt descending and is limited."""
        query = change_feed_query(client, window=7)
        assert query._comparator is by_stamp_then_name
        proto = str(query._to_protobuf())
        assert "updatedAt" in proto and "DESCENDING" in proto and "7" in proto
