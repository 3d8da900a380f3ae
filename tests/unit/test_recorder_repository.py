"""The recorder's recordings repository runs its Firestore operations through the shared Guard."""

from __future__ import annotations

import asyncio

import pytest
from google.api_core import exceptions as gexc

from memharbor.errors import Unavailable
from memharbor.repositories.recording_sessions import FirestoreRecordingSessions
from tests.support.fake_firestore import FakeFirestore


def sessions(db: FakeFirestore, timeout_s: float = 10.0) -> FirestoreRecordingSessions:
    """The repository of worker `me` over `db`."""
    return FirestoreRecordingSessions(lambda: db, "me", 20.0, 999999, timeout_s=timeout_s)


class TestRecordingSessionsGuard:
    """Outages and hangs come out of the repository as Unavailable, within its time bound."""

    async def test_outage_is_unavailable(self) -> None:
        """A Google API error from the client is raised as Unavailable naming it."""
        with pytest.raises(Unavailable, match="ServiceUnavailable"):
            await sessions(FakeFirestore(fail_with=gexc.ServiceUnavailable("down"))).in_progress()

    async def test_hang_is_unavailable_within_the_time_bound(self) -> None:
        """A read that never answers ends as Unavailable once `timeout_s` has passed."""
        async with asyncio.timeout(5):
            with pytest.raises(Unavailable, match="TimeoutError"):
                await sessions(FakeFirestore(hang=True), timeout_s=0.05).in_progress()

    async def test_sessions_are_read_with_their_ids(self) -> None:
        """The sweep's read returns (sid, document) pairs."""
        db = FakeFirestore(docs={"recordings/s1": {"status": "requested", "channel": "c"}})
        assert await sessions(db).in_progress() == [("s1", {"status": "requested", "channel": "c"})]
