"""token_http's cap of live recording requests per user, end to end: `memharbor http` on the Firestore
emulator with real ID tokens and a stand-in recorder (tests/support/recorder_thread.py).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from memharbor.emulators import EmulatorSet
from tests.support.firestore_rest import FirestoreRest
from tests.support.http_process import Api
from tests.support.recorder_thread import StandInRecorder

# Short uids so that twenty legacy channels {groupId}_{user1}_{user2} stay under Agora's 64 bytes;
# users of their own, so this module's requests spend no other test's rate budget.
CAROL, DAVE = "carol-uid-abuse", "dave-uid-abuse"
CAP = 3  # MEMHARBOR_MAX_LIVE_RECORDINGS_PER_USER's default


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[FirestoreRest]:
    """The emptied Firestore emulator as the owner (bypassing the rules)."""
    client = FirestoreRest(clean_emulators.firestore.address, clean_emulators.project_id).as_owner()
    yield client
    client.close()


def _start_with_headers(api: Api, channel: str, uid: str) -> tuple[int, dict[str, str], dict[str, str]]:
    request = urllib.request.Request(
        api.base + "/api/recording/start",
        data=json.dumps({"channel": channel}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api.token(uid)}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return int(response.status), dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers), json.loads(exc.read())


class TestLiveRecordingCap:
    """One user's parallel starts on call-less legacy channels queue at most the cap of requests."""

    def test_twenty_parallel_legacy_starts_leave_at_most_the_cap(
        self, api: Api, db: FirestoreRest, recorder: StandInRecorder
    ) -> None:
        """Twenty simultaneous starts by one user on twenty legacy channels: three recordings, seventeen 429s."""
        channels = [f"g{n}_{CAROL}_{DAVE}" for n in range(20)]
        for n in range(22):  # the groups the legacy channels name, as the app keeps them
            assert db.set(f"groups/g{n}", {"memberIds": [CAROL, DAVE]}).ok
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda c: api.post("/api/recording/start", {"channel": c}, CAROL), channels))
        statuses = sorted(status for status, _ in answers)
        assert statuses == [200] * CAP + [429] * (20 - CAP), answers
        refused = [body for status, body in answers if status == 429]
        assert all(body["field"] == "channel" for body in refused)
        documents = db.query("recordings").documents
        assert len(documents) == CAP
        assert {doc["requestedBy"] for doc in documents} == {CAROL}

        status, headers, _ = _start_with_headers(api, f"g20_{CAROL}_{DAVE}", CAROL)
        assert status == 429 and int(headers["Retry-After"]) >= 1
        status, _, _ = _start_with_headers(api, f"g21_{DAVE}_{CAROL}", DAVE)
        assert status == 200
        assert len(db.query("recordings").documents) == CAP + 1
