"""Recording end to end: the seed's /api/recording/* routes (token_http), the watcher's hooks and the real
`memharbor recorder` with simulated participants, all subprocesses on the Firestore and Storage emulators.
"""

from __future__ import annotations

import io
import time
import uuid
import wave
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage

from memharbor import wav
from memharbor.emulators import EmulatorSet
from tests.support.firestore_rest import FirestoreRest
from tests.support.groups import seed_group
from tests.support.http_process import Api, start_http
from tests.support.recorders import RecorderProcess
from tests.support.waiting import wait_for
from tests.support.watchers import WatcherProcess

ALICE, BOB, MALLORY = "alice-uid-0000000000000000001", "bob-uid-00000000000000000002", "mallory-uid"
LEGACY = f"grp1_{ALICE}_{BOB}"
TWO_TONES = [{"uid": "101", "tone_hz": 440}, {"uid": "202", "tone_hz": 1000}]


@pytest.fixture(scope="module")
def api(emulators: EmulatorSet) -> Iterator[Api]:
    """token_http with Firebase ID token authentication."""
    yield from start_http(emulators, "firebase")


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[firestore.Client]:
    """An admin client on the wiped emulators."""
    client = firestore.Client(project=clean_emulators.project_id)
    seed_group(client, "grp1", [ALICE, BOB])
    yield client
    client.close()


@pytest.fixture
def bucket(clean_emulators: EmulatorSet) -> storage.Bucket:
    """The emulated recordings bucket."""
    client = storage.Client(project=clean_emulators.project_id, credentials=AnonymousCredentials())
    return client.bucket(clean_emulators.bucket)


@pytest.fixture
def processes(clean_emulators: EmulatorSet) -> Iterator[list[Any]]:
    """Recorder and watcher processes started by a test; all stopped after it."""
    started: list[Any] = []
    yield started
    for process in started:
        process.stop()


def start_recorder(
    emulators: EmulatorSet, db: firestore.Client, tmp_path: Path, started: list[Any], storage: bool = True
) -> RecorderProcess:
    recorder = RecorderProcess(emulators, tmp_path / "recordings", tmp_path, TWO_TONES, storage=storage)
    started.append(recorder)
    return recorder.start(db)


def seed_call(db: firestore.Client, status: str = "accepted") -> tuple[str, str]:
    """A call as the watcher leaves it, with its channel: (callId, channelName)."""
    call_id = uuid.uuid4().hex
    channel = f"grp1_3f2a9c1b7d4e_{int(time.time() * 1000)}"
    now = datetime.now(UTC)
    db.collection("calls").document(call_id).set(
        {
            "callId": call_id,
            "groupId": "grp1",
            "callerId": ALICE,
            "receiverId": BOB,
            "status": status,
            "channelName": channel,
            "createdAt": now,
            "updatedAt": now,
        }
    )
    return call_id, channel


def download(bucket: storage.Bucket, path: str) -> tuple[wav.WavInfo, np.ndarray]:
    """Fetch an uploaded WAV, check the stdlib can play it, and return its header and samples."""
    blob = bucket.get_blob(path)
    assert blob is not None, path
    assert blob.content_type == "audio/wav"
    data = blob.download_as_bytes()
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (16000, 1, 2)
    info = wav.parse(data[:4096], len(data))
    return info, np.frombuffer(data[info.data_offset : info.data_offset + info.data_bytes], dtype="<i2")


def tone_share(samples: np.ndarray, hz: float) -> float:
    """Share of the spectrum's energy within 20 Hz of `hz`."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / 16000)
    return float(spectrum[np.abs(freqs - hz) < 20].sum() / max(spectrum.sum(), 1e-9))


class TestRoutesWithTheRecorder:
    """start and stop through token_http, recorded by the real recorder, uploaded to Storage."""

    def test_call_recording_lands_in_storage(
        self,
        api: Api,
        db: firestore.Client,
        bucket: storage.Bucket,
        processes: list[Any],
        tmp_path: Path,
        clean_emulators: EmulatorSet,
    ) -> None:
        """The caller starts, the receiver stops: the answer names the uploaded WAV, which holds both voices."""
        start_recorder(clean_emulators, db, tmp_path, processes)
        call_id, channel = seed_call(db)
        status, started = api.post("/api/recording/start", {"channel": channel}, ALICE)
        assert status == 200, started
        assert started["status"] == "recording" and started["uid"] == 999999
        assert started["filename"].startswith(channel + "_") and started["filename"].endswith(".wav")
        time.sleep(2.5)
        status, stopped = api.post("/api/recording/stop", {"sid": started["sid"]}, BOB)
        assert status == 200, stopped
        path = f"recordings/{started['filename']}"
        assert stopped["status"] == "stopped" and stopped["format"] == "wav"
        assert (stopped["channel"], stopped["groupId"], stopped["user1"], stopped["user2"]) == (
            channel,
            "grp1",
            ALICE,
            BOB,
        )
        assert stopped["firebase"]["storagePath"] == path and stopped["firebase"]["firestoreId"] == started["sid"]
        assert stopped["firebase"]["url"].endswith(started["filename"])
        info, samples = download(bucket, path)
        assert stopped["duration"] == info.duration_ms and 2000 <= info.duration_ms <= 6000
        assert tone_share(samples, 440) > 0.2 and tone_share(samples, 1000) > 0.2
        assert db.collection("calls").document(call_id).get().get("recordingId") == started["sid"]
        status, listed = api.request("GET", "/api/recording/list", uid=BOB)
        assert status == 200 and [r["sid"] for r in listed["recordings"]] == [started["sid"]]
        assert listed["recordings"][0]["fileSize"] == info.data_bytes + 44
        assert api.request("GET", "/api/recording/list", uid=MALLORY)[1]["count"] == 0

    def test_legacy_channel_stop_by_channel(
        self,
        api: Api,
        db: firestore.Client,
        bucket: storage.Bucket,
        processes: list[Any],
        tmp_path: Path,
        clean_emulators: EmulatorSet,
    ) -> None:
        """A seed-era channel is recorded for its two users and stopped by channel name."""
        start_recorder(clean_emulators, db, tmp_path, processes)
        status, started = api.post("/api/recording/start", {"channel": LEGACY}, BOB)
        assert status == 200, started
        status, live = api.request("GET", "/api/recording/status", uid=ALICE)
        assert status == 200 and [s["sid"] for s in live["sessions"]] == [started["sid"]]
        time.sleep(1.0)
        status, stopped = api.post("/api/recording/stop", {"channel": LEGACY}, ALICE)
        assert status == 200, stopped
        assert (stopped["sid"], stopped["groupId"], stopped["user1"], stopped["user2"]) == (
            started["sid"],
            "grp1",
            ALICE,
            BOB,
        )
        info, _ = download(bucket, stopped["firebase"]["storagePath"])
        assert info.duration_ms == stopped["duration"] >= 800
        assert api.request("GET", "/api/recording/status", uid=ALICE)[1]["sessions"] == []

    def test_without_storage_firebase_is_null(
        self, api: Api, db: firestore.Client, processes: list[Any], tmp_path: Path, clean_emulators: EmulatorSet
    ) -> None:
        """With no Storage configured the recorder keeps the file and stop answers firebase: null."""
        start_recorder(clean_emulators, db, tmp_path, processes, storage=False)
        _, channel = seed_call(db)
        status, started = api.post("/api/recording/start", {"channel": channel}, ALICE)
        assert status == 200, started
        time.sleep(1.0)
        status, stopped = api.post("/api/recording/stop", {"channel": channel}, ALICE)
        assert status == 200 and stopped["status"] == "stopped" and stopped["firebase"] is None
        local = tmp_path / "recordings" / started["filename"]
        assert wav.read_info(local).duration_ms == stopped["duration"] >= 800


class TestWatcherWithTheRecorder:
    """The app path: the watcher requests the recording on accept and stops it on end; the recorder records."""

    def test_accepted_call_is_recorded_until_it_ends(
        self,
        api: Api,
        db: firestore.Client,
        bucket: storage.Bucket,
        processes: list[Any],
        tmp_path: Path,
        clean_emulators: EmulatorSet,
    ) -> None:
        """record: true -> recording on accept (a REST start joins it) -> ended -> stopped, uploaded, linked."""
        start_recorder(clean_emulators, db, tmp_path, processes)
        watcher = WatcherProcess(clean_emulators, tmp_path / "pushes.jsonl", tmp_path)
        processes.append(watcher)
        watcher.start(db)
        rest = FirestoreRest(clean_emulators.firestore.address, clean_emulators.project_id)
        try:
            call_id = uuid.uuid4().hex
            fields = {
                "callId": call_id,
                "groupId": "grp1",
                "callerId": ALICE,
                "receiverId": BOB,
                "status": "pending",
                "record": True,
            }
            assert rest.as_user(ALICE).create(f"calls/{call_id}", fields, server_time=["createdAt", "updatedAt"]).ok
            call = wait_for(
                lambda: (d := db.collection("calls").document(call_id).get().to_dict() or {}).get("channelName") and d,
                what="channel",
            )
            accepted = rest.as_user(BOB).update(
                f"calls/{call_id}", {"status": "accepted"}, server_time=["answeredAt", "updatedAt"]
            )
            assert accepted.ok
            sid = f"call-{call_id}"
            wait_for(
                lambda: (db.collection("recordings").document(sid).get().to_dict() or {}).get("status") == "recording",
                what="recording",
            )
            status, joined = api.post("/api/recording/start", {"channel": call["channelName"]}, BOB)
            assert status == 200 and joined["sid"] == sid
            time.sleep(1.5)
            ended = rest.as_user(ALICE).update(
                f"calls/{call_id}", {"status": "ended"}, server_time=["endedAt", "updatedAt"]
            )
            assert ended.ok
            doc = wait_for(
                lambda: (
                    (d := db.collection("recordings").document(sid).get().to_dict() or {}).get("status") == "stopped"
                    and d
                ),
                timeout=30,
                what="stopped",
            )
        finally:
            rest.close()
        assert doc["stopRequested"] is True and doc["requestedBy"] == "server"
        assert doc["stopReason"] == "requested"
        info, samples = download(bucket, doc["storagePath"])
        assert info.duration_ms == doc["duration"] >= 1000
        assert tone_share(samples, 440) > 0.2 and tone_share(samples, 1000) > 0.2
        assert db.collection("calls").document(call_id).get().get("recordingId") == sid
        assert [d.id for d in db.collection("recordings").stream()] == [sid]
        # The call's timeline holds the recording's steps, the watcher's request and the recorder's work.
        wanted = [
            "recording.requested",
            "recording.claimed",
            "recording.started",
            "recording.uploaded",
            "recording.stopped",
        ]

        def recording_steps() -> list[dict[str, Any]] | None:
            events = db.collection("callServer").document(call_id).collection("events").stream()
            steps = [e.to_dict() or {} for e in events if str((e.to_dict() or {}).get("kind")).startswith("recording.")]
            return steps if len(steps) >= len(wanted) else None

        steps = wait_for(recording_steps, what="the recording's timeline events")
        assert sorted(e["kind"] for e in steps) == sorted(wanted)
        assert {e["detail"]["sid"] for e in steps} == {sid}
        stopped = next(e for e in steps if e["kind"] == "recording.stopped")
        assert stopped["detail"]["reason"] == "requested" and stopped["detail"]["durationMs"] == doc["duration"]
