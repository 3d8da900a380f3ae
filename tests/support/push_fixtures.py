"""Fixtures for tests that talk to the local APNs server: keys, TLS, and a fresh server per test.

Registered for the whole suite through `pytest_plugins` in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.apns_server import ApnsServer
from tests.support.push_keys import ApnsKey, Tls, make_apns_key, make_tls

BUNDLE = "com.memharbor.app"


@pytest.fixture(scope="module")
def apns_key() -> ApnsKey:
    """A .p8 signing key with its key and team ids."""
    return make_apns_key()


@pytest.fixture(scope="module")
def tls() -> Tls:
    """A test CA and the server certificate it signed."""
    return make_tls()


@pytest.fixture(scope="module")
def ca_file(tls: Tls, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA as a PEM file, for MEMHARBOR_APNS_CA_FILE."""
    ca, _, _ = tls.write(tmp_path_factory.mktemp("apns-tls"))
    return ca


@pytest.fixture
def apns(apns_key: ApnsKey, tls: Tls) -> Iterator[ApnsServer]:
    """A fresh local APNs per test."""
    with ApnsServer(apns_key, BUNDLE, tls) as server:
        yield server
