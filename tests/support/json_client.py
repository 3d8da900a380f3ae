"""JSON requests against an aiohttp TestClient, for the route unit tests."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

Client = TestClient[web.Request, web.Application]


async def post(client: Client, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST `body` as JSON; the answer must be JSON: (status, decoded body)."""
    response = await client.post(path, json=body, headers=headers or {})
    assert response.content_type == "application/json"
    return response.status, await response.json()


async def get(client: Client, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET; the answer must be JSON: (status, decoded body)."""
    response = await client.get(path, headers=headers or {})
    assert response.content_type == "application/json"
    return response.status, await response.json()
