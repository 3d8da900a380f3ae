"""The emulator harness: start, wipe, stop, no orphan java after signals or failures, and `memharbor dev`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage

from memharbor import dev, emulators
from memharbor.emulators import EmulatorError, EmulatorSet, ManagedProcess, free_port, http_get
from tests.support.agora_tokens import PUBLISHER_PRIVILEGES, decode_006, verify_006
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SETTLE_S = 10.0


def processes_mentioning(port: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every live process whose command line names `port` as a separate argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(port) in argv or any(arg.endswith(f":{port}") for arg in argv)):
            found.append((int(entry.name), argv))
    return found


def java_on(port: int) -> list[int]:
    """Pids of live java processes started with `port` on their command line."""
    return [pid for pid, argv in processes_mentioning(port) if argv and Path(argv[0]).name.startswith("java")]


def wait_until_gone(ports: list[int], timeout: float = SETTLE_S) -> list[tuple[int, list[str]]]:
    """Poll until no process names any of `ports`; return the survivors (empty on success)."""
    deadline = time.monotonic() + timeout
    while True:
        survivors = [proc for port in ports for proc in processes_mentioning(port)]
        if not survivors or time.monotonic() > deadline:
            return survivors
        time.sleep(0.2)


def _child_env(**extra: str) -> dict[str, str]:
    """Our environment without emulator/Firebase settings inherited from the session fixture."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FIREBASE_", "FIRESTORE_", "STORAGE_", "GOOGLE_CLOUD_", "MEMHARBOR_", "AGORA_"))
    }
    return {**env, **extra}


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


class TestEmulatorSet:
    """The session's emulators: where they listen, what they expose, and wiping."""

    def test_emulators_listen_on_distinct_loopback_ports(self, emulators: EmulatorSet) -> None:
        """Both emulators bind 127.0.0.1 on different free ports and answer HTTP."""
        assert emulators.firestore.host == emulators.storage.host == "127.0.0.1"
        assert emulators.firestore.port != emulators.storage.port
        assert http_get(f"http://{emulators.firestore.address}/")[0] == 200
        assert java_on(emulators.firestore.port), "the Firestore emulator should be a java process"

    def test_env_names_both_emulators(self, emulators: EmulatorSet) -> None:
        """env() gives the project, the bucket and both emulator addresses in the variables clients read."""
        env = emulators.env()
        assert env["FIRESTORE_EMULATOR_HOST"] == emulators.firestore.address
        assert env["FIREBASE_STORAGE_EMULATOR_HOST"] == emulators.storage.address
        assert env["STORAGE_EMULATOR_HOST"] == f"http://{emulators.storage.address}"
        assert env["FIREBASE_PROJECT_ID"] == emulators.project_id
        assert env["FIREBASE_STORAGE_BUCKET"] == emulators.bucket
        assert env["FIREBASE_USE_EMULATOR"] == "1"

    def test_wipe_deletes_documents_and_objects_but_keeps_the_bucket(self, emulators: EmulatorSet) -> None:
        """After wipe(), written documents and uploaded objects are gone and the bucket still accepts uploads."""
        db = firestore.Client(project=emulators.project_id)
        gcs = storage.Client(project=emulators.project_id, credentials=AnonymousCredentials())
        try:
            db.collection("calls").document("wipe-me").set({"status": "pending"})
            db.collection("users").document("u1").collection("nested").document("n1").set({"x": 1})
            bucket = gcs.bucket(emulators.bucket)
            bucket.blob("recordings/wipe-me.wav").upload_from_string(b"RIFF....WAVE", content_type="audio/wav")
            assert db.collection("calls").document("wipe-me").get().exists
            assert [b.name for b in gcs.list_blobs(emulators.bucket)] == ["recordings/wipe-me.wav"]

            emulators.wipe()

            assert not db.collection("calls").document("wipe-me").get().exists
            assert not db.collection("users").document("u1").collection("nested").document("n1").get().exists
            assert list(gcs.list_blobs(emulators.bucket)) == []
            bucket.blob("after-wipe.txt").upload_from_string(b"ok")
            assert [b.name for b in gcs.list_blobs(emulators.bucket)] == ["after-wipe.txt"]
        finally:
            emulators.wipe()
            db.close()

    def test_clean_emulators_fixture_starts_empty(self, clean_emulators: EmulatorSet) -> None:
        """The per-test fixture hands over an empty database."""
        db = firestore.Client(project=clean_emulators.project_id)
        try:
            assert list(db.collection("calls").stream()) == []
        finally:
            db.close()


class TestManagedProcess:
    """Starting children: readiness, failures reported with their output, and stopping."""

    def test_child_that_exits_is_reported_with_its_output(self) -> None:
        """A child that dies before answering raises EmulatorError quoting what it printed."""
        process = ManagedProcess(
            "doomed",
            [sys.executable, "-c", "print('boom: no such config'); raise SystemExit(3)"],
            "127.0.0.1",
            free_port(),
        )
        with pytest.raises(EmulatorError) as caught:
            process.start(timeout=20)
        assert "boom: no such config" in str(caught.value)
        assert "(3)" in str(caught.value)

    def test_stop_ends_the_whole_process_group(self, tmp_path: Path) -> None:
        """stop() ends the child and the grandchildren it started, even one that ignores SIGTERM."""
        port = free_port()
        script = tmp_path / "parent.py"
        script.write_text(
            "import http.server, signal, subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)', sys.argv[1]])\n"
            "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
            ".serve_forever()\n"
        )
        process = ManagedProcess("parent", [sys.executable, str(script), str(port)], "127.0.0.1", port)
        process.start(timeout=20)
        assert len(processes_mentioning(port)) == 2
        process.stop(grace=2.0)
        assert wait_until_gone([port]) == []
        process.stop()  # idempotent

    def test_missing_jar_is_a_clear_error(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without a Firestore emulator jar anywhere, the error lists where it looked."""
        monkeypatch.setattr(emulators, "JAR_CANDIDATES", ())
        with pytest.raises(EmulatorError) as caught:
            emulators.find_firestore_jar([tmp_path / "nope.jar"])
        assert str(tmp_path / "nope.jar") in str(caught.value)

    def test_free_port_is_bindable(self) -> None:
        """free_port returns a loopback port nobody listens on."""
        import socket

        port = free_port()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            assert sock.getsockname()[1] == port


HOLDER_TEST = """
import os
import pathlib
import time


def test_hold(emulators):
    pathlib.Path(os.environ["PORTS_FILE"]).write_text(f"{emulators.firestore.port} {emulators.storage.port}")
    assert not os.environ.get("FAIL_NOW"), "a failing run"
    time.sleep(100)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A tiny test file that uses the real `emulators` fixture and waits; and where it writes its ports."""
    test_file = tmp_path / "test_holder.py"
    test_file.write_text(HOLDER_TEST)
    yield test_file, tmp_path / "ports"


def run_holder(test_file: Path, ports_file: Path, fail: bool = False) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Start pytest on the holder test (with the project's conftest as a plugin); wait for its emulator ports."""
    log = (test_file.parent / "pytest.log").open("wb")
    env = _child_env(PORTS_FILE=str(ports_file), **({"FAIL_NOW": "1"} if fail else {}))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-c",
            str(REPO / "pyproject.toml"),
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            str(test_file),
        ],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 60
    while not ports_file.exists() or not ports_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            _kill_group(process)
            raise AssertionError(f"holder never started: {(test_file.parent / 'pytest.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return process, [int(p) for p in ports_file.read_text().split()]


class TestNoOrphans:
    """Whatever ends a test run, none of its emulator processes survive it."""

    @pytest.mark.parametrize(
        ("signum", "exit_code"),
        [(signal.SIGTERM, 2), (signal.SIGINT, 2), (signal.SIGKILL, -signal.SIGKILL)],
        ids=["SIGTERM", "SIGINT", "SIGKILL"],
    )
    def test_signal_to_pytest_leaves_no_emulator(
        self, holder: tuple[Path, Path], signum: signal.Signals, exit_code: int
    ) -> None:
        """A pytest run holding the emulators is signalled; within 10 s no java with its port is left."""
        process, ports = run_holder(*holder)
        try:
            assert java_on(ports[0]), "the run's Firestore emulator should be running before the signal"
            os.kill(process.pid, signum)
            assert process.wait(30) == exit_code
            survivors = wait_until_gone(ports)
            assert survivors == [], f"survived {signum.name}: {survivors}"
        finally:
            _kill_group(process)

    def test_failing_run_leaves_no_emulator(self, holder: tuple[Path, Path]) -> None:
        """A pytest run whose test fails stops its emulators on the way out."""
        process, ports = run_holder(*holder, fail=True)
        try:
            assert process.wait(60) == 1
            assert wait_until_gone(ports) == []
        finally:
            _kill_group(process)


class _LineReader:
    """Collects a child's stdout lines in a thread, so the test can wait for one without blocking."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in: {self.lines}")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class TestDevCommand:
    """`memharbor dev`: the whole local stack, its banner, its curl line and its Ctrl-C."""

    def test_banner_curl_works_and_ctrl_c_stops_everything(self, tmp_path: Path) -> None:
        """The printed curl commands work; a burst of SIGINT and SIGTERM then stops dev, leaving no java behind."""
        http_port = free_port()
        stderr_path = tmp_path / "dev.stderr"
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "memharbor", "dev"],
                cwd=tmp_path,
                env=_child_env(
                    MEMHARBOR_HTTP_PORT=str(http_port),
                    MEMHARBOR_ENV_FILE=str(tmp_path / "absent.env"),
                    # Free ports, not firebase.json's: another session may run the stack at the same time.
                    FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
                    FIREBASE_STORAGE_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
                    FIREBASE_AUTH_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        ports: list[int] = [http_port]
        try:
            reader = _LineReader(process.stdout)
            firestore_line = reader.wait_for(r"Firestore emulator\s+127\.0\.0\.1:\d+", timeout=90)
            storage_line = reader.wait_for(r"Storage emulator\s+127\.0\.0\.1:\d+", timeout=5)
            ports += [int(re.findall(r":(\d+)", line)[0]) for line in (firestore_line, storage_line)]
            assert java_on(ports[1])
            curl_line = reader.wait_for(r"^\s*curl ", timeout=5).strip()
            assert f"http://127.0.0.1:{http_port}/api/token" in curl_line

            result = subprocess.run(["bash", "-c", curl_line], capture_output=True, timeout=30, check=False)
            assert result.returncode == 0, result.stderr
            body = json.loads(result.stdout)
            token = decode_006(body["token"])
            assert verify_006(token, app_certificate=dev.DEV_AGORA_APP_CERT, channel="group1_alice_bob", uid="12345")
            assert set(token.privileges) == PUBLISHER_PRIVILEGES
            assert body["expire_in"] == 86400

            invite_line = reader.wait_for(r"^\s*curl .*/api/call/invite", timeout=5).strip()
            invited = subprocess.run(["bash", "-c", invite_line], capture_output=True, timeout=30, check=False)
            placed = json.loads(invited.stdout)
            assert placed["success"] is True, placed
            # The elder's device is rung (dev records pushes in ./dev-pushes.jsonl); the invite itself waits
            # only 3 s for that, which a just-started watcher on a busy machine may need longer for.
            sink = tmp_path / "dev-pushes.jsonl"
            pushes = wait_for(
                lambda: [p for p in _jsonl(sink) if p["payload"].get("callId") == placed["callId"]],
                timeout=30,
                what="the demo call's push",
            )
            assert pushes[0]["kind"] == "incoming_call" and pushes[0]["platform"] == "android"
            assert pushes[0]["payload"]["channelName"].startswith(f"{dev.DEMO_GROUP_ID}_")

            # A burst, as when Ctrl-C reaches dev twice or a supervisor follows up with SIGTERM: a handler
            # interrupted by the next signal once deadlocked dev on a threading.Event's lock.
            for signum in (signal.SIGINT, signal.SIGTERM) * 25:
                os.kill(process.pid, signum)
            assert process.wait(30) == 0
            assert wait_until_gone(ports) == []
            with pytest.raises(OSError):
                http_get(f"http://127.0.0.1:{http_port}/api/health", timeout=1.0)
        finally:
            _kill_group(process)
        stderr_text = stderr_path.read_text(errors="replace")
        assert "Traceback" not in stderr_text
        assert "dev.stopped" in stderr_text
        assert dev.DEV_AGORA_APP_CERT not in stderr_text
        assert body["token"] not in stderr_text
