"""The raw-protobuf reads and writes against the Firestore emulator: the same documents as the library's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore

from memharbor.emulators import EmulatorSet
from memharbor.repositories.client import close_async_client
from memharbor.repositories.raw_reads import get_documents
from memharbor.repositories.raw_writes import RawBatch

AT = datetime(2026, 12, 2, 9, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture
async def adb(clean_emulators: EmulatorSet) -> AsyncIterator[firestore.AsyncClient]:
    """An asyncio admin client on the wiped emulator."""
    client = firestore.AsyncClient(project=clean_emulators.project_id)
    yield client
    await close_async_client(client)


def every_kind(adb: firestore.AsyncClient) -> dict[str, Any]:
    """A document with a field of every value type Firestore stores."""
    return {
        "text": "héllo",
        "whole": -(2**40),
        "real": 0.25,
        "yes": True,
        "nothing": None,
        "when": AT,
        "raw": b"\x00\xff",
        "where": firestore.GeoPoint(37.5, 127.0),
        "ref": adb.collection("users").document("mom"),
        "map": {"a": {"b": [1, "x", {"c": AT}]}, "empty": {}},
        "list": [],
        "with space": 1,
    }


class TestGetDocuments:
    """get_documents reads what get_all reads: the same fields, update times and missing documents."""

    async def test_same_as_get_all(self, adb: firestore.AsyncClient) -> None:
        """Every value type and a missing document read as the library reads them."""
        await adb.collection("calls").document("c1").set(every_kind(adb))
        await adb.collection("calls").document("c2").set({"status": "pending"})
        refs = [adb.collection("calls").document(i) for i in ("c1", "c2", "gone")]
        library = {snap.reference.path: snap async for snap in adb.get_all(refs)}
        ours = await get_documents(adb, refs)
        assert set(ours) == set(library) == {"calls/c1", "calls/c2", "calls/gone"}
        for path, snap in library.items():
            assert ours[path].exists == snap.exists
            assert ours[path].data == (snap.to_dict() if snap.exists else None)
            assert ours[path].update_time == snap.update_time
        assert ours["calls/c1"].data is not None and ours["calls/c1"].data["ref"].path == "users/mom"


class TestRawBatch:
    """A RawBatch commit lands as written and honours its preconditions."""

    async def test_fields_transforms_and_deletes_land(self, adb: firestore.AsyncClient) -> None:
        """An update of nested paths, a server timestamp and a delete, with a created document beside it."""
        ref = adb.collection("callServer").document("c1")
        await ref.set({"claims": {"ended": {"worker": "w0"}}, "stale": 1})
        version = (await ref.get()).update_time
        batch = RawBatch(adb)
        update = {"claims.pending.worker": "w1", "at": firestore.SERVER_TIMESTAMP, "stale": firestore.DELETE_FIELD}
        batch.update(ref, update, version)
        batch.create(adb.collection("calls").document("new"), {"kind": "x", "at": firestore.SERVER_TIMESTAMP})
        results = await batch.commit()
        doc = (await ref.get()).to_dict() or {}
        assert doc["claims"] == {"ended": {"worker": "w0"}, "pending": {"worker": "w1"}} and "stale" not in doc
        assert isinstance(doc["at"], datetime) and len(results) == 2
        assert results[0].update_time == (await ref.get()).update_time

    async def test_a_stale_version_is_refused(self, adb: firestore.AsyncClient) -> None:
        """A write guarded by a version the document has moved past fails with FailedPrecondition."""
        ref = adb.collection("calls").document("c1")
        await ref.set({"status": "pending"})
        version = (await ref.get()).update_time
        await ref.update({"status": "accepted"})
        batch = RawBatch(adb)
        batch.update(ref, {"status": "missed"}, version)
        with pytest.raises(gexc.FailedPrecondition):
            await batch.commit()
        assert (await ref.get()).get("status") == "accepted"

    async def test_create_of_an_existing_document_is_refused(self, adb: firestore.AsyncClient) -> None:
        """A create meets an existing document with AlreadyExists, and writes nothing of the batch."""
        await adb.collection("calls").document("c1").set({"status": "pending"})
        await adb.collection("callServer").document("c1").set({"status": "pending"})
        batch = RawBatch(adb)
        batch.update(adb.collection("calls").document("c1"), {"status": "missed"})
        batch.create(adb.collection("callServer").document("c1"), {"status": "ended"})
        with pytest.raises(gexc.AlreadyExists):
            await batch.commit()
        assert (await adb.collection("calls").document("c1").get()).get("status") == "pending"
