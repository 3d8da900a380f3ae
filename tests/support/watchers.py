"""Running the watcher as a real subprocess against the emulators."""

from __future__ import annotations

import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from google.cloud import firestore

from memharbor.emulators import EmulatorSet, ManagedProcess
from memharbor.settings import child_environment
from tests.support.waiting import wait_for
from watcher.push import read_sink


class WatcherProcess:
    """One `memharbor watcher` process with its own instance id, sharing a push sink file."""

    def __init__(self, emulators: EmulatorSet, sink: Path, log_dir: Path, **env: str) -> None:
        self.instance_id = f"test-watcher-{uuid.uuid4().hex[:8]}"
        self.sink = sink
        self.log_file = log_dir / f"{self.instance_id}.log"
        variables = {
            **emulators.env(),
            "MEMHARBOR_INSTANCE_ID": self.instance_id,
            "MEMHARBOR_PUSH_SINK": str(sink),
            "MEMHARBOR_LOG_FORMAT": "json",
            "MEMHARBOR_LOG_FILE": str(self.log_file),
            "MEMHARBOR_HEARTBEAT_S": "1",
            "MEMHARBOR_SWEEP_INTERVAL_S": "1",
            **env,
        }
        self.process = ManagedProcess(
            "watcher",
            [sys.executable, "-m", "memharbor", "watcher"],
            "127.0.0.1",
            0,
            ready_path=None,
            env=child_environment(variables),
        )

    def start(self, db: firestore.Client, timeout: float = 30.0) -> WatcherProcess:
        """Start it and wait for its first heartbeat."""
        self.process.start()
        ref = db.collection("workers").document(self.instance_id)
        wait_for(lambda: self._alive_or_fail() and ref.get().exists, timeout, what="watcher heartbeat")
        return self

    def _alive_or_fail(self) -> bool:
        proc = self.process.process
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watcher exited with {proc.returncode}: {self.process.log_tail(30)}")
        return True

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.process is not None and self.process.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.process.process is not None
        self.process.process.send_signal(signal.SIGKILL)
        self.process.process.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.process.process is not None
        self.process.process.send_signal(signal.SIGTERM)
        return self.process.process.wait(timeout)

    def stop(self) -> None:
        self.process.stop()

    def pushes(self, kind: str | None = None, call_id: str | None = None) -> list[dict[str, Any]]:
        """Pushes recorded in the shared sink, filtered by kind and call id."""
        return [
            p
            for p in read_sink(self.sink)
            if (kind is None or p["kind"] == kind) and (call_id is None or p["payload"].get("callId") == call_id)
        ]
