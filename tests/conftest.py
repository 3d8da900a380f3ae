"""Session-wide fixtures: the real emulators, started once per test session and wiped between tests."""

from __future__ import annotations

import atexit
import os
import signal
from collections.abc import Iterator

import pytest

from memharbor.emulators import EmulatorSet

PROJECT_ID = "demo-memharbor"
pytest_plugins = ["tests.support.push_fixtures"]


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    # A SIGTERM to pytest unwinds like Ctrl-C, so fixtures stop their processes.
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


@pytest.fixture(scope="session")
def emulators() -> Iterator[EmulatorSet]:
    """Firestore (with rules/firestore.rules) and Storage emulators for the whole session."""
    running = EmulatorSet.create(PROJECT_ID)
    atexit.register(running.stop)
    running.start()
    # Google's client libraries in this process read the emulator addresses from the environment.
    saved = {k: os.environ.get(k) for k in running.env()}
    os.environ.update(running.env())
    try:
        yield running
    finally:
        running.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def clean_emulators(emulators: EmulatorSet) -> EmulatorSet:
    """The emulators, with every document and object deleted before the test."""
    emulators.wipe()
    return emulators
