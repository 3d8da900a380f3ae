"""/metrics, /livez and /readyz of real processes on the emulators, after real traffic.

token_http runs with two workers: each scrape reaches one of them and must report both. The recorder
serves its metrics on MEMHARBOR_METRICS_PORT while it records simulated participants.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore

from memharbor.emulators import EmulatorSet, ManagedProcess, free_port
from memharbor.settings import child_environment
from tests.support.groups import seed_group
from tests.support.prometheus import Samples, call, scrape
from tests.support.recorders import RecorderProcess
from tests.support.recording_sessions import TWO_TONES, request, session, stop, wait_status
from tests.support.waiting import wait_for

REQUESTS = "memharbor_http_request_duration_seconds_count"


def requests_of(samples: Samples, route: str, method: str, status: int) -> float:
    """How many requests of one route, method and status the scrape counted (0 when none)."""
    labels = (("method", method), ("route", route), ("status", str(status)))
    return samples.get((REQUESTS, labels), 0.0)


@pytest.fixture(scope="module")
def http_base(emulators: EmulatorSet) -> Iterator[str]:
    """`memharbor http` with two workers in open mode (MEMHARBOR_AUTH=none), ready by its own /readyz."""
    port = free_port()
    env = child_environment(
        {
            **emulators.env(),
            "AGORA_APP_ID": "0123456789abcdef0123456789abcdef",
            "AGORA_APP_CERT": "fedcba9876543210fedcba9876543210",
            "MEMHARBOR_HTTP_HOST": "127.0.0.1",
            "MEMHARBOR_HTTP_PORT": str(port),
            "MEMHARBOR_HTTP_WORKERS": "2",
            "MEMHARBOR_AUTH": "none",
            "MEMHARBOR_LOG_FORMAT": "json",
            "MEMHARBOR_ENV_FILE": "/nonexistent/memharbor-test.env",
        }
    )
    argv = [sys.executable, "-m", "memharbor", "http"]
    process = ManagedProcess("token_http", argv, "127.0.0.1", port, "/readyz", env)
    process.start(timeout=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


class TestTokenHttpMetrics:
    """Two workers, one scrape: the counts of both, by route pattern and status."""

    def test_one_scrape_reports_both_workers_after_a_call_flow(
        self, http_base: str, clean_emulators: EmulatorSet
    ) -> None:
        """An invite, its status and cancel, then tokens until both workers answered: one scrape counts all."""
        client = firestore.Client(project=clean_emulators.project_id)
        seed_group(client)
        client.close()
        before = scrape(http_base)
        status, _, body = call(
            http_base, "POST", "/api/call/invite", {"group_id": "group1", "caller_id": "alice", "receiver_id": "bob"}
        )
        assert status == 200, body
        call_id = json.loads(body)["callId"]
        assert call(http_base, "GET", f"/api/call/status/{call_id}")[0] == 200
        assert call(http_base, "POST", "/api/call/cancel", {"call_id": call_id})[0] == 200
        assert call(http_base, "GET", "/no/such/route")[0] == 404
        # Each request opens a new connection; SO_REUSEPORT spreads them, and a request id's first half
        # names the worker process that answered.
        per_worker: dict[str, int] = {}
        while len(per_worker) < 2 or sum(per_worker.values()) < 10:
            status, headers, _ = call(http_base, "POST", "/api/token", {"channel": "group1_alice_bob", "uid": 7})
            assert status == 200
            worker = headers["X-Request-ID"][:16]
            per_worker[worker] = per_worker.get(worker, 0) + 1
            assert sum(per_worker.values()) < 200, "every request reached the same worker"
        after = scrape(http_base)

        def moved(route: str, method: str, status: int) -> float:
            return requests_of(after, route, method, status) - requests_of(before, route, method, status)

        tokens = sum(per_worker.values())
        assert max(per_worker.values()) < tokens
        assert moved("/api/token", "POST", 200) == tokens
        assert moved("/api/call/invite", "POST", 200) == 1
        assert moved("/api/call/status/{call_id}", "GET", 200) == 1
        assert moved("/api/call/cancel", "POST", 200) == 1
        assert moved("unmatched", "GET", 404) == 1
        routes = {dict(labels).get("route") for name, labels in after if name == REQUESTS}
        assert not {"/metrics", "/livez", "/readyz", f"/api/call/status/{call_id}"} & routes

    def test_probes_answer_ok(self, http_base: str) -> None:
        """With the emulator up and Agora credentials set, /livez and /readyz are 200 `ok`."""
        for path in ("/livez", "/readyz"):
            status, _, body = call(http_base, "GET", path)
            assert (status, json.loads(body)) == (200, {"status": "ok"})


# ---------------------------------------------------------------------------------------------- recorder


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[firestore.Client]:
    """An admin client on the wiped emulators."""
    client = firestore.Client(project=clean_emulators.project_id)
    seed_group(client)
    yield client
    client.close()


class MeasuredRecorder:
    """A recorder process with its metrics server on a port of its own."""

    def __init__(self, process: RecorderProcess, port: int) -> None:
        self.process = process
        self.base = f"http://127.0.0.1:{port}"

    def scrape(self) -> Samples:
        return scrape(self.base)

    def value(self, name: str, **labels: str) -> float:
        """One sample of the latest scrape (0 when absent)."""
        return self.scrape().get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def recorders(clean_emulators: EmulatorSet, tmp_path: Path) -> Iterator[Any]:
    """A factory of recorder processes serving metrics, each in its folder; all stopped after the test."""
    started: list[RecorderProcess] = []

    def make(folder: str, **env: str) -> MeasuredRecorder:
        port = free_port()
        directory = tmp_path / folder
        process = RecorderProcess(
            clean_emulators, directory, tmp_path, TWO_TONES, MEMHARBOR_METRICS_PORT=str(port), **env
        )
        started.append(process)
        return MeasuredRecorder(process, port)

    yield make
    for process in started:
        process.stop()


class TestRecorderMetrics:
    """The recorder's counters move with a real recording, a takeover and a crash recovery."""

    def test_recording_moves_the_counters(self, db: firestore.Client, recorders: Any) -> None:
        """A recorded, stopped and uploaded session: one new claim, frames mixed, one upload, one delivery."""
        rec = recorders("a")
        rec.process.start(db)
        wait_for(lambda: call(rec.base, "GET", "/readyz")[0] == 200, 30, what="recorder ready")
        assert json.loads(call(rec.base, "GET", "/livez")[2]) == {"status": "ok"}
        sid, _, _ = request(db)
        wait_status(db, sid, "recording")
        wait_for(lambda: rec.value("memharbor_recorder_frames_total") > 0, 10, what="live frames counted")
        assert rec.value("memharbor_recorder_sessions", state="recording") == 1
        time.sleep(1.0)
        stop(db, sid)
        wait_status(db, sid, "stopped")
        # The session's document says stopped a moment before the recorder files the session as ended.
        delivered = ("memharbor_recorder_sessions_ended_total", (("outcome", "delivered"),))
        samples = wait_for(lambda: (got := rec.scrape()).get(delivered) == 1 and got, 10, what="delivery counted")
        assert samples[("memharbor_recorder_claims_total", (("result", "new"),))] == 1
        assert samples[("memharbor_recorder_sessions_ended_total", (("outcome", "delivered"),))] == 1
        assert samples[("memharbor_recorder_uploads_total", (("result", "uploaded"),))] == 1
        assert samples[("memharbor_recorder_upload_retries_total", ())] == 0
        assert samples[("memharbor_recorder_sessions", (("state", "recording"),))] == 0
        assert samples[("memharbor_recorder_frames_total", ())] >= 150  # 1.5 s of two participants at least
        assert ("process_cpu_seconds_total", ()) in samples

    def test_takeover_and_crash_recovery_are_counted(self, db: firestore.Client, recorders: Any) -> None:
        """A killed holder's session is taken over by the other recorder; its restart recovers the cut file."""
        lease = {"MEMHARBOR_RECORDER_LEASE_S": "2"}
        first = recorders("a", **lease)
        first.process.start(db)
        sid, _, _ = request(db)
        held = wait_status(db, sid, "recording")
        second = recorders("b", **lease)
        second.process.start(db)
        time.sleep(1.0)
        first.process.kill()
        wait_for(lambda: session(db, sid).get("filename") != held["filename"], 20, what="taken over")
        assert second.value("memharbor_recorder_claims_total", result="takeover") == 1
        stop(db, sid)
        wait_status(db, sid, "stopped")
        restarted = recorders("a", **lease)
        restarted.process.start(db)
        wait_for(
            lambda: restarted.value("memharbor_recorder_sessions_interrupted_total", reason="crashed") == 1,
            30,
            what="crashed segment recovered",
        )
        assert restarted.value("memharbor_recorder_sessions_ended_total", outcome="recovered") == 1
