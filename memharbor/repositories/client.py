"""The asyncio Firestore client a process's repositories share: made on first use, closed for good.

Repositories take a callable that returns the client (`LazyClient` is one): the client's gRPC channel
binds to the event loop running when it is made, so it must not be made at composition time.
"""

from __future__ import annotations

from collections.abc import Callable

from google.cloud import firestore


class LazyClient:
    """Makes the client on the first call and closes it with `aclose` (a later call makes another)."""

    def __init__(self, make_client: Callable[[], firestore.AsyncClient]) -> None:
        self._make_client = make_client
        self._client: firestore.AsyncClient | None = None

    def __call__(self) -> firestore.AsyncClient:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    async def aclose(self) -> None:
        """Close the client if one was made: its HTTP session and its gRPC channel."""
        client, self._client = self._client, None
        if client is not None:
            await close_async_client(client)


async def close_async_client(client: firestore.AsyncClient) -> None:
    """Close an asyncio Firestore client for good: `client.close()` and then its gRPC channel.

    `AsyncClient.close()` only closes the HTTP session it inherits; the gRPC channel of its GAPIC
    client (made on the first RPC) stays open until the process exits. google-cloud-firestore has no
    public way to reach it, so this reads the lazily made GAPIC client's private attribute, and does
    nothing more when no RPC ever made one.
    """
    client.close()
    api = getattr(client, "_firestore_api_internal", None)
    if api is not None:
        await api.transport.close()
