"""Running the recorder as a real subprocess against the emulators, with simulated participants."""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from google.cloud import firestore

from memharbor.emulators import EmulatorSet, ManagedProcess
from tests.support.waiting import wait_for

STORAGE_VARIABLES = ("FIREBASE_STORAGE_BUCKET", "FIREBASE_STORAGE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")


class RecorderProcess:
    """One `memharbor recorder` process playing `script` into every channel it joins."""

    def __init__(
        self,
        emulators: EmulatorSet,
        recordings_dir: Path,
        log_dir: Path,
        script: list[dict[str, Any]],
        storage: bool = True,
        **env: str,
    ) -> None:
        self.instance_id = f"test-recorder-{uuid.uuid4().hex[:8]}"
        self.recordings_dir = recordings_dir
        self.log_file = log_dir / f"{self.instance_id}.log"
        variables = {
            **os.environ,
            **emulators.env(),
            "MEMHARBOR_INSTANCE_ID": self.instance_id,
            "MEMHARBOR_RECORDER_SOURCE": "simulated",
            "MEMHARBOR_RECORDER_SIMULATION": json.dumps(script),
            "RECORDINGS_DIR": str(recordings_dir),
            "MEMHARBOR_LOG_FORMAT": "json",
            "MEMHARBOR_LOG_FILE": str(self.log_file),
            "MEMHARBOR_HEARTBEAT_S": "1",
            "MEMHARBOR_RECORDER_SWEEP_S": "0.5",
            "MEMHARBOR_RECORDER_LEASE_S": "30",
            "MEMHARBOR_ENV_FILE": str(log_dir / "absent.env"),
            **env,
        }
        if not storage:
            for name in STORAGE_VARIABLES:
                variables.pop(name, None)
        self.process = ManagedProcess(
            "recorder", [sys.executable, "-m", "memharbor", "recorder"], "127.0.0.1", 0, ready_path=None, env=variables
        )

    def start(self, db: firestore.Client, timeout: float = 30.0) -> RecorderProcess:
        """Start it and wait for its first heartbeat."""
        self.process.start()
        ref = db.collection("workers").document(self.instance_id)
        wait_for(lambda: self._alive_or_fail() and ref.get().exists, timeout, what="recorder heartbeat")
        return self

    def _alive_or_fail(self) -> bool:
        proc = self.process.process
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"recorder exited with {proc.returncode}: {self.process.log_tail(30)}")
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.process.process is not None
        self.process.process.send_signal(signal.SIGKILL)
        self.process.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.process.process is not None
        self.process.process.send_signal(signal.SIGTERM)
        return self.process.process.wait(timeout)

    def stop(self) -> None:
        self.process.stop()

    def worker_id(self, db: firestore.Client) -> str:
        """The claim id this process reports in its heartbeat."""
        beat = db.collection("workers").document(self.instance_id).get().to_dict() or {}
        return str(beat.get("status", {}).get("workerId"))
