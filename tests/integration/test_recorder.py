"""The recorder as a real subprocess, in real time, against the Firestore and Storage emulators."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage

from memharbor import wav
from memharbor.emulators import EmulatorSet
from memharbor.repositories.recording_sessions import Claim, FirestoreRecordingSessions
from tests.support.firestore_rest import FirestoreRest
from tests.support.frozen import Frozen
from tests.support.groups import seed_group
from tests.support.recorders import RecorderProcess
from tests.support.recording_sessions import TWO_TONES, request, session, stop, wait_status
from tests.support.waiting import wait_for


@pytest.fixture
def db(clean_emulators: EmulatorSet) -> Iterator[firestore.Client]:
    """An admin client on the wiped emulators."""
    client = firestore.Client(project=clean_emulators.project_id)
    seed_group(client)
    yield client
    client.close()


@pytest.fixture
def bucket(clean_emulators: EmulatorSet) -> storage.Bucket:
    """The emulated recordings bucket."""
    client = storage.Client(project=clean_emulators.project_id, credentials=AnonymousCredentials())
    return client.bucket(clean_emulators.bucket)


@pytest.fixture
def recorders(clean_emulators: EmulatorSet, tmp_path: Path) -> Iterator[Any]:
    """A factory of recorder processes (each its own RECORDINGS_DIR unless given); all stopped after the test."""
    started: list[RecorderProcess] = []

    def make(script: list[dict[str, Any]] = TWO_TONES, folder: str | None = None, **env: Any) -> RecorderProcess:
        directory = tmp_path / (folder or f"rec-{len(started)}")
        process = RecorderProcess(clean_emulators, directory, tmp_path, script, **env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def download(bucket: storage.Bucket, path: str) -> tuple[wav.WavInfo, np.ndarray]:
    """Fetch an uploaded WAV, check the stdlib can play it, and return its header and samples."""
    blob = bucket.get_blob(path)
    assert blob is not None, path
    assert blob.content_type == "audio/wav"
    data = blob.download_as_bytes()
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (16000, 1, 2)
    info = wav.parse(data[:4096], len(data))
    samples = np.frombuffer(data[info.data_offset : info.data_offset + info.data_bytes], dtype="<i2")
    return info, samples


def tone_energy(samples: np.ndarray, hz: float) -> float:
    """Share of the spectrum's energy within 20 Hz of `hz`."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / 16000)
    return float(spectrum[np.abs(freqs - hz) < 20].sum() / max(spectrum.sum(), 1e-9))


class TestRecordingEndToEnd:
    """A requested call recording goes from `requested` to a WAV in Storage with the seed's metadata."""

    def test_call_is_recorded_uploaded_and_linked(
        self, db: firestore.Client, bucket: storage.Bucket, recorders: Any
    ) -> None:
        """Both participants are in the uploaded mix, the last second before the stop included."""
        recorder = recorders().start(db)
        sid, channel, call_id = request(db)
        recording = wait_status(db, sid, "recording")
        assert recording["workerId"] == recorder.worker_id(db)
        assert recording["uid"] == 999999
        time.sleep(2.5)
        stop(db, sid)
        doc = wait_status(db, sid, "stopped")
        assert doc["filename"].startswith(f"{channel}_") and doc["filename"].endswith(".wav")
        assert doc["storagePath"] == f"recordings/{doc['filename']}"
        assert doc["url"] and doc["url"].endswith(doc["filename"])
        assert (doc["groupId"], doc["user1"], doc["user2"]) == ("group1", "alice", "bob")
        assert doc["format"] == "wav" and doc["spec"] == {"sampleRate": 16000, "channels": 1, "bitDepth": 16}
        assert doc["stopReason"] == "requested" and doc["stoppedAt"] >= doc["recordedAt"]
        assert "interrupted" not in doc and "leaseUntil" not in doc
        assert len(doc["segments"]) == 1
        assert db.collection("calls").document(call_id).get().get("recordingId") == sid
        info, samples = download(bucket, doc["storagePath"])
        assert doc["duration"] == info.duration_ms and doc["fileSize"] == info.data_bytes + 44
        assert 2400 <= doc["duration"] <= 4500
        whole, last = samples, samples[-16000:]
        for part in (whole, last):
            assert tone_energy(part, 440) > 0.2 and tone_energy(part, 1000) > 0.2
        assert np.abs(samples[-1600:]).max() > 1000  # sound up to the last 100 ms

    def test_legacy_channel_is_recorded_without_a_call(self, db: firestore.Client, recorders: Any) -> None:
        """A seed-style channel `{groupId}_{user1}_{user2}` names the participants in the result."""
        recorders().start(db)
        sid, channel, _ = request(db, with_call=False)
        wait_status(db, sid, "recording")
        stop(db, sid)
        doc = wait_status(db, sid, "stopped")
        assert (doc["groupId"], doc["user1"], doc["user2"]) == (channel.split("_")[0], "carol", "dave")

    def test_ended_call_is_refused(self, db: firestore.Client, recorders: Any) -> None:
        """A request for a call that is no longer active fails with the reason."""
        recorders().start(db)
        sid, _, call_id = request(db)
        db.collection("calls").document(call_id).update({"status": "ended"})
        # The request may be claimed before the update lands; stop it then, it must not be left open.
        doc = wait_for(lambda: session(db, sid).get("status") in ("failed", "recording") and session(db, sid), 30)
        if doc["status"] == "recording":
            stop(db, sid)
            assert wait_status(db, sid, "stopped")
        else:
            assert "not active" in doc["error"]


class TestStopConditions:
    """Every remote participant gone for the idle time, SIGTERM, and no Storage all end in a usable file."""

    def test_idle_participants_stop_the_recording(
        self, db: firestore.Client, bucket: storage.Bucket, recorders: Any
    ) -> None:
        """Participants leaving at 1 s with MEMHARBOR_RECORDER_IDLE_S=2 stop it at 3 s; the file ends at 1 s."""
        script = [{"uid": "7", "tone_hz": 440, "leave_at": 1.0}]
        recorders(script, MEMHARBOR_RECORDER_IDLE_S="2").start(db)
        sid, _, _ = request(db)
        doc = wait_status(db, sid, "stopped")
        assert doc["stopReason"] == "idle"
        assert (doc["stoppedAt"] - doc["recordedAt"]).total_seconds() >= 2.9  # the idle wait still happens
        info, samples = download(bucket, doc["storagePath"])
        assert abs(doc["duration"] - 1000) <= 100 and doc["duration"] == info.duration_ms
        assert np.abs(samples[-160:]).max() > 1000  # the tone runs to the end: no idle silence appended

    def test_sigterm_finalizes_and_uploads(self, db: firestore.Client, bucket: storage.Bucket, recorders: Any) -> None:
        """SIGTERM stops the session, uploads the file and exits 0."""
        recorder = recorders().start(db)
        sid, _, _ = request(db)
        wait_status(db, sid, "recording")
        time.sleep(1.5)
        assert recorder.terminate() == 0
        doc = session(db, sid)
        assert doc["status"] == "stopped" and doc["stopReason"] == "shutdown"
        info, samples = download(bucket, doc["storagePath"])
        assert info.duration_ms >= 1400 and tone_energy(samples[-16000:], 1000) > 0.2
        assert not list(recorder.recordings_dir.glob("*.json"))  # nothing left to recover

    def test_without_storage_the_file_stays_local(self, db: firestore.Client, recorders: Any) -> None:
        """Without a bucket the result has null url/storagePath and the WAV stays in RECORDINGS_DIR."""
        recorder = recorders(storage=False).start(db)
        sid, _, _ = request(db)
        wait_status(db, sid, "recording")
        time.sleep(1.0)
        stop(db, sid)
        doc = wait_status(db, sid, "stopped")
        assert doc["url"] is None and doc["storagePath"] is None
        local = recorder.recordings_dir / doc["filename"]
        assert wav.read_info(local).duration_ms == doc["duration"] >= 900


class TestCrashes:
    """A killed recorder's audio is recovered; several recorders record each session exactly once."""

    def test_sigkill_then_restart_uploads_a_playable_file(
        self, db: firestore.Client, bucket: storage.Bucket, recorders: Any
    ) -> None:
        """The restarted recorder repairs the cut file, uploads it and marks the session interrupted."""
        first = recorders(folder="shared").start(db)
        sid, _, call_id = request(db)
        wait_status(db, sid, "recording")
        time.sleep(2.5)
        first.kill()
        assert len(list(first.recordings_dir.glob("*.json"))) == 1
        recorders(folder="shared").start(db)
        doc = wait_status(db, sid, "stopped")
        assert doc["interrupted"] is True and doc["stopReason"] == "crashed"
        info, samples = download(bucket, doc["storagePath"])
        assert 2000 <= info.duration_ms <= 3500 and doc["duration"] == info.duration_ms
        assert tone_energy(samples, 440) > 0.2 and tone_energy(samples, 1000) > 0.2
        assert db.collection("calls").document(call_id).get().get("recordingId") == sid
        assert not list(first.recordings_dir.glob("*.json"))

    def test_two_recorders_record_each_session_once(self, db: firestore.Client, recorders: Any) -> None:
        """Three requests with two recorders running: one file per session, each claimed by one of them."""
        a, b = recorders().start(db), recorders().start(db)
        sids = [request(db, with_call=False)[0] for _ in range(3)]
        docs = [wait_status(db, sid, "recording") for sid in sids]
        assert {d["workerId"] for d in docs} <= {a.worker_id(db), b.worker_id(db)}
        time.sleep(1.0)
        for sid in sids:
            stop(db, sid)
        finished = [wait_status(db, sid, "stopped") for sid in sids]
        files = [p.name for r in (a, b) for p in r.recordings_dir.glob("*.wav")]
        assert sorted(files) == sorted(d["filename"] for d in finished)
        assert all(len(d["segments"]) == 1 for d in finished)

    def test_lapsed_lease_is_taken_over_in_a_new_segment(self, db: firestore.Client, recorders: Any) -> None:
        """A killed holder's session continues in another recorder; its own segment joins on its restart."""
        lease = {"MEMHARBOR_RECORDER_LEASE_S": "2"}
        first = recorders(folder="a", **lease).start(db)
        sid, _, _ = request(db)
        held = wait_status(db, sid, "recording")
        second = recorders(folder="b", **lease).start(db)
        time.sleep(1.0)
        first.kill()
        taken = wait_for(lambda: (d := session(db, sid)).get("workerId") == second.worker_id(db) and d, 20)
        assert taken["interrupted"] is True and taken["takeovers"] == 1
        assert taken["previousWorkerId"] == held["workerId"]
        wait_for(lambda: session(db, sid).get("filename") != held["filename"], 10, what="second segment")
        time.sleep(1.0)
        stop(db, sid)
        doc = wait_status(db, sid, "stopped")
        assert doc["filename"] != held["filename"] and [s["filename"] for s in doc["segments"]] == [doc["filename"]]
        recorders(folder="a", **lease).start(db)
        doc = wait_for(lambda: len((d := session(db, sid)).get("segments", [])) == 2 and d, 30, what="old segment")
        assert doc["status"] == "stopped" and doc["filename"] != held["filename"]
        old = next(s for s in doc["segments"] if s["filename"] == held["filename"])
        assert old["interrupted"] is True and old["storagePath"] == f"recordings/{held['filename']}"
        assert old["duration"] >= 900


def frozen_sessions(emulators: EmulatorSet, worker_id: str) -> Frozen[FirestoreRecordingSessions]:
    """Recording sessions of worker `worker_id` whose first write freezes after its reads."""
    return Frozen(emulators.project_id, lambda client: FirestoreRecordingSessions(client, worker_id, 20.0, 999999))


class TestNoLocks:
    """A recorder frozen between an operation's reads and its write holds no document: others write at once."""

    def test_a_frozen_claim_does_not_block_the_call(self, clean_emulators: EmulatorSet, db: firestore.Client) -> None:
        """While a claim is frozen after reading the session and its call, the caller can still end the call."""
        sid, _, call_id = request(db)
        frozen = frozen_sessions(clean_emulators, "recorder-under-test")
        frozen.start(lambda sessions: sessions.claim(sid))
        rest = FirestoreRest(clean_emulators.firestore.address, clean_emulators.project_id)
        try:
            started = time.monotonic()
            ended = rest.as_owner().update(f"calls/{call_id}", {"status": "ended"}, ["endedAt", "updatedAt"])
            took = time.monotonic() - started
        finally:
            frozen.finish()
            rest.close()
        assert ended.ok, ended
        assert took < 2.0, f"the call's write waited {took:.1f}s for the frozen claim"

    def test_a_frozen_renewal_does_not_block_a_takeover(
        self, clean_emulators: EmulatorSet, db: firestore.Client
    ) -> None:
        """A holder frozen inside its lease renewal past the lease is taken over at once; when it thaws, its
        renewal finds the session lost and writes nothing (found as a CI flake: a recorder killed inside a
        renewal transaction kept its session locked, and no takeover could happen until the lock expired)."""
        sid, _, _ = request(db)
        lapsed = datetime.now(UTC) - timedelta(seconds=1)
        update = {"status": "recording", "workerId": "frozen", "leaseUntil": lapsed, "filename": "a.wav"}
        db.collection("recordings").document(sid).update(update)
        frozen = frozen_sessions(clean_emulators, "frozen")
        frozen.start(lambda sessions: sessions.renew(sid))
        try:
            rescuer = FirestoreRecordingSessions(
                lambda: firestore.AsyncClient(project=clean_emulators.project_id), "rescuer", 20.0, 999999
            )
            started = time.monotonic()
            taken = asyncio.run(rescuer.claim(sid))
            took = time.monotonic() - started
        finally:
            renewed = frozen.finish()
        assert taken.claim == Claim.TAKEOVER and took < 2.0, (taken, took)
        assert renewed is False
        doc = session(db, sid)
        assert doc["workerId"] == "rescuer" and doc["previousWorkerId"] == "frozen" and doc["takeovers"] == 1
