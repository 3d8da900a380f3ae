"""A thread that plays the recorder's side of the `recordings/{sid}` contract on the Firestore emulator."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from memharbor.emulators import EmulatorSet
from memharbor.recording_requests import parse_legacy_channel
from tests.support.firestore_rest import FirestoreRest


def sid_of(doc: dict[str, Any]) -> str:
    """The id of a document read through the REST API."""
    return str(doc["__name__"]).rsplit("/", 1)[1]


class StandInRecorder(threading.Thread):
    """Plays the recorder: begins requested sessions after `begin_delay_s`; on stopRequested goes through
    stopping to stopped with the seed's metadata, and links the recording from its call.
    """

    def __init__(self, emulators: EmulatorSet, begin_delay_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.db = FirestoreRest(emulators.firestore.address, emulators.project_id).as_owner()
        self.begin_delay_s = begin_delay_s
        self.stop = threading.Event()
        self.first_seen: dict[str, float] = {}
        self.began: list[str] = []
        self.finished: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.05):
            requested = self.db.query("recordings", [("status", "==", "requested")])
            for doc in requested.documents if requested.ok else []:
                self._begin(sid_of(doc), doc)
            stopping = self.db.query("recordings", [("status", "==", "recording"), ("stopRequested", "==", True)])
            for doc in stopping.documents if stopping.ok else []:
                self._finish(sid_of(doc), doc)

    def _begin(self, sid: str, doc: dict[str, Any]) -> None:
        first = self.first_seen.setdefault(sid, time.monotonic())
        if time.monotonic() - first < self.begin_delay_s:
            return
        now = datetime.now(UTC)
        fields = {
            "status": "recording",
            "uid": 999999,
            "filename": f"{doc['channel']}_{now.strftime('%Y-%m-%dT%H-%M-%S')}.wav",
            "workerId": "fake-recorder",
            "leaseUntil": now + timedelta(seconds=30),
        }
        if self.db.update(f"recordings/{sid}", fields, server_time=["recordedAt"]).ok:
            self.began.append(sid)

    def _finish(self, sid: str, doc: dict[str, Any]) -> None:
        assert self.db.update(f"recordings/{sid}", {"status": "stopping"}).ok
        # A call's recording names the call's group and participants; only a call-less one parses its channel
        # (the compact call channel {groupId}_{digest}_{epochMillis} has three parts too).
        call = self.db.get(f"calls/{doc['callId']}").data if doc.get("callId") else {}
        legacy = None if call else parse_legacy_channel(doc["channel"])
        path = f"recordings/{doc['filename']}"
        results = {
            "status": "stopped",
            "groupId": legacy.group_id if legacy else call.get("groupId"),
            "user1": legacy.user1 if legacy else call.get("callerId"),
            "user2": legacy.user2 if legacy else call.get("receiverId"),
            "duration": 1500,
            "fileSize": 48044,
            "format": "wav",
            "spec": {"sampleRate": 16000, "channels": 1, "bitDepth": 16},
            "storagePath": path,
            "url": f"http://storage.test/{path}",
        }
        assert self.db.update(f"recordings/{sid}", results, server_time=["stoppedAt"]).ok
        if doc.get("callId"):
            assert self.db.update(f"calls/{doc['callId']}", {"recordingId": sid}).ok
        self.finished.append(sid)

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.db.close()
