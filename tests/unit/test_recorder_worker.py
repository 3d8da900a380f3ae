"""The worker's recovery of left-behind files and its reaction to session events, with fake ports."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from memharbor import wav
from recorder.clock import SessionClock
from recorder.files import FINALIZED, RecordingDir, Sidecar
from recorder.listener import SessionEvent
from recorder.metrics import RecorderStateCollector
from recorder.session import SessionConfig
from recorder.simulated import SimulatedChannel
from recorder.upload import UploadError
from recorder.worker import Recorder, RecorderConfig
from tests.support.fake_recordings import FakeRecordingSessions


class FakeUploader:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.uploaded: list[tuple[str, bytes]] = []

    async def upload(self, path: Path) -> tuple[str, str] | None:
        if self.fail:
            raise UploadError("storage down")
        self.uploaded.append((path.name, path.read_bytes()))
        return f"http://storage/{path.name}", f"recordings/{path.name}"


class FakeSession:
    def __init__(self) -> None:
        self.stops: list[str] = []

    def request_stop(self, reason: str, at: float | None = None) -> None:
        self.stops.append(reason)


class FakeListener:
    """A session listener that is subscribed until told otherwise."""

    def __init__(self) -> None:
        self.active = True
        self.restarts = 0

    async def start(self) -> None:
        return None

    async def supervise(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        return None


class FakeHeartbeat:
    """Beats every `interval_s` by calling the status function, as memharbor.heartbeat does; writes nothing."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.status: Callable[[], dict[str, Any]] = dict
        self.paused = False

    async def beat(self) -> None:
        self.status()

    async def try_beat(self) -> bool:
        await self.beat()
        return True

    async def run(self) -> None:
        while True:
            if not self.paused:
                await self.beat()
            await asyncio.sleep(self.interval_s)

    async def retire(self) -> None:
        return None


def recorder(
    root: Path,
    store: FakeRecordingSessions | None = None,
    uploader: FakeUploader | None = None,
    listener: FakeListener | None = None,
    heartbeat: FakeHeartbeat | None = None,
    config: RecorderConfig | None = None,
) -> Recorder:
    """A Recorder over fakes (an empty store, a working uploader, a subscribed listener, a heartbeat)."""
    clock = SessionClock()
    config = config or RecorderConfig(worker_id="me", session=SessionConfig())
    return Recorder(
        store or FakeRecordingSessions(),
        listener or FakeListener(),
        uploader or FakeUploader(),
        lambda: SimulatedChannel([], clock),
        RecordingDir(root),
        heartbeat or FakeHeartbeat(config.heartbeat_s),
        clock,
        config,
        lambda c, u, t: "",
    )


def leave_crashed_file(root: Path, worker_id: str, seconds: float = 1.0, state: str = "recording") -> Sidecar:
    """What a recorder killed mid-recording leaves: an unfinished WAV (header sizes 0) and its sidecar."""
    files = RecordingDir(root)
    files.ensure()
    name = files.new_name("group1_alice_bob", datetime(2026, 2, 3, 12, 0, tzinfo=UTC))
    with open(root / name, "wb") as f:
        f.write(wav.header(0) + b"\x10\x00" * int(16000 * seconds))
    sidecar = Sidecar(
        sid="sid-9",
        channel="group1_alice_bob",
        filename=name,
        worker_id=worker_id,
        started_at=1770120000.0,
        call_id="call-9",
        state=state,
    )
    files.write_sidecar(sidecar)
    return sidecar


class TestRecovery:
    """Files of dead recorders are finalized, uploaded and reported; others are left alone."""

    async def test_crashed_file_is_repaired_uploaded_and_reported(self, tmp_path: Path) -> None:
        """The dead worker's segment becomes a playable upload reported as interrupted, under its owner id."""
        sidecar = leave_crashed_file(tmp_path, "dead-worker")
        store, uploader = FakeRecordingSessions(), FakeUploader()
        assert await recorder(tmp_path, store, uploader).recover() == 1
        [(name, data)] = uploader.uploaded
        assert name == sidecar.filename == "group1_alice_bob_2026-02-03T12-00-00.wav"
        assert wav.parse(data, len(data)).duration_ms == 1000
        [(sid, owner, report, call_id)] = store.completed
        assert (sid, owner, call_id) == ("sid-9", "dead-worker", "call-9")
        assert report.interrupted and report.stop_reason == "crashed" and report.duration_ms == 1000
        assert report.storage_path == f"recordings/{name}" and report.file_size == 44 + 32000
        assert report.recorded_at == datetime.fromtimestamp(1770120000.0, UTC)
        assert RecordingDir(tmp_path).sidecars() == []

    async def test_finalized_file_is_delivered_not_interrupted(self, tmp_path: Path) -> None:
        """A finished segment whose upload failed earlier is delivered as a normal result."""
        leave_crashed_file(tmp_path, "dead-worker", state=FINALIZED)
        store = FakeRecordingSessions()
        await recorder(tmp_path, store).recover()
        assert not store.completed[0][2].interrupted

    async def test_live_worker_files_are_left_alone(self, tmp_path: Path) -> None:
        """A sidecar whose worker still holds its lock file is not touched."""
        leave_crashed_file(tmp_path, "alive")
        fd = os.open(tmp_path / ".alive.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            store = FakeRecordingSessions()
            assert await recorder(tmp_path, store).recover() == 0
            assert store.completed == [] and len(RecordingDir(tmp_path).sidecars()) == 1
        finally:
            os.close(fd)

    async def test_failed_upload_keeps_the_sidecar_for_later(self, tmp_path: Path) -> None:
        """When Storage is down nothing is reported and the file stays marked for the next attempt."""
        leave_crashed_file(tmp_path, "dead-worker")
        store = FakeRecordingSessions()
        assert await recorder(tmp_path, store, FakeUploader(fail=True)).recover() == 0
        assert store.completed == [] and len(RecordingDir(tmp_path).sidecars()) == 1


def event(
    sid: str,
    status: str,
    *,
    stop: bool = False,
    worker: str | None = None,
    lease_s: float | None = None,
    change: str = "MODIFIED",
) -> SessionEvent:
    lease = datetime.now(UTC) + timedelta(seconds=lease_s) if lease_s is not None else None
    return SessionEvent(sid, change, status, stop, worker, lease)


class TestEvents:
    """Listener events stop held sessions and start claims only where a claim can succeed."""

    def test_stop_request_and_foreign_holder_stop_a_held_session(self, tmp_path: Path) -> None:
        """stopRequested stops with `requested`; another workerId stops with `lease_lost`."""
        rec = recorder(tmp_path)
        one, two = FakeSession(), FakeSession()
        rec.sessions.update({"a": one, "b": two})  # type: ignore[dict-item]
        rec.on_events([event("a", "recording", stop=True, worker="me"), event("b", "recording", worker="other")])
        assert one.stops == ["requested"] and two.stops == ["lease_lost"]

    @pytest.mark.parametrize(
        ("status", "worker", "lease_s", "claimable"),
        [
            ("requested", None, None, True),
            ("requested", "other", 10.0, False),
            ("requested", "other", -1.0, True),
            ("recording", "other", 10.0, False),
            ("recording", "other", -1.0, True),
            ("stopping", "other", -1.0, True),
            ("stopped", None, None, False),
        ],
    )
    def test_claimable(
        self, tmp_path: Path, status: str, worker: str | None, lease_s: float | None, claimable: bool
    ) -> None:
        """Requested and unheld, or held under a lapsed lease: claimable; anything else is not."""
        e = event("x", status, worker=worker, lease_s=lease_s)
        assert recorder(tmp_path)._claimable(e.status, e.worker_id, e.lease_until) is claimable


# ---------------------------------------------------------------------------------------------- metrics, probes


def scraped(rec: Recorder) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the recorder's registry (with its state collector), keyed by name and labels."""
    rec.metrics.registry.register(RecorderStateCollector(rec))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in rec.metrics.registry.collect()
        for sample in family.samples
    }


class TestRecorderMetrics:
    """What the recorder counts for Prometheus, read through its registry."""

    async def test_crashed_segment_counts_as_interrupted_and_recovered(self, tmp_path: Path) -> None:
        """Recovering a dead recorder's cut file counts one crashed interruption and one recovered session."""
        leave_crashed_file(tmp_path, "dead-worker")
        rec = recorder(tmp_path)
        await rec.recover()
        values = scraped(rec)
        assert values[("memharbor_recorder_sessions_interrupted_total", (("reason", "crashed"),))] == 1
        assert values[("memharbor_recorder_sessions_interrupted_total", (("reason", "shutdown"),))] == 0
        assert values[("memharbor_recorder_sessions_ended_total", (("outcome", "recovered"),))] == 1

    async def test_finalized_segment_is_not_an_interruption(self, tmp_path: Path) -> None:
        """A finished segment delivered late is recovered, but no interruption is counted."""
        leave_crashed_file(tmp_path, "dead-worker", state=FINALIZED)
        rec = recorder(tmp_path)
        await rec.recover()
        values = scraped(rec)
        assert values[("memharbor_recorder_sessions_interrupted_total", (("reason", "crashed"),))] == 0
        assert values[("memharbor_recorder_sessions_ended_total", (("outcome", "recovered"),))] == 1

    async def test_claims_are_counted_by_result(self, tmp_path: Path) -> None:
        """A claim of a vanished session counts under `gone`; every other result is there at 0."""
        rec = recorder(tmp_path)
        rec.claim_soon("sid-1")
        assert rec.session_states()["claiming"] == 1
        while rec.session_states()["claiming"]:
            await asyncio.sleep(0)
        values = scraped(rec)
        assert values[("memharbor_recorder_claims_total", (("result", "gone"),))] == 1
        assert values[("memharbor_recorder_claims_total", (("result", "takeover"),))] == 0

    def test_idle_recorder_reports_zero_sessions_and_frames(self, tmp_path: Path) -> None:
        """Before any session, every state gauge and frame counter is there at 0."""
        values = scraped(recorder(tmp_path))
        for state in ("claiming", "recording", "delivering"):
            assert values[("memharbor_recorder_sessions", (("state", state),))] == 0
        for name in ("frames", "frames_late", "frames_dropped"):
            assert values[(f"memharbor_recorder_{name}_total", ())] == 0


class TestRecorderProbes:
    """Liveness: listener subscribed and heartbeat recent; readiness: after the first claim sweep, not draining."""

    async def test_probes_through_a_run(self, tmp_path: Path) -> None:
        """Starting: live, not ready; swept: ready; listener down: neither; stopping: draining."""
        listener, heartbeat = FakeListener(), FakeHeartbeat(0.02)
        config = RecorderConfig(worker_id="me", sweep_s=0.02, heartbeat_s=0.02)
        rec = recorder(tmp_path, listener=listener, heartbeat=heartbeat, config=config)
        heartbeat.status = rec.heartbeat_status
        assert rec.liveness_problems() == []
        assert rec.readiness_problems() == ["starting: no claim sweep yet"]
        stop = asyncio.Event()
        running = asyncio.create_task(rec.run(stop))
        await asyncio.sleep(0.2)
        assert (rec.liveness_problems(), rec.readiness_problems()) == ([], [])
        listener.active = False
        assert rec.readiness_problems() == ["session listener not subscribed"]
        listener.active = True
        heartbeat.paused = True
        await asyncio.sleep(0.1)
        assert rec.liveness_problems() == ["no heartbeat for over 0.06 s"]
        stop.set()
        await asyncio.sleep(0)
        assert rec.readiness_problems() == ["draining: taking no new sessions"]
        await running
