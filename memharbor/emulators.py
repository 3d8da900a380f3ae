"""The local emulator harness shared by `memharbor dev` and the test suite.

Starts Google's Firestore emulator (with the security rules firebase.json names) and the GCS-compatible
Storage emulator, on free loopback ports unless told otherwise (the test suite's sessions run side by side;
`memharbor dev` passes firebase.json's ports), waits until they answer, wipes their data on request and
stops them.
Every child runs in its own process group with a parent-death signal, so no java process outlives us:
not after Ctrl-C, a failing test run, a SIGTERM, nor a SIGKILL of the parent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memharbor import firebase_project

REPO_ROOT = Path(__file__).resolve().parents[1]
_JAR = "cloud-firestore-emulator.jar"
JAR_CANDIDATES = (
    Path("/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator") / _JAR,
    Path("/usr/share/google-cloud-sdk/platform/cloud-firestore-emulator") / _JAR,
    REPO_ROOT.parent / "shared" / "tools" / "firestore-emulator" / _JAR,
    Path.cwd().parent / "shared" / "tools" / "firestore-emulator" / _JAR,
)


class EmulatorError(RuntimeError):
    """An emulator could not be found, did not start, or stopped answering."""


def default_rules() -> Path:
    """The Firestore rules firebase.json names: what the emulators enforce and what `firebase deploy` ships."""
    return firebase_project.load().firestore_rules


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently free TCP port on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on `host:port` (or holds it), so a server could not bind it now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: a port held only by connections in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def find_firestore_jar(extra: Sequence[Path] = ()) -> Path:
    """Locate the Firestore emulator: the installed Cloud SDK copy first, else the shared fallback."""
    for candidate in (*extra, *JAR_CANDIDATES):
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(p) for p in (*extra, *JAR_CANDIDATES))
    raise EmulatorError(f"Firestore emulator jar not found; looked in: {searched}")


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    """Prefix `argv` so Linux SIGKILLs the child when its parent dies.

    util-linux's setpriv sets the signal and execs the command. A `preexec_fn` could do the same, but
    it forces a real fork() whose atfork handlers restart gRPC's poller threads in the child, and the
    child's close-fds step then pulls the epoll descriptor from under them (an abort, seen here).
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def http_get(url: str, timeout: float = 2.0, method: str = "GET") -> tuple[int, bytes]:
    """One small blocking HTTP request; returns (status, body), raising OSError when unreachable."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@dataclass
class ManagedProcess:
    """A child process (an emulator or a memharbor service) and where it listens.

    It runs in its own process group and dies with its parent; `start` waits until `ready_path`
    answers 200 over HTTP (when there is one). Output goes to a temporary log file, or to our own
    terminal when `inherit_output` is set.
    """

    name: str
    argv: list[str]
    host: str
    port: int
    ready_path: str | None = "/"
    env: dict[str, str] | None = None
    inherit_output: bool = False
    # The child's working directory (None: ours); firebase-tools writes its debug log there.
    cwd: str | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log: object = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        """Spawn the process and block until it answers HTTP, or raise with its log tail."""
        output = None
        if not self.inherit_output:
            fd, name = tempfile.mkstemp(prefix=f"memharbor-{self.name}-", suffix=".log")
            self.log_path = Path(name)
            output = self._log = os.fdopen(fd, "wb")
        self.process = subprocess.Popen(
            _with_parent_death_signal(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        if self.ready_path is not None:
            self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.address}{self.ready_path or '/'}"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise EmulatorError(f"{self.name} emulator exited ({self.process.returncode}): {self.log_tail()}")
            with contextlib.suppress(OSError):
                status, _ = http_get(url, timeout=1.0)
                if status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise EmulatorError(f"{self.name} emulator not ready after {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the process printed, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the whole process group, escalating to SIGKILL after `grace` seconds."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(grace)
        # The group may hold grandchildren even after its leader exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None


def firestore_emulator(
    rules: Path | None = None, host: str = "127.0.0.1", port: int | None = None, java: str = "java"
) -> ManagedProcess:
    """Describe Google's Firestore emulator, enforcing `rules` (firebase.json's), on `port` or a free one."""
    jar = find_firestore_jar()
    rules = rules or default_rules()
    port = port or free_port(host)
    argv = [
        java,
        "-Duser.language=en",
        "-Xms128m",
        "-Xmx1g",
        "-cp",
        str(jar),
        "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
        "--host",
        host,
        "--port",
        str(port),
        "--rules",
        str(rules),
    ]
    return ManagedProcess("firestore", argv, host, port)


def storage_emulator(bucket: str, host: str = "127.0.0.1", port: int | None = None) -> ManagedProcess:
    """Describe the gcp-storage-emulator (GCS JSON API), in memory, with `bucket` created, on `port` or a free one."""
    port = port or free_port(host)
    argv = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        host,
        "--port",
        str(port),
        "--in-memory",
        "--default-bucket",
        bucket,
        "-q",
    ]
    return ManagedProcess("storage", argv, host, port)


@dataclass
class EmulatorSet:
    """The Firestore and Storage emulators of one project, started and stopped together."""

    project_id: str
    bucket: str
    firestore: ManagedProcess
    storage: ManagedProcess

    @classmethod
    def create(
        cls,
        project_id: str = "memharbor-local",
        rules: Path | None = None,
        firestore_port: int | None = None,
        storage_port: int | None = None,
        host: str = "127.0.0.1",
        storage_host: str | None = None,
    ) -> EmulatorSet:
        """Describe both emulators (on `host`); a port left out is a free one, the rules default to firebase.json's."""
        bucket = f"{project_id}.appspot.com"
        return cls(
            project_id,
            bucket,
            firestore_emulator(rules, host=host, port=firestore_port),
            storage_emulator(bucket, host=storage_host or host, port=storage_port),
        )

    def start(self) -> None:
        """Start both emulators; if either fails, stop the other before raising."""
        try:
            self.storage.start()
            self.firestore.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both emulators (idempotent)."""
        self.firestore.stop()
        self.storage.stop()

    def env(self) -> dict[str, str]:
        """The variables a memharbor process (or Google's client libraries) needs to use these emulators."""
        return {
            "FIREBASE_PROJECT_ID": self.project_id,
            "GOOGLE_CLOUD_PROJECT": self.project_id,
            "FIREBASE_USE_EMULATOR": "1",
            "FIRESTORE_EMULATOR_HOST": self.firestore.address,
            "FIREBASE_STORAGE_EMULATOR_HOST": self.storage.address,
            "STORAGE_EMULATOR_HOST": f"http://{self.storage.address}",
            "FIREBASE_STORAGE_BUCKET": self.bucket,
        }

    def wipe(self) -> None:
        """Delete every Firestore document and every stored object, keeping the bucket."""
        documents = (
            f"http://{self.firestore.address}/emulator/v1/projects/{self.project_id}/databases/(default)/documents"
        )
        status, body = http_get(documents, timeout=60.0, method="DELETE")
        if status != 200:
            raise EmulatorError(f"Firestore wipe failed: HTTP {status} {body[:200]!r}")
        status, body = http_get(f"http://{self.storage.address}/wipe?keep-buckets=1", timeout=60.0)
        if status != 200:
            raise EmulatorError(f"Storage wipe failed: HTTP {status} {body[:200]!r}")

    @contextlib.contextmanager
    def running(self) -> Iterator[EmulatorSet]:
        """Context manager: start, yield, and always stop."""
        self.start()
        try:
            yield self
        finally:
            self.stop()
