"""Worker heartbeats written through the workers repository, on an in-memory Firestore stand-in."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.api_core import exceptions as gexc
from structlog.testing import capture_logs

from memharbor.errors import Unavailable
from memharbor.heartbeat import Heartbeat
from tests.support.fake_firestore import FakeFirestore


class TestHeartbeat:
    """One `workers/{instanceId}` document per instance: written on each beat, deleted on retire."""

    async def test_beat_writes_the_instance_document(self) -> None:
        """A beat writes kind, instance id, status, and an expiry three intervals after the beat."""
        db = FakeFirestore()
        await Heartbeat(db, "recorder", "rec-1", 5.0, lambda: {"sessions": 2}).beat()
        doc = db.docs["workers/rec-1"]
        assert (doc["kind"], doc["instanceId"], doc["status"]) == ("recorder", "rec-1", {"sessions": 2})
        assert doc["expiresAt"] - doc["beatAt"] == timedelta(seconds=15)

    async def test_retire_deletes_the_document(self) -> None:
        """After retire the instance no longer has a heartbeat document."""
        db = FakeFirestore()
        heartbeat = Heartbeat(db, "watcher", "w-1", 5.0)
        await heartbeat.beat()
        await heartbeat.retire()
        assert "workers/w-1" not in db.docs

    async def test_outage_is_unavailable_on_beat_and_swallowed_on_retire(self) -> None:
        """A failing Firestore makes a beat raise Unavailable; retire only logs it and leaves the document."""
        db = FakeFirestore(docs={"workers/w-1": {"kind": "watcher"}})
        heartbeat = Heartbeat(db, "watcher", "w-1", 5.0)
        db.fail_with = gexc.ServiceUnavailable("down")
        with pytest.raises(Unavailable, match="ServiceUnavailable"):
            await heartbeat.beat()
        await heartbeat.retire()
        assert db.docs["workers/w-1"] == {"kind": "watcher"}

    async def test_try_beat_logs_an_outage_instead_of_raising(self) -> None:
        """A first beat against a database that does not answer is logged and reported False, not raised."""
        db = FakeFirestore(fail_with=gexc.ServiceUnavailable("down"))
        with capture_logs() as logs:
            assert await Heartbeat(db, "watcher", "w-1", 5.0).try_beat() is False
        assert [(e["event"], e["kind"]) for e in logs] == [("heartbeat.failed", "watcher")]
        db.fail_with = None
        assert await Heartbeat(db, "watcher", "w-1", 5.0).try_beat() is True
        assert db.docs["workers/w-1"]["kind"] == "watcher"
