"""`memharbor dev` as a subprocess on free ports, for tests that need the whole local stack (Auth emulator too)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from memharbor.emulators import free_port

# Variables of the caller's environment that would point the stack somewhere else.
_FOREIGN = ("FIREBASE_", "FIRESTORE_", "STORAGE_", "GOOGLE_CLOUD_", "MEMHARBOR_", "AGORA_")


class DevStack:
    """A running `memharbor dev`: its printed lines and the address of token_http."""

    def __init__(self, process: subprocess.Popen[bytes], http_port: int, workdir: Path) -> None:
        self.process = process
        self.http = f"http://127.0.0.1:{http_port}"
        self.workdir = workdir
        self.lines: list[str] = []
        assert process.stdout is not None
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first printed line matching `pattern`; AssertionError with the output so far after `timeout`."""
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        stderr = (self.workdir / "dev.stderr").read_text(errors="replace")[-3000:]
        raise AssertionError(f"no line matching {pattern!r}; stdout: {self.lines}; stderr tail: {stderr}")


@contextlib.contextmanager
def dev_stack(workdir: Path, timeout: float = 120.0) -> Iterator[DevStack]:
    """Start `memharbor dev` in `workdir` with every port free, wait for its banner, stop it with SIGINT."""
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update(
        MEMHARBOR_HTTP_PORT=str(http_port),
        MEMHARBOR_ENV_FILE=str(workdir / "absent.env"),
        FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
        FIREBASE_STORAGE_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
        FIREBASE_AUTH_EMULATOR_HOST=f"127.0.0.1:{free_port()}",
        MEMHARBOR_LOG_FORMAT="json",
    )
    with (workdir / "dev.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "memharbor", "dev"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        stack = DevStack(process, http_port, workdir)
        stack.wait_for("memharbor dev is up", timeout)
        yield stack
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
