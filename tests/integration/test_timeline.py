"""The per-call timeline on the Firestore emulator: the repository, the admin route of a real token_http process,
and `memharbor inspect` run as a real command."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore

from memharbor.emulators import EmulatorSet, free_port
from memharbor.errors import InvalidInput
from memharbor.repositories import timeline as timeline_repo
from memharbor.repositories.client import close_async_client
from memharbor.repositories.timeline import CALL_SERVER, EVENTS, FirestoreTimeline, add_events
from memharbor.settings import child_environment
from memharbor.timeline import Event, EventKind, to_json
from tests.support.http_process import Api
from tests.support.openapi_shapes import OPENAPI_PATH, ResponseShapes

CALL_ID = "timeline-call-1"
OTHER_CALL = "timeline-call-2"
CALLER, RECEIVER = "alice-uid", "mom-uid"
TIMELINE_PATH = "/api/admin/calls/{call_id}/timeline"


@pytest.fixture
async def adb(clean_emulators: EmulatorSet) -> AsyncIterator[firestore.AsyncClient]:
    """An asyncio admin client on the wiped emulator."""
    client = firestore.AsyncClient(project=clean_emulators.project_id)
    yield client
    await close_async_client(client)


@pytest.fixture
def store(adb: firestore.AsyncClient) -> FirestoreTimeline:
    """The timeline repository over the admin client."""
    return FirestoreTimeline(lambda: adb)


def event(kind: EventKind, t: float, **detail: Any) -> Event:
    """An event of the watcher `watcher-it` at worker time `t`."""
    return Event(kind, detail, "watcher-it", t)


async def seed_call(adb: firestore.AsyncClient, call_id: str = CALL_ID, **extra: Any) -> datetime:
    """A missed call from alice to mom, its server document with a dead-token push, and a failed recording."""
    created = datetime.now(UTC) - timedelta(seconds=61)
    await (
        adb.collection("calls")
        .document(call_id)
        .set(
            {
                "callId": call_id,
                "groupId": "family",
                "callerId": CALLER,
                "receiverId": RECEIVER,
                "status": "missed",
                "createdAt": created,
                "updatedAt": created,
                "endedAt": created + timedelta(seconds=60),
                "channelName": f"family_{call_id}",
                "pushSent": False,
                "pushPlatform": "ios",
                "pushError": "BadDeviceToken",
                **extra,
            }
        )
    )
    pushes = {
        "pending": {"ipad": {"platform": "ios", "result": "dead_token", "error": "BadDeviceToken", "at": created}}
    }
    await adb.collection(CALL_SERVER).document(call_id).set({"callId": call_id, "status": "missed", "pushes": pushes})
    await (
        adb.collection("recordings")
        .document(f"call-{call_id}")
        .set({"callId": call_id, "channel": f"family_{call_id}", "status": "failed", "error": "call no longer active"})
    )
    return created


async def seed_story(adb: firestore.AsyncClient, store: FirestoreTimeline) -> None:
    """The call, and the watcher's steps on it in three commits (the first holds two events)."""
    created = await seed_call(adb)
    t = created.timestamp()
    await store.append(
        CALL_ID, [event(EventKind.CALL_SEEN, t + 0.1, status="pending"), event(EventKind.CHANNEL_ASSIGNED, t + 0.2)]
    )
    await store.append(
        CALL_ID,
        [
            event(
                EventKind.PUSH_FAILED,
                t + 0.4,
                device="ipad",
                platform="ios",
                result="dead_token",
                reason="BadDeviceToken",
            )
        ],
    )
    await store.append(CALL_ID, [event(EventKind.RING_TIMEOUT, t + 60.1, lateMs=100)])


class TestRepository:
    """FirestoreTimeline and add_events against the emulator."""

    async def test_round_trip(self, adb: firestore.AsyncClient, store: FirestoreTimeline) -> None:
        """Appended events read back in order with server times; the call, server document and recording with them."""
        await seed_story(adb, store)
        await adb.collection("recordings").document("other").set({"callId": OTHER_CALL, "status": "stopped"})
        timeline = await store.read(CALL_ID)
        assert timeline is not None
        kinds = [e.kind for e in timeline.events]
        assert kinds == [EventKind.CALL_SEEN, EventKind.CHANNEL_ASSIGNED, EventKind.PUSH_FAILED, EventKind.RING_TIMEOUT]
        assert all(e.at is not None and e.worker == "watcher-it" and e.malformed == () for e in timeline.events)
        assert timeline.events[0].at == timeline.events[1].at  # one commit, one server time: t orders them
        assert timeline.events[2].detail["reason"] == "BadDeviceToken"
        assert (timeline.call.status, timeline.call.receiver_id, timeline.call.push_error) == (
            "missed",
            RECEIVER,
            "BadDeviceToken",
        )
        assert timeline.server is not None and [p.device for p in timeline.server.pushes] == ["ipad"]
        assert [r.sid for r in timeline.recordings] == [f"call-{CALL_ID}"]
        assert not timeline.events_truncated

    async def test_events_in_the_callers_batch(self, adb: firestore.AsyncClient, store: FirestoreTimeline) -> None:
        """add_events puts events into a batch that also carries the caller's own write; one commit lands both."""
        await seed_call(adb)
        batch = adb.batch()
        batch.update(adb.collection(CALL_SERVER).document(CALL_ID), {"status": "accepted"})
        add_events(batch, adb, CALL_ID, [event(EventKind.CALL_SEEN, 1.0, status="accepted")])
        assert [e async for e in adb.collection(CALL_SERVER).document(CALL_ID).collection(EVENTS).stream()] == []
        await batch.commit()
        timeline = await store.read(CALL_ID)
        assert timeline is not None and timeline.server is not None
        assert (timeline.server.status, [e.kind for e in timeline.events]) == ("accepted", [EventKind.CALL_SEEN])

    async def test_events_in_a_transaction(self, adb: firestore.AsyncClient, store: FirestoreTimeline) -> None:
        """add_events works inside a transaction too (the watcher's claims are transactions)."""
        await seed_call(adb)

        @firestore.async_transactional
        async def claim(transaction: Any) -> None:
            await adb.collection("calls").document(CALL_ID).get(transaction=transaction)
            add_events(transaction, adb, CALL_ID, [event(EventKind.CLAIM_LOST, 2.0, status="pending")])

        await claim(adb.transaction())
        timeline = await store.read(CALL_ID)
        assert timeline is not None and [e.kind for e in timeline.events] == [EventKind.CLAIM_LOST]

    async def test_missing_call_is_none(self, adb: firestore.AsyncClient, store: FirestoreTimeline) -> None:
        """A call that does not exist reads as None, even when events were stored under its id."""
        await store.append(OTHER_CALL, [event(EventKind.CALL_SEEN, 1.0)])
        assert await store.read(OTHER_CALL) is None

    async def test_malformed_id_refused(self, store: FirestoreTimeline) -> None:
        """An id that is no call id is InvalidInput before Firestore is asked."""
        with pytest.raises(InvalidInput):
            await store.read("calls/x")
        with pytest.raises(InvalidInput):
            await store.append("a/b", [event(EventKind.CALL_SEEN, 1.0)])

    async def test_junk_events_are_shown(self, adb: firestore.AsyncClient, store: FirestoreTimeline) -> None:
        """Documents an admin wrote under events, without at or with a foreign kind, read back as they are."""
        await seed_call(adb)
        events = adb.collection(CALL_SERVER).document(CALL_ID).collection(EVENTS)
        await events.document("junk1").set({"kind": 42, "detail": {"x": [1, 2]}})
        await events.document("junk2").set({"kind": "call.teleported", "worker": "script", "t": 1.0, "at": 3})
        timeline = await store.read(CALL_ID)
        assert timeline is not None
        shown = {e.id: (e.kind, e.raw_kind, e.malformed) for e in timeline.events}
        assert shown == {
            "junk1": (EventKind.UNKNOWN, "42", ("kind", "at", "worker", "t", "detail.x")),
            "junk2": (EventKind.UNKNOWN, "call.teleported", ("at",)),
        }

    async def test_bounded_read_keeps_the_earliest(
        self, adb: firestore.AsyncClient, store: FirestoreTimeline, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past MAX_EVENTS the read keeps the earliest by server time and says it was cut; append splits batches."""
        monkeypatch.setattr(timeline_repo, "MAX_EVENTS", 3)
        monkeypatch.setattr(timeline_repo, "MAX_BATCH", 2)
        await seed_call(adb)
        for second in range(5):
            await store.append(CALL_ID, [event(EventKind.PUSH_FAILED, float(second), attempt=second + 1)])
        timeline = await store.read(CALL_ID)
        assert timeline is not None and timeline.events_truncated
        assert [e.detail["attempt"] for e in timeline.events] == [1, 2, 3]
        await store.append(OTHER_CALL, [event(EventKind.CALL_SEEN, float(i)) for i in range(5)])
        written = [s async for s in adb.collection(CALL_SERVER).document(OTHER_CALL).collection(EVENTS).stream()]
        assert len(written) == 5


# ---------------------------------------------------------------------------------------------- the admin route


def served_shapes(api: Api) -> ResponseShapes:
    """The response checker of the OpenAPI document the process serves."""
    with urllib.request.urlopen(api.base + OPENAPI_PATH, timeout=10) as response:
        return ResponseShapes(json.loads(response.read()))


class TestAdminRoute:
    """GET /api/admin/calls/{call_id}/timeline on a real token_http process (Firebase ID tokens)."""

    async def test_admin_gets_the_timeline(
        self, api: Api, adb: firestore.AsyncClient, store: FirestoreTimeline
    ) -> None:
        """An admin gets 200 with the timeline as the repository reads it, within the served schema."""
        await seed_story(adb, store)
        status, body = await asyncio.to_thread(
            api.request, "GET", f"/api/admin/calls/{CALL_ID}/timeline", None, "ops", True
        )
        assert status == 200, body
        expected = await store.read(CALL_ID)
        assert expected is not None
        assert body == json.loads(json.dumps(to_json(expected)))
        served_shapes(api).check(body, TIMELINE_PATH, "GET")
        assert any("token dead" in line for line in body["explanation"])

    async def test_participant_is_refused(self, api: Api, adb: firestore.AsyncClient) -> None:
        """The call's own receiver, no admin, gets 403 with a JSON error."""
        await seed_call(adb)
        status, body = await asyncio.to_thread(
            api.request, "GET", f"/api/admin/calls/{CALL_ID}/timeline", None, RECEIVER
        )
        assert (status, body) == (403, {"error": "only admins may read call timelines"})

    async def test_missing_call_is_404(self, api: Api, clean_emulators: EmulatorSet) -> None:
        """An admin asking for a call that does not exist gets 404 naming call_id."""
        status, body = await asyncio.to_thread(
            api.request, "GET", "/api/admin/calls/no-such-call/timeline", None, "ops", True
        )
        assert (status, body["field"]) == (404, "call_id")
        served_shapes(api).check(body, TIMELINE_PATH, "GET", 404)


# ---------------------------------------------------------------------------------------------- memharbor inspect


def run_inspect(emulators: EmulatorSet, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m memharbor inspect ARGS` on the emulators (with `env` on top), to completion."""
    environment = child_environment(
        {
            **emulators.env(),
            "MEMHARBOR_ENV_FILE": "/nonexistent/memharbor-test.env",
            "MEMHARBOR_LOG_FORMAT": "json",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "memharbor", "inspect", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestInspectCommand:
    """`memharbor inspect` as a real process against the emulator."""

    async def test_table(
        self, adb: firestore.AsyncClient, store: FirestoreTimeline, clean_emulators: EmulatorSet
    ) -> None:
        """The table lists the call, its events in order and the explanation; exit 0, nothing on stderr."""
        await seed_story(adb, store)
        done = await asyncio.to_thread(run_inspect, clean_emulators, CALL_ID)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == f"call      {CALL_ID}  status missed"
        order = [
            next(i for i, line in enumerate(lines) if f"  {kind}  " in line)
            for kind in ("call.seen", "push.failed", "ring.timeout")
        ]
        assert order == sorted(order)
        assert any(line.startswith("- Device ipad (ios): the push service reported its token dead") for line in lines)

    async def test_json(
        self, adb: firestore.AsyncClient, store: FirestoreTimeline, clean_emulators: EmulatorSet
    ) -> None:
        """--json prints the same document the admin route answers with."""
        await seed_story(adb, store)
        done = await asyncio.to_thread(run_inspect, clean_emulators, CALL_ID, "--json")
        assert done.returncode == 0, done.stderr
        expected = await store.read(CALL_ID)
        assert expected is not None
        assert json.loads(done.stdout) == json.loads(json.dumps(to_json(expected)))

    async def test_missing_call_exits_1(self, clean_emulators: EmulatorSet) -> None:
        """A call that does not exist: one line on stderr, nothing on stdout, exit 1."""
        done = await asyncio.to_thread(run_inspect, clean_emulators, "no-such-call")
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == "memharbor inspect: no call no-such-call (calls/no-such-call does not exist)\n"

    def test_bad_id_exits_2(self, emulators: EmulatorSet) -> None:
        """A malformed call id is a usage error: exit 2 with argparse's message."""
        done = run_inspect(emulators, "calls/x")
        assert done.returncode == 2
        assert "usage: memharbor inspect" in done.stderr

    def test_unreachable_firestore_exits_3_without_traceback(self, emulators: EmulatorSet) -> None:
        """With nothing listening at FIRESTORE_EMULATOR_HOST: one line naming the failure, exit 3, no traceback."""
        done = run_inspect(emulators, CALL_ID, "--timeout", "1", FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}")
        assert (done.returncode, done.stdout) == (3, "")
        assert done.stderr.startswith("memharbor inspect: Firestore did not answer (")
        assert "Traceback" not in done.stderr
