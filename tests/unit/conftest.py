"""Fixtures shared by the route unit tests (each test module opts in with `pytest.mark.usefixtures`).

`client` and `open_client` serve the app over the module's own `world` fixture (a `tests.support.api_worlds`
world), with Firebase-style authentication and with MEMHARBOR_AUTH=none respectively.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import http_parser, web_protocol
from aiohttp.test_utils import TestClient, TestServer

from tests.support.api_worlds import make_settings
from token_http import call_routes, recording_routes
from token_http.app import create_app


@pytest.fixture
async def client(world: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """The app on the module's world, authenticating requests as Firebase ID tokens."""
    async with TestClient(TestServer(create_app(make_settings(), world.deps()))) as test_client:
        yield test_client


@pytest.fixture
async def open_client(world: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """The app on the module's world with MEMHARBOR_AUTH=none (everyone trusted, as the seed did)."""
    app = create_app(make_settings(MEMHARBOR_AUTH="none"), world.deps(open_access=True))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


@pytest.fixture
def short_push_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invite waits 0.3 s instead of 3 s for the push result, so tests stay fast."""
    monkeypatch.setattr(call_routes, "PUSH_WAIT_S", 0.3)
    monkeypatch.setattr(call_routes, "PUSH_POLL_S", 0.01)


@pytest.fixture
def short_recording_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """start waits 0.3 s and stop 0.5 s instead of 10 s and 60 s, polling every 10 ms, so tests stay fast."""
    monkeypatch.setattr(recording_routes, "START_WAIT_S", 0.3)
    monkeypatch.setattr(recording_routes, "START_POLL_S", 0.01)
    monkeypatch.setattr(recording_routes, "STOP_WAIT_S", 0.5)
    monkeypatch.setattr(recording_routes, "STOP_POLL_S", 0.01)


@pytest.fixture
def python_parser(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Serve with aiohttp's pure-Python HTTP parser (used where its C extension is absent).

    The C parser refuses raw non-ASCII bytes in a request line; the Python one hands them to the
    handler as lone surrogates (U+DC80-U+DCFF), which is what path and query checks must survive.
    """
    monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    yield
