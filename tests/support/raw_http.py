"""Requests no HTTP client would send, written byte for byte on a socket to a TestClient's server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.support.json_client import Client


async def raw_get(client: Client, target: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET `target` exactly as given (bytes no HTTP client would send) on a real socket; (status, JSON body)."""
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in (headers or {}).items())
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" + lines + b"\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)
