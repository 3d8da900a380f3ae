"""The recorder's session store runs its Firestore operations through the shared Guard."""

from __future__ import annotations

import asyncio

import pytest
from google.api_core import exceptions as gexc

from memharbor.errors import Unavailable
from recorder.store import SessionStore
from tests.support.fake_firestore import FakeFirestore


class TestSessionStoreGuard:
    """Outages and hangs come out of the store as Unavailable, within its time bound."""

    async def test_outage_is_unavailable(self) -> None:
        """A Google API error from the client is raised as Unavailable naming it."""
        store = SessionStore(FakeFirestore(fail_with=gexc.ServiceUnavailable("down")), "me", 20.0, 999999)
        with pytest.raises(Unavailable, match="ServiceUnavailable"):
            await store.in_progress()

    async def test_hang_is_unavailable_within_the_time_bound(self) -> None:
        """A read that never answers ends as Unavailable once `timeout_s` has passed."""
        store = SessionStore(FakeFirestore(hang=True), "me", 20.0, 999999, timeout_s=0.05)
        async with asyncio.timeout(5):
            with pytest.raises(Unavailable, match="TimeoutError"):
                await store.in_progress()

    async def test_sessions_are_read_with_their_ids(self) -> None:
        """The sweep's read returns (sid, document) pairs."""
        db = FakeFirestore(docs={"recordings/s1": {"status": "requested", "channel": "c"}})
        assert await SessionStore(db, "me", 20.0, 999999).in_progress() == [
            ("s1", {"status": "requested", "channel": "c"})
        ]
