"""The watcher's listener helpers, without a server."""

from __future__ import annotations

import functools
import random

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.document import DocumentSnapshot

from watcher.listener import active_calls_query, by_document_name


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> firestore.Client:
    """A client that never connects (no request is made in these tests)."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
    return firestore.Client(project="unit")


def _snapshot(client: firestore.Client, call_id: str) -> DocumentSnapshot:
    ref = client.collection("calls").document(call_id)
    return DocumentSnapshot(ref, {"status": "pending"}, True, None, None, None)


class TestByDocumentName:
    """The fast comparator agrees with the client library's own for our query."""

    def test_same_order_as_the_library(self, client: firestore.Client) -> None:
        """Sorting by our comparator and by the library's query comparator gives the same order."""
        rng = random.Random(7)
        alphabet = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
        ids = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(300)]
        docs = [_snapshot(client, i) for i in ids]
        library = client.collection("calls").where(filter=FieldFilter("status", "in", ["accepted", "pending"]))
        expected = sorted(docs, key=functools.cmp_to_key(library._comparator))
        ours = sorted(docs, key=functools.cmp_to_key(by_document_name))
        assert [d.id for d in ours] == [d.id for d in expected]

    def test_equal_documents_compare_equal(self, client: firestore.Client) -> None:
        """A document compares equal to itself and unequal to another."""
        a, b = _snapshot(client, "a"), _snapshot(client, "b")
        assert by_document_name(a, a) == 0
        assert by_document_name(a, b) == -1 and by_document_name(b, a) == 1

    def test_query_uses_it(self, client: firestore.Client) -> None:
        """The active-calls query carries the fast comparator and filters on active statuses."""
        query = active_calls_query(client)
        assert query._comparator is by_document_name
        assert "pending" in str(query._to_protobuf()) and "accepted" in str(query._to_protobuf())
