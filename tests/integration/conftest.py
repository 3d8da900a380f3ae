"""Fixtures shared by the integration tests of token_http's routes (a module may define its own instead)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memharbor.emulators import EmulatorSet
from tests.support.http_process import Api, start_http
from tests.support.recorder_thread import StandInRecorder


@pytest.fixture(scope="module")
def api(emulators: EmulatorSet) -> Iterator[Api]:
    """token_http with Firebase ID token authentication."""
    yield from start_http(emulators, "firebase")


@pytest.fixture(scope="module")
def open_api(emulators: EmulatorSet) -> Iterator[Api]:
    """token_http with MEMHARBOR_AUTH=none (the seed's open mode)."""
    yield from start_http(emulators, "none")


@pytest.fixture
def recorder(clean_emulators: EmulatorSet) -> Iterator[StandInRecorder]:
    """A stand-in recorder thread for this test."""
    fake = StandInRecorder(clean_emulators)
    fake.start()
    yield fake
    fake.close()
