"""Security rules: everything outside calls, users and recordings is closed to clients."""

from __future__ import annotations

import pytest

from memharbor.calls import Status
from tests.rules.rules_support import CALL_ID, CALL_PATH, World

SERVER_DOCS = ["workers/worker-1", "workers/_ping", "claims/c1", "anything/else"]


class TestOtherCollections:
    """Server collections and unknown paths deny every client request."""

    @pytest.mark.parametrize("path", SERVER_DOCS)
    @pytest.mark.parametrize("principal", ["caller", "anonymous"])
    def test_server_documents_closed(self, world: World, principal: str, path: str) -> None:
        """A client can neither read, query, create, change nor delete a server document."""
        world.seed(path, {"heartbeat": 1})
        client = world.client(principal)
        collection = path.split("/")[0]
        assert client.get(path).denied
        assert client.query(collection).denied
        assert client.update(path, {"heartbeat": 2}).denied
        assert client.delete(path).denied
        assert client.create(f"{collection}/new-doc", {"heartbeat": 1}).denied
        assert world.stored(path) == {"heartbeat": 1}

    def test_subcollection_of_a_call_closed(self, world: World) -> None:
        """A participant cannot hang documents under their call, nor read any there."""
        world.seed_call(Status.ACCEPTED)
        world.seed(f"{CALL_PATH}/notes/n1", {"text": "server note"})
        caller = world.client("caller")
        assert caller.create(f"{CALL_PATH}/notes/n2", {"text": "hi"}).denied
        assert caller.get(f"{CALL_PATH}/notes/n1").denied
        assert caller.query("notes", parent=CALL_PATH).denied

    @pytest.mark.parametrize("principal", ["caller", "receiver"])
    def test_call_server_document_and_timeline_closed(self, world: World, principal: str) -> None:
        """Even the call's participants can neither read nor write callServer/{callId} or its events."""
        world.seed_call(Status.PENDING)
        server, event = f"callServer/{CALL_ID}", f"callServer/{CALL_ID}/events/e1"
        world.seed(server, {"status": "pending"})
        world.seed(event, {"kind": "call.seen", "worker": "w1", "t": 1.0, "detail": {}})
        client = world.client(principal)
        for path in (server, event):
            assert client.get(path).denied
            assert client.update(path, {"status": "accepted"}).denied
            assert client.delete(path).denied
        assert client.query("callServer").denied
        assert client.query("events", parent=server).denied
        assert client.create(f"callServer/{CALL_ID}/events/forged", {"kind": "push.sent"}).denied
        assert world.stored(event) == {"kind": "call.seen", "worker": "w1", "t": 1.0, "detail": {}}
