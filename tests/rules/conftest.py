"""Fixtures of the security-rules tests: one REST connection for the session, a clean database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memharbor.emulators import EmulatorSet
from memharbor.groups import group_document
from tests.rules.rules_support import CALLER, GROUP_ID, RECEIVER, World
from tests.support.firestore_rest import FirestoreRest


@pytest.fixture(scope="session")
def rest(emulators: EmulatorSet) -> Iterator[FirestoreRest]:
    """A REST client on the session's Firestore emulator; every principal shares its connection."""
    client = FirestoreRest(emulators.firestore.address, emulators.project_id)
    yield client
    client.close()


@pytest.fixture
def world(clean_emulators: EmulatorSet, rest: FirestoreRest) -> World:
    """The principals of a test, on a database holding only their care group (caller and receiver)."""
    world = World(rest)
    world.seed(f"groups/{GROUP_ID}", group_document([CALLER, RECEIVER]))
    return world
