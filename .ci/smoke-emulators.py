"""The Firestore and Storage emulators for .ci/image-smoke, on free loopback ports, until SIGTERM.

Usage: .venv/bin/python .ci/smoke-emulators.py PROJECT_ID ENV_FILE

Started the way the test suite starts them (memharbor.emulators: firebase.json's rules, the jar the suite
finds, a parent-death signal on the JVM), so the containers meet the same emulator the suite does. Once both
answer, ENV_FILE receives the variables a memharbor process needs to use them, one NAME=value a line (the
format of `podman run --env-file` and of compose's env_file); it appears whole, so its presence means ready.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import urllib.request
from pathlib import Path

from memharbor.emulators import EmulatorSet


def warm_up(emulators: EmulatorSet) -> None:
    """Write, read and delete one document, so the containers do not pay for a cold emulator.

    A cold emulator's first write (rules compiled, JIT warming) can take longer than the 10 s a memharbor
    process gives one Firestore call on a loaded machine, and the watcher does not start when its first
    heartbeat fails.
    """
    base = f"http://{emulators.firestore.address}/v1/projects/{emulators.project_id}/databases/(default)/documents"
    url = f"{base}/smoke-warm-up/doc"
    # `Bearer owner` is the emulator's admin, as for the server's own writes.
    headers = {"Authorization": "Bearer owner", "Content-Type": "application/json"}
    body = json.dumps({"fields": {"at": {"stringValue": "start"}}}).encode()
    for method, data in (("PATCH", body), ("GET", None), ("DELETE", None)):
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()


def main(project_id: str, env_file: Path) -> int:
    stop = threading.Event()
    # Set before the emulators start: a SIGTERM during their start-up must still stop them.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with EmulatorSet.create(project_id=project_id).running() as emulators:
        warm_up(emulators)
        partial = env_file.with_name(env_file.name + ".partial")
        partial.write_text("".join(f"{name}={value}\n" for name, value in emulators.env().items()))
        partial.rename(env_file)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
